//! `bearer_token`: the credential syntax of RFC 6750 section 2.1,
//! `credentials = "Bearer" 1*SP b64token`, with
//! `b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`, and the same
//! with the scheme `DPoP` (RFC 9449 section 7.1).
//!
//! Input: the raw `Authorization` header value (any bytes).
//!
//! Invariants: on Ok(t): t is non-empty, b64token characters then only `=` padding, is
//! the tail of the header, and the header is a case-insensitive `Bearer` or `DPoP`, then only spaces
//! (1*SP, RFC 7235 section 2.1; no tab or other whitespace) before t. The verdict (Ok or
//! which error) equals an independent model of the grammar.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_policy::{AuthorizationHeader, DenyReason, bearer_token};

fn is_b64token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)
}

/// The grammar, written plainly.
fn model(h: &[u8]) -> Result<&[u8], DenyReason> {
    let scheme = |s: &[u8]| s.eq_ignore_ascii_case(b"bearer") || s.eq_ignore_ascii_case(b"dpop");
    let Some(sp) = h.iter().position(|b| *b == b' ') else {
        return Err(if scheme(h) {
            DenyReason::MalformedHeader
        } else {
            DenyReason::UnsupportedScheme
        });
    };
    if !scheme(&h[..sp]) {
        return Err(DenyReason::UnsupportedScheme);
    }
    let mut rest = &h[sp..];
    while let [first, tail @ ..] = rest {
        if *first == b' ' {
            rest = tail;
        } else {
            break;
        }
    }
    let body_len = rest.len() - rest.iter().rev().take_while(|b| **b == b'=').count();
    if body_len == 0 || !rest[..body_len].iter().all(|b| is_b64token_char(*b)) {
        return Err(DenyReason::MalformedHeader);
    }
    Ok(rest)
}

fuzz_target!(|data: &[u8]| {
    let got = bearer_token(AuthorizationHeader::One(data));
    let want = model(data);
    match (&got, &want) {
        (Ok(t), Ok(w)) => assert_eq!(t.as_bytes(), *w, "header {data:?}"),
        (Err(a), Err(b)) => assert_eq!(a, b, "header {data:?}"),
        _ => panic!("bearer_token {got:?} but the grammar says {want:?} for {data:?}"),
    }
    if let Ok(t) = got {
        let tb = t.as_bytes();
        assert!(!tb.is_empty());
        let pad = tb.iter().rev().take_while(|b| **b == b'=').count();
        assert!(pad < tb.len(), "only padding: {t:?}");
        assert!(
            tb[..tb.len() - pad].iter().all(|b| is_b64token_char(*b)),
            "{t:?}"
        );
        let n = if data.len() >= 7 && data[..6].eq_ignore_ascii_case(b"bearer") {
            6
        } else {
            assert!(data.len() >= 5 && data[..4].eq_ignore_ascii_case(b"dpop"));
            4
        };
        assert_eq!(data[n], b' ');
        assert!(data.ends_with(tb));
        let between = &data[n + 1..data.len() - tb.len()];
        assert!(between.iter().all(|b| *b == b' '), "{data:?}");
    }
    // The other header states.
    assert_eq!(
        bearer_token(AuthorizationHeader::Absent),
        Err(DenyReason::MissingToken)
    );
    assert_eq!(
        bearer_token(AuthorizationHeader::Duplicated),
        Err(DenyReason::DuplicateHeader)
    );
});
