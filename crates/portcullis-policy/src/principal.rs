//! Who is calling: the one result of every credential kind ([`Principal`]). Revocations and
//! scopes are checked on it, whichever kind it is and whether or not it came from a cache.

use std::sync::Arc;

use http::{HeaderName, HeaderValue};

use crate::reason::DenyReason;
use crate::token::TokenDigest;

/// The kind of credential a [`Principal`] was established from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrincipalKind {
    /// A signed JWT verified against the policy's keys.
    Jwt,
    /// An opaque token judged active by the policy's introspection endpoint (RFC 7662).
    Introspected,
    /// An API key held (hashed) by a Secret the policy selects.
    ApiKey,
}

impl PrincipalKind {
    /// A stable label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::Jwt => "jwt",
            PrincipalKind::Introspected => "introspected",
            PrincipalKind::ApiKey => "api_key",
        }
    }
}

/// A proof-of-possession key a token is bound to (`cnf`, RFC 7800): what a sender-
/// constrained token requires the client to prove it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Confirmation {
    /// `cnf.jkt`: the RFC 7638 thumbprint of a DPoP key (RFC 9449 section 6).
    JwkThumbprint([u8; 32]),
    /// `cnf.x5t#S256`: the SHA-256 of a client certificate (RFC 8705 section 3.1).
    CertificateSha256([u8; 32]),
}

/// Who is calling, as established from a credential: never the credential itself.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Which kind of credential.
    pub kind: PrincipalKind,
    /// The issuer (`iss`) of a token; for an API key, the policy (`namespace/name`).
    pub issuer: Option<Arc<str>>,
    /// `sub`, if present; for an API key, its consumer.
    pub subject: Option<Box<str>>,
    /// The consumer (application, team, customer) the call is accounted to: an API key's
    /// `consumer`; for tokens, `client_id` or `azp` when present.
    pub consumer: Option<Arc<str>>,
    /// `jti`, if present.
    pub jti: Option<Box<str>>,
    /// `sid` (the OpenID login session), if present: `sessionId` revocations match it.
    pub session_id: Option<Box<str>>,
    /// `email`, if present (a string): `email` revocations match it.
    pub email: Option<Box<str>>,
    /// The audiences (`aud`) of a token, as it names them; empty for API keys. MCP
    /// routes demand their resource URI here (RFC 8707).
    pub audiences: Box<[Box<str>]>,
    /// `iat`, if present (seconds since the epoch); an API key's `createdAt`.
    pub issued_at: Option<i64>,
    /// `exp` (seconds since the epoch); `i64::MAX` for an API key without expiry.
    pub expires_at: i64,
    /// The `kid` of the key that verified it (its JWK's `kid`), whether or not the token
    /// named it; `None` for a key without one, and for other kinds.
    pub key_id: Option<Box<str>>,
    /// The `kid` of the token's header when it differs from [`Self::key_id`] (a token may
    /// name a kid that a kid-less key answers for); `keyId` revocations match either.
    pub token_key_id: Option<Box<str>>,
    /// The RFC 7638 JWK thumbprint (SHA-256) of the key that verified it; `None` for
    /// other kinds.
    pub key_thumbprint: Option<[u8; 32]>,
    /// An API key's id (the 12 characters after `pcl_`).
    pub api_key_id: Option<Box<str>>,
    /// The SHA-256 of every other valid encoding of the same signed token: an ES256 or
    /// ES384 signature `(r, s)` verifies as `(r, n - s)` too, so a token has two spellings
    /// and a `tokenSha256` revocation of either must refuse both. Empty for algorithms
    /// with a single valid encoding (RSA, EdDSA, HMAC) and for other kinds.
    pub equivalent_digests: Box<[TokenDigest]>,
    /// Scopes, sorted and deduplicated.
    pub scopes: Box<[Box<str>]>,
    /// The key the token is bound to (`cnf`), if any.
    pub confirmation: Option<Confirmation>,
    /// Headers for the upstream, from the policy's `forwardClaims`.
    pub forward_headers: Vec<(HeaderName, HeaderValue)>,
}

/// The former name of [`Principal`], from when only JWTs were verified.
pub type VerifiedToken = Principal;

impl Principal {
    /// A principal of `kind` with nothing else known yet.
    pub fn new(kind: PrincipalKind, expires_at: i64) -> Self {
        Self {
            kind,
            issuer: None,
            subject: None,
            consumer: None,
            jti: None,
            session_id: None,
            email: None,
            audiences: Box::default(),
            issued_at: None,
            expires_at,
            key_id: None,
            token_key_id: None,
            key_thumbprint: None,
            api_key_id: None,
            equivalent_digests: Box::default(),
            scopes: Box::default(),
            confirmation: None,
            forward_headers: Vec::new(),
        }
    }

    /// Whether the principal holds `scope` (whole-word comparison).
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.binary_search_by(|s| (**s).cmp(scope)).is_ok()
    }
}

/// The key a token is bound to: `cnf.jkt` (RFC 9449 section 6.1) or `cnf.x5t#S256` (RFC
/// 8705 section 3.1), each the base64url of a SHA-256. A `cnf` that is not an object, or a
/// member that is not 32 bytes of base64url, is a malformed token; other `cnf` members
/// (e.g. `jwk`, RFC 7800) are not understood and bind nothing here.
pub(crate) fn confirmation(
    claims: &serde_json::Map<String, serde_json::Value>,
) -> Result<Option<Confirmation>, DenyReason> {
    use base64::Engine;
    use serde_json::Value;
    let Some(cnf) = claims.get("cnf") else {
        return Ok(None);
    };
    let cnf = cnf.as_object().ok_or(DenyReason::MalformedToken)?;
    let sha256 = |v: &Value| -> Result<[u8; 32], DenyReason> {
        let s = v.as_str().ok_or(DenyReason::MalformedToken)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| DenyReason::MalformedToken)?;
        bytes.try_into().map_err(|_| DenyReason::MalformedToken)
    };
    match (cnf.get("jkt"), cnf.get("x5t#S256")) {
        // Bound to two keys: only one could be checked; refused rather than half-checked.
        (Some(_), Some(_)) => Err(DenyReason::MalformedToken),
        (Some(v), None) => Ok(Some(Confirmation::JwkThumbprint(sha256(v)?))),
        (None, Some(v)) => Ok(Some(Confirmation::CertificateSha256(sha256(v)?))),
        // A confirmation this gateway cannot check (RFC 7800 `jwk`, `jku`, ...): the token
        // is bound to something, so it is not a bearer token; refused (closed).
        (None, None) if !cnf.is_empty() => Err(DenyReason::MalformedToken),
        (None, None) => Ok(None),
    }
}
