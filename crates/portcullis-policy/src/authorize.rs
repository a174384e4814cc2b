//! The hot path: [`Snapshot::authorize`] and [`Snapshot::resume`].
//!
//! Per request: route lookup (a few hash probes); then one credential step turns the
//! request's [`crate::Credentials`] into a [`Principal`] (a verified JWT, an introspected
//! opaque token or an API key) or a denial, or pauses on IO ([`Decision::Pending`]); then
//! revocation and scope checks run on the principal, whichever kind it is and whether or
//! not it came from a cache. Only a cache miss parses and verifies a token.

use std::sync::Arc;

use crate::apikey::ApiKey;
use crate::credentials::{HeaderField, bearer_token, query_has_token};
use crate::decision::{Allow, Answer, Decision, Deny, DenyReason, Need, Pending, RequestParts};
use crate::index::{CompiledRule, Requirement};
use crate::policy::{CompiledPolicy, IntrospectionVerdict, looks_like_jws};
use crate::principal::Principal;
use crate::snapshot::Snapshot;
use crate::token::{Fingerprint, TokenDigest, token_digest};

/// What the credential step established.
struct Authenticated {
    principal: Arc<Principal>,
    digest: TokenDigest,
    cache_hit: bool,
}

/// Why the credential step did not establish a principal.
enum NotAuthenticated<'s> {
    /// Refused, with the fingerprint of what was read and whether a cache said so.
    Deny(DenyReason, Option<Fingerprint>, bool),
    /// Needs IO first.
    Pending(Need<'s>, Option<Fingerprint>),
}

/// The one credential the policy reads from a request.
enum Presented<'r> {
    /// `Authorization: Bearer <token>`: a JWT, an opaque token, or an API key.
    Bearer(&'r str),
    /// The policy's API-key header.
    ApiKeyHeader(&'r str),
}

fn deny<'s>(
    reason: DenyReason,
    route: Option<&'s crate::RouteInfo>,
    fingerprint: Option<Fingerprint>,
    cache_hit: bool,
) -> Decision<'s> {
    Decision::Deny(Deny {
        reason,
        route,
        fingerprint,
        cache_hit,
        missing_scopes: None,
        dpop_algs: None,
        dpop_nonce: None,
    })
}

/// A public (`auth: none`) rule: allowed, nobody established.
fn allow_public(rule: &CompiledRule) -> Decision<'_> {
    Decision::Allow(Allow {
        route: &rule.info,
        principal: None,
        fingerprint: None,
        cache_hit: false,
        credential_header: None,
        dpop_nonce: None,
    })
}

impl Snapshot {
    /// Who the credentials of `req` name under the TokenPolicy `policy` (`namespace/name`),
    /// outside any route: for endpoints of the gateway's own such as the catalog. The
    /// token is judged as on a route of that policy (signature, lifetime, audience,
    /// revocations, sender constraints); scopes are the caller's to check. A token that
    /// would need IO first (an unknown `kid`, an introspection not cached) is refused as
    /// `IntrospectionUnavailable` or `UnknownKey`.
    pub fn authenticate_for(
        &self,
        policy: &str,
        req: &RequestParts<'_>,
    ) -> Result<Arc<Principal>, DenyReason> {
        let index = self
            .policies
            .iter()
            .position(|p| &*p.id == policy)
            .ok_or(DenyReason::UnknownIssuer)?;
        let a = match self.authenticate(index, req) {
            Ok(a) => a,
            Err(NotAuthenticated::Deny(reason, ..)) => return Err(reason),
            Err(NotAuthenticated::Pending(Need::Introspection { .. }, _)) => {
                return Err(DenyReason::IntrospectionUnavailable);
            }
            Err(NotAuthenticated::Pending(..)) => return Err(DenyReason::UnknownKey),
        };
        let compiled = &self.policies[index];
        let now = self.clock.now();
        compiled.revocations.check(&a.digest, &a.principal, now)?;
        check_binding(compiled, &a, req, now)?;
        Ok(a.principal)
    }

