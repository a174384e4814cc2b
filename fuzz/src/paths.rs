//! What a canonical path must look like, written independently of
//! `portcullis_policy::canonical_path`: its output is checked against RFC 3986 (the
//! syntax rules of section 6.2.2 and the dot-segment algorithm of section 5.2.4, coded
//! here the string-buffer way the RFC writes it, not segment by segment as the crate
//! does), and against a model of how backends (Go's ServeMux, nginx) resolve a path.

use portcullis_policy::{EscapedSlashes, PathOptions, Semicolons, TargetError, canonical_path};

/// RFC 3986 `unreserved`.
pub fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 `pchar` without `%`: unreserved, sub-delims, `:` and `@`.
pub fn is_pchar(b: u8) -> bool {
    is_unreserved(b) || b"!$&'()*+,;=:@".contains(&b)
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Placeholders for an escaped slash or backslash kept as data (`EscapedSlashes::Keep`):
/// bytes a canonical path can never hold decoded (they are control characters), so a
/// kept `%2F` can never be confused with a separator in the decoded comparison.
const KEPT_SLASH: u8 = 0x00;
const KEPT_BACKSLASH: u8 = 0x01;

/// Percent-decodes every escape, the way nginx, Go's `net/url` and Express build the path
/// they route on. `%2F`/`%5C` become a separator or a placeholder as `escaped` says; with
/// `None` they decode to `/` and `\` like any other escape. Invalid escapes stay as bytes.
pub fn decode(path: &[u8], escaped: Option<EscapedSlashes>) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        if path[i] == b'%'
            && let (Some(h), Some(l)) = (
                path.get(i + 1).copied().and_then(hex),
                path.get(i + 2).copied().and_then(hex),
            )
        {
            let v = h << 4 | l;
            out.push(match (v, escaped) {
                (b'/', Some(EscapedSlashes::Keep)) => KEPT_SLASH,
                (b'\\', Some(EscapedSlashes::Keep)) => KEPT_BACKSLASH,
                (b'/' | b'\\', Some(EscapedSlashes::Decode)) => b'/',
                _ => v,
            });
            i += 3;
        } else {
            out.push(path[i]);
            i += 1;
        }
    }
    out
}

/// RFC 3986 section 5.2.4, `remove_dot_segments`, as the RFC writes it: an input buffer
/// consumed from the left, rules A to E.
pub fn remove_dot_segments(input: &[u8]) -> Vec<u8> {
    let mut input = input.to_vec();
    let mut output: Vec<u8> = Vec::with_capacity(input.len());
    let drop_last_segment = |output: &mut Vec<u8>| {
        let cut = output.iter().rposition(|b| *b == b'/').unwrap_or(0);
        output.truncate(cut);
    };
    while !input.is_empty() {
        if input.starts_with(b"../") {
            input.drain(..3); // A
        } else if input.starts_with(b"./") {
            input.drain(..2); // A
        } else if input.starts_with(b"/./") {
            input.drain(..2); // B: "/./" -> "/"
        } else if input == b"/." {
            input = b"/".to_vec(); // B
        } else if input.starts_with(b"/../") {
            input.drain(..3); // C: "/../" -> "/"
            drop_last_segment(&mut output);
        } else if input == b"/.." {
            input = b"/".to_vec(); // C
            drop_last_segment(&mut output);
        } else if input == b"." || input == b".." {
            input.clear(); // D
        } else {
            // E: the first segment, with its leading "/" if any.
            let start = usize::from(input[0] == b'/');
            let end = input[start..]
                .iter()
                .position(|b| *b == b'/')
                .map_or(input.len(), |p| p + start);
            output.extend(input.drain(..end));
        }
    }
    output
}

/// Runs of `/` collapsed to one (nginx `merge_slashes on`).
pub fn merge_slashes(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    for &b in path {
        if !(b == b'/' && out.last() == Some(&b'/')) {
            out.push(b);
        }
    }
    out
}

