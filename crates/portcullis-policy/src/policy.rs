//! A compiled TokenPolicy: its issuers, keys and claim rules, the caches of verified
//! tokens and introspection verdicts, and the checks that turn a credential into a
//! [`Principal`].
//!
//! A [`CompiledPolicy`] is two shared halves: its [`PolicyTrust`] (everything a revocation
//! does not change, caches included) and its [`RevocationSet`]. A revocation-only update
//! replaces the second and shares the first with the snapshot it patches
//! ([`crate::Snapshot::with_revocations`]), so cached tokens stay cached.

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use jsonwebtoken::Algorithm;
use serde_json::Value;

use crate::decision::{DenyReason, IntrospectionEndpoint, Refetch};
use crate::keys::{KeyLookup, KeySet};
use crate::principal::{Principal, PrincipalKind};
use crate::revocation::RevocationSet;
use crate::token;

// === TokenCache ===

/// Verified tokens of one policy, keyed by SHA-256, bounded in entries. An entry is used
/// only until the token's `exp` (plus the policy's clock skew).
pub(crate) struct TokenCache {
    pub(crate) inner: quick_cache::sync::Cache<[u8; 32], Arc<Principal>>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("len", &self.inner.len())
            .finish()
    }
}

impl TokenCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            inner: quick_cache::sync::Cache::new(capacity.max(1)),
        }
    }
}

/// Introspection verdicts of one policy, keyed by the token's SHA-256: active tokens until
/// `min(cacheTTL, exp)`, inactive ones for `negativeCacheTTL`.
pub(crate) struct IntrospectionCache {
    pub(crate) inner: quick_cache::sync::Cache<[u8; 32], IntrospectionVerdict>,
}

#[derive(Clone)]
pub(crate) struct IntrospectionVerdict {
    /// `None`: inactive.
    pub(crate) token: Option<Arc<Principal>>,
    /// Reused until then (seconds since the epoch).
    pub(crate) until: i64,
}

impl std::fmt::Debug for IntrospectionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntrospectionCache")
            .field("len", &self.inner.len())
            .finish()
    }
}

impl IntrospectionCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            inner: quick_cache::sync::Cache::new(capacity.max(1)),
        }
    }
}

/// A policy's introspection issuer.
#[derive(Debug, Clone)]
pub(crate) struct CompiledIntrospection {
    pub(crate) endpoint: IntrospectionEndpoint,
    pub(crate) audiences: Vec<String>,
    pub(crate) cache_ttl: i64,
    pub(crate) negative_ttl: i64,
    pub(crate) cache: Arc<IntrospectionCache>,
}

// === CompiledPolicy ===

#[derive(Debug, Clone)]
pub(crate) struct CompiledIssuer {
    pub(crate) audiences: Vec<String>,
    pub(crate) algorithms: Vec<Algorithm>,
    pub(crate) keys: KeySet,
    /// Where the keys were fetched from, when they were.
    pub(crate) refetch: Option<Refetch>,
    /// Accepted JWS `typ` values: lowercase, without `application/`.
    pub(crate) accepted_types: Box<[Box<str>]>,
    /// Refuse tokens without `typ`.
    pub(crate) require_type: bool,
}

/// One TokenPolicy, ready to verify tokens: its trust material, shared by every snapshot
/// until something in it changes, and its revocations, which a revocation-only update
/// replaces alone. Cloning it copies two pointers.
#[derive(Debug, Clone)]
pub(crate) struct CompiledPolicy {
    /// Issuers, keys, claim rules and the caches: what revocations do not touch.
    pub(crate) trust: Arc<PolicyTrust>,
    /// Checked on every request, cached token or not.
    pub(crate) revocations: Arc<RevocationSet>,
}

impl CompiledPolicy {
    pub(crate) fn new(trust: PolicyTrust, revocations: RevocationSet) -> Self {
        Self {
            trust: Arc::new(trust),
            revocations: Arc::new(revocations),
        }
    }
}

