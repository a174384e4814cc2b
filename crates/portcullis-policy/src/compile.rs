//! `compile`: ApiRoutes, TokenPolicies and Secrets in, one [`Snapshot`] and a list of
//! [`CompileError`]s out.
//!
//! Every error names the object and the field path
//! (`ApiRoute shop/orders: spec.rules[2].requiredScopes[0]: ...`). A bad object is
//! reported and left out; it never stops the others. A route whose policy was left out
//! is left out too, with an error on its `policyRef`.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use jsonwebtoken::Algorithm;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use portcullis_api::{ApiRoute, AuthMode, TokenPolicy, parse_duration};

use crate::decision::{IntrospectionEndpoint, Refetch, RouteInfo, Upstream};
use crate::index::{CompiledRule, Requirement, RouteIndex};
use crate::keys::{KeySet, parse_algorithm};
use crate::revocation::RevocationSet;
use crate::snapshot::{
    CompiledIntrospection, CompiledIssuer, CompiledPolicy, IntrospectionCache, Snapshot, TokenCache,
};

/// A problem with one object, naming the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {namespace}/{name}: {path}: {message}")]
pub struct CompileError {
    /// `ApiRoute` or `TokenPolicy`.
    pub kind: &'static str,
    /// Namespace of the object.
    pub namespace: String,
    /// Name of the object.
    pub name: String,
    /// The field path, e.g. `spec.rules[2].requiredScopes[0]`.
    pub path: String,
    /// What is wrong, and what to do.
    pub message: String,
    /// A CamelCase reason for status conditions, e.g. `InvalidKeys`, `PolicyNotFound`.
    pub reason: &'static str,
}

impl CompileError {
    /// Whether the error is about a missing or unusable reference (a `ResolvedRefs`
    /// problem) rather than the object's own spec (an `Accepted` problem).
    pub fn is_ref_error(&self) -> bool {
        matches!(
            self.reason,
            "PolicyNotFound" | "PolicyNotReady" | "SecretNotFound" | "KeysNotFetched"
        )
    }
}

/// Settings for compilation.
#[derive(Debug, Clone)]
pub struct CompileOptions {
    /// Longest token accepted, in bytes (default 8 KiB).
    pub max_token_bytes: usize,
    /// Verified-token cache entries per policy (default 10,000).
    pub cache_capacity: usize,
    /// Run the CRDs' CEL rules on every object (default true; the API server already has
    /// when objects come from a cluster).
    pub validate_cel: bool,
    /// Key sets fetched from `jwks.uri`s, by URI, as JSON documents.
    pub remote_jwks: HashMap<String, serde_json::Value>,
    /// The clock the snapshot decides with.
    pub clock: Arc<dyn crate::Clock>,
    /// Default upstream connect timeout (5s).
    pub connect_timeout: Duration,
    /// Default time allowed for upstream response headers (30s).
    pub request_timeout: Duration,
}