    /// Decides one request. `req.path` must be canonical: the output of
    /// [`Snapshot::canonical_target`] for the same host and method.
    pub fn authorize<'s>(&'s self, req: &RequestParts<'_>) -> Decision<'s> {
        let decision = self.decide(req);
        self.with_mcp_challenge(decision, req)
    }

    fn decide<'s>(&'s self, req: &RequestParts<'_>) -> Decision<'s> {
        if let Some(q) = req.query
            && query_has_token(q)
        {
            return deny(DenyReason::TokenInQuery, None, None, false);
        }
        let Some(rule) = self.index.lookup(req.host, req.path, req.method) else {
            return deny(DenyReason::NoRoute, None, None, false);
        };
        // A retired API is gone for everyone (410): nothing is read, nothing forwarded.
        if rule
            .info
            .lifecycle
            .as_ref()
            .is_some_and(|l| l.retired(self.clock.now()))
        {
            return deny(DenyReason::Retired, Some(&rule.info), None, false);
        }
        // RFC 6750 section 5.3: credentials that crossed the network in cleartext are
        // refused before they are read, so nothing is verified, cached or logged as valid.
        if rule.info.require_tls && req.scheme != "https" {
            let api_header = match &rule.requirement {
                Requirement::Token { policy, .. } => self
                    .api_keys
                    .get(*policy)
                    .and_then(Option::as_deref)
                    .and_then(|t| t.header.as_ref()),
                Requirement::Public => None,
            };
            let c = &req.credentials;
            if c.authorization.is_present()
                || c.dpop.is_present()
                || api_header.is_some_and(|n| c.api_key_header(n).is_present())
                || c.headers
                    .is_some_and(|h| h.contains_key(http::header::COOKIE))
            {
                return deny(
                    DenyReason::CleartextCredentials,
                    Some(&rule.info),
                    None,
                    false,
                );
            }
        }
        if let Some(mcp) = &rule.info.mcp
            && !rule.info.serves_mcp_metadata
        {
            if let Err(reason) = mcp.check_request(&req.mcp) {
                return deny(reason, Some(&rule.info), None, false);
            }
            // A public path rule cannot check scopes: a call an MCP rule names is refused
            // there (closed), whatever the rule demands.
            if matches!(rule.requirement, Requirement::Public) && mcp.rule_for(&req.mcp).is_some() {
                return deny(DenyReason::McpDenied, Some(&rule.info), None, false);
            }
        }
        let Requirement::Token { policy, .. } = &rule.requirement else {
            return allow_public(rule);
        };
        match self.authenticate(*policy, req) {
            Ok(a) => self.finish(rule, *policy, a, req),
            Err(NotAuthenticated::Deny(reason, fp, hit)) => deny(reason, Some(&rule.info), fp, hit),
            Err(NotAuthenticated::Pending(need, fingerprint)) => Decision::Pending(Pending {
                route: &rule.info,
                fingerprint,
                need,
            }),
        }
    }

