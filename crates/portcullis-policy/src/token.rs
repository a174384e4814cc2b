//! Tokens: their SHA-256 (the only form in which they are kept), their log fingerprint,
//! strict parsing of the compact JWS form, and the verified result.

use std::fmt;

use base64::Engine;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::reason::DenyReason;

/// The SHA-256 of a token: cache key and `tokenSha256` revocation key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenDigest(pub [u8; 32]);

impl TokenDigest {
    /// Lowercase hex, as `tokenSha256` revocations carry it.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The short fingerprint for logs.
    pub fn fingerprint(&self) -> Fingerprint {
        let mut b = [0u8; 6];
        b.copy_from_slice(&self.0[..6]);
        Fingerprint(b)
    }
}

impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenDigest({})", self.fingerprint())
    }
}

/// SHA-256 of a token.
pub fn token_digest(token: &str) -> TokenDigest {
    TokenDigest(Sha256::digest(token.as_bytes()).into())
}

/// The first 48 bits of a token's SHA-256, printed `sha256:0123456789ab`: enough to tell
/// tokens apart in logs, useless for replaying them.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 6]);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A compact JWS split and decoded, not yet verified.
#[derive(Debug)]
pub(crate) struct ParsedJws<'t> {
    pub(crate) alg: jsonwebtoken::Algorithm,
    pub(crate) kid: Option<String>,
    /// The `typ` header (RFC 7515 section 4.1.9), as written.
    pub(crate) typ: Option<String>,
    /// `header.payload`, the signed bytes.
    pub(crate) signing_input: &'t str,
    /// The signature segment, base64url.
    pub(crate) signature: &'t str,
    pub(crate) claims: Map<String, Value>,
}

const MAX_SEGMENT: usize = 64 * 1024;

/// Splits and decodes a compact JWS, refusing anything unusual: JWE, `alg: none`,
/// unknown algorithms, `crit`, bad base64, duplicate members, non-object JSON.
pub(crate) fn parse_jws(token: &str) -> Result<ParsedJws<'_>, DenyReason> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(DenyReason::MalformedToken);
    };
    let extra = parts.count();
    if extra == 2 {
        return Err(DenyReason::EncryptedToken);
    }
    if extra != 0 || h.is_empty() || p.is_empty() || s.is_empty() {
        return Err(DenyReason::MalformedToken);
    }
    if h.len() > MAX_SEGMENT || p.len() > MAX_SEGMENT {
        return Err(DenyReason::TokenTooLarge);
    }
    let header = decode_object(h)?;
    if header.contains_key("enc") {
        return Err(DenyReason::EncryptedToken);
    }
    let alg = match header.get("alg") {
        Some(Value::String(a)) => a.as_str(),
        _ => return Err(DenyReason::MalformedToken),
    };
    if alg.eq_ignore_ascii_case("none") {
        return Err(DenyReason::AlgorithmNone);
    }
    let alg = crate::keys::parse_algorithm(alg).ok_or(DenyReason::AlgorithmNotAllowed)?;
    if header.contains_key("crit") {
        return Err(DenyReason::CriticalHeader);
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(DenyReason::MalformedToken),
    };
    let typ = match header.get("typ") {
        None => None,
        Some(Value::String(t)) => Some(t.clone()),
        Some(_) => return Err(DenyReason::MalformedToken),
    };
    let claims = decode_object(p)?;
    Ok(ParsedJws {
        alg,
        kid,
        typ,
        signing_input: &token[..h.len() + 1 + p.len()],
        signature: s,
        claims,
    })
}

pub(crate) fn decode_object(segment: &str) -> Result<Map<String, Value>, DenyReason> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| DenyReason::MalformedToken)?;
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    let UniqueObject(map) =
        UniqueObject::deserialize(&mut de).map_err(|_| DenyReason::MalformedToken)?;
    de.end().map_err(|_| DenyReason::MalformedToken)?;
    Ok(map)
}