/// The policy's trust material is what the request path reads of it (`policy.issuers`,
/// `policy.cache`, `policy.verify(..)`); only the revocations sit beside it.
impl std::ops::Deref for CompiledPolicy {
    type Target = PolicyTrust;

    fn deref(&self) -> &PolicyTrust {
        &self.trust
    }
}

/// Everything of a compiled TokenPolicy but its revocations: issuers, keys, claim rules,
/// and the caches of verified tokens and introspection verdicts.
#[derive(Debug, Clone)]
pub(crate) struct PolicyTrust {
    pub(crate) id: Arc<str>,
    pub(crate) issuers: HashMap<String, CompiledIssuer>,
    pub(crate) scope_claim: String,
    pub(crate) clock_skew: i64,
    pub(crate) max_lifetime: Option<i64>,
    pub(crate) required_claims: Vec<String>,
    pub(crate) forward: Vec<(String, HeaderName)>,
    pub(crate) forwarded_header_names: Arc<[HeaderName]>,
    /// Hash of everything the cache depends on (not revocations).
    pub(crate) trust_hash: u64,
    pub(crate) cache: Arc<TokenCache>,
    /// The opaque-token issuer, if any.
    pub(crate) introspection: Option<CompiledIntrospection>,
    /// Budgets and rate limits; `None` when the policy has none.
    pub(crate) quotas: Option<Arc<crate::quota::Quotas>>,
    /// Identity events (Back-Channel Logout); `None` when the policy takes none.
    pub(crate) events: Option<Arc<crate::events::CompiledEvents>>,
    /// DPoP settings by issuer (every issuer has them: a bound token always needs its
    /// proof).
    pub(crate) dpop: HashMap<String, crate::dpop::DpopConfig>,
    /// DPoP proofs seen recently, kept across recompiles of the policy.
    pub(crate) dpop_replay: Arc<crate::dpop::ReplayCache>,
    /// Issuers whose tokens must be certificate-bound (RFC 8705).
    pub(crate) certificate_required: Vec<String>,
}

impl PolicyTrust {
    /// Full verification of an uncached token.
    pub(crate) fn verify(&self, raw: &str, now: i64) -> Result<Principal, DenyReason> {
        let jws = token::parse_jws(raw)?;
        let claims = &jws.claims;
        let iss = token::string_claim(claims, "iss")?.ok_or(DenyReason::UnknownIssuer)?;
        let issuer = self.issuers.get(iss).ok_or(DenyReason::UnknownIssuer)?;
        if !issuer.algorithms.contains(&jws.alg) {
            return Err(DenyReason::AlgorithmNotAllowed);
        }
        let key = match issuer.keys.lookup(jws.kid.as_deref(), jws.alg) {
            KeyLookup::Found(k) => k,
            KeyLookup::Unknown => return Err(DenyReason::UnknownKey),
            KeyLookup::Mismatch => return Err(DenyReason::KeyAlgorithmMismatch),
        };
        match jsonwebtoken::crypto::verify(
            jws.signature,
            jws.signing_input.as_bytes(),
            &key.key,
            jws.alg,
        ) {
            Ok(true) => {}
            _ => return Err(DenyReason::BadSignature),
        }

        // Signature good: is it an access token at all (RFC 8725 section 3.11)?
        token::check_type(
            jws.typ.as_deref(),
            claims,
            &issuer.accepted_types,
            issuer.require_type,
        )?;
        // Then the claims.
        let mut verified = self.accept_claims(claims, &issuer.audiences, now)?;
        // Revocation by key holds for the key that verified the token, named by its JWK
        // kid or its thumbprint, and for the kid the token names, when that differs.
        verified.key_id = key.kid.as_deref().map(Box::from);
        verified.token_key_id = jws
            .kid
            .filter(|k| key.kid.as_deref() != Some(k.as_str()))
            .map(String::into_boxed_str);
        verified.key_thumbprint = Some(key.thumbprint);
        // Computed once per verified token: every later request is a hash probe.
        verified.equivalent_digests =
            token::equivalent_digests(jws.alg, jws.signing_input, jws.signature);
        Ok(verified)
    }

