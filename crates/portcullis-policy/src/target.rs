//! The canonical request target: one normalizer, run once, whose output is both the path
//! the route index decides on and the path the upstream receives.
//!
//! ```text
//!  raw path ──▶ canonical_path(raw, options) ──▶ RouteIndex::lookup ──▶ authorize
//!                         │                                                │
//!                         └──────────── the same string ───────────────────┴──▶ upstream
//! ```
//!
//! The rules, in order (RFC 3986 section 6.2.2, syntax-based normalization):
//! - the path must start with `/` (origin form, RFC 9112 section 3.2.1);
//! - raw control characters, NUL and `\` are refused; `%` must be followed by two hex
//!   digits;
//! - percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded
//!   (section 6.2.2.2), every other escape keeps its encoding with upper-case hex
//!   (section 6.2.2.1); characters RFC 3986 does not allow in a path (`"`, `<`, `{`, a
//!   space, bytes above 0x7F, ...) are percent-encoded;
//! - decoded NUL or control characters, and escapes whose bytes are not UTF-8, are refused;
//! - `%2F` and `%5C` (an encoded `/` or `\`) are refused, kept as they are, or decoded to
//!   `/`, as [`EscapedSlashes`] says;
//! - a `;` (path parameters, which Tomcat and Spring strip before routing) is refused or
//!   kept, as [`Semicolons`] says; a dot segment with parameters (`..;x`) is always refused;
//! - repeated slashes are merged unless [`PathOptions::merge_slashes`] is off;
//! - dot segments (`.`, `..`, including their encoded forms, which the decoding above
//!   turns into plain dots) are removed (section 5.2.4); `..` never climbs above `/`.
//!
//! Matching stays case-sensitive: `/Admin` is not `/admin`.

use std::borrow::Cow;

/// What to do with `%2F` and `%5C` (an encoded `/` or `\`) in a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum EscapedSlashes {
    /// Answer 400 (the default, like Envoy's `REJECT_REQUEST`): backends disagree on
    /// whether `%2F` separates segments, so the gateway cannot know what they will serve.
    #[default]
    Reject,
    /// Keep the escape (upper-case hex): it is part of a segment, never a separator.
    Keep,
    /// Decode both to `/`, then normalize (merge, dot segments) as any other slash.
    Decode,
}

/// What to do with `;` in a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Semicolons {
    /// Answer 400 (the default): Tomcat and Spring strip `;params` from each segment
    /// before routing, so `/admin;x/y` would reach their `/admin/y`.
    #[default]
    Reject,
    /// Keep `;` as an ordinary character of the segment.
    Keep,
}

/// How paths are normalized. A route may relax the defaults; see
/// [`crate::Snapshot::canonical_target`] for how a per-route choice is made safely.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PathOptions {
    /// Merge repeated slashes (`//`) into one (default on).
    pub merge_slashes: bool,
    /// `%2F` and `%5C`.
    pub escaped_slashes: EscapedSlashes,
    /// `;` in a segment.
    pub semicolons: Semicolons,
}

impl Default for PathOptions {
    fn default() -> Self {
        Self {
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::Reject,
            semicolons: Semicolons::Reject,
        }
    }
}

impl PathOptions {
    /// The options of the first, route-finding pass: everything kept that some route may
    /// keep, so the pass itself refuses only what every route refuses.
    pub(crate) const LENIENT: PathOptions = PathOptions {
        merge_slashes: true,
        escaped_slashes: EscapedSlashes::Keep,
        semicolons: Semicolons::Keep,
    };
}

/// Why a request target was refused (400 Bad Request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    /// The path does not start with `/` (asterisk form, or garbage).
    #[error("the request path must start with /")]
    NotAbsolutePath,
    /// A raw or percent-encoded control character or NUL.
    #[error("the request path contains a control character or NUL")]
    ControlCharacter,
    /// A `%` not followed by two hex digits.
    #[error("the request path contains an invalid percent-escape")]
    InvalidEscape,
    /// Percent-escapes that do not decode to UTF-8.
    #[error("the request path does not decode to UTF-8")]
    InvalidUtf8,
    /// `%2F` or `%5C`, refused by the route's `escapedSlashes`.
    #[error("the request path contains an encoded slash (%2F or %5C)")]
    EscapedSlash,
    /// A raw `\`.
    #[error("the request path contains a backslash")]
    Backslash,
    /// A `;`, refused by the route's `semicolons`, or a dot segment with parameters.
    #[error("the request path contains path parameters (;)")]
    Semicolon,
    /// The route found with one normalization asks for another, which leads to a route
    /// that asks for yet another: no single path can be authorized.
    #[error("the request path normalizes differently for the routes it could match")]
    Ambiguous,
}

