//! The credentials a request carries, extracted once ([`Credentials`]), and the parsing of
//! each: `Authorization: Bearer` (RFC 6750 section 2.1), an API-key header, the DPoP
//! header, the TLS client certificate.

use http::{HeaderMap, HeaderName};

use crate::reason::DenyReason;

/// The values of one request header, as the proxy saw them. Its `Debug` form shows the
/// length of a value, never the value (it may be a credential).
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub enum HeaderField<'a> {
    /// Not sent.
    #[default]
    Absent,
    /// Exactly one value, raw bytes.
    One(&'a [u8]),
    /// More than one: always refused for a credential.
    Duplicated,
}

impl std::fmt::Debug for HeaderField<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderField::Absent => f.write_str("Absent"),
            HeaderField::One(v) => write!(f, "One(<{} bytes>)", v.len()),
            HeaderField::Duplicated => f.write_str("Duplicated"),
        }
    }
}

/// The `DPoP` request header (RFC 9449 section 4.1), as a constant so the per-request
/// lookup does not parse the name again.
pub const DPOP: HeaderName = HeaderName::from_static("dpop");

/// The `Authorization` header(s) of a request.
pub type AuthorizationHeader<'a> = HeaderField<'a>;

impl<'a> HeaderField<'a> {
    /// The values of `name` in `headers`.
    pub fn of(headers: &'a HeaderMap, name: impl http::header::AsHeaderName) -> Self {
        let mut values = headers.get_all(name).iter();
        match (values.next(), values.next()) {
            (None, _) => HeaderField::Absent,
            (Some(v), None) => HeaderField::One(v.as_bytes()),
            (Some(_), Some(_)) => HeaderField::Duplicated,
        }
    }

    /// Whether anything was sent.
    pub fn is_present(&self) -> bool {
        !matches!(self, HeaderField::Absent)
    }
}

/// Every credential a request carries, read once by the proxy before routing. Which one
/// counts is decided with the route's policy ([`crate::Snapshot::authorize`]): only the
/// API-key header that policy names is read, so another policy's header name never hides
/// or stands in for it; sending more than one credential the policy reads is refused
/// (RFC 6750 section 2: one method per request). Its `Debug` form shows no values.
#[derive(Clone, Copy, Default)]
pub struct Credentials<'a> {
    /// The `Authorization` header: `Bearer` with a JWT, an opaque token or an API key.
    pub authorization: HeaderField<'a>,
    /// An API-key header set explicitly (name in lower case, and value(s)); used when
    /// `headers` is not given.
    pub api_key: Option<(&'a str, HeaderField<'a>)>,
    /// The request's headers, where the route's policy looks up its own API-key header.
    pub headers: Option<&'a HeaderMap>,
    /// The `DPoP` header (RFC 9449), read for sender-constrained tokens.
    pub dpop: HeaderField<'a>,
    /// SHA-256 of the TLS client certificate (DER), when the client presented one: what an
    /// mTLS-bound token's `cnf.x5t#S256` names (RFC 8705 section 3.1).
    pub peer_certificate_sha256: Option<[u8; 32]>,
}

impl std::fmt::Debug for Credentials<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("authorization", &self.authorization)
            .field("api_key", &self.api_key)
            .field("headers", &self.headers.map(|h| h.len()))
            .field("dpop", &self.dpop)
            .field("peer_certificate", &self.peer_certificate_sha256.is_some())
            .finish()
    }
}

impl<'a> Credentials<'a> {
    /// Reads the credentials of a request: `Authorization` and `DPoP` now, an API-key
    /// header when the route's policy says which.
    pub fn from_headers(headers: &'a HeaderMap) -> Self {
        Self {
            authorization: HeaderField::of(headers, http::header::AUTHORIZATION),
            api_key: None,
            headers: Some(headers),
            dpop: HeaderField::of(headers, &DPOP),
            peer_certificate_sha256: None,
        }
    }

    /// The values of the API-key header `name` (lower case).
    pub(crate) fn api_key_header(&self, name: &HeaderName) -> HeaderField<'a> {
        match (self.headers, self.api_key) {
            (Some(h), _) => HeaderField::of(h, name),
            (None, Some((sent, field))) if sent.eq_ignore_ascii_case(name.as_str()) => field,
            _ => HeaderField::Absent,
        }
    }
}

/// Whether the query carries an `access_token` parameter (RFC 6750 section 2.3), which
/// Portcullis refuses: URLs end up in logs and Referer headers.
///
/// The name is read the way the servers behind a gateway read it, so no spelling slips
/// through: parameters separated by `&` or `;`; names percent-decoded (either hex case)
/// with `+` as a space (`application/x-www-form-urlencoded`); compared ASCII
/// case-insensitively; and folded the way PHP folds them (leading spaces dropped; ` `,
/// `.` and `[` read as `_`, so `access.token` and `access token` are `access_token`;
/// `access_token[...]` is an array named `access_token`). Allocation-free: the name is
/// decoded as it is compared.
pub(crate) fn query_has_token(query: &str) -> bool {
    query.split(['&', ';']).any(|pair| {
        let name = pair.split_once('=').map_or(pair, |(n, _)| n);
        name_is_access_token(name.as_bytes())
    })
}