impl Default for CompileOptions {
    fn default() -> Self {
        Self {
            max_token_bytes: 8 * 1024,
            cache_capacity: 10_000,
            validate_cel: true,
            remote_jwks: HashMap::new(),
            clock: Arc::new(crate::SystemClock),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// Compiles with default options.
pub fn compile(
    routes: &[ApiRoute],
    policies: &[TokenPolicy],
    secrets: &[Secret],
) -> (Snapshot, Vec<CompileError>) {
    compile_with(&CompileOptions::default(), routes, policies, secrets)
}

/// Compiles with the given options.
pub fn compile_with(
    options: &CompileOptions,
    routes: &[ApiRoute],
    policies: &[TokenPolicy],
    secrets: &[Secret],
) -> (Snapshot, Vec<CompileError>) {
    let mut errors = Vec::new();
    let secrets: HashMap<(String, String), &Secret> = secrets
        .iter()
        .map(|s| ((s.namespace().unwrap_or_default(), s.name_any()), s))
        .collect();

    // Policies, in a stable order.
    let mut sorted_policies: Vec<&TokenPolicy> = policies.iter().collect();
    sorted_policies.sort_by_key(|p| (p.namespace().unwrap_or_default(), p.name_any()));
    let mut compiled = Vec::new();
    let mut by_name: HashMap<(String, String), usize> = HashMap::new();
    let mut failed_policies: HashMap<(String, String), String> = HashMap::new();
    for p in sorted_policies {
        let key = (p.namespace().unwrap_or_default(), p.name_any());
        match compile_policy(options, p, &secrets) {
            Ok(cp) => {
                by_name.insert(key, compiled.len());
                compiled.push(cp);
            }
            Err(mut errs) => {
                failed_policies.insert(key, errs[0].message.clone());
                errors.append(&mut errs);
            }
        }
    }

    // Routes, oldest first, then by namespace/name: earlier routes win conflicts.
    let mut sorted_routes: Vec<&ApiRoute> = routes.iter().collect();
    sorted_routes.sort_by_key(|r| {
        (
            r.metadata.creation_timestamp.clone().map(|t| t.0),
            r.namespace().unwrap_or_default(),
            r.name_any(),
        )
    });
    let mut index = RouteIndex::default();
    let mut route_count = 0;
    for r in sorted_routes {
        match compile_route(
            options,
            r,
            &by_name,
            &failed_policies,
            &compiled,
            &mut index,
        ) {
            Ok(mut warnings) => {
                route_count += 1;
                errors.append(&mut warnings);
            }
            Err(mut errs) => errors.append(&mut errs),
        }
    }

    let snapshot = Snapshot::new(
        index,
        compiled,
        route_count,
        options.clock.clone(),
        options.max_token_bytes,
    );
    (snapshot, errors)
}

// === TokenPolicy ===

fn policy_error(
    p: &TokenPolicy,
    path: impl Into<String>,
    reason: &'static str,
    message: impl Into<String>,
) -> CompileError {
    CompileError {
        kind: "TokenPolicy",
        namespace: p.namespace().unwrap_or_default(),
        name: p.name_any(),
        path: path.into(),
        message: message.into(),
        reason,
    }
}

fn compile_policy(
    options: &CompileOptions,
    p: &TokenPolicy,
    secrets: &HashMap<(String, String), &Secret>,
) -> Result<CompiledPolicy, Vec<CompileError>> {
    let ns = p.namespace().unwrap_or_default();
    let spec = &p.spec;
    let mut errs = Vec::new();
    if options.validate_cel {
        for v in portcullis_api::validate::token_policy(p) {
            errs.push(policy_error(p, v.path, "Invalid", v.message));
        }
        if !errs.is_empty() {
            return Err(errs);
        }
    }
    let mut trust = std::collections::hash_map::DefaultHasher::new();
    if spec.issuers.is_empty() {
        errs.push(policy_error(
            p,
            "spec.issuers",
            "Invalid",
            "at least one issuer is required",
        ));
    }
    let mut issuers = HashMap::new();
    let mut introspection = None;
    for (i, iss) in spec.issuers.iter().enumerate() {
        let at = format!("spec.issuers[{i}]");
        if issuers.contains_key(&iss.issuer)
            || spec.issuers[..i].iter().any(|o| o.issuer == iss.issuer)
        {
            errs.push(policy_error(
                p,
                format!("{at}.issuer"),
                "Invalid",
                format!("issuer {:?} is listed twice", iss.issuer),
            ));
            continue;
        }
        if let Some(intro) = &iss.introspection {
            if introspection.is_some() {
                errs.push(policy_error(
                    p,
                    format!("{at}.introspection"),
                    "Invalid",
                    "at most one issuer per policy may use introspection: an opaque token names no issuer, so only one endpoint can judge it",
                ));
                continue;
            }
            match compile_introspection(p, &at, iss, intro, secrets, &mut trust) {
                Ok(c) => introspection = Some(c),
                Err(e) => errs.push(e),
            }
        }
        let jwks = match (&iss.jwks, &iss.introspection) {
            (Some(jwks), _) => jwks,
            (None, Some(_)) => continue,
            (None, None) => {
                errs.push(policy_error(
                    p,
                    at,
                    "Invalid",
                    "an issuer needs jwks (signed JWTs), introspection (opaque tokens), or both",
                ));
                continue;
            }
        };
        let mut algorithms = Vec::new();
        for (j, a) in iss.algorithms.iter().enumerate() {
            match parse_algorithm(a) {
                Some(alg) => algorithms.push(alg),
                None if a.eq_ignore_ascii_case("none") => errs.push(policy_error(
                    p,
                    format!("{at}.algorithms[{j}]"),
                    "InvalidAlgorithm",
                    "algorithm none is never allowed: tokens must be signed",
                )),
                None => errs.push(policy_error(
                    p,
                    format!("{at}.algorithms[{j}]"),
                    "InvalidAlgorithm",
                    format!(
                        "unknown algorithm {a:?}; use one of {}",
                        portcullis_api::SUPPORTED_ALGORITHMS.join(", ")
                    ),
                )),
            }
        }
        if algorithms.is_empty() {
            errs.push(policy_error(
                p,
                format!("{at}.algorithms"),
                "InvalidAlgorithm",
                "at least one signature algorithm is required",
            ));
            continue;
        }
        let hmac = algorithms
            .iter()
            .any(|a| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512));
        if iss.audiences.is_empty() {
            errs.push(policy_error(
                p,
                format!("{at}.audiences"),
                "Invalid",
                "at least one audience is required",
            ));
        }
        let remote_url = crate::remote::source_of(iss, |name, key| {
            secrets
                .get(&(ns.clone(), name.to_owned()))
                .and_then(|s| secret_value(s, key))
        })
        .map(|(key, url, ..)| (key, url));
        let inline_or_secret = (&jwks.inline, &jwks.secret_ref);
        let keys = match (inline_or_secret.0, inline_or_secret.1, &remote_url) {
            (Some(inline), None, None) => {
                if hmac {
                    Err(policy_error(
                        p,
                        format!("{at}.algorithms"),
                        "InvalidAlgorithm",
                        "HS* algorithms need a shared secret from a Secret (jwks.secretRef), not inline keys",
                    ))
                } else {
                    serde_json::to_value(inline)
                        .map_err(|e| e.to_string())
                        .and_then(|v| KeySet::from_jwks(&v, false).map_err(|e| e.to_string()))
                        .map_err(|e| policy_error(p, format!("{at}.jwks.inline"), "InvalidKeys", e))
                }
            }
            (None, Some(sref), None) => match secrets.get(&(ns.clone(), sref.name.clone())) {
                None => Err(policy_error(
                    p,
                    format!("{at}.jwks.secretRef"),
                    "SecretNotFound",
                    format!("Secret {ns}/{} not found", sref.name),
                )),
                Some(secret) => match secret_value(secret, &sref.key) {
                    None => Err(policy_error(
                        p,
                        format!("{at}.jwks.secretRef.key"),
                        "SecretNotFound",
                        format!("Secret {ns}/{} has no key {:?}", sref.name, sref.key),
                    )),
                    Some(bytes) => {
                        bytes.hash(&mut trust);
                        KeySet::from_secret_data(&bytes).map_err(|e| {
                            policy_error(
                                p,
                                format!("{at}.jwks.secretRef"),
                                "InvalidKeys",
                                format!("Secret {ns}/{} key {:?}: {e}", sref.name, sref.key),
                            )
                        })
                    }
                },
            },
            (None, None, Some((key, url))) => {
                let field = if jwks.uri.is_some() {
                    format!("{at}.jwks.uri")
                } else {
                    format!("{at}.jwks.discovery")
                };
                match options.remote_jwks.get(key) {
                    None => Err(policy_error(
                        p,
                        field,
                        "KeysNotFetched",
                        format!("the key set from {url} has not been fetched yet"),
                    )),
                    Some(doc) => {
                        doc.to_string().hash(&mut trust);
                        KeySet::from_remote_jwks(doc).map_err(|e| {
                            policy_error(p, field, "InvalidKeys", format!("{url}: {e}"))
                        })
                    }
                }
            }
            _ => Err(policy_error(
                p,
                format!("{at}.jwks"),
                "Invalid",
                "exactly one of inline, secretRef, uri or discovery: true is required",
            )),
        };
        let mut keys = match keys {
            Ok(k) => k,
            Err(e) => {
                errs.push(e);
                continue;
            }
        };
        if let Err(e) = keys.retain_fitting(&algorithms) {
            errs.push(policy_error(
                p,
                format!("{at}.jwks"),
                "InvalidKeys",
                e.to_string(),
            ));
            continue;
        }
        let refetch = remote_url.map(|(key, _)| {
            let (min, _) = refresh_bounds(jwks);
            Refetch {
                url: key.into(),
                issuer: iss.issuer.as_str().into(),
                min_interval: min,
            }
        });
        for (field, value) in [
            ("minRefreshInterval", &jwks.min_refresh_interval),
            ("maxRefreshInterval", &jwks.max_refresh_interval),
        ] {
            if let Some(Err(e)) = value.as_deref().map(parse_duration) {
                errs.push(policy_error(
                    p,
                    format!("{at}.jwks.{field}"),
                    "InvalidDuration",
                    e,
                ));
            }
        }
        issuers.insert(
            iss.issuer.clone(),
            CompiledIssuer {
                audiences: iss.audiences.clone(),
                algorithms,
                keys,
                refetch,
            },
        );
    }

    let duration = |field: &str,
                    value: &Option<String>,
                    default: i64,
                    errs: &mut Vec<CompileError>|
     -> Option<i64> {
        match value {
            None => Some(default),
            Some(v) => match parse_duration(v) {
                Ok(d) => Some(d.as_secs() as i64),
                Err(e) => {
                    errs.push(policy_error(
                        p,
                        format!("spec.{field}"),
                        "InvalidDuration",
                        e,
                    ));
                    None
                }
            },
        }
    };
    let clock_skew = duration("clockSkew", &spec.clock_skew, 30, &mut errs).unwrap_or(30);
    let max_lifetime = if spec.max_token_lifetime.is_some() {
        duration("maxTokenLifetime", &spec.max_token_lifetime, 0, &mut errs)
    } else {
        None
    };

    let mut forward = Vec::new();
    for (claim, header) in &spec.forward_claims {
        match HeaderName::from_bytes(header.as_bytes()) {
            Ok(h) if is_reserved_header(&h) => errs.push(policy_error(
                p,
                format!("spec.forwardClaims.{claim}"),
                "Invalid",
                format!("{header} cannot carry a claim: it is a reserved or hop-by-hop header"),
            )),
            Ok(h) => {
                if forward.iter().any(|(_, existing)| *existing == h) {
                    errs.push(policy_error(
                        p,
                        format!("spec.forwardClaims.{claim}"),
                        "Invalid",
                        format!("header {header} is the target of two claims"),
                    ));
                } else {
                    forward.push((claim.clone(), h));
                }
            }
            Err(_) => errs.push(policy_error(
                p,
                format!("spec.forwardClaims.{claim}"),
                "Invalid",
                format!("{header:?} is not a valid HTTP header name"),
            )),
        }
    }

    let mut revocations = RevocationSet::default();
    for (i, r) in spec.revocations.iter().enumerate() {
        let at = format!("spec.revocations[{i}]");
        let expiry = match r.expires_at.as_deref().map(parse_time) {
            None => None,
            Some(Ok(t)) => Some(t),
            Some(Err(e)) => {
                errs.push(policy_error(
                    p,
                    format!("{at}.expiresAt"),
                    "InvalidRevocation",
                    e,
                ));
                continue;
            }
        };
        let selectors = [
            r.jti.is_some(),
            r.token_sha256.is_some(),
            r.subject.is_some(),
            r.key_id.is_some(),
        ];
        if selectors.iter().filter(|s| **s).count() != 1 {
            errs.push(policy_error(p, at, "InvalidRevocation", "a revocation needs exactly one of jti, tokenSha256, subject (with issuedBefore) or keyId"));
            continue;
        }
        if let Some(jti) = &r.jti {
            revocations.add_jti(jti, expiry);
        } else if let Some(h) = &r.token_sha256 {
            let mut digest = [0u8; 32];
            match hex::decode_to_slice(h, &mut digest) {
                Ok(()) if h.bytes().all(|b| !b.is_ascii_uppercase()) => {
                    revocations.add_token(digest, expiry)
                }
                _ => errs.push(policy_error(
                    p,
                    format!("{at}.tokenSha256"),
                    "InvalidRevocation",
                    "must be the lowercase hex SHA-256 of the token (64 characters)",
                )),
            }
        } else if let Some(sub) = &r.subject {
            match r.issued_before.as_deref().map(parse_time) {
                Some(Ok(before)) => revocations.add_subject(sub, before, expiry),
                Some(Err(e)) => errs.push(policy_error(
                    p,
                    format!("{at}.issuedBefore"),
                    "InvalidRevocation",
                    e,
                )),
                None => errs.push(policy_error(
                    p,
                    format!("{at}.issuedBefore"),
                    "InvalidRevocation",
                    "subject needs issuedBefore",
                )),
            }
        } else if let Some(kid) = &r.key_id {
            revocations.add_key_id(kid, expiry);
        }
    }

    if !errs.is_empty() {
        return Err(errs);
    }

    // What the verified-token cache depends on: everything but revocations, which are
    // checked on every request anyway. Equal hashes let a new snapshot keep the cache.
    if let Ok(v) = serde_json::to_string(&(
        &spec.issuers,
        &spec.scope_claim,
        &spec.clock_skew,
        &spec.max_token_lifetime,
        &spec.required_claims,
        &spec.forward_claims,
    )) {
        v.hash(&mut trust);
    }

    let forwarded_header_names: Arc<[HeaderName]> =
        forward.iter().map(|(_, h)| h.clone()).collect();
    Ok(CompiledPolicy {
        id: format!("{ns}/{}", p.name_any()).into(),
        issuers,
        scope_claim: spec.scope_claim.clone().unwrap_or_else(|| "scope".into()),
        clock_skew,
        max_lifetime,
        required_claims: spec.required_claims.clone(),
        forward,
        forwarded_header_names,
        revocations,
        trust_hash: trust.finish(),
        cache: Arc::new(TokenCache::new(options.cache_capacity)),
        introspection: introspection.map(|(endpoint, audiences, ttl, negative_ttl)| {
            CompiledIntrospection {
                endpoint,
                audiences,
                cache_ttl: ttl,
                negative_ttl,
                cache: Arc::new(IntrospectionCache::new(options.cache_capacity)),
            }
        }),
    })
}

/// `minRefreshInterval` and `maxRefreshInterval` of a key source, with their defaults; the
/// minimum is at least [`crate::remote::MIN_REFRESH_FLOOR`] and the maximum at least the
/// minimum, so no policy can make a source be fetched in a tight loop.
pub(crate) fn refresh_bounds(jwks: &portcullis_api::JwksSource) -> (Duration, Duration) {
    let dur = |v: &Option<String>, d: Duration| {
        v.as_deref()
            .and_then(|v| parse_duration(v).ok())
            .filter(|d| !d.is_zero())
            .unwrap_or(d)
    };
    let min = dur(
        &jwks.min_refresh_interval,
        crate::remote::DEFAULT_MIN_REFRESH,
    )
    .max(crate::remote::MIN_REFRESH_FLOOR);
    let max = dur(
        &jwks.max_refresh_interval,
        crate::remote::DEFAULT_MAX_REFRESH,
    )
    .max(min);
    (min, max)
}

/// Whether a URL may be fetched: https, or plain http to a loopback address.
pub fn url_allowed(url: &str) -> bool {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return false;
    };
    match (uri.scheme_str(), uri.host()) {
        (Some("https"), Some(_)) => true,
        (Some("http"), Some(host)) => {
            host == "localhost"
                || host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        _ => false,
    }
}

type IntrospectionParts = (IntrospectionEndpoint, Vec<String>, i64, i64);

// Compile errors are the cold path; boxing them would only obscure the code.
#[allow(clippy::result_large_err)]
fn compile_introspection(
    p: &TokenPolicy,
    at: &str,
    iss: &portcullis_api::IssuerSpec,
    intro: &portcullis_api::IntrospectionSpec,
    secrets: &HashMap<(String, String), &Secret>,
    trust: &mut impl Hasher,
) -> Result<IntrospectionParts, CompileError> {
    let ns = p.namespace().unwrap_or_default();
    if !url_allowed(&intro.endpoint) {
        return Err(policy_error(
            p,
            format!("{at}.introspection.endpoint"),
            "Invalid",
            "the endpoint must be an https:// URL (plain http only for loopback addresses)",
        ));
    }
    let name = &intro.credentials_secret_ref.name;
    let secret = secrets.get(&(ns.clone(), name.clone())).ok_or_else(|| {
        policy_error(
            p,
            format!("{at}.introspection.credentialsSecretRef"),
            "SecretNotFound",
            format!("Secret {ns}/{name} not found"),
        )
    })?;
    let mut creds = Vec::new();
    for key in [INTROSPECTION_CLIENT_ID_KEY, INTROSPECTION_CLIENT_SECRET_KEY] {
        let v = secret_value(secret, key)
            .and_then(|v| String::from_utf8(v).ok())
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                policy_error(
                    p,
                    format!("{at}.introspection.credentialsSecretRef"),
                    "SecretNotFound",
                    format!("Secret {ns}/{name} has no non-empty UTF-8 key {key:?}"),
                )
            })?;
        v.hash(trust);
        creds.push(v);
    }
    let dur = |field: &str, v: &Option<String>, d: u64| -> Result<Duration, CompileError> {
        match v {
            None => Ok(Duration::from_secs(d)),
            Some(v) => parse_duration(v).map_err(|e| {
                policy_error(
                    p,
                    format!("{at}.introspection.{field}"),
                    "InvalidDuration",
                    e,
                )
            }),
        }
    };
    let ttl = dur("cacheTTL", &intro.cache_ttl, 60)?;
    let negative = dur("negativeCacheTTL", &intro.negative_cache_ttl, 10)?;
    let timeout = match &intro.timeout {
        None => Duration::from_secs(2),
        Some(_) => dur("timeout", &intro.timeout, 2)?,
    };
    let secret_text = creds.pop().unwrap_or_default();
    let id_text = creds.pop().unwrap_or_default();
    Ok((
        IntrospectionEndpoint {
            issuer: iss.issuer.as_str().into(),
            url: intro.endpoint.as_str().into(),
            client_id: id_text.into(),
            client_secret: secret_text.into(),
            timeout: timeout.max(Duration::from_millis(1)),
        },
        iss.audiences.clone(),
        // The snapshot's clock counts seconds: sub-second TTLs round up to one second.
        ttl.as_secs_f64().ceil().max(1.0) as i64,
        negative.as_secs_f64().ceil().max(1.0) as i64,
    ))
}

