//! An incremental parser for `text/event-stream` (WHATWG HTML, "Server-sent events",
//! section 9.2.6 "Interpreting an event stream").
//!
//! Bytes go in as they arrive, in chunks of any size; each complete event comes out once
//! its terminating blank line is in. Only the current line and the current event are held,
//! bounded by `max_event_bytes`:
//!
//! - a leading UTF-8 byte order mark is skipped; lines are decoded as UTF-8 with
//!   replacement characters;
//! - lines end with CRLF, LF or CR (a CR at the end of one chunk and an LF at the start of
//!   the next are one line end);
//! - `field: value` (one space after the colon removed), `field` alone means an empty
//!   value, a line starting with `:` is a comment;
//! - `data` lines are joined with LF; `event` sets the type (default `message`); `id` sets
//!   the last event ID (kept across events, ignored when it holds NUL); `retry` with only
//!   digits sets the reconnection time; other fields are ignored;
//! - a blank line dispatches the event, unless it has no data; an event still incomplete
//!   when the stream ends is discarded;
//! - an event over `max_event_bytes` (counting every byte of its field lines, line ends
//!   included) is skipped whole, through its blank line, and reported with
//!   [`SseObserver::on_oversize`]; comment lines (keep-alives) are neither kept nor
//!   counted.

/// One event, as an `EventSource` would dispatch it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The event type: the last `event` field, or `message`.
    pub event: String,
    /// The `data` lines, joined with LF.
    pub data: String,
    /// The last event ID in force when the event was dispatched (empty when none).
    pub id: String,
}

/// Receives what an [`SseParser`] finds, in stream order.
pub trait SseObserver: Send {
    /// A complete event.
    fn on_event(&mut self, event: SseEvent);

    /// An event over the size limit was skipped.
    fn on_oversize(&mut self) {}

    /// The stream ended: `complete` when the body ended normally, false when it failed or
    /// was dropped first (the client went away).
    fn on_end(&mut self, complete: bool) {
        let _ = complete;
    }
}

impl<F: FnMut(SseEvent) + Send> SseObserver for F {
    fn on_event(&mut self, event: SseEvent) {
        self(event)
    }
}

const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// The parser state of one event stream.
#[derive(Debug)]
pub struct SseParser {
    max_event_bytes: usize,
    /// Bytes of the leading BOM matched so far; `BOM.len()` or more once past the start.
    bom: usize,
    /// The last chunk ended with CR: an LF starting the next one belongs to it.
    pending_cr: bool,
    /// The current line, not yet terminated.
    line: Vec<u8>,
    /// Whether any byte of the current line has been seen (also while skipping).
    line_started: bool,
    /// The current line is a comment: neither kept nor counted.
    comment: bool,
    /// Bytes of the current event so far.
    event_bytes: usize,
    /// Skipping an oversize event until its blank line.
    skipping: bool,
    data: String,
    event_type: String,
    last_id: String,
    retry: Option<u64>,
}

impl SseParser {
    /// A parser for one stream; events over `max_event_bytes` are skipped.
    pub fn new(max_event_bytes: usize) -> Self {
        Self {
            max_event_bytes,
            bom: 0,
            pending_cr: false,
            line: Vec::new(),
            line_started: false,
            comment: false,
            event_bytes: 0,
            skipping: false,
            data: String::new(),
            event_type: String::new(),
            last_id: String::new(),
            retry: None,
        }
    }

    /// The reconnection time (milliseconds) the stream last set with `retry`.
    pub fn retry(&self) -> Option<u64> {
        self.retry
    }

    /// Parses the next chunk, handing each event it completes to `observer`.
    pub fn feed(&mut self, mut chunk: &[u8], observer: &mut dyn SseObserver) {
        // A leading BOM, which may itself arrive split across chunks.
        while self.bom < BOM.len() && !chunk.is_empty() {
            if chunk[0] == BOM[self.bom] {
                self.bom += 1;
                chunk = &chunk[1..];
            } else {
                let matched = self.bom;
                self.bom = BOM.len() + 1;
                self.push(&BOM[..matched]);
            }
        }
        if self.pending_cr && !chunk.is_empty() {
            self.pending_cr = false;
            if chunk[0] == b'\n' {
                chunk = &chunk[1..];
            }
        }
        while let Some(i) = chunk.iter().position(|b| *b == b'\r' || *b == b'\n') {
            self.push(&chunk[..i]);
            self.end_line(observer);
            if chunk[i] == b'\r' {
                match chunk.get(i + 1) {
                    Some(b'\n') => chunk = &chunk[i + 2..],
                    Some(_) => chunk = &chunk[i + 1..],
                    None => {
                        self.pending_cr = true;
                        chunk = &[];
                    }
                }
            } else {
                chunk = &chunk[i + 1..];
            }
        }
        self.push(chunk);
    }

