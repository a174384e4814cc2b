//! The compiled, immutable config, and the hot path: [`Snapshot::authorize`].
//!
//! Per request: route lookup (a few hash probes), the token's SHA-256, a cache probe keyed
//! by that digest, then revocation and scope checks, which run whether or not the token
//! came from the cache. Only a cache miss parses and verifies the token.

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use jsonwebtoken::Algorithm;
use serde_json::Value;

use crate::clock::Clock;
use crate::decision::{
    Allow, AuthorizationHeader, Decision, Deny, DenyReason, Introspect, IntrospectionEndpoint,
    Refetch, RequestParts,
};
use crate::index::{CompiledRule, Requirement, RouteIndex};
use crate::keys::{KeyLookup, KeySet};
use crate::revocation::RevocationSet;
use crate::token::{self, TokenDigest, VerifiedToken, token_digest};

// === TokenCache ===

/// Verified tokens of one policy, keyed by SHA-256, bounded in entries. An entry is used
/// only until the token's `exp` (plus the policy's clock skew).
pub(crate) struct TokenCache {
    inner: quick_cache::sync::Cache<[u8; 32], Arc<VerifiedToken>>,
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
    inner: quick_cache::sync::Cache<[u8; 32], IntrospectionVerdict>,
}

#[derive(Clone)]
struct IntrospectionVerdict {
    /// `None`: inactive.
    token: Option<Arc<VerifiedToken>>,
    /// Reused until then (seconds since the epoch).
    until: i64,
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
#[derive(Debug)]
pub(crate) struct CompiledIntrospection {
    pub(crate) endpoint: IntrospectionEndpoint,
    pub(crate) audiences: Vec<String>,
    pub(crate) cache_ttl: i64,
    pub(crate) negative_ttl: i64,
    pub(crate) cache: Arc<IntrospectionCache>,
}

// === CompiledPolicy ===

#[derive(Debug)]
pub(crate) struct CompiledIssuer {
    pub(crate) audiences: Vec<String>,
    pub(crate) algorithms: Vec<Algorithm>,
    pub(crate) keys: KeySet,
    /// Where the keys were fetched from, when they were.
    pub(crate) refetch: Option<Refetch>,
}

/// One TokenPolicy, ready to verify tokens.
#[derive(Debug)]
pub(crate) struct CompiledPolicy {
    pub(crate) id: Arc<str>,
    pub(crate) issuers: HashMap<String, CompiledIssuer>,
    pub(crate) scope_claim: String,
    pub(crate) clock_skew: i64,
    pub(crate) max_lifetime: Option<i64>,
    pub(crate) required_claims: Vec<String>,
    pub(crate) forward: Vec<(String, HeaderName)>,
    pub(crate) forwarded_header_names: Arc<[HeaderName]>,
    pub(crate) revocations: RevocationSet,
    /// Hash of everything the cache depends on (not revocations).
    pub(crate) trust_hash: u64,
    pub(crate) cache: Arc<TokenCache>,
    /// The opaque-token issuer, if any.
    pub(crate) introspection: Option<CompiledIntrospection>,
}

impl CompiledPolicy {
    /// Full verification of an uncached token.
    fn verify(&self, raw: &str, now: i64) -> Result<VerifiedToken, DenyReason> {
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

        // Signature good: now the claims.
        self.accept_claims(claims, &issuer.audiences, now, jws.kid)
    }

    /// The `unknown_key` refetch hint for a token: its issuer's key source, if the keys
    /// are fetched. Runs only on the (rare) unknown-key path.
    fn refetch_for(&self, raw: &str) -> Option<Refetch> {
        let jws = token::parse_jws(raw).ok()?;
        let iss = token::string_claim(&jws.claims, "iss").ok()??;
        self.issuers.get(iss)?.refetch.clone()
    }

