//! One TokenPolicy -> a [`CompiledPolicy`], or every error found in it.
//!
//! The issuers' JWT side (algorithms, key sources) is in [`super::issuer`], their
//! introspection side in [`super::introspection`]; revocations compile on their own
//! ([`RevocationSet::compile`]).

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use http::HeaderName;
use portcullis_api::{TokenPolicy, parse_duration};

use super::objects::{Named, SecretIndex};
use super::{CompileError, CompileOptions, CompileReason};
use crate::revocation::RevocationSet;
use crate::snapshot::{
    CompiledIntrospection, CompiledPolicy, IntrospectionCache, PolicyTrust, TokenCache,
};

/// An error about `p` at `path`.
pub(super) fn policy_error(
    p: &TokenPolicy,
    path: impl Into<String>,
    reason: CompileReason,
    message: impl Into<String>,
) -> CompileError {
    CompileError {
        kind: "TokenPolicy",
        namespace: p.ns(),
        name: p.name_any(),
        path: path.into(),
        message: message.into(),
        reason,
    }
}

/// Compiles `p`, or returns every error found (the policy is then left out).
pub(super) fn compile_policy(
    options: &CompileOptions,
    p: &TokenPolicy,
    secrets: &SecretIndex<'_>,
) -> Result<CompiledPolicy, Vec<CompileError>> {
    let spec = &p.spec;
    let mut errs = Vec::new();
    if let Some(rules) = &options.spec_rules {
        for v in (rules.token_policy)(p) {
            errs.push(policy_error(p, v.path, CompileReason::Invalid, v.message));
        }
        if !errs.is_empty() {
            return Err(errs);
        }
    }
    let mut trust = std::collections::hash_map::DefaultHasher::new();
    if spec.issuers.is_empty() && spec.api_keys.is_none() {
        errs.push(policy_error(
            p,
            "spec.issuers",
            CompileReason::Invalid,
            "at least one issuer is required (or spec.apiKeys)",
        ));
    }
    if let Some(header) = spec.api_keys.as_ref().and_then(|k| k.header.as_deref())
        && crate::apikeys::is_reserved_header(header)
    {
        errs.push(policy_error(
            p,
            "spec.apiKeys.header",
            CompileReason::Invalid,
            format!(
                "{header} cannot carry API keys: it means something else to clients, proxies or \
                 backends (send keys as Authorization: Bearer pcl_... or in a header of your own, \
                 such as x-api-key)"
            ),
        ));
    }
    let mut issuers = std::collections::HashMap::new();
    let mut introspection = None;
    for (i, iss) in spec.issuers.iter().enumerate() {
        let at = format!("spec.issuers[{i}]");
        if issuers.contains_key(&iss.issuer)
            || spec.issuers[..i].iter().any(|o| o.issuer == iss.issuer)
        {
            errs.push(policy_error(
                p,
                format!("{at}.issuer"),
                CompileReason::Invalid,
                format!("issuer {:?} is listed twice", iss.issuer),
            ));
            continue;
        }
        if let Some(intro) = &iss.introspection {
            if introspection.is_some() {
                errs.push(policy_error(
                    p,
                    format!("{at}.introspection"),
                    CompileReason::Invalid,
                    "at most one issuer per policy may use introspection: an opaque token names no issuer, so only one endpoint can judge it",
                ));
                continue;
            }
            match super::introspection::compile_introspection(
                p, &at, iss, intro, secrets, &mut trust,
            ) {
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
                    CompileReason::Invalid,
                    "an issuer needs jwks (signed JWTs), introspection (opaque tokens), or both",
                ));
                continue;
            }
        };
        let issuer = super::issuer::JwtIssuer {
            options,
            policy: p,
            at: &at,
            issuer: iss,
            jwks,
            secrets,
        };
        if let Some(compiled) = issuer.compile(&mut trust, &mut errs) {
            issuers.insert(iss.issuer.clone(), compiled);
        }
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
                        CompileReason::InvalidDuration,
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

    let forward = forward_claims(p, &mut errs);
    if let Some(header) = spec.api_keys.as_ref().and_then(|k| k.header.as_deref())
        && forward
            .iter()
            .any(|(_, h)| h.as_str().eq_ignore_ascii_case(header))
    {
        errs.push(policy_error(
            p,
            "spec.apiKeys.header",
            CompileReason::Invalid,
            format!("{header} is also a forwardClaims header: the key header is removed before forwarding, the claim header is set by the gateway; use another name"),
        ));
    }

    let (revocations, revocation_errors) = RevocationSet::compile(&spec.revocations);
    for e in revocation_errors {
        errs.push(policy_error(
            p,
            e.path,
            CompileReason::InvalidRevocation,
            e.message,
        ));
    }

    let quotas = match crate::quota::compile_quotas(
        &format!("{}/{}", p.ns(), p.name_any()),
        &spec.llm_budgets,
        &spec.rate_limits,
    ) {
        Ok(q) if q.is_empty() => None,
        Ok(q) => Some(Arc::new(q)),
        Err(list) => {
            for (path, message) in list {
                errs.push(policy_error(p, path, CompileReason::Invalid, message));
            }
            None
        }
    };

    let events = spec.identity_events.as_ref().map(|ev| {
        let retention = match &ev.retention {
            Some(_) => duration("identityEvents.retention", &ev.retention, 0, &mut errs)
                .unwrap_or(86_400),
            None => max_lifetime.map_or(86_400, |m| m.saturating_add(clock_skew)),
        };
        let logout = ev.back_channel_logout.as_ref().map(|b| {
            for (i, iss) in b.issuers.iter().enumerate() {
                if !spec.issuers.iter().any(|x| &x.issuer == iss && x.jwks.is_some()) {
                    errs.push(policy_error(
                        p,
                        format!("spec.identityEvents.backChannelLogout.issuers[{i}]"),
                        CompileReason::Invalid,
                        format!("{iss:?} is not an issuer of this policy with jwks: its keys verify the logout tokens"),
                    ));
                }
            }
            if b.audiences.is_empty() {
                errs.push(policy_error(
                    p,
                    "spec.identityEvents.backChannelLogout.audiences",
                    CompileReason::Invalid,
                    "list the client ID the identity provider sends logout tokens to",
                ));
            }
            let max_age = duration(
                "identityEvents.backChannelLogout.maxAge",
                &b.max_age,
                120,
                &mut errs,
            )
            .unwrap_or(120);
            crate::events::CompiledLogout {
                audiences: b.audiences.clone(),
                issuers: b.issuers.clone(),
                scope: b.revoke.unwrap_or_default(),
                max_age,
            }
        });
        let streams = compile_streams(options, p, secrets, &mut errs);
        Arc::new(crate::events::CompiledEvents {
            logout,
            streams,
            retention,
        })
    });

    let mut dpop = std::collections::HashMap::new();
    for (i, iss) in spec.issuers.iter().enumerate() {
        let Some(d) = &iss.dpop else {
            dpop.insert(iss.issuer.clone(), crate::dpop::DpopConfig::default());
            continue;
        };
        let at = format!("spec.issuers[{i}].dpop");
        let mut algorithms = Vec::new();
        for (j, a) in d.algorithms.iter().enumerate() {
            match crate::keys::parse_algorithm(a).filter(|_| !a.starts_with("HS")) {
                Some(alg) => algorithms.push(alg),
                None => errs.push(policy_error(
                    p,
                    format!("{at}.algorithms[{j}]"),
                    CompileReason::Invalid,
                    format!("{a:?} is not an asymmetric algorithm a DPoP proof may use (RFC 9449 section 4.2)"),
                )),
            }
        }
        if algorithms.is_empty() {
            algorithms = crate::dpop::DEFAULT_ALGORITHMS.to_vec();
        }
        let max_age = duration(
            &format!("issuers[{i}].dpop.maxAge"),
            &d.max_age,
            60,
            &mut errs,
        )
        .unwrap_or(60);
        if max_age < 1 {
            errs.push(policy_error(
                p,
                format!("{at}.maxAge"),
                CompileReason::InvalidDuration,
                "maxAge must be at least 1s (proof times have a one-second grain)",
            ));
        }
        let mut cfg = crate::dpop::DpopConfig::new(
            d.mode == Some(portcullis_api::DpopMode::Required),
            algorithms,
            max_age,
        );
        if let Some(n) = &d.nonce {
            let lifetime = duration(
                &format!("issuers[{i}].dpop.nonce.lifetime"),
                &n.lifetime,
                300,
                &mut errs,
            )
            .unwrap_or(300);
            if !(10..=3600).contains(&lifetime) {
                errs.push(policy_error(
                    p,
                    format!("{at}.nonce.lifetime"),
                    CompileReason::InvalidDuration,
                    "lifetime must be from 10s to 1h",
                ));
            }
            let r = &n.secret_ref;
            let ns = p.ns();
            match secrets
                .get(&(ns.clone(), r.name.clone()))
                .and_then(|sec| super::objects::secret_value(sec, &r.key))
            {
                // At least 256 bits, or nonces could be guessed (RFC 2104 section 3).
                Some(key) if key.len() >= 32 => {
                    cfg.nonce = Some(crate::dpop::NonceKey::new(&key, &iss.issuer, lifetime));
                }
                Some(_) => errs.push(policy_error(
                    p,
                    format!("{at}.nonce.secretRef"),
                    CompileReason::Invalid,
                    format!(
                        "Secret {ns}/{} key {:?} holds fewer than 32 bytes: use e.g. `openssl rand -base64 48`",
                        r.name, r.key
                    ),
                )),
                None => errs.push(policy_error(
                    p,
                    format!("{at}.nonce.secretRef"),
                    CompileReason::SecretNotFound,
                    format!("Secret {ns}/{} has no key {:?}", r.name, r.key),
                )),
            }
        }
        dpop.insert(iss.issuer.clone(), cfg);
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
    let policy_trust = PolicyTrust {
        id: format!("{}/{}", p.ns(), p.name_any()).into(),
        issuers,
        scope_claim: spec.scope_claim.clone().unwrap_or_else(|| "scope".into()),
        clock_skew,
        max_lifetime,
        required_claims: spec.required_claims.clone(),
        forward,
        forwarded_header_names,
        trust_hash: trust.finish(),
        cache: Arc::new(TokenCache::new(options.cache_capacity)),
        introspection: introspection.map(|parts| CompiledIntrospection {
            endpoint: parts.endpoint,
            audiences: parts.audiences,
            cache_ttl: parts.cache_ttl,
            negative_ttl: parts.negative_ttl,
            cache: Arc::new(IntrospectionCache::new(options.cache_capacity)),
        }),
        quotas,
        events,
        dpop,
        certificate_required: spec
            .issuers
            .iter()
            .filter(|i| i.certificate_bound == Some(portcullis_api::CertificateBinding::Required))
            .map(|i| i.issuer.clone())
            .collect(),
        // Proofs live maxAge + 2 x clockSkew (120 s by default): a million of them is about
        // 8,000 DPoP requests a second per policy on one proxy; past it, fresh proofs are
        // refused (closed) rather than used ones forgotten early.
        dpop_replay: Arc::new(crate::dpop::ReplayCache::new(1_000_000)),
    };
    Ok(CompiledPolicy::new(policy_trust, revocations))
}

