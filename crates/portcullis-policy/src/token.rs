//! Tokens: their SHA-256 (the only form in which they are kept), their log fingerprint,
//! strict parsing of the compact JWS form, and the verified result.

use std::fmt;

use base64::Engine;
use http::{HeaderName, HeaderValue};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::decision::DenyReason;

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

/// What a verified token is remembered as: never the token itself.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    /// `sub`, if present.
    pub subject: Option<Box<str>>,
    /// `jti`, if present.
    pub jti: Option<Box<str>>,
    /// `iat`, if present (seconds since the epoch).
    pub issued_at: Option<i64>,
    /// `exp` (seconds since the epoch).
    pub expires_at: i64,
    /// The `kid` of the key that verified it.
    pub key_id: Option<Box<str>>,
    /// Scopes, sorted and deduplicated.
    pub scopes: Box<[Box<str>]>,
    /// Headers for the upstream, from the policy's `forwardClaims`.
    pub forward_headers: Vec<(HeaderName, HeaderValue)>,
}

impl VerifiedToken {
    /// Whether the token holds `scope` (whole-word comparison).
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.binary_search_by(|s| (**s).cmp(scope)).is_ok()
    }
}

/// A compact JWS split and decoded, not yet verified.
#[derive(Debug)]
pub(crate) struct ParsedJws<'t> {
    pub(crate) alg: jsonwebtoken::Algorithm,
    pub(crate) kid: Option<String>,
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
    let claims = decode_object(p)?;
    Ok(ParsedJws {
        alg,
        kid,
        signing_input: &token[..h.len() + 1 + p.len()],
        signature: s,
        claims,
    })
}

fn decode_object(segment: &str) -> Result<Map<String, Value>, DenyReason> {
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