/// See [`query_has_token`].
fn name_is_access_token(raw: &[u8]) -> bool {
    const NAME: &[u8] = b"access_token";
    let mut decoded = FormDecoded { raw }.skip_while(|b| *b == b' ');
    for want in NAME {
        let folded = match decoded.next() {
            Some(b' ' | b'.' | b'[') => b'_',
            Some(b) => b.to_ascii_lowercase(),
            None => return false,
        };
        if folded != *want {
            return false;
        }
    }
    matches!(decoded.next(), None | Some(b'['))
}

/// The bytes of a form-encoded name: `%XY` decoded (a `%` not followed by two hex digits
/// stands for itself), `+` read as a space.
struct FormDecoded<'a> {
    raw: &'a [u8],
}

impl Iterator for FormDecoded<'_> {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
        let (&b, rest) = self.raw.split_first()?;
        self.raw = rest;
        match b {
            b'+' => Some(b' '),
            b'%' => match rest {
                [h, l, tail @ ..] if hex(*h).is_some() && hex(*l).is_some() => {
                    self.raw = tail;
                    Some(hex(*h)? << 4 | hex(*l)?)
                }
                _ => Some(b'%'),
            },
            _ => Some(b),
        }
    }
}

/// The scheme an access token was sent under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenScheme {
    /// `Authorization: Bearer` (RFC 6750).
    Bearer,
    /// `Authorization: DPoP` (RFC 9449 section 7.1), with a `DPoP` proof header.
    Dpop,
}

/// The scheme of an `Authorization` header that [`bearer_token`] accepts.
pub fn token_scheme(h: AuthorizationHeader<'_>) -> Option<TokenScheme> {
    let AuthorizationHeader::One(raw) = h else {
        return None;
    };
    let sp = raw.iter().position(|b| *b == b' ')?;
    if raw[..sp].eq_ignore_ascii_case(b"bearer") {
        Some(TokenScheme::Bearer)
    } else if raw[..sp].eq_ignore_ascii_case(b"dpop") {
        Some(TokenScheme::Dpop)
    } else {
        None
    }
}

/// Extracts the token from `Authorization: Bearer <token>` or `Authorization: DPoP
/// <token>` (schemes case-insensitive), checking it is a well-formed `b64token` (RFC 6750
/// section 2.1, RFC 9449 section 7.1).
pub fn bearer_token(h: AuthorizationHeader<'_>) -> Result<&str, DenyReason> {
    let raw = match h {
        AuthorizationHeader::Absent => return Err(DenyReason::MissingToken),
        AuthorizationHeader::Duplicated => return Err(DenyReason::DuplicateHeader),
        AuthorizationHeader::One(raw) => raw,
    };
    let Some(sp) = raw.iter().position(|b| *b == b' ') else {
        return Err(
            if raw.eq_ignore_ascii_case(b"bearer") || raw.eq_ignore_ascii_case(b"dpop") {
                DenyReason::MalformedHeader
            } else {
                DenyReason::UnsupportedScheme
            },
        );
    };
    if !raw[..sp].eq_ignore_ascii_case(b"bearer") && !raw[..sp].eq_ignore_ascii_case(b"dpop") {
        return Err(DenyReason::UnsupportedScheme);
    }
    // RFC 7235 section 2.1: one or more SP, and nothing else, separate scheme and token.
    let skip = raw[sp..].iter().take_while(|b| **b == b' ').count();
    let token = &raw[sp + skip..];
    // b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
    let padding = token.iter().rev().take_while(|b| **b == b'=').count();
    let body = &token[..token.len() - padding];
    // Every byte of every token passes here, cached or not: a fold without early exit, so
    // the compiler vectorizes it (a per-byte `all` with a set lookup cost about 1 µs for a
    // typical RS256 token, more than the SHA-256 that follows).
    let valid = !body.is_empty() && body.iter().fold(true, |ok, &b| ok & is_b64token_char(b));
    if !valid {
        return Err(DenyReason::MalformedHeader);
    }
    std::str::from_utf8(token).map_err(|_| DenyReason::MalformedHeader)
}

/// Whether `b` may appear in a `b64token` before its `=` padding (RFC 6750 section 2.1).
#[inline(always)]
fn is_b64token_char(b: u8) -> bool {
    // Branch-free: `b | 0x20` folds A-Z onto a-z and maps no other byte into a-z.
    ((b | 0x20).wrapping_sub(b'a') < 26)
        | (b.wrapping_sub(b'0') < 10)
        | (b == b'-')
        | (b == b'.')
        | (b == b'_')
        | (b == b'~')
        | (b == b'+')
        | (b == b'/')
}