/// Key of the client id in an introspection credentials Secret.
pub const INTROSPECTION_CLIENT_ID_KEY: &str = "client-id";
/// Key of the client secret in an introspection credentials Secret.
pub const INTROSPECTION_CLIENT_SECRET_KEY: &str = "client-secret";

/// Headers a claim may never be written into.
fn is_reserved_header(h: &HeaderName) -> bool {
    use http::header::*;
    [
        AUTHORIZATION,
        HOST,
        CONNECTION,
        TRANSFER_ENCODING,
        CONTENT_LENGTH,
        UPGRADE,
        TE,
        TRAILER,
        PROXY_AUTHORIZATION,
        COOKIE,
    ]
    .contains(h)
        || h.as_str() == "keep-alive"
        || h.as_str() == "proxy-connection"
}

/// Value of `key` in a Secret's `data` (or, as written in standalone manifests, `stringData`).
pub(crate) fn secret_value(secret: &Secret, key: &str) -> Option<Vec<u8>> {
    if let Some(v) = secret.data.as_ref().and_then(|d| d.get(key)) {
        return Some(v.0.clone());
    }
    secret
        .string_data
        .as_ref()
        .and_then(|d: &BTreeMap<String, String>| d.get(key))
        .map(|s| s.as_bytes().to_vec())
}