    /// Checks a signed token's claims and remembers what later requests need.
    fn accept_claims(
        &self,
        claims: &serde_json::Map<String, Value>,
        audiences: &[String],
        now: i64,
        kid: Option<String>,
    ) -> Result<VerifiedToken, DenyReason> {
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
        Ok(VerifiedToken {
            subject: token::string_claim(claims, "sub")?.map(Box::from),
            jti: token::string_claim(claims, "jti")?.map(Box::from),
            issued_at: iat,
            expires_at: exp,
            key_id: kid.map(String::into_boxed_str),
            scopes,
            forward_headers,
        })
    }

    /// Scopes (sorted, deduplicated) and `forwardClaims` headers from a claim set.
    #[allow(clippy::type_complexity)]
    fn scopes_and_headers(
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
            let text = match claims.get(claim) {
                None | Some(Value::Null) => continue,
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(items)) if items.iter().all(Value::is_string) => items
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(","),
                Some(other) => other.to_string(),
            };
            // A claim value that cannot be a header value (control characters) is not
            // forwarded rather than forwarded mangled.
            if let Ok(v) = HeaderValue::from_str(&text) {
                forward_headers.push((header.clone(), v));
            }
        }
        Ok((scopes.into_boxed_slice(), forward_headers))
    }

    /// Judges an introspection answer (RFC 7662 section 2.2): `active`, then `token_type`,
    /// `iss`, `exp`, `nbf`, `aud` (or `client_id`) and the required claims. Returns the
    /// token to remember, or `None` when it must be refused.
    fn accept_introspection(
        &self,
        intro: &CompiledIntrospection,
        answer: &Value,
        now: i64,
    ) -> Option<VerifiedToken> {
        let claims = answer.as_object()?;
        if claims.get("active") != Some(&Value::Bool(true)) {
            return None;
        }
        match claims.get("token_type") {
            None => {}
            Some(Value::String(t)) if t.eq_ignore_ascii_case("bearer") || t == "access_token" => {}
            Some(_) => return None,
        }
        match claims.get("iss") {
            None => {}
            Some(Value::String(i)) if **i == *intro.endpoint.issuer => {}
            Some(_) => return None,
        }
        let number = |name: &str| -> Result<Option<i64>, ()> {
            match claims.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v.as_i64().map(Some).ok_or(()),
            }
        };
        let exp = number("exp").ok()?;
        let nbf = number("nbf").ok()?;
        let iat = number("iat").ok()?;
        if exp.is_some_and(|exp| now.saturating_sub(self.clock_skew) >= exp) {
            return None;
        }
        if nbf.is_some_and(|nbf| nbf > now.saturating_add(self.clock_skew)) {
            return None;
        }
        if let Some(max) = self.max_lifetime {
            match (exp, iat) {
                (Some(exp), Some(iat)) if exp.saturating_sub(iat) <= max => {}
                _ => return None,
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
            return None;
        }
        for c in &self.required_claims {
            if claims.get(c).is_none_or(Value::is_null) {
                return None;
            }
        }
        // RFC 7662 names the scope member `scope` (space-separated).
        let (scopes, forward_headers) = self.scopes_and_headers(claims, "scope").ok()?;
        Some(VerifiedToken {
            subject: token::string_claim(claims, "sub").ok()?.map(Box::from),
            jti: token::string_claim(claims, "jti").ok()?.map(Box::from),
            issued_at: iat,
            expires_at: exp.unwrap_or(i64::MAX),
            key_id: None,
            scopes,
            forward_headers,
        })
    }
}

/// Whether a token has the shape of a compact JWS (three dot-separated segments). Used only
/// in policies that trust both signed JWTs and an introspection endpoint, to choose the
/// verifier; both verifiers are authoritative, so the shape picks a judge, never a verdict.
fn looks_like_jws(raw: &str) -> bool {
    raw.bytes().filter(|b| *b == b'.').count() == 2
}

// === Snapshot ===