/// A JSON object whose top-level members are unique: a token saying `"sub"` twice is
/// ambiguous (which one did the issuer mean?) and is refused.
struct UniqueObject(Map<String, Value>);

impl<'de> serde::Deserialize<'de> for UniqueObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = UniqueObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object with unique members")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<UniqueObject, A::Error> {
                let mut map = Map::new();
                while let Some((k, v)) = access.next_entry::<String, Value>()? {
                    if map.contains_key(&k) {
                        return Err(de::Error::custom(format_args!("duplicate member {k:?}")));
                    }
                    map.insert(k, v);
                }
                Ok(UniqueObject(map))
            }
        }
        d.deserialize_map(V)
    }
}

/// Reads a NumericDate claim: absent is `Ok(None)`, a non-number is malformed.
pub(crate) fn numeric_date(
    claims: &Map<String, Value>,
    name: &str,
) -> Result<Option<i64>, DenyReason> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                Ok(Some(i))
            } else if let Some(f) = n.as_f64().filter(|f| f.is_finite() && f.abs() < 1e15) {
                Ok(Some(f.floor() as i64))
            } else {
                Err(DenyReason::MalformedToken)
            }
        }
        Some(_) => Err(DenyReason::MalformedToken),
    }
}

/// Reads an optional string claim: a non-string is malformed.
pub(crate) fn string_claim<'c>(
    claims: &'c Map<String, Value>,
    name: &str,
) -> Result<Option<&'c str>, DenyReason> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(DenyReason::MalformedToken),
    }
}

// === Explicit typing ===

/// `typ` values never accepted as access tokens, whatever a policy says: OpenID
/// Back-Channel Logout tokens (section 2.4), Security Event Tokens (RFC 8417 section
/// 2.3) and DPoP proofs (RFC 9449 section 4.2). Lowercase, without `application/`.
pub(crate) const NEVER_ACCEPTED_TYPES: &[&str] = &["logout+jwt", "secevent+jwt", "dpop+jwt"];

/// The `typ` values accepted when a policy names none (RFC 9068 section 2.1 types access
/// tokens `at+jwt`; most issuers write `JWT`).
pub(crate) const DEFAULT_ACCEPTED_TYPES: &[&str] = &["jwt", "at+jwt"];

/// Payload `typ` claims of tokens that are not access tokens (Keycloak's ID, logout,
/// refresh and offline-refresh tokens), compared case-insensitively.
const NON_ACCESS_TYP_CLAIMS: &[&str] = &["id", "logout", "refresh", "offline"];

/// A media type as JOSE compares it (RFC 7515 section 4.1.9): without an `application/`
/// prefix; callers compare the result ASCII-case-insensitively.
pub(crate) fn media_type_name(typ: &str) -> &str {
    const PREFIX: &[u8] = b"application/";
    let b = typ.as_bytes();
    if b.len() >= PREFIX.len() && b[..PREFIX.len()].eq_ignore_ascii_case(PREFIX) {
        // The prefix is ASCII, so this is a char boundary.
        &typ[PREFIX.len()..]
    } else {
        typ
    }
}