    /// Decides a request that [`Snapshot::authorize`] answered with
    /// [`Decision::Pending`], given the outcome of the IO it needed. `req` is the same
    /// request. For [`crate::Need::Keys`], call it on the snapshot the refetch brought
    /// ([`Answer::KeysRefreshed`]: the request is decided again, and a key still unknown
    /// is final) or on the same one ([`Answer::KeysUnchanged`]). For
    /// [`crate::Need::Introspection`], the verdict is cached: an active token until
    /// `min(cacheTTL, exp)`, an inactive one for `negativeCacheTTL`; an unreachable
    /// endpoint is not cached and gives 503.
    pub fn resume<'s>(
        &'s self,
        req: &RequestParts<'_>,
        need: &Need<'_>,
        answer: Answer<'_>,
    ) -> Decision<'s> {
        let decision = self.resume_inner(req, need, answer);
        self.with_mcp_challenge(decision, req)
    }

    fn resume_inner<'s>(
        &'s self,
        req: &RequestParts<'_>,
        need: &Need<'_>,
        answer: Answer<'_>,
    ) -> Decision<'s> {
        let Some(rule) = self.index.lookup(req.host, req.path, req.method) else {
            return deny(DenyReason::NoRoute, None, None, false);
        };
        // A retired API is gone for everyone (410): nothing is read, nothing forwarded.
        if rule
            .info
            .lifecycle
            .as_ref()
            .is_some_and(|l| l.retired(self.clock.now()))
        {
            return deny(DenyReason::Retired, Some(&rule.info), None, false);
        }
        let route = Some(&rule.info);
        let Requirement::Token { policy: index, .. } = &rule.requirement else {
            return self.authorize(req);
        };
        match (need, answer) {
            (Need::Keys(_), Answer::KeysRefreshed) => match self.authorize(req) {
                Decision::Pending(Pending {
                    need: Need::Keys(_),
                    fingerprint,
                    ..
                }) => deny(DenyReason::UnknownKey, route, fingerprint, false),
                other => other,
            },
            (Need::Keys(_), _) => {
                let fp = bearer_token(req.credentials.authorization)
                    .ok()
                    .map(|t| token_digest(t).fingerprint());
                deny(DenyReason::UnknownKey, route, fp, false)
            }
            (Need::Introspection { digest, .. }, answer) => {
                let fp = Some(digest.fingerprint());
                let policy = &self.policies[*index];
                let Some(intro) = &policy.introspection else {
                    return deny(DenyReason::InactiveToken, route, fp, false);
                };
                let Answer::Introspection(Ok(answer)) = answer else {
                    return deny(DenyReason::IntrospectionUnavailable, route, fp, false);
                };
                let now = self.clock.now();
                match policy.accept_introspection(intro, answer, now) {
                    Ok(t) => {
                        let until = now.saturating_add(intro.cache_ttl).min(t.expires_at);
                        let principal = Arc::new(t);
                        intro.cache.inner.insert(
                            digest.0,
                            IntrospectionVerdict {
                                token: Some(principal.clone()),
                                until,
                            },
                        );
                        self.finish(
                            rule,
                            *index,
                            Authenticated {
                                principal,
                                digest: *digest,
                                cache_hit: false,
                            },
                            req,
                        )
                    }
                    Err(reason) => {
                        intro.cache.inner.insert(
                            digest.0,
                            IntrospectionVerdict {
                                token: None,
                                until: now.saturating_add(intro.negative_ttl),
                            },
                        );
                        deny(reason, route, fp, false)
                    }
                }
            }
        }
    }

    /// The one credential step: which credential the policy reads from the request, and
    /// the principal it establishes.
    fn authenticate<'s>(
        &'s self,
        index: usize,
        req: &RequestParts<'_>,
    ) -> Result<Authenticated, NotAuthenticated<'s>> {
        let policy = &self.policies[index];
        let api_keys = self.api_keys.get(index).and_then(Option::as_deref);
        let refuse = |reason| NotAuthenticated::Deny(reason, None, false);
        let creds = &req.credentials;
        // The policy's own API-key header, if it reads one and the request sent it.
        // Another policy's API-key header is just a header to this route.
        let api_header = api_keys
            .and_then(|t| t.header.as_ref())
            .map(|name| creds.api_key_header(name))
            .filter(HeaderField::is_present);
        let presented = match (api_header, creds.authorization) {
            (Some(_), auth) if auth.is_present() => {
                return Err(refuse(DenyReason::MultipleCredentials));
            }
            (Some(HeaderField::Duplicated), _) => {
                return Err(refuse(DenyReason::MultipleCredentials));
            }
            (Some(HeaderField::One(raw)), _) => Presented::ApiKeyHeader(
                std::str::from_utf8(raw).map_err(|_| refuse(DenyReason::MalformedHeader))?,
            ),
            _ => Presented::Bearer(bearer_token(creds.authorization).map_err(refuse)?),
        };
        let raw = match presented {
            Presented::Bearer(raw) | Presented::ApiKeyHeader(raw) => raw,
        };
        if raw.len() > self.max_token_bytes {
            return Err(refuse(DenyReason::TokenTooLarge));
        }
        let digest = token_digest(raw);
        let fp = Some(digest.fingerprint());
        let now = self.clock.now();

        // An API key is judged only as an API key: never sent to an introspection
        // endpoint (which would learn it) nor parsed as a JWT.
        if matches!(presented, Presented::ApiKeyHeader(_)) || ApiKey::looks_like(raw) {
            let Some(table) = api_keys else {
                return Err(NotAuthenticated::Deny(DenyReason::UnknownApiKey, fp, false));
            };
            return match table.check(raw, &digest.0, now) {
                Ok(principal) => Ok(Authenticated {
                    principal: principal.clone(),
                    digest,
                    cache_hit: false,
                }),
                Err(reason) => Err(NotAuthenticated::Deny(reason, fp, false)),
            };
        }

        if let Some(intro) = &policy.introspection
            && (policy.issuers.is_empty() || !looks_like_jws(raw))
        {
            return match intro.cache.inner.get(&digest.0) {
                Some(v) if now < v.until => match v.token {
                    Some(t) if now.saturating_sub(policy.clock_skew) < t.expires_at => {
                        Ok(Authenticated {
                            principal: t,
                            digest,
                            cache_hit: true,
                        })
                    }
                    Some(_) => Err(NotAuthenticated::Deny(DenyReason::Expired, fp, true)),
                    None => Err(NotAuthenticated::Deny(DenyReason::InactiveToken, fp, true)),
                },
                _ => Err(NotAuthenticated::Pending(
                    Need::Introspection {
                        endpoint: &intro.endpoint,
                        digest,
                    },
                    fp,
                )),
            };
        }
        if policy.issuers.is_empty() {
            // A policy of API keys only: a bearer token that is not one is unknown here.
            return Err(NotAuthenticated::Deny(DenyReason::UnknownApiKey, fp, false));
        }
        verify_jwt(policy, raw, digest, now)
    }

    /// On an MCP route, a 401 challenge names the scopes the call needs (MCP
    /// authorization, scope selection; RFC 6750 section 3), beside `resource_metadata`.
    fn with_mcp_challenge<'s>(
        &'s self,
        mut decision: Decision<'s>,
        req: &RequestParts<'_>,
    ) -> Decision<'s> {
        if let Decision::Deny(d) = &mut decision
            && d.reason.status() == 401
            && d.missing_scopes.is_none()
            && d.route.is_some_and(|r| r.mcp.is_some())
            && let Some(rule) = self.index.lookup(req.host, req.path, req.method)
        {
            let scopes = needed_scopes(rule, req);
            if !scopes.is_empty() {
                d.missing_scopes = Some(scopes.join(" "));
            }
        }
        decision
    }

    /// Revocations and scopes: checked on every request, whichever kind of credential
    /// established the principal and whether or not the verdict came from a cache.
    fn finish<'s>(
        &'s self,
        rule: &'s CompiledRule,
        index: usize,
        a: Authenticated,
        req: &RequestParts<'_>,
    ) -> Decision<'s> {
        let route = Some(&rule.info);
        let fp = Some(a.digest.fingerprint());
        let Requirement::Token { all, any, .. } = &rule.requirement else {
            return allow_public(rule);
        };
        let policy = &self.policies[index];
        let now = self.clock.now();
        if let Err(reason) = policy.revocations.check(&a.digest, &a.principal, now) {
            return deny(reason, route, fp, a.cache_hit);
        }
        let dpop_nonce = match check_binding(policy, &a, req, now) {
            Ok(next) => next,
            Err(reason) => {
                let mut d = deny(reason, route, fp, a.cache_hit);
                if let Decision::Deny(d) = &mut d
                    && reason.dpop_challenge()
                {
                    let cfg = a
                        .principal
                        .issuer
                        .as_deref()
                        .and_then(|i| policy.dpop.get(i));
                    d.dpop_algs = cfg.map(|c| c.algs_header.clone());
                    // Section 9: the refusal of a proof without a current nonce gives one.
                    if reason == DenyReason::UseDpopNonce {
                        d.dpop_nonce = cfg.and_then(|c| c.nonce.as_ref()).map(|k| k.issue(now));
                    }
                }
                return d;
            }
        };
        let p = &a.principal;
        let mut missing: Vec<&str> = all
            .iter()
            .filter(|s| !p.has_scope(s))
            .map(|s| &**s)
            .collect();
        // A draft answers only tokens with its preview scope, whatever the rule demands.
        if let Some(l) = &rule.info.lifecycle
            && l.stage == portcullis_api::LifecycleStage::Draft
            && !p.has_scope(&l.preview_scope)
        {
            missing.push(&l.preview_scope);
        }
        let mut any_ok = any.is_empty() || any.iter().any(|s| p.has_scope(s));
        let mut any_lists = vec![&**any];
        if let Some(mcp) = &rule.info.mcp {
            // RFC 8707: the token must be meant for this MCP server. API keys are not
            // OAuth tokens for a resource: refused.
            if p.kind == crate::principal::PrincipalKind::ApiKey
                || !p.audiences.iter().any(|a| **a == *mcp.resource)
            {
                return deny(DenyReason::WrongAudience, route, fp, a.cache_hit);
            }
            if let Some(r) = mcp.rule_for(&req.mcp) {
                if r.deny {
                    return deny(DenyReason::McpDenied, route, fp, a.cache_hit);
                }
                missing.extend(r.all.iter().filter(|s| !p.has_scope(s)).map(|s| &**s));
                any_ok &= r.any.is_empty() || r.any.iter().any(|s| p.has_scope(s));
                any_lists.push(&r.any);
            }
        }
        if !missing.is_empty() || !any_ok {
            let mut scopes = if rule.info.mcp.is_some() {
                // MCP: the challenge lists every scope the call needs, so a client
                // stepping up asks for all of them at once, not only the missing ones.
                needed_scopes(rule, req)
            } else {
                missing
            };
            if !any_ok && rule.info.mcp.is_none() {
                for list in any_lists {
                    scopes.extend(list.iter().map(|s| &**s));
                }
            }
            return Decision::Deny(Deny {
                reason: DenyReason::InsufficientScope,
                route,
                fingerprint: fp,
                cache_hit: a.cache_hit,
                missing_scopes: Some(scopes.join(" ")),
                dpop_algs: None,
                dpop_nonce: None,
            });
        }
        Decision::Allow(Allow {
            route: &rule.info,
            principal: Some(a.principal),
            fingerprint: fp,
            cache_hit: a.cache_hit,
            credential_header: self
                .api_keys
                .get(index)
                .and_then(|t| t.as_deref())
                .and_then(|t| t.header.as_ref()),
            dpop_nonce,
        })
    }
}