/// Counts describing a snapshot, for `/config` and metrics. No key material.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SnapshotStats {
    /// Routes compiled in.
    pub routes: usize,
    /// Rules in the index.
    pub rules: usize,
    /// Distinct host entries.
    pub hosts: usize,
    /// Policies compiled in.
    pub policies: usize,
    /// Issuers across policies.
    pub issuers: usize,
    /// Verification keys across issuers.
    pub keys: usize,
    /// Revocation entries across policies (expired ones included).
    pub revocations: usize,
}

/// An immutable, versioned config: the route index and the compiled policies.
#[derive(Debug)]
pub struct Snapshot {
    version: u64,
    index: RouteIndex,
    policies: Vec<CompiledPolicy>,
    routes: usize,
    clock: Arc<dyn Clock>,
    max_token_bytes: usize,
}

impl Snapshot {
    pub(crate) fn new(
        index: RouteIndex,
        policies: Vec<CompiledPolicy>,
        routes: usize,
        clock: Arc<dyn Clock>,
        max_token_bytes: usize,
    ) -> Self {
        Self {
            version: 0,
            index,
            policies,
            routes,
            clock,
            max_token_bytes,
        }
    }

    /// An empty snapshot: every request gets 404.
    pub fn empty() -> Self {
        Self::new(
            RouteIndex::default(),
            Vec::new(),
            0,
            Arc::new(crate::SystemClock),
            8192,
        )
    }

    /// The version (0 until set).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Sets the version.
    pub fn with_version(mut self, version: u64) -> Self {
        self.version = version;
        self
    }

    /// Keeps the verified-token and introspection caches of `previous` for policies whose
    /// trust settings (issuers, keys, endpoints, credentials, claim rules) did not change,
    /// so a revocation-only update does not make every token verify again. Revocations are
    /// checked per request regardless.
    pub fn inherit_caches(&mut self, previous: &Snapshot) {
        for p in &mut self.policies {
            if let Some(old) = previous
                .policies
                .iter()
                .find(|o| o.id == p.id && o.trust_hash == p.trust_hash)
            {
                p.cache = old.cache.clone();
                // Introspection verdicts too: a config push during a provider outage must
                // not turn every cached opaque token into a 503.
                if let (Some(new), Some(old)) = (&mut p.introspection, &old.introspection) {
                    new.cache = old.cache.clone();
                }
            }
        }
    }

    /// Counts for `/config` and metrics.
    pub fn stats(&self) -> SnapshotStats {
        SnapshotStats {
            routes: self.routes,
            rules: self.index.rules,
            hosts: self.index.hosts(),
            policies: self.policies.len(),
            issuers: self.policies.iter().map(|p| p.issuers.len()).sum(),
            keys: self
                .policies
                .iter()
                .flat_map(|p| p.issuers.values())
                .map(|i| i.keys.keys.len())
                .sum(),
            revocations: self.policies.iter().map(|p| p.revocations.len()).sum(),
        }
    }

    /// Revocation entries past their `expiresAt` (ignored, awaiting pruning).
    pub fn expired_revocations(&self) -> usize {
        let now = self.clock.now();
        self.policies
            .iter()
            .map(|p| p.revocations.expired(now))
            .sum()
    }

    /// Policy ids (`namespace/name`) compiled in.
    pub fn policy_ids(&self) -> impl Iterator<Item = &str> {
        self.policies.iter().map(|p| &*p.id)
    }