/// Go's `http.ServeMux` `cleanPath` (and, for these inputs, nginx's own resolution):
/// `path.Clean` (merge slashes, resolve `.` and `..` lexically, never above `/`), keeping a
/// trailing slash. Applied to the fully percent-decoded path.
pub fn backend_clean(decoded: &[u8]) -> Vec<u8> {
    if decoded.is_empty() {
        return b"/".to_vec();
    }
    let mut p = decoded.to_vec();
    if p[0] != b'/' {
        p.insert(0, b'/');
    }
    // path.Clean: lexical processing, segment by segment.
    let mut stack: Vec<&[u8]> = Vec::new();
    for seg in p.split(|b| *b == b'/') {
        match seg {
            b"" | b"." => {}
            b".." => {
                stack.pop();
            }
            s => stack.push(s),
        }
    }
    let mut np = Vec::with_capacity(p.len());
    for s in &stack {
        np.push(b'/');
        np.extend_from_slice(s);
    }
    if np.is_empty() {
        np.push(b'/');
    }
    if p.last() == Some(&b'/') && np != b"/" {
        np.push(b'/');
    }
    np
}

/// What must be true of `Ok(p) = canonical_path(raw, opts)`.
pub fn check_ok(raw: &str, opts: &PathOptions, p: &str) -> Result<(), String> {
    let ctx = || format!("raw {raw:?} opts {opts:?} -> {p:?}");
    let b = p.as_bytes();
    if b.first() != Some(&b'/') {
        return Err(format!("does not start with '/': {}", ctx()));
    }
    for seg in p.split('/').skip(1) {
        if seg == "." || seg == ".." {
            return Err(format!("dot segment {seg:?} left: {}", ctx()));
        }
        if let Some(pos) = seg.find(';') {
            let before = &seg[..pos];
            if before == "." || before == ".." {
                return Err(format!("dot segment with parameters: {}", ctx()));
            }
        }
    }
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c < 0x20 || c == 0x7f {
            return Err(format!("control byte {c:#04x}: {}", ctx()));
        }
        if c == b'\\' {
            return Err(format!("raw backslash: {}", ctx()));
        }
        if c == b'%' {
            let (Some(&h), Some(&l)) = (b.get(i + 1), b.get(i + 2)) else {
                return Err(format!("truncated escape at {i}: {}", ctx()));
            };
            let upper = |x: u8| x.is_ascii_digit() || (b'A'..=b'F').contains(&x);
            if !upper(h) || !upper(l) {
                return Err(format!("escape not upper-case hex at {i}: {}", ctx()));
            }
            let v = hex(h).unwrap() << 4 | hex(l).unwrap();
            if is_unreserved(v) {
                return Err(format!(
                    "escaped unreserved {:?} at {i}: {}",
                    v as char,
                    ctx()
                ));
            }
            if v < 0x20 || v == 0x7f {
                return Err(format!("escaped control {v:#04x}: {}", ctx()));
            }
            if (v == b'/' || v == b'\\') && opts.escaped_slashes != EscapedSlashes::Keep {
                return Err(format!(
                    "escaped slash left under {:?}: {}",
                    opts.escaped_slashes,
                    ctx()
                ));
            }
            i += 3;
            continue;
        }
        if c != b'/' && !is_pchar(c) {
            return Err(format!(
                "byte {c:#04x} not allowed raw in a path: {}",
                ctx()
            ));
        }
        if c == b';' && opts.semicolons == Semicolons::Reject {
            return Err(format!("';' left under Reject: {}", ctx()));
        }
        i += 1;
    }
    if opts.merge_slashes && p.contains("//") {
        return Err(format!("'//' left with merge_slashes: {}", ctx()));
    }
    match canonical_path(p, opts) {
        Ok(again) if again == p => {}
        other => return Err(format!("not idempotent: again {other:?}: {}", ctx())),
    }
    // Meaning preserved: decoding both sides (a kept %2F as a placeholder, never a
    // separator), the output is RFC 3986 5.2.4 applied to the (merged) decoded input.
    let mode = Some(opts.escaped_slashes);
    let mut want = decode(raw.as_bytes(), mode);
    if opts.merge_slashes {
        want = merge_slashes(&want);
    }
    let want = remove_dot_segments(&want);
    let want = if want.is_empty() { b"/".to_vec() } else { want };
    let got = decode(b, mode);
    if got != want {
        return Err(format!(
            "decoded output {:?} is not RFC 3986 5.2.4 of the decoded input {:?}: {}",
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want),
            ctx()
        ));
    }
    // A backend that decodes every escape and cleans the path (Go ServeMux, nginx) must
    // land on the same path: the gateway decided on what the backend serves. Only when
    // slashes are merged and no escaped slash is kept (both relaxations are the route
    // owner's documented trade-off).
    if opts.merge_slashes && opts.escaped_slashes != EscapedSlashes::Keep {
        let decoded = decode(b, None);
        let cleaned = backend_clean(&decoded);
        if cleaned != decoded {
            return Err(format!(
                "a backend resolves {:?} to {:?}: {}",
                String::from_utf8_lossy(&decoded),
                String::from_utf8_lossy(&cleaned),
                ctx()
            ));
        }
    }
    Ok(())
}