/// The DPoP settings of an issuer that names none: bound tokens need their proof.
static DEFAULT_DPOP: std::sync::LazyLock<crate::dpop::DpopConfig> =
    std::sync::LazyLock::new(crate::dpop::DpopConfig::default);

/// Sender constraint (RFC 9449): a token bound to a key (`cnf.jkt`) only with
/// `Authorization: DPoP` and a proof of that key; `DPoP` only with a bound token; with
/// `mode: Required`, no unbound token at all. Checked on every request, cached or not: a
/// proof is per request. Accepted with a fresh DPoP nonce to send when the proof's is
/// about to expire.
fn check_binding(
    policy: &CompiledPolicy,
    a: &Authenticated,
    req: &RequestParts<'_>,
    now: i64,
) -> Result<Option<String>, DenyReason> {
    use crate::credentials::TokenScheme;
    use crate::principal::Confirmation;
    let p = &a.principal;
    let scheme = crate::credentials::token_scheme(req.credentials.authorization);
    let cfg = p
        .issuer
        .as_deref()
        .and_then(|i| policy.dpop.get(i))
        .unwrap_or(&DEFAULT_DPOP);
    match (p.confirmation, scheme) {
        // An issuer requiring certificate-bound tokens takes no other binding.
        (Some(Confirmation::JwkThumbprint(_)), _)
            if p.issuer
                .as_deref()
                .is_some_and(|i| policy.certificate_required.iter().any(|r| r == i)) =>
        {
            Err(DenyReason::CertificateRequired)
        }
        (Some(Confirmation::JwkThumbprint(jkt)), Some(TokenScheme::Dpop)) => {
            let proof = match req.credentials.dpop {
                HeaderField::One(v) => {
                    std::str::from_utf8(v).map_err(|_| DenyReason::InvalidDpopProof)?
                }
                // Section 4.3 step 1: exactly one DPoP header.
                _ => return Err(DenyReason::InvalidDpopProof),
            };
            crate::dpop::check_proof(
                proof,
                crate::dpop::ProofTarget {
                    method: req.method,
                    scheme: req.scheme,
                    host: req.host,
                    path: req.path,
                },
                &a.digest.0,
                &jkt,
                cfg,
                policy.clock_skew,
                now,
                &policy.dpop_replay,
            )
            .map(|ok| ok.next_nonce)
        }
        // Section 7.1: a bound token sent as a bearer token is refused.
        (Some(Confirmation::JwkThumbprint(_)), _) => Err(DenyReason::DpopBoundToken),
        (_, Some(TokenScheme::Dpop)) => Err(DenyReason::DpopRequired),
        // An issuer requiring DPoP takes no other binding.
        (Some(Confirmation::CertificateSha256(_)), _) if cfg.required => {
            Err(DenyReason::DpopRequired)
        }
        // RFC 8705 section 3: only from the client that holds the certificate.
        (Some(Confirmation::CertificateSha256(x5t)), _) => {
            match req.credentials.peer_certificate_sha256 {
                Some(presented) if presented == x5t => Ok(None),
                _ => Err(DenyReason::CertificateBoundToken),
            }
        }
        (None, _) if p.kind == crate::principal::PrincipalKind::ApiKey => Ok(None),
        (None, _) if cfg.required => Err(DenyReason::DpopRequired),
        (None, _)
            if p.issuer
                .as_deref()
                .is_some_and(|i| policy.certificate_required.iter().any(|r| r == i)) =>
        {
            Err(DenyReason::CertificateRequired)
        }
        _ => Ok(None),
    }
}