    /// The `unknown_key` refetch hint for a token: its issuer's key source, if the keys
    /// are fetched. Runs only on the (rare) unknown-key path.
    pub(crate) fn refetch_for(&self, raw: &str) -> Option<Refetch> {
        let jws = token::parse_jws(raw).ok()?;
        let iss = token::string_claim(&jws.claims, "iss").ok()??;
        self.issuers.get(iss)?.refetch.clone()
    }

    /// Checks a signed token's claims and remembers what later requests need. The key
    /// fields are left for the caller to fill in.
    fn accept_claims(
        &self,
        claims: &serde_json::Map<String, Value>,
        audiences: &[String],
        now: i64,
    ) -> Result<Principal, DenyReason> {
        let exp = token::numeric_date(claims, "exp")?.ok_or(DenyReason::MissingExpiry)?;
        let nbf = token::numeric_date(claims, "nbf")?;
        let iat = token::numeric_date(claims, "iat")?;
        if now.saturating_sub(self.clock_skew) >= exp {
            return Err(DenyReason::Expired);
        }
        if nbf.is_some_and(|nbf| nbf > now.saturating_add(self.clock_skew))
            || iat.is_some_and(|iat| iat > now.saturating_add(self.clock_skew))
        {
            return Err(DenyReason::NotYetValid);
        }
        if let Some(max) = self.max_lifetime {
            let iat = iat.ok_or(DenyReason::LifetimeTooLong)?;
            if exp.saturating_sub(iat) > max {
                return Err(DenyReason::LifetimeTooLong);
            }
        }
        let aud_ok = match claims.get("aud") {
            Some(Value::String(a)) => audiences.iter().any(|x| x == a),
            Some(Value::Array(list)) => {
                let mut ok = false;
                for a in list {
                    let Value::String(a) = a else {
                        return Err(DenyReason::MalformedToken);
                    };
                    ok |= audiences.iter().any(|x| x == a);
                }
                ok
            }
            Some(_) => return Err(DenyReason::MalformedToken),
            None => false,
        };
        if !aud_ok {
            return Err(DenyReason::WrongAudience);
        }
        for c in &self.required_claims {
            if claims.get(c).is_none_or(Value::is_null) {
                return Err(DenyReason::MissingClaim);
            }
        }
        let (scopes, forward_headers) = self.scopes_and_headers(claims, &self.scope_claim)?;
        let mut p = Principal::new(PrincipalKind::Jwt, exp);
        p.issuer = token::string_claim(claims, "iss")?.map(Arc::from);
        p.subject = token::string_claim(claims, "sub")?.map(Box::from);
        p.jti = token::string_claim(claims, "jti")?.map(Box::from);
        p.session_id = token::string_claim(claims, "sid")?.map(Box::from);
        p.email = claims
            .get("email")
            .and_then(Value::as_str)
            .map(|e| e.to_lowercase().into_boxed_str());
        p.audiences = audiences_of(claims);
        p.issued_at = iat;
        p.consumer = consumer_of(claims);
        p.confirmation = crate::principal::confirmation(claims)?;
        p.scopes = scopes;
        p.forward_headers = forward_headers;
        Ok(p)
    }