/// Something in `raw` that the rules refuse under `opts`, if any: the reasons an `Err`
/// may be given, and the things an `Ok` must not have passed over.
pub fn refusable(raw: &str, opts: &PathOptions) -> Vec<TargetError> {
    let b = raw.as_bytes();
    let mut why = Vec::new();
    if b.first() != Some(&b'/') {
        why.push(TargetError::NotAbsolutePath);
    }
    let mut escaped_bytes = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            match (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) {
                (Some(h), Some(l)) => {
                    let v = h << 4 | l;
                    escaped_bytes.push(v);
                    if v < 0x20 || v == 0x7f {
                        why.push(TargetError::ControlCharacter);
                    }
                    if v == b';' && opts.semicolons == Semicolons::Reject {
                        why.push(TargetError::Semicolon);
                    }
                    if (v == b'/' || v == b'\\') && opts.escaped_slashes == EscapedSlashes::Reject {
                        why.push(TargetError::EscapedSlash);
                    }
                    i += 3;
                    continue;
                }
                _ => why.push(TargetError::InvalidEscape),
            }
        } else if c < 0x20 || c == 0x7f {
            why.push(TargetError::ControlCharacter);
        } else if c == b'\\' {
            why.push(TargetError::Backslash);
        } else if c == b';' && opts.semicolons == Semicolons::Reject {
            // (A dot segment with parameters is refused whatever the options say; that is
            // judged on the decoded segment: check_err lets any ';' justify it.)
            why.push(TargetError::Semicolon);
        }
        i += 1;
    }
    if std::str::from_utf8(&decode(b, None)).is_err() {
        why.push(TargetError::InvalidUtf8);
    }
    why
}

/// What must be true of `Err(e) = canonical_path(raw, opts)`: `raw` really holds something
/// the rules refuse, of that kind.
pub fn check_err(raw: &str, opts: &PathOptions, e: TargetError) -> Result<(), String> {
    let why = refusable(raw, opts);
    let justified = match e {
        // A dot segment with parameters (`..;x`) is refused in every mode.
        TargetError::Semicolon => {
            why.contains(&e) || raw.contains(';') || raw.to_ascii_uppercase().contains("%3B")
        }
        // Only Snapshot::canonical_target answers Ambiguous.
        TargetError::Ambiguous => false,
        _ => why.contains(&e),
    };
    if !justified {
        return Err(format!(
            "refused with {e:?} but the path holds nothing of that kind (found {why:?}): raw {raw:?} opts {opts:?}"
        ));
    }
    Ok(())
}

/// Runs `canonical_path` and every check on its answer. Returns the canonical path.
pub fn check_canonical_path(raw: &str, opts: &PathOptions) -> Result<Option<String>, String> {
    match canonical_path(raw, opts) {
        Ok(p) => {
            let why = refusable(raw, opts);
            if !why.is_empty() {
                return Err(format!(
                    "accepted {raw:?} under {opts:?} as {p:?} although it holds {why:?}"
                ));
            }
            check_ok(raw, opts, &p)?;
            Ok(Some(p.into_owned()))
        }
        Err(e) => {
            check_err(raw, opts, e)?;
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_5_2_4_examples() {
        assert_eq!(remove_dot_segments(b"/a/b/c/./../../g"), b"/a/g");
        assert_eq!(remove_dot_segments(b"mid/content=5/../6"), b"mid/6");
        assert_eq!(remove_dot_segments(b"/a/b/.."), b"/a/");
        assert_eq!(remove_dot_segments(b"/.."), b"/");
        assert_eq!(backend_clean(b"/a/../b/"), b"/b/");
        assert_eq!(backend_clean(b"//a"), b"/a");
    }
}