impl TargetError {
    /// A stable snake_case label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetError::NotAbsolutePath => "path_not_absolute",
            TargetError::ControlCharacter => "path_control_character",
            TargetError::InvalidEscape => "path_invalid_escape",
            TargetError::InvalidUtf8 => "path_invalid_utf8",
            TargetError::EscapedSlash => "path_escaped_slash",
            TargetError::Backslash => "path_backslash",
            TargetError::Semicolon => "path_semicolon",
            TargetError::Ambiguous => "path_ambiguous",
        }
    }
}

/// Whether a byte is RFC 3986 `unreserved` or `sub-delims` (sections 2.3 and 2.2): what a
/// path segment (`pchar`) and a host (`reg-name`) have in common.
#[inline]
pub fn is_unreserved_or_sub_delim(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
        )
}

/// Whether a byte may stand for itself in a canonical path segment (RFC 3986 `pchar`
/// without `%`): unreserved, sub-delims, `:` and `@`.
#[inline]
fn is_pchar(b: u8) -> bool {
    is_unreserved_or_sub_delim(b) || matches!(b, b':' | b'@')
}

#[inline]
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Whether `raw` is already canonical under `opts`, checked without allocating: the hot
/// path for ordinary requests.
fn is_canonical(raw: &[u8], opts: &PathOptions) -> bool {
    if raw.first() != Some(&b'/') {
        return false;
    }
    let mut prev = b'/';
    let mut seg_start = 0;
    for (i, &b) in raw.iter().enumerate() {
        match b {
            b'/' => {
                if prev == b'/' && i > 0 && opts.merge_slashes {
                    return false;
                }
                if i > 0 && is_dot_segment(&raw[seg_start..i]) {
                    return false;
                }
                seg_start = i + 1;
            }
            b'%' | b';' => return false,
            _ if !is_pchar(b) => return false,
            _ => {}
        }
        prev = b;
    }
    !is_dot_segment(&raw[seg_start..])
}

fn is_dot_segment(seg: &[u8]) -> bool {
    seg == b"." || seg == b".."
}