/// `spec.forwardClaims`: claim -> header, refusing reserved headers and a header named
/// twice.
fn forward_claims(p: &TokenPolicy, errs: &mut Vec<CompileError>) -> Vec<(String, HeaderName)> {
    let mut forward: Vec<(String, HeaderName)> = Vec::new();
    for (claim, header) in &p.spec.forward_claims {
        let at = format!("spec.forwardClaims.{claim}");
        match HeaderName::from_bytes(header.as_bytes()) {
            Ok(h) if is_reserved_header(&h) => errs.push(policy_error(
                p,
                at,
                CompileReason::Invalid,
                format!("{header} cannot carry a claim: it is a reserved or hop-by-hop header"),
            )),
            Ok(h) => {
                if forward.iter().any(|(_, existing)| *existing == h) {
                    errs.push(policy_error(
                        p,
                        at,
                        CompileReason::Invalid,
                        format!("header {header} is the target of two claims"),
                    ));
                } else {
                    forward.push((claim.clone(), h));
                }
            }
            Err(_) => errs.push(policy_error(
                p,
                at,
                CompileReason::Invalid,
                format!("{header:?} is not a valid HTTP header name"),
            )),
        }
    }
    forward
}

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

/// `spec.identityEvents.sharedSignals`: each stream with its transmitter's keys (when
/// fetched) and its secrets. A stream whose keys are not fetched yet still compiles (its
/// SETs wait): a transmitter being down must not take the policy's routes with it.
fn compile_streams(
    options: &CompileOptions,
    p: &TokenPolicy,
    secrets: &SecretIndex<'_>,
    errs: &mut Vec<CompileError>,
) -> Vec<crate::events::CompiledStream> {
    use portcullis_api::SubjectFormat;
    let Some(ev) = &p.spec.identity_events else {
        return Vec::new();
    };
    let ns = p.ns();
    let id: Arc<str> = format!("{ns}/{}", p.name_any()).into();
    let policy_issuers: Vec<String> = p.spec.issuers.iter().map(|i| i.issuer.clone()).collect();
    let mut out = Vec::new();
    for (i, s) in ev.shared_signals.iter().enumerate() {
        let at = format!("spec.identityEvents.sharedSignals[{i}]");
        let mut secret = |field: &str, r: &portcullis_api::SecretKeyRef| -> Option<String> {
            let v = secrets
                .get(&(ns.clone(), r.name.clone()))
                .and_then(|sec| super::objects::secret_value(sec, &r.key))
                .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
                .filter(|v| !v.is_empty());
            if v.is_none() {
                errs.push(policy_error(
                    p,
                    format!("{at}.{field}"),
                    CompileReason::SecretNotFound,
                    format!("Secret {ns}/{} has no (non-empty) key {:?}", r.name, r.key),
                ));
            }
            v
        };
        let push_auth = match &s.push {
            Some(push) => match secret(
                "push.authorizationSecretRef",
                &push.authorization_secret_ref,
            ) {
                Some(v) => Some(crate::events::PushSecret(v.into_bytes().into_boxed_slice())),
                None => continue,
            },
            None => None,
        };
        let poll = match &s.poll {
            Some(poll) => {
                let interval = match poll.interval.as_deref().map(parse_duration) {
                    None => std::time::Duration::from_secs(5),
                    Some(Ok(d))
                        if d >= std::time::Duration::from_secs(1)
                            && d <= std::time::Duration::from_secs(300) =>
                    {
                        d
                    }
                    Some(_) => {
                        errs.push(policy_error(
                            p,
                            format!("{at}.poll.interval"),
                            CompileReason::InvalidDuration,
                            "interval must be a duration from 1s to 5m",
                        ));
                        continue;
                    }
                };
                let token = match &poll.authorization_secret_ref {
                    Some(_) if !options.stream_receiver => None,
                    Some(r) => match secret("poll.authorizationSecretRef", r) {
                        Some(v) => Some(v),
                        None => continue,
                    },
                    None => None,
                };
                Some((poll.endpoint.clone(), interval, token))
            }
            None => None,
        };
        if push_auth.is_none() && poll.is_none() {
            errs.push(policy_error(
                p,
                at.clone(),
                CompileReason::Invalid,
                "a stream is delivered by exactly one of push or poll",
            ));
            continue;
        }
        let management_token = match &s.management_secret_ref {
            Some(_) if !options.stream_receiver => None,
            Some(r) => match secret("managementSecretRef", r) {
                Some(v) => Some(v),
                None => continue,
            },
            None => None,
        };
        let verify_interval = match s.verify_interval.as_deref().map(parse_duration) {
            None => std::time::Duration::from_secs(3600),
            Some(Ok(d)) if d >= std::time::Duration::from_secs(10) => d,
            Some(_) => {
                errs.push(policy_error(
                    p,
                    format!("{at}.verifyInterval"),
                    CompileReason::InvalidDuration,
                    "verifyInterval must be a duration of at least 10s",
                ));
                continue;
            }
        };
        let mut algorithms = Vec::new();
        let names: Vec<&str> = if s.algorithms.is_empty() {
            vec!["RS256", "PS256", "ES256"]
        } else {
            s.algorithms.iter().map(String::as_str).collect()
        };
        for (j, a) in names.iter().enumerate() {
            match crate::keys::parse_algorithm(a).filter(|_| !a.starts_with("HS")) {
                Some(alg) => algorithms.push(alg),
                None => errs.push(policy_error(
                    p,
                    format!("{at}.algorithms[{j}]"),
                    CompileReason::Invalid,
                    format!("{a:?} is not an asymmetric signature algorithm Portcullis verifies"),
                )),
            }
        }
        let formats = match &s.subjects {
            Some(sub) if !sub.formats.is_empty() => sub.formats.clone(),
            _ => vec![
                SubjectFormat::IssSub,
                SubjectFormat::Email,
                SubjectFormat::Opaque,
            ],
        };
        let subject_issuer = match s.subjects.as_ref().and_then(|x| x.issuer.clone()) {
            Some(iss) if policy_issuers.contains(&iss) => Some(iss),
            Some(iss) => {
                errs.push(policy_error(
                    p,
                    format!("{at}.subjects.issuer"),
                    CompileReason::Invalid,
                    format!("{iss:?} is not an issuer of this policy"),
                ));
                continue;
            }
            None if policy_issuers.len() == 1 => Some(policy_issuers[0].clone()),
            None if formats.iter().any(|f| *f != SubjectFormat::IssSub) => {
                errs.push(policy_error(
                    p,
                    format!("{at}.subjects.issuer"),
                    CompileReason::Invalid,
                    "with several issuers, name the one whose sub an opaque or email subject is (or act on iss_sub only)",
                ));
                continue;
            }
            None => None,
        };
        let (key, _, _) = crate::remote::ssf_source(&s.transmitter);
        let keys = options
            .remote_jwks
            .get(&key)
            .and_then(|doc| crate::keys::KeySet::from_remote_jwks(doc).ok());
        out.push(crate::events::CompiledStream {
            info: crate::events::StreamInfo {
                policy: id.clone(),
                name: s.name.as_str().into(),
                transmitter: s.transmitter.as_str().into(),
                stream_id: s.stream_id.clone(),
                poll,
                management_token,
                verify_interval,
            },
            audience: s.audience.clone(),
            algorithms,
            keys,
            push_auth,
            formats,
            subject_issuer,
            policy_issuers: policy_issuers.clone(),
            events: if s.events.is_empty() {
                portcullis_api::SsfEvent::ALL.to_vec()
            } else {
                s.events.clone()
            },
        });
    }
    out
}