    /// Adds bytes of the current line, or starts skipping when the event grows too big.
    fn push(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if !self.line_started {
            self.line_started = true;
            self.comment = bytes[0] == b':';
        }
        if self.skipping || self.comment {
            return;
        }
        self.event_bytes += bytes.len();
        if self.event_bytes > self.max_event_bytes {
            self.skip_event();
            return;
        }
        self.line.extend_from_slice(bytes);
    }

    fn skip_event(&mut self) {
        self.skipping = true;
        self.line = Vec::new();
        self.data = String::new();
        self.event_type.clear();
    }

    fn end_line(&mut self, observer: &mut dyn SseObserver) {
        let blank = !self.line_started;
        let comment = self.comment;
        self.line_started = false;
        self.comment = false;
        if self.skipping {
            if blank {
                self.skipping = false;
                self.event_bytes = 0;
                observer.on_oversize();
            }
            return;
        }
        if blank {
            self.event_bytes = 0;
            self.dispatch(observer);
            return;
        }
        if comment {
            return;
        }
        // The line end counts too, so that many empty `data` lines stay bounded.
        self.event_bytes += 1;
        if self.event_bytes > self.max_event_bytes {
            self.skip_event();
            return;
        }
        let line = std::mem::take(&mut self.line);
        self.field(&String::from_utf8_lossy(&line));
        self.line = line;
        self.line.clear();
    }