/// Normalizes a request path (without its query) as the module documentation says.
/// Borrows `raw` when it is already canonical.
pub fn canonical_path<'a>(raw: &'a str, opts: &PathOptions) -> Result<Cow<'a, str>, TargetError> {
    let bytes = raw.as_bytes();
    if is_canonical(bytes, opts) {
        return Ok(Cow::Borrowed(raw));
    }
    if bytes.first() != Some(&b'/') {
        return Err(TargetError::NotAbsolutePath);
    }
    // Pass 1: decode, re-encode and validate, segment by segment (a decoded slash starts a
    // new segment, exactly as a raw one).
    let mut segments: Vec<String> = Vec::new();
    let mut current = String::new();
    // The fully decoded bytes, to check that escapes form UTF-8.
    let mut decoded: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut i = 1;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'/' => {
                segments.push(std::mem::take(&mut current));
                decoded.push(b'/');
                i += 1;
            }
            b'%' => {
                let (Some(h), Some(l)) = (
                    bytes.get(i + 1).copied().and_then(hex_value),
                    bytes.get(i + 2).copied().and_then(hex_value),
                ) else {
                    return Err(TargetError::InvalidEscape);
                };
                let v = h << 4 | l;
                i += 3;
                if v < 0x20 || v == 0x7f {
                    return Err(TargetError::ControlCharacter);
                }
                if v == b';' && opts.semicolons == Semicolons::Reject {
                    // Spring's StrictHttpFirewall refuses `%3B` too: some stacks decode
                    // before they strip parameters.
                    return Err(TargetError::Semicolon);
                }
                if v == b'/' || v == b'\\' {
                    match opts.escaped_slashes {
                        EscapedSlashes::Reject => return Err(TargetError::EscapedSlash),
                        EscapedSlashes::Decode => {
                            segments.push(std::mem::take(&mut current));
                            decoded.push(b'/');
                            continue;
                        }
                        EscapedSlashes::Keep => {}
                    }
                }
                decoded.push(v);
                if is_unreserved(v) {
                    current.push(v as char);
                } else {
                    current.push('%');
                    current.push(HEX[usize::from(v >> 4)] as char);
                    current.push(HEX[usize::from(v & 0xf)] as char);
                }
            }
            b'\\' => return Err(TargetError::Backslash),
            _ if b < 0x20 || b == 0x7f => return Err(TargetError::ControlCharacter),
            _ => {
                decoded.push(b);
                if is_pchar(b) {
                    current.push(b as char);
                } else {
                    current.push('%');
                    current.push(HEX[usize::from(b >> 4)] as char);
                    current.push(HEX[usize::from(b & 0xf)] as char);
                }
                i += 1;
            }
        }
    }
    segments.push(current);
    if std::str::from_utf8(&decoded).is_err() {
        return Err(TargetError::InvalidUtf8);
    }

    // Pass 2: path parameters, then dot segments and empty segments (RFC 3986 5.2.4).
    let last = segments.len() - 1;
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    for (n, seg) in segments.iter().enumerate() {
        if seg.contains(';') {
            // `..;x` is `..` to Tomcat: never a segment of its own.
            let before = &seg[..seg.find(';').unwrap_or(seg.len())];
            if before == "." || before == ".." || opts.semicolons == Semicolons::Reject {
                return Err(TargetError::Semicolon);
            }
        }
        let is_last = n == last;
        match seg.as_str() {
            "." => {}
            ".." => {
                out.pop();
            }
            "" if opts.merge_slashes && !is_last => continue,
            s => {
                out.push(s);
                continue;
            }
        }
        // A dot segment at the end leaves a trailing slash: `/a/b/..` is `/a/`.
        if is_last {
            out.push("");
        }
    }
    let mut path = String::with_capacity(raw.len());
    for seg in &out {
        path.push('/');
        path.push_str(seg);
    }
    if path.is_empty() {
        path.push('/');
    }
    Ok(Cow::Owned(path))
}

