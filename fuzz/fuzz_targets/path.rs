//! `canonical_path`: the one path normalizer (RFC 3986 6.2.2 + 5.2.4).
//!
//! Input: one byte of options (bit 0 set: do NOT merge slashes; bits 1-2 mod 3: escaped
//! slashes Reject/Keep/Decode; bit 3: keep semicolons), then the raw path (lossy UTF-8).
//! A first byte of 0x00 is the default options.
//!
//! Invariants (fuzz/src/paths.rs): on Ok(p): starts with '/', no `.`/`..` segment, no
//! control character, NUL or raw `\`, every `%` followed by two upper-case hex digits, no
//! escaped unreserved character, no `//` when merging, no escaped slash unless kept, no `;`
//! unless kept; idempotent; the decoded output is RFC 3986 5.2.4 of the decoded input; a
//! backend that decodes and cleans the path (Go ServeMux, nginx) lands on the same path.
//! On Err(e): the raw path holds something of kind `e`; on Ok, nothing refusable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_fuzz::{ensure, paths};
use portcullis_policy::{EscapedSlashes, PathOptions, Semicolons};

pub fn options(b: u8) -> PathOptions {
    PathOptions {
        merge_slashes: b & 1 == 0,
        escaped_slashes: match (b >> 1) % 3 {
            0 => EscapedSlashes::Reject,
            1 => EscapedSlashes::Keep,
            _ => EscapedSlashes::Decode,
        },
        semicolons: if b & 8 == 0 {
            Semicolons::Reject
        } else {
            Semicolons::Keep
        },
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let opts = options(first);
    let raw = String::from_utf8_lossy(rest);
    ensure(paths::check_canonical_path(&raw, &opts).map(drop));
    // The default options too, whatever the byte said: the path every route gets unless
    // it relaxes them.
    if opts != PathOptions::default() {
        ensure(paths::check_canonical_path(&raw, &PathOptions::default()).map(drop));
    }
});