    fn field(&mut self, line: &str) {
        let (name, value) = match line.split_once(':') {
            Some((name, value)) => (name, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match name {
            "event" => {
                self.event_type.clear();
                self.event_type.push_str(value);
            }
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "id" if !value.contains('\0') => {
                self.last_id.clear();
                self.last_id.push_str(value);
            }
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                self.retry = value.parse().ok();
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, observer: &mut dyn SseObserver) {
        if self.data.is_empty() {
            self.event_type.clear();
            return;
        }
        if self.data.ends_with('\n') {
            self.data.pop();
        }
        let event = if self.event_type.is_empty() {
            "message".to_owned()
        } else {
            std::mem::take(&mut self.event_type)
        };
        observer.on_event(SseEvent {
            event,
            data: std::mem::take(&mut self.data),
            id: self.last_id.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Seen {
        events: Vec<SseEvent>,
        oversize: usize,
    }

    impl SseObserver for Seen {
        fn on_event(&mut self, event: SseEvent) {
            self.events.push(event);
        }
        fn on_oversize(&mut self) {
            self.oversize += 1;
        }
    }

    fn parse_chunks(chunks: &[&[u8]], max: usize) -> Seen {
        let mut p = SseParser::new(max);
        let mut seen = Seen::default();
        for c in chunks {
            p.feed(c, &mut seen);
        }
        seen
    }

    fn events(input: &str) -> Vec<SseEvent> {
        parse_chunks(&[input.as_bytes()], 1 << 20).events
    }

    fn ev(event: &str, data: &str, id: &str) -> SseEvent {
        SseEvent {
            event: event.into(),
            data: data.into(),
            id: id.into(),
        }
    }

    /// WHATWG HTML 9.2.6: fields, comments, data joined by LF, default type.
    #[test]
    fn whatwg_fields_and_dispatch() {
        assert_eq!(
            events(
                ": comment\ndata: first\ndata:second\ndata\n\nevent: add\ndata:  two spaces\n\n"
            ),
            vec![
                ev("message", "first\nsecond\n", ""),
                ev("add", " two spaces", "")
            ]
        );
        // No data: nothing dispatched, and the type does not leak into the next event.
        assert_eq!(
            events("event: x\n\ndata: y\n\n"),
            vec![ev("message", "y", "")]
        );
        // Unknown fields and a field named with a trailing space are ignored.
        assert_eq!(
            events("foo: bar\ndata : no\ndata: yes\n\n"),
            vec![ev("message", "yes", "")]
        );
    }

    /// The last event ID persists across events; an id holding NUL is ignored.
    #[test]
    fn whatwg_last_event_id() {
        assert_eq!(
            events("id: 1\ndata: a\n\ndata: b\n\nid: 2\0\ndata: c\n\nid\ndata: d\n\n"),
            vec![
                ev("message", "a", "1"),
                ev("message", "b", "1"),
                ev("message", "c", "1"),
                ev("message", "d", ""),
            ]
        );
        let mut p = SseParser::new(1024);
        p.feed(b"retry: 1500\nretry: x\n\n", &mut Seen::default());
        assert_eq!(p.retry(), Some(1500));
    }

    /// Lines end with CRLF, LF or CR, mixed in one stream.
    #[test]
    fn whatwg_line_ends() {
        assert_eq!(
            events("data: a\r\ndata: b\rdata: c\n\r\ndata: d\r\r"),
            vec![ev("message", "a\nb\nc", ""), ev("message", "d", "")]
        );
    }

    /// An event still open when the stream ends is not dispatched.
    #[test]
    fn incomplete_event_is_discarded() {
        assert_eq!(events("data: a\n\ndata: b\n"), vec![ev("message", "a", "")]);
    }

    /// A leading BOM is skipped, even split across chunks; a BOM later is data.
    #[test]
    fn leading_bom() {
        let s = parse_chunks(&[b"\xEF", b"\xBB", b"\xBFdata: x\n\n"], 1024);
        assert_eq!(s.events, vec![ev("message", "x", "")]);
        let s = parse_chunks(&[b"\xEF\xBB\xBFdata: \xEF\xBB\xBFy\n\n"], 1024);
        assert_eq!(s.events, vec![ev("message", "\u{feff}y", "")]);
        // Not a BOM after all: the bytes are part of the first line.
        let s = parse_chunks(&[b"\xEF", b"data: z\n\n"], 1024);
        assert_eq!(s.events, vec![]);
    }

    /// Every split of a stream into two chunks, and byte by byte, gives the same events.
    #[test]
    fn split_at_every_byte_boundary() {
        let stream: &[u8] = b"\xEF\xBB\xBF: hi\r\nid: 7\r\nevent: update\r\ndata: {\"a\": 1}\r\ndata: \xC3\xA9t\xC3\xA9\r\n\r\ndata: second\rdata: line\r\rdata: third\n\n";
        let whole = parse_chunks(&[stream], 1024).events;
        assert_eq!(
            whole,
            vec![
                ev("update", "{\"a\": 1}\nété", "7"),
                ev("message", "second\nline", "7"),
                ev("message", "third", "7"),
            ]
        );
        for i in 0..=stream.len() {
            let (a, b) = stream.split_at(i);
            assert_eq!(parse_chunks(&[a, b], 1024).events, whole, "split at {i}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(parse_chunks(&bytes, 1024).events, whole);
    }

    /// An event over the limit is skipped whole and reported; the next one is whole.
    #[test]
    fn oversize_event_is_skipped() {
        let big = format!("data: {}\ndata: more\n\ndata: ok\n\n", "x".repeat(100));
        for chunk in [1, 7, big.len()] {
            let chunks: Vec<&[u8]> = big.as_bytes().chunks(chunk).collect();
            let s = parse_chunks(&chunks, 64);
            assert_eq!(s.events, vec![ev("message", "ok", "")], "chunk {chunk}");
            assert_eq!(s.oversize, 1);
        }
        // Comments (keep-alives) are not counted, however long.
        let long_comment = format!(": {}\n: {}\ndata: ok\n\n", "x".repeat(100), "y".repeat(100));
        let s = parse_chunks(&[long_comment.as_bytes()], 64);
        assert_eq!((s.events, s.oversize), (vec![ev("message", "ok", "")], 0));
        // Many empty data lines count their line ends.
        let s = parse_chunks(&["data\n".repeat(100).as_bytes(), b"\n"], 64);
        assert_eq!((s.events.len(), s.oversize), (0, 1));
    }
}