/// Every scope a call on an MCP rule needs: the path rule's and the MCP rule's, the
/// one-of lists included, without repeats.
fn needed_scopes<'r>(rule: &'r CompiledRule, req: &RequestParts<'_>) -> Vec<&'r str> {
    let mut scopes: Vec<&str> = Vec::new();
    let mut add = |list: &'r [Box<str>]| {
        for s in list {
            if !scopes.contains(&&**s) {
                scopes.push(s);
            }
        }
    };
    if let Requirement::Token { all, any, .. } = &rule.requirement {
        add(all);
        add(any);
    }
    if let Some(r) = rule.info.mcp.as_ref().and_then(|m| m.rule_for(&req.mcp)) {
        add(&r.all);
        add(&r.any);
    }
    scopes
}

/// A JWT, from the policy's cache of verified tokens or verified now.
fn verify_jwt<'s>(
    policy: &'s CompiledPolicy,
    raw: &str,
    digest: TokenDigest,
    now: i64,
) -> Result<Authenticated, NotAuthenticated<'s>> {
    let fp = Some(digest.fingerprint());
    match policy.cache.inner.get(&digest.0) {
        Some(t) if now.saturating_sub(policy.clock_skew) < t.expires_at => Ok(Authenticated {
            principal: t,
            digest,
            cache_hit: true,
        }),
        Some(_) => {
            policy.cache.inner.remove(&digest.0);
            Err(NotAuthenticated::Deny(DenyReason::Expired, fp, true))
        }
        None => match policy.verify(raw, now) {
            Ok(t) => {
                let t = Arc::new(t);
                policy.cache.inner.insert(digest.0, t.clone());
                Ok(Authenticated {
                    principal: t,
                    digest,
                    cache_hit: false,
                })
            }
            Err(DenyReason::UnknownKey) => match policy.refetch_for(raw) {
                Some(refetch) => Err(NotAuthenticated::Pending(Need::Keys(refetch), fp)),
                None => Err(NotAuthenticated::Deny(DenyReason::UnknownKey, fp, false)),
            },
            Err(reason) => Err(NotAuthenticated::Deny(reason, fp, false)),
        },
    }
}
