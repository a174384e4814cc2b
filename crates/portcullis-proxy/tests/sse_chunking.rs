//! Property: the incremental SSE parser finds the same events (and the same oversize
//! skips) however the stream is cut into chunks. A stream is built from pieces that stress
//! the parser (every line ending, CR/LF pairs, comments, fields with and without a value,
//! a BOM, multi-byte UTF-8, invalid bytes) and cut at random points, down to single
//! bytes; the events must equal those of the stream fed whole.

use portcullis_proxy::pipeline::{SseEvent, SseObserver, SseParser};
use proptest::prelude::*;

/// A fixed seed: the same cases on every run and every machine.
fn fixed(cases: u32) -> ProptestConfig {
    ProptestConfig {
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x55e0_c4a7),
        failure_persistence: None,
        ..ProptestConfig::with_cases(cases)
    }
}

const PIECES: &[&[u8]] = &[
    b"data: a",
    b"data:b",
    b"data",
    b"data: ",
    b"event: e",
    b"id: 7",
    b"id: \0x",
    b"retry: 10",
    b": comment",
    b":",
    b"x: y",
    b"d\xC3\xA9",
    b"\xC3",
    b"\xFF",
    b"\xEF\xBB\xBF",
    b"\n",
    b"\r",
    b"\r\n",
    b"\n\n",
    b"\r\r",
    b"\r\n\r\n",
    b" ",
];

#[derive(Default, Debug, PartialEq)]
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

fn parse(chunks: &[&[u8]], max: usize) -> Seen {
    let mut parser = SseParser::new(max);
    let mut seen = Seen::default();
    for c in chunks {
        parser.feed(c, &mut seen);
    }
    seen
}

fn stream() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(PIECES), 0..60).prop_map(|v| v.concat())
}

/// Cut points, as fractions of the length.
fn cuts() -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec(0.0..=1.0f64, 0..12)
}

fn split<'a>(bytes: &'a [u8], cuts: &[f64]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts
        .iter()
        .map(|f| ((bytes.len() as f64) * f) as usize)
        .collect();
    at.sort_unstable();
    let mut out = Vec::new();
    let mut from = 0;
    for a in at {
        out.push(&bytes[from..a]);
        from = a;
    }
    out.push(&bytes[from..]);
    out
}

proptest! {
    #![proptest_config(fixed(2048))]

    #[test]
    fn any_chunking_gives_the_same_events(bytes in stream(), cuts in cuts(), max in prop::sample::select(vec![16usize, 64, 4096])) {
        let whole = parse(&[&bytes], max);
        let chunked = parse(&split(&bytes, &cuts), max);
        prop_assert_eq!(&chunked, &whole, "cuts {:?}", cuts);
        let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
        prop_assert_eq!(&parse(&bytewise, max), &whole);
    }
}