/// Explicit typing (RFC 8725 section 3.11): whether a signed token is meant to be an
/// access token. `accepted` holds lowercase names without `application/`. Refuses, with
/// [`DenyReason::WrongTokenType`]: a `typ` header not in `accepted` or never accepted; no
/// `typ` when `require`; an `events` claim (a Security Event Token, RFC 8417 section 2.2,
/// or a Back-Channel Logout token, OpenID Back-Channel Logout 1.0 section 2.4, whatever
/// its `typ`); a `typ` claim naming an ID, logout or refresh token.
pub(crate) fn check_type(
    typ: Option<&str>,
    claims: &Map<String, Value>,
    accepted: &[Box<str>],
    require: bool,
) -> Result<(), DenyReason> {
    match typ {
        None if require => return Err(DenyReason::WrongTokenType),
        None => {}
        Some(t) => {
            let t = media_type_name(t);
            if NEVER_ACCEPTED_TYPES
                .iter()
                .any(|n| n.eq_ignore_ascii_case(t))
                || !accepted.iter().any(|a| a.eq_ignore_ascii_case(t))
            {
                return Err(DenyReason::WrongTokenType);
            }
        }
    }
    if claims.contains_key("events") {
        return Err(DenyReason::WrongTokenType);
    }
    if let Some(Value::String(t)) = claims.get("typ")
        && NON_ACCESS_TYP_CLAIMS
            .iter()
            .any(|n| n.eq_ignore_ascii_case(t))
    {
        return Err(DenyReason::WrongTokenType);
    }
    Ok(())
}

// === Equivalent encodings ===

/// The order `n` of the P-256 group (SEC 2 section 2.4.2), big-endian.
const P256_ORDER: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// The order `n` of the P-384 group (SEC 2 section 2.5.1), big-endian.
const P384_ORDER: [u8; 48] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xc7, 0x63, 0x4d, 0x81, 0xf4, 0x37, 0x2d, 0xdf,
    0x58, 0x1a, 0x0d, 0xb2, 0x48, 0xb0, 0xa7, 0x7a, 0xec, 0xec, 0x19, 0x6a, 0xcc, 0xc5, 0x29, 0x73,
];

/// The SHA-256 of the other valid encodings of a verified compact JWS (`signing_input`
/// `.` `signature`), for [`VerifiedToken::equivalent_digests`].
///
/// ECDSA (RFC 7518 section 3.4): `(r, s)` and `(r, n - s)` verify alike, so an ES256 or
/// ES384 token has exactly one twin. Nothing else has one with aws-lc-rs behind
/// jsonwebtoken 12: RSA signatures (PKCS#1 v1.5 and PSS) must be exactly the modulus
/// length and below the modulus, so `s` is the one preimage; Ed25519 refuses `S >= L`
/// and recomputes `R`; HMAC compares the whole tag; and base64url is decoded strictly
/// (no padding, no non-zero trailing bits), so each signature has one spelling. The
/// tests in `tests/meaning.rs` hold each of these to it.
pub(crate) fn equivalent_digests(
    alg: jsonwebtoken::Algorithm,
    signing_input: &str,
    signature: &str,
) -> Box<[TokenDigest]> {
    let order: &[u8] = match alg {
        jsonwebtoken::Algorithm::ES256 => &P256_ORDER,
        jsonwebtoken::Algorithm::ES384 => &P384_ORDER,
        _ => return Box::default(),
    };
    let size = order.len();
    // r || s, fixed size (RFC 7518 section 3.4); at most 96 bytes.
    let mut sig = [0u8; 96];
    match base64::engine::general_purpose::URL_SAFE_NO_PAD.decode_slice(signature, &mut sig) {
        Ok(len) if len == 2 * size => {}
        _ => return Box::default(),
    }
    let s = &mut sig[size..2 * size];
    // A verified signature has 0 < s < n; then n - s is in the same range, and differs
    // from s (n is odd).
    if s.iter().all(|b| *b == 0) || &*s >= order {
        return Box::default();
    }
    let mut borrow = 0u16;
    for i in (0..size).rev() {
        let d = u16::from(order[i])
            .wrapping_sub(u16::from(s[i]))
            .wrapping_sub(borrow);
        s[i] = d as u8;
        borrow = (d >> 15) & 1;
    }
    let mut text = [0u8; 128];
    let Ok(len) =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_slice(&sig[..2 * size], &mut text)
    else {
        return Box::default();
    };
    let mut h = Sha256::new();
    h.update(signing_input.as_bytes());
    h.update(b".");
    h.update(&text[..len]);
    Box::new([TokenDigest(h.finalize().into())])
}