/// What a Tomcat/Spring-style backend makes of a path: each segment's `;params` removed
/// (`/a;x/b;y` is `/a/b`).
pub(crate) fn strip_path_parameters(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(seg.split(';').next().unwrap_or(""));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(raw: &str) -> Result<String, TargetError> {
        canonical_path(raw, &PathOptions::default()).map(Cow::into_owned)
    }

    #[test]
    fn rfc3986_5_2_4_dot_segments() {
        assert_eq!(canon("/a/b/c/./../../g").unwrap(), "/a/g");
        assert_eq!(canon("/mid/content=5/../6").unwrap(), "/mid/6");
        assert_eq!(canon("/public/../admin/x").unwrap(), "/admin/x");
        assert_eq!(canon("/..").unwrap(), "/");
        assert_eq!(canon("/../../admin").unwrap(), "/admin");
        assert_eq!(canon("/a/..").unwrap(), "/");
        assert_eq!(canon("/a/.").unwrap(), "/a/");
        assert_eq!(canon("/a/b/..").unwrap(), "/a/");
        assert_eq!(canon("/.").unwrap(), "/");
        assert_eq!(canon("/").unwrap(), "/");
        assert_eq!(canon("/a/...").unwrap(), "/a/...");
        assert_eq!(canon("/a/.b/..c").unwrap(), "/a/.b/..c");
    }

    #[test]
    fn rfc3986_6_2_2_encoded_dots_are_dots() {
        for raw in [
            "/public/%2e%2e/admin/x",
            "/public/%2E%2E/admin/x",
            "/public/.%2e/admin/x",
            "/public/%2e./admin/x",
            "/public/./../admin/x",
            "/public/%2e/%2e%2e/admin/x",
        ] {
            assert_eq!(canon(raw).unwrap(), "/admin/x", "{raw}");
        }
    }

    #[test]
    fn rfc3986_6_2_2_1_and_6_2_2_2_case_and_unreserved() {
        assert_eq!(canon("/%61dmin").unwrap(), "/admin");
        assert_eq!(canon("/caf%c3%a9").unwrap(), "/caf%C3%A9");
        assert_eq!(canon("/a%7e").unwrap(), "/a~");
        assert_eq!(canon("/a%3f").unwrap(), "/a%3F");
        assert_eq!(canon("/a%25").unwrap(), "/a%25");
        assert_eq!(canon("/a b").unwrap(), "/a%20b");
        assert_eq!(canon("/{x}").unwrap(), "/%7Bx%7D");
    }

    #[test]
    fn refused_targets() {
        assert_eq!(canon("*"), Err(TargetError::NotAbsolutePath));
        assert_eq!(canon("admin"), Err(TargetError::NotAbsolutePath));
        assert_eq!(canon(""), Err(TargetError::NotAbsolutePath));
        assert_eq!(canon("/a%00/../b"), Err(TargetError::ControlCharacter));
        assert_eq!(
            canon("/public/%00../admin"),
            Err(TargetError::ControlCharacter)
        );
        assert_eq!(canon("/a%0a"), Err(TargetError::ControlCharacter));
        assert_eq!(canon("/a\u{1}"), Err(TargetError::ControlCharacter));
        assert_eq!(canon("/a%zz"), Err(TargetError::InvalidEscape));
        assert_eq!(canon("/a%2"), Err(TargetError::InvalidEscape));
        assert_eq!(canon("/a%c3"), Err(TargetError::InvalidUtf8));
        assert_eq!(canon("/a%ff%fe"), Err(TargetError::InvalidUtf8));
        assert_eq!(canon("/public/..%2Fadmin"), Err(TargetError::EscapedSlash));
        assert_eq!(canon("/public/..%2fadmin"), Err(TargetError::EscapedSlash));
        assert_eq!(canon("/public/..%5Cadmin"), Err(TargetError::EscapedSlash));
        assert_eq!(canon("/public\\..\\admin"), Err(TargetError::Backslash));
        assert_eq!(canon("/public/..;/admin"), Err(TargetError::Semicolon));
        assert_eq!(canon("/admin;x/y"), Err(TargetError::Semicolon));
        assert_eq!(canon("/admin%3bx/y"), Err(TargetError::Semicolon));
    }

    #[test]
    fn slashes_merge_unless_told_not_to() {
        assert_eq!(canon("//admin").unwrap(), "/admin");
        assert_eq!(canon("/a//b///c/").unwrap(), "/a/b/c/");
        assert_eq!(canon("/public//../admin").unwrap(), "/admin");
        let keep = PathOptions {
            merge_slashes: false,
            ..PathOptions::default()
        };
        assert_eq!(canonical_path("/a//b", &keep).unwrap(), "/a//b");
        // RFC 3986 5.2.4 on the unmerged path: `..` removes the empty segment.
        assert_eq!(canonical_path("/a//..", &keep).unwrap(), "/a/");
    }

    #[test]
    fn escaped_slash_actions() {
        let keep = PathOptions {
            escaped_slashes: EscapedSlashes::Keep,
            ..PathOptions::default()
        };
        assert_eq!(
            canonical_path("/files/a%2fb/..%2Fc", &keep).unwrap(),
            "/files/a%2Fb/..%2Fc"
        );
        let decode = PathOptions {
            escaped_slashes: EscapedSlashes::Decode,
            ..PathOptions::default()
        };
        assert_eq!(
            canonical_path("/public/..%2Fadmin", &decode).unwrap(),
            "/admin"
        );
        assert_eq!(canonical_path("/a%5c..%5cb", &decode).unwrap(), "/b");
    }

    #[test]
    fn semicolons_kept_when_allowed_but_never_on_dot_segments() {
        let keep = PathOptions {
            semicolons: Semicolons::Keep,
            ..PathOptions::default()
        };
        assert_eq!(canonical_path("/a;v=1/b", &keep).unwrap(), "/a;v=1/b");
        assert_eq!(
            canonical_path("/a/..;/b", &keep),
            Err(TargetError::Semicolon)
        );
        assert_eq!(
            canonical_path("/a/.;x/b", &keep),
            Err(TargetError::Semicolon)
        );
    }

    #[test]
    fn canonical_paths_are_borrowed() {
        for raw in ["/", "/orders/1", "/a/b.json", "/x-y_z~", "/a:b@c!$&'()*+,="] {
            assert!(matches!(
                canonical_path(raw, &PathOptions::default()),
                Ok(Cow::Borrowed(_))
            ));
        }
    }
}