    /// Decides one request.
    pub fn authorize<'s>(&'s self, req: &RequestParts<'_>) -> Decision<'s> {
        let deny = |reason, route, fingerprint, cache_hit| {
            Decision::Deny(Deny {
                reason,
                route,
                fingerprint,
                cache_hit,
                missing_scopes: None,
                refetch: None,
            })
        };
        if let Some(q) = req.query
            && query_has_token(q)
        {
            return deny(DenyReason::TokenInQuery, None, None, false);
        }
        let Some(rule) = self.index.lookup(req.host, req.path, req.method) else {
            return deny(DenyReason::NoRoute, None, None, false);
        };
        let route = Some(&rule.info);
        let policy = match &rule.requirement {
            Requirement::Public => {
                return Decision::Allow(Allow {
                    route: &rule.info,
                    token: None,
                    fingerprint: None,
                    cache_hit: false,
                });
            }
            Requirement::Token { policy, .. } => &self.policies[*policy],
        };
        let raw = match bearer_token(req.authorization) {
            Ok(t) => t,
            Err(reason) => return deny(reason, route, None, false),
        };
        if raw.len() > self.max_token_bytes {
            return deny(DenyReason::TokenTooLarge, route, None, false);
        }
        let digest = token_digest(raw);
        let fp = Some(digest.fingerprint());
        let now = self.clock.now();

        if let Some(intro) = &policy.introspection
            && (policy.issuers.is_empty() || !looks_like_jws(raw))
        {
            return match intro.cache.inner.get(&digest.0) {
                Some(v) if now < v.until => match v.token {
                    Some(t) if now.saturating_sub(policy.clock_skew) < t.expires_at => {
                        finish(rule, policy, t, digest, true, now)
                    }
                    Some(_) => deny(DenyReason::Expired, route, fp, true),
                    None => deny(DenyReason::InactiveToken, route, fp, true),
                },
                _ => Decision::Introspect(Introspect {
                    route: &rule.info,
                    endpoint: &intro.endpoint,
                    digest,
                    policy: rule_policy(rule),
                    rule,
                }),
            };
        }

        let (verified, cache_hit) = match policy.cache.inner.get(&digest.0) {
            Some(t) if now.saturating_sub(policy.clock_skew) < t.expires_at => (t, true),
            Some(_) => {
                policy.cache.inner.remove(&digest.0);
                return deny(DenyReason::Expired, route, fp, true);
            }
            None => match policy.verify(raw, now) {
                Ok(t) => {
                    let t = Arc::new(t);
                    policy.cache.inner.insert(digest.0, t.clone());
                    (t, false)
                }
                Err(DenyReason::UnknownKey) => {
                    return Decision::Deny(Deny {
                        reason: DenyReason::UnknownKey,
                        route,
                        fingerprint: fp,
                        cache_hit: false,
                        missing_scopes: None,
                        refetch: policy.refetch_for(raw),
                    });
                }
                Err(reason) => return deny(reason, route, fp, false),
            },
        };
        finish(rule, policy, verified, digest, cache_hit, now)
    }

    /// Decides a request that [`Snapshot::authorize`] sent to introspection, given the
    /// endpoint's answer (`Err` when it could not be reached or answered garbage). The
    /// verdict is cached: an active token until `min(cacheTTL, exp)`, an inactive one for
    /// `negativeCacheTTL`; an unreachable endpoint is not cached and gives 503.
    pub fn complete_introspection<'s>(
        &'s self,
        pending: &Introspect<'s>,
        answer: Result<&Value, ()>,
    ) -> Decision<'s> {
        let policy = &self.policies[pending.policy];
        let route = Some(pending.route);
        let fp = Some(pending.digest.fingerprint());
        let Some(intro) = &policy.introspection else {
            return Decision::Deny(Deny {
                reason: DenyReason::InactiveToken,
                route,
                fingerprint: fp,
                cache_hit: false,
                missing_scopes: None,
                refetch: None,
            });
        };
        let now = self.clock.now();
        let deny = |reason| {
            Decision::Deny(Deny {
                reason,
                route,
                fingerprint: fp,
                cache_hit: false,
                missing_scopes: None,
                refetch: None,
            })
        };
        let Ok(answer) = answer else {
            return deny(DenyReason::IntrospectionUnavailable);
        };
        match policy.accept_introspection(intro, answer, now) {
            Some(t) => {
                let until = now.saturating_add(intro.cache_ttl).min(t.expires_at);
                let t = Arc::new(t);
                intro.cache.inner.insert(
                    pending.digest.0,
                    IntrospectionVerdict {
                        token: Some(t.clone()),
                        until,
                    },
                );
                finish(pending.rule, policy, t, pending.digest, false, now)
            }
            None => {
                intro.cache.inner.insert(
                    pending.digest.0,
                    IntrospectionVerdict {
                        token: None,
                        until: now.saturating_add(intro.negative_ttl),
                    },
                );
                deny(DenyReason::InactiveToken)
            }
        }
    }
}