    /// Scopes (sorted, deduplicated) and `forwardClaims` headers from a claim set. A
    /// forwarded claim that cannot be sent faithfully is
    /// [`DenyReason::UnforwardableClaim`]: the backend must never see a request without
    /// (or with a mangled form of) the identity it relies on.
    #[allow(clippy::type_complexity)]
    pub(crate) fn scopes_and_headers(
        &self,
        claims: &serde_json::Map<String, Value>,
        scope_claim: &str,
    ) -> Result<(Box<[Box<str>]>, Vec<(HeaderName, HeaderValue)>), DenyReason> {
        let mut scopes: Vec<Box<str>> = match claims.get(scope_claim) {
            None => Vec::new(),
            Some(Value::String(s)) => s
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(Box::from)
                .collect(),
            Some(Value::Array(list)) => {
                let mut v = Vec::with_capacity(list.len());
                for s in list {
                    let Value::String(s) = s else {
                        return Err(DenyReason::MalformedToken);
                    };
                    v.push(Box::from(s.as_str()));
                }
                v
            }
            Some(_) => return Err(DenyReason::MalformedToken),
        };
        scopes.sort_unstable();
        scopes.dedup();
        let mut forward_headers = Vec::with_capacity(self.forward.len());
        for (claim, header) in &self.forward {
            let value = match claims.get(claim) {
                None | Some(Value::Null) => continue,
                Some(v) => forward_value(v)?,
            };
            forward_headers.push((header.clone(), value));
        }
        Ok((scopes.into_boxed_slice(), forward_headers))
    }

    /// Judges an introspection answer (RFC 7662 section 2.2): `active`, then `token_type`,
    /// `iss`, `exp`, `nbf`, `aud` (or `client_id`), the required claims and the forwarded
    /// ones. Returns the token to remember, or why it must be refused:
    /// [`DenyReason::UnforwardableClaim`], or [`DenyReason::InactiveToken`] for the rest.
    pub(crate) fn accept_introspection(
        &self,
        intro: &CompiledIntrospection,
        answer: &Value,
        now: i64,
    ) -> Result<Principal, DenyReason> {
        const INACTIVE: DenyReason = DenyReason::InactiveToken;
        let claims = answer.as_object().ok_or(INACTIVE)?;
        if claims.get("active") != Some(&Value::Bool(true)) {
            return Err(INACTIVE);
        }
        match claims.get("token_type") {
            None => {}
            Some(Value::String(t)) if t.eq_ignore_ascii_case("bearer") || t == "access_token" => {}
            Some(_) => return Err(INACTIVE),
        }
        match claims.get("iss") {
            None => {}
            Some(Value::String(i)) if **i == *intro.endpoint.issuer => {}
            Some(_) => return Err(INACTIVE),
        }
        let number = |name: &str| -> Result<Option<i64>, DenyReason> {
            match claims.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v.as_i64().map(Some).ok_or(INACTIVE),
            }
        };
        let exp = number("exp")?;
        let nbf = number("nbf")?;
        let iat = number("iat")?;
        if exp.is_some_and(|exp| now.saturating_sub(self.clock_skew) >= exp) {
            return Err(INACTIVE);
        }
        if nbf.is_some_and(|nbf| nbf > now.saturating_add(self.clock_skew)) {
            return Err(INACTIVE);
        }
        if let Some(max) = self.max_lifetime {
            match (exp, iat) {
                (Some(exp), Some(iat)) if exp.saturating_sub(iat) <= max => {}
                _ => return Err(INACTIVE),
            }
        }
        let named = |v: &Value| {
            v.as_str()
                .is_some_and(|a| intro.audiences.iter().any(|x| x == a))
        };
        let aud_ok = match (claims.get("aud"), claims.get("client_id")) {
            (Some(Value::String(_)), _) => named(&claims["aud"]),
            (Some(Value::Array(list)), _) => list.iter().any(named),
            (Some(_), _) => false,
            (None, Some(c)) => named(c),
            (None, None) => false,
        };
        if !aud_ok {
            return Err(INACTIVE);
        }
        for c in &self.required_claims {
            if claims.get(c).is_none_or(Value::is_null) {
                return Err(INACTIVE);
            }
        }
        // RFC 7662 names the scope member `scope` (space-separated).
        let (scopes, forward_headers) =
            self.scopes_and_headers(claims, "scope")
                .map_err(|reason| match reason {
                    DenyReason::UnforwardableClaim => reason,
                    _ => INACTIVE,
                })?;
        let string = |name| token::string_claim(claims, name).map_err(|_| INACTIVE);
        let mut p = Principal::new(PrincipalKind::Introspected, exp.unwrap_or(i64::MAX));
        p.issuer = Some(intro.endpoint.issuer.clone());
        p.subject = string("sub")?.map(Box::from);
        p.jti = string("jti")?.map(Box::from);
        p.session_id = string("sid")?.map(Box::from);
        p.email = claims
            .get("email")
            .and_then(Value::as_str)
            .map(|e| e.to_lowercase().into_boxed_str());
        p.audiences = audiences_of(claims);
        p.issued_at = iat;
        p.consumer = consumer_of(claims);
        p.confirmation = crate::principal::confirmation(claims).map_err(|_| INACTIVE)?;
        p.scopes = scopes;
        p.forward_headers = forward_headers;
        Ok(p)
    }
}