/// RFC 3339 -> seconds since the epoch.
pub(crate) fn parse_time(s: &str) -> Result<i64, String> {
    s.parse::<k8s_openapi::jiff::Timestamp>()
        .map(|t| t.as_second())
        .map_err(|_| format!("{s:?} is not an RFC 3339 time such as 2026-01-31T12:00:00Z"))
}

// === ApiRoute ===

fn route_error(
    r: &ApiRoute,
    path: impl Into<String>,
    reason: &'static str,
    message: impl Into<String>,
) -> CompileError {
    CompileError {
        kind: "ApiRoute",
        namespace: r.namespace().unwrap_or_default(),
        name: r.name_any(),
        path: path.into(),
        message: message.into(),
        reason,
    }
}

/// Compiles one route into `index`. On success, returns non-fatal errors (rules dropped
/// because an earlier route already claims the same match).
fn compile_route(
    options: &CompileOptions,
    r: &ApiRoute,
    by_name: &HashMap<(String, String), usize>,
    failed_policies: &HashMap<(String, String), String>,
    policies: &[CompiledPolicy],
    index: &mut RouteIndex,
) -> Result<Vec<CompileError>, Vec<CompileError>> {
    let ns = r.namespace().unwrap_or_default();
    let spec = &r.spec;
    let mut errs = Vec::new();
    if options.validate_cel {
        for v in portcullis_api::validate::api_route(r) {
            errs.push(route_error(r, v.path, "Invalid", v.message));
        }
        if !errs.is_empty() {
            return Err(errs);
        }
    }
    if spec.hosts.is_empty() {
        errs.push(route_error(
            r,
            "spec.hosts",
            "Invalid",
            "at least one host is required",
        ));
    }
    for (i, h) in spec.hosts.iter().enumerate() {
        let bare = h.strip_prefix("*.").unwrap_or(h);
        if bare.is_empty()
            || bare.contains(['*', ':', '/'])
            || h.bytes().any(|b| b.is_ascii_uppercase())
        {
            errs.push(route_error(
                r,
                format!("spec.hosts[{i}]"),
                "Invalid",
                format!("{h:?} must be a lowercase DNS name, optionally starting with '*.'"),
            ));
        }
    }
    let key = (ns.clone(), spec.policy_ref.name.clone());
    let policy = match by_name.get(&key) {
        Some(i) => Some(*i),
        None => {
            let (reason, message) = match failed_policies.get(&key) {
                Some(why) => (
                    "PolicyNotReady",
                    format!(
                        "TokenPolicy {ns}/{} is not usable: {why}",
                        spec.policy_ref.name
                    ),
                ),
                None => (
                    "PolicyNotFound",
                    format!("TokenPolicy {ns}/{} not found", spec.policy_ref.name),
                ),
            };
            errs.push(route_error(r, "spec.policyRef.name", reason, message));
            None
        }
    };
    let upstream = match (&spec.backend.service, &spec.backend.url) {
        (Some(svc), None) => format!("http://{}.{ns}.svc:{}", svc.name, svc.port)
            .parse::<http::Uri>()
            .map_err(|e| e.to_string())
            .and_then(upstream_from_uri),
        (None, Some(url)) => url
            .parse::<http::Uri>()
            .map_err(|e| e.to_string())
            .and_then(upstream_from_uri),
        _ => Err("exactly one of service or url is required".into()),
    };
    let upstream = match upstream {
        Ok(u) => Some(Arc::new(u)),
        Err(e) => {
            errs.push(route_error(r, "spec.backend", "InvalidBackend", e));
            None
        }
    };
    let timeout = |field: &str,
                   v: Option<&String>,
                   default: Duration,
                   errs: &mut Vec<CompileError>| match v {
        None => default,
        Some(v) => parse_duration(v).unwrap_or_else(|e| {
            errs.push(route_error(
                r,
                format!("spec.timeouts.{field}"),
                "InvalidDuration",
                e,
            ));
            default
        }),
    };
    let t = spec.timeouts.clone().unwrap_or_default();
    let connect_timeout = timeout(
        "connect",
        t.connect.as_ref(),
        options.connect_timeout,
        &mut errs,
    );
    let request_timeout = timeout(
        "request",
        t.request.as_ref(),
        options.request_timeout,
        &mut errs,
    );

    // Rules: validate everything before touching the index.
    struct Pending {
        i: usize,
        path: String,
        is_prefix: bool,
        rule: CompiledRule,
    }
    let mut pending = Vec::new();
    let id: Arc<str> = format!("{ns}/{}", r.name_any()).into();
    for (i, rule) in spec.rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        let (path, is_prefix) = match (&rule.matches.path, &rule.matches.path_prefix) {
            (Some(p), None) => (p.clone(), false),
            (None, Some(p)) => (p.clone(), true),
            _ => {
                errs.push(route_error(
                    r,
                    format!("{at}.match"),
                    "Invalid",
                    "exactly one of path or pathPrefix is required",
                ));
                continue;
            }
        };
        if !path.starts_with('/') {
            errs.push(route_error(
                r,
                format!("{at}.match"),
                "Invalid",
                "paths must start with /",
            ));
            continue;
        }
        let mut methods = Vec::new();
        for (j, m) in rule.matches.methods.iter().enumerate() {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                errs.push(route_error(
                    r,
                    format!("{at}.match.methods[{j}]"),
                    "Invalid",
                    format!("{m:?} is not an upper-case HTTP method"),
                ));
            }
            methods.push(Box::<str>::from(m.as_str()));
        }
        let scopes = |field: &str,
                      list: &[String],
                      errs: &mut Vec<CompileError>|
         -> Box<[Box<str>]> {
            for (j, s) in list.iter().enumerate() {
                if s.is_empty()
                    || !s.bytes().all(|b| {
                        b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b)
                    })
                {
                    errs.push(route_error(r, format!("{at}.{field}[{j}]"), "InvalidScope", format!("{s:?} is not a scope: one word of printable characters, no spaces, quotes or backslashes")));
                }
            }
            list.iter().map(|s| Box::from(s.as_str())).collect()
        };
        let all = scopes("requiredScopes", &rule.required_scopes, &mut errs);
        let any = scopes("anyScopes", &rule.any_scopes, &mut errs);
        let requirement = match rule.auth.unwrap_or_default() {
            AuthMode::None if !all.is_empty() || !any.is_empty() => {
                errs.push(route_error(r, format!("{at}.auth"), "Invalid", "a rule with auth: none is public and cannot also demand requiredScopes or anyScopes"));
                continue;
            }
            AuthMode::None => Requirement::Public,
            AuthMode::Required => Requirement::Token {
                policy: policy.unwrap_or(usize::MAX),
                all,
                any,
            },
        };
        let (Some(policy), Some(upstream)) = (policy, upstream.clone()) else {
            continue;
        };
        pending.push(Pending {
            i,
            path,
            is_prefix,
            rule: CompiledRule {
                info: RouteInfo {
                    id: id.clone(),
                    rule: i,
                    upstream,
                    pass_authorization: spec.pass_authorization,
                    connect_timeout,
                    request_timeout,
                    forwarded_header_names: policies[policy].forwarded_header_names.clone(),
                },
                methods: methods.into(),
                requirement,
            },
        });
    }
    if spec.rules.is_empty() {
        errs.push(route_error(
            r,
            "spec.rules",
            "Invalid",
            "at least one rule is required: a route without rules answers nothing",
        ));
    }
    if !errs.is_empty() {
        return Err(errs);
    }

    // Conflicts: an earlier route keeps the match; this rule is dropped and reported.
    let mut warnings = Vec::new();
    for p in pending {
        let mut conflict = None;
        for host in &spec.hosts {
            if let Some(existing) =
                index
                    .host_mut(host)
                    .conflict(&p.path, p.is_prefix, &p.rule.methods)
            {
                conflict = Some((host.clone(), existing.info.id.clone(), existing.info.rule));
                break;
            }
        }
        if let Some((host, other, other_rule)) = conflict {
            warnings.push(route_error(r, format!("spec.rules[{}].match", p.i), "RuleConflict", format!("host {host} path {} is already claimed by ApiRoute {other} rule {other_rule}; this rule is ignored", p.path)));
            continue;
        }
        let rule = Arc::new(p.rule);
        for host in &spec.hosts {
            index
                .host_mut(host)
                .insert(&p.path, p.is_prefix, rule.clone());
        }
        index.rules += 1;
    }
    Ok(warnings)
}

fn upstream_from_uri(uri: http::Uri) -> Result<Upstream, String> {
    let scheme = uri.scheme().cloned().ok_or("the URL needs a scheme")?;
    if scheme != http::uri::Scheme::HTTP && scheme != http::uri::Scheme::HTTPS {
        return Err(format!("unsupported scheme {scheme}"));
    }
    let authority = uri.authority().cloned().ok_or("the URL needs a host")?;
    if uri.query().is_some() {
        return Err("the URL must not carry a query".into());
    }
    let base_path = uri.path().trim_end_matches('/').to_string();
    Ok(Upstream {
        scheme,
        authority,
        base_path,
    })
}