fn rule_policy(rule: &CompiledRule) -> usize {
    match &rule.requirement {
        Requirement::Token { policy, .. } => *policy,
        Requirement::Public => 0,
    }
}

/// Revocations and scopes: checked on every request, whichever way the token was judged
/// and whether or not the verdict came from a cache.
fn finish<'s>(
    rule: &'s CompiledRule,
    policy: &CompiledPolicy,
    verified: Arc<VerifiedToken>,
    digest: TokenDigest,
    cache_hit: bool,
    now: i64,
) -> Decision<'s> {
    let route = Some(&rule.info);
    let fp = Some(digest.fingerprint());
    let Requirement::Token { all, any, .. } = &rule.requirement else {
        return Decision::Allow(Allow {
            route: &rule.info,
            token: None,
            fingerprint: None,
            cache_hit: false,
        });
    };
    if let Err(reason) = policy.revocations.check(&digest, &verified, now) {
        return Decision::Deny(Deny {
            reason,
            route,
            fingerprint: fp,
            cache_hit,
            missing_scopes: None,
            refetch: None,
        });
    }
    let missing: Vec<&str> = all
        .iter()
        .filter(|s| !verified.has_scope(s))
        .map(|s| &**s)
        .collect();
    let any_ok = any.is_empty() || any.iter().any(|s| verified.has_scope(s));
    if !missing.is_empty() || !any_ok {
        let mut scopes = missing;
        if !any_ok {
            scopes.extend(any.iter().map(|s| &**s));
        }
        return Decision::Deny(Deny {
            reason: DenyReason::InsufficientScope,
            route,
            fingerprint: fp,
            cache_hit,
            missing_scopes: Some(scopes.join(" ")),
            refetch: None,
        });
    }
    Decision::Allow(Allow {
        route: &rule.info,
        token: Some(verified),
        fingerprint: fp,
        cache_hit,
    })
}

/// Whether the query carries an `access_token` parameter (RFC 6750 section 2.3), which
/// Portcullis refuses: URLs end up in logs and Referer headers.
fn query_has_token(query: &str) -> bool {
    query.split('&').any(|pair| {
        let name = pair.split_once('=').map_or(pair, |(n, _)| n);
        name.eq_ignore_ascii_case("access_token") || name.eq_ignore_ascii_case("access%5Ftoken")
    })
}

/// Extracts the token from `Authorization: Bearer <token>` (scheme case-insensitive),
/// checking it is a well-formed `b64token` (RFC 6750 section 2.1).
pub fn bearer_token(h: AuthorizationHeader<'_>) -> Result<&str, DenyReason> {
    let raw = match h {
        AuthorizationHeader::Absent => return Err(DenyReason::MissingToken),
        AuthorizationHeader::Duplicated => return Err(DenyReason::DuplicateHeader),
        AuthorizationHeader::One(raw) => raw,
    };
    let Some(sp) = raw.iter().position(|b| *b == b' ') else {
        return Err(if raw.eq_ignore_ascii_case(b"bearer") {
            DenyReason::MalformedHeader
        } else {
            DenyReason::UnsupportedScheme
        });
    };
    if !raw[..sp].eq_ignore_ascii_case(b"bearer") {
        return Err(DenyReason::UnsupportedScheme);
    }
    let token = raw[sp..].trim_ascii_start();
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