/// The `aud` of a claim set as a list (a string or an array of strings; other members
/// are left out: the audience check has already refused a malformed `aud`).
fn audiences_of(claims: &serde_json::Map<String, Value>) -> Box<[Box<str>]> {
    match claims.get("aud") {
        Some(Value::String(a)) => Box::new([Box::from(a.as_str())]),
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .map(Box::from)
            .collect(),
        _ => Box::default(),
    }
}

/// The header value a forwarded claim becomes, or [`DenyReason::UnforwardableClaim`].
///
/// A string is sent as it is; an array of strings, numbers and booleans as its elements
/// joined with `,`; anything else (a number, a boolean, an object, a mixed array) as its
/// JSON text, treated as one value. Refused: control characters (CR, LF and NUL would
/// split or cut the header; tab and the rest are not text a backend expects), leading or
/// trailing whitespace (backends trim optional whitespace, RFC 9110 section 5.5, and
/// would see another value), and a `,` inside one value or one element (a backend
/// splitting the list, RFC 9110 section 5.3, would see other values). Non-ASCII text is
/// sent as raw UTF-8 bytes (`obs-text`, RFC 9110 section 5.5): a name like `José` is not
/// refused, and a backend reading ISO-8859-1 must decode it as UTF-8.
fn forward_value(v: &Value) -> Result<HeaderValue, DenyReason> {
    fn element(s: &str) -> Result<&str, DenyReason> {
        let bad = s.chars().any(|c| c.is_control() || c == ',')
            || s.starts_with(char::is_whitespace)
            || s.ends_with(char::is_whitespace);
        if bad {
            Err(DenyReason::UnforwardableClaim)
        } else {
            Ok(s)
        }
    }
    let scalar = |v: &Value| -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(_) | Value::Bool(_) => Some(v.to_string()),
            _ => None,
        }
    };
    let text = match v {
        Value::String(s) => element(s)?.to_owned(),
        Value::Array(items) if items.iter().all(|i| scalar(i).is_some()) => {
            let mut out = String::new();
            for (i, item) in items.iter().filter_map(scalar).enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(element(&item)?);
            }
            out
        }
        other => {
            let text = other.to_string();
            element(&text)?;
            text
        }
    };
    HeaderValue::from_bytes(text.as_bytes()).map_err(|_| DenyReason::UnforwardableClaim)
}

/// Whether a token has the shape of a compact JWS (three dot-separated segments). Used only
/// in policies that trust both signed JWTs and an introspection endpoint, to choose the
/// verifier; both verifiers are authoritative, so the shape picks a judge, never a verdict.
pub(crate) fn looks_like_jws(raw: &str) -> bool {
    raw.bytes().filter(|b| *b == b'.').count() == 2
}

/// The consumer a token's call is accounted to: `client_id` (RFC 9068 section 2.2, RFC
/// 7662), else `azp` (OpenID Connect Core section 2). Only plain strings.
fn consumer_of(claims: &serde_json::Map<String, Value>) -> Option<Arc<str>> {
    ["client_id", "azp"]
        .iter()
        .find_map(|c| claims.get(*c).and_then(Value::as_str))
        .filter(|c| !c.is_empty())
        .map(Arc::from)
}
