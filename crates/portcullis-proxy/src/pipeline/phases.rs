//! The phases before forwarding: limits, the canonical target, and the decision.
//!
//! Each phase either hands the next one what it settled or answers the request itself
//! (`Err(response)`); the [`RequestLog`] they share records whichever happened.

// A phase that answers the request itself returns the response as its `Err`: built once
// and handed straight up to `respond`. Boxing it would allocate on every refusal.
#![allow(clippy::result_large_err)]

use std::borrow::Cow;
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode, Uri};
use hyper::body::Incoming;
use portcullis_policy::{
    Allow, Answer, Credentials, Decision, Deny, DenyReason, Need, RequestParts, Snapshot,
};

use super::body::ResponseBodyFilter;
use super::edge::edge_checks;
use super::forward::Forward;
use super::request_log::RequestLog;
use super::{Pipeline, ProxyBody, plain, response};

/// What the phases end with: an answer made here, or the upstream's response (with the
/// route's SSE filter, if any).
pub(super) enum Outcome<'p> {
    /// Answered by the gateway (a refusal, a denial, an error).
    Local(Response<ProxyBody>),
    /// Answered by the gateway with a body still streaming (an LLM stream).
    Streamed(Response<ProxyBody>),
    /// The upstream's response, to pass on.
    Upstream {
        resp: Response<Incoming>,
        sse: Option<&'p ResponseBodyFilter>,
    },
}

/// The one host and path the request is decided on and forwarded to.
pub(super) struct Target<'u> {
    pub(super) host: String,
    pub(super) path: Cow<'u, str>,
}

impl Pipeline {
    /// The phases, in order. `handle` turns the answer into the response.
    pub(super) async fn phases(
        &self,
        req: http::Request<Incoming>,
        log: &mut RequestLog,
        tls: bool,
    ) -> Outcome<'_> {
        let (mut head, body) = req.into_parts();
        if let Some(policy) = head.uri.path().strip_prefix(crate::events::LOGOUT_PATH) {
            // An identity provider's logout token: answered here, never forwarded.
            if let Err(resp) = self.limits_phase(&head.headers, log) {
                return Outcome::Local(resp);
            }
            let policy = policy.to_owned();
            log.reason = "backchannel_logout";
            return Outcome::Local(self.back_channel_logout(&head, body, &policy).await);
        }
        if let Some(target) = head.uri.path().strip_prefix(crate::events::SSF_PATH) {
            // A Shared Signals transmitter's push: answered here, never forwarded.
            if let Err(resp) = self.limits_phase(&head.headers, log) {
                return Outcome::Local(resp);
            }
            let target = target.to_owned();
            log.reason = "shared_signals";
            return Outcome::Local(self.shared_signals_push(&head, body, &target).await);
        }
        // The target stays borrowed (canonical path) while the head is rewritten.
        let uri = std::mem::take(&mut head.uri);
        match self.head_phases(&mut head, &uri, log, tls).await {
            Ok(mut forward) => {
                let extra = std::mem::take(&mut forward.response_headers);
                let mut outcome = match forward.llm.take() {
                    Some(call) => {
                        let started = std::time::Instant::now();
                        let reply = self
                            .llm_phase(head, body, call, log.request_id.clone(), log.fingerprint)
                            .await;
                        log.upstream_time = Some(started.elapsed());
                        match reply {
                            crate::llm::Reply::Full(r) => Outcome::Local(r),
                            crate::llm::Reply::Stream(r) => Outcome::Streamed(r),
                        }
                    }
                    None => self.upstream_phase(head, body, forward, log).await,
                };
                if !extra.is_empty() {
                    let headers = match &mut outcome {
                        Outcome::Local(r) | Outcome::Streamed(r) => r.headers_mut(),
                        Outcome::Upstream { resp, .. } => resp.headers_mut(),
                    };
                    // The gateway's view replaces what a backend said under these names.
                    for (name, _) in &extra {
                        headers.remove(name);
                    }
                    for (name, value) in extra {
                        headers.append(name, value);
                    }
                }
                outcome
            }
            Err(resp) => Outcome::Local(resp),
        }
    }

    /// The phases on the request head: limits, target, decision, and the upstream request
    /// head (written into `head`). Holds the snapshot only until the decision is applied.
    pub(super) async fn head_phases(
        &self,
        head: &mut http::request::Parts,
        uri: &Uri,
        log: &mut RequestLog,
        tls: bool,
    ) -> Result<Forward<'_>, Response<ProxyBody>> {
        self.limits_phase(&head.headers, log)?;
        let snapshot = self.config.load();
        let target = self.target_phase(&snapshot, head, uri, log)?;
        let mut refreshed = None;
        let allow = self
            .authorize_phase(&snapshot, &mut refreshed, head, uri, &target, log, tls)
            .await?;
        // A deprecated API: counted by consumer, and every answer says so.
        let lifecycle_headers = match &allow.route.lifecycle {
            Some(l) if l.stage == portcullis_api::LifecycleStage::Deprecated => {
                let consumer = match allow.principal.as_ref().and_then(|p| p.consumer.as_deref()) {
                    Some(c) => self.metrics.consumer_labels.label(c),
                    None => "none".into(),
                };
                self.metrics
                    .deprecated_requests
                    .with_label_values(&[&*allow.route.id, &consumer])
                    .inc();
                Some(l.headers.clone())
            }
            Some(l) if !l.headers.is_empty() => Some(l.headers.clone()),
            _ => None,
        };
        if allow.route.serves_mcp_metadata
            && let Some(mcp) = &allow.route.mcp
        {
            // RFC 9728 section 3.2: the metadata, for anyone (no token needed).
            let mut resp = response(StatusCode::OK, "application/json", mcp.metadata.to_string());
            resp.headers_mut().insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
            return Err(resp);
        }
        let quota_headers = self.rate_limit_phase(&allow, log).await?;
        let mut forward = self.forward_phase(head, uri, &target, &allow, log, tls)?;
        forward.response_headers = quota_headers;
        if let Some(h) = lifecycle_headers {
            forward.response_headers.extend(h.iter().cloned());
        }
        // RFC 9449 section 8.2: the next nonce, with the answer to a proof whose nonce is
        // about to expire.
        if let Some(nonce) = &allow.dpop_nonce
            && let Ok(v) = HeaderValue::from_str(nonce)
        {
            forward.response_headers.push((DPOP_NONCE, v));
        }
        Ok(forward)
    }

    /// Phase: limits on the request head (431).
    fn limits_phase(
        &self,
        headers: &HeaderMap,
        log: &mut RequestLog,
    ) -> Result<(), Response<ProxyBody>> {
        let over = if headers.len() > self.limits.max_headers {
            Some("header_count")
        } else {
            let bytes: usize = headers
                .iter()
                .map(|(k, v)| k.as_str().len() + v.len())
                .sum();
            (bytes > self.limits.max_header_bytes).then_some("header_bytes")
        };
        let Some(limit) = over else { return Ok(()) };
        self.metrics
            .limit_rejections
            .with_label_values(&[limit])
            .inc();
        log.reason = limit;
        Err(plain(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request headers too large",
        ))
    }

    /// Phase: the canonical target. One host, one method, one path, decided here and used
    /// both for the decision and for the upstream request.
    fn target_phase<'u>(
        &self,
        snapshot: &Snapshot,
        head: &http::request::Parts,
        uri: &'u Uri,
        log: &mut RequestLog,
    ) -> Result<Target<'u>, Response<ProxyBody>> {
        let edge = match edge_checks(head, uri) {
            Ok(e) => e,
            Err((status, reason, text)) => return Err(self.refuse(log, status, reason, text)),
        };
        let path = match snapshot.canonical_target(&edge.host, head.method.as_str(), uri.path()) {
            Ok(p) => p,
            Err(e) => {
                return Err(self.refuse(
                    log,
                    StatusCode::BAD_REQUEST,
                    e.as_str(),
                    "bad request path",
                ));
            }
        };
        if let Cow::Owned(canonical) = &path {
            log.canonical_path = Some(canonical.clone());
        }
        Ok(Target {
            host: edge.host,
            path,
        })
    }

    /// Phase: route, credentials -> principal, authorize. Decides with `snapshot`; a
    /// decision pending on IO is resumed once it is done: an unknown `kid` from fetched keys
    /// waits (bounded) for a snapshot with refetched keys, kept in `refreshed`; an opaque
    /// token is introspected. A denial is answered here.
    #[allow(clippy::too_many_arguments)] // each is one thing the phase reads or writes
    pub(super) async fn authorize_phase<'s>(
        &self,
        snapshot: &'s Snapshot,
        refreshed: &'s mut Option<Arc<Snapshot>>,
        head: &http::request::Parts,
        uri: &Uri,
        target: &Target<'_>,
        log: &mut RequestLog,
        tls: bool,
    ) -> Result<Allow<'s>, Response<ProxyBody>> {
        let mut decoded_name = None;
        // The scheme the client used (a DPoP proof's `htu` names it): TLS here, or, from a
        // trusted load balancer in front, its `X-Forwarded-Proto`.
        // Exactly one value: a load balancer that appends its own line after the client's
        // must not let the client's `https` stand.
        let xfp_https = {
            let mut all = head.headers.get_all("x-forwarded-proto").iter();
            match (all.next(), all.next()) {
                (Some(v), None) => v.as_bytes().eq_ignore_ascii_case(b"https"),
                _ => false,
            }
        };
        let scheme = if tls
            || (xfp_https
                && self
                    .limits
                    .trusted_proxies
                    .iter()
                    .any(|net| net.contains(&log.client.ip())))
        {
            "https"
        } else {
            "http"
        };
        let parts = RequestParts {
            scheme,
            method: head.method.as_str(),
            host: &target.host,
            path: &target.path,
            query: uri.query(),
            credentials: Credentials {
                peer_certificate_sha256: head
                    .extensions
                    .get::<super::PeerCertificate>()
                    .map(|c| c.0),
                ..Credentials::from_headers(&head.headers)
            },
            mcp: mcp_headers(&head.headers, &mut decoded_name),
        };
        let mut decision = snapshot.authorize(&parts);
        if let Decision::Pending(pending) = &decision {
            let need = pending.need.clone();
            decision = match &need {
                // An unknown `kid` from an issuer whose keys are fetched: ask for a
                // refetch and decide again with the snapshot that brings it (bounded wait).
                Need::Keys(refetch) => {
                    match self
                        .keys
                        .wait_for_keys(refetch, &self.config, snapshot)
                        .await
                    {
                        Some(newer) => {
                            refreshed
                                .insert(newer)
                                .resume(&parts, &need, Answer::KeysRefreshed)
                        }
                        None => snapshot.resume(&parts, &need, Answer::KeysUnchanged),
                    }
                }
                // An opaque token with no cached verdict: ask the introspection endpoint
                // (one call per token however many requests wait for it).
                // The verdict is cached (in `resume`) before this request leaves the
                // flight, so no request for the same token can start a second call.
                Need::Introspection { endpoint, digest } => {
                    match portcullis_policy::bearer_token(parts.credentials.authorization) {
                        Ok(token) => {
                            self.introspector
                                .introspect_then(endpoint, digest.0, token, |answer| {
                                    let answer = answer.as_ref().map_err(|_| ());
                                    snapshot.resume(&parts, &need, Answer::Introspection(answer))
                                })
                                .await
                        }
                        Err(_) => snapshot.resume(&parts, &need, Answer::Introspection(Err(()))),
                    }
                }
            };
        }
        log.route = decision.route().map(|r| r.id.clone());
        log.fingerprint = decision.fingerprint();
        match decision {
            Decision::Allow(allow) => {
                log.decision = "allow";
                log.reason = if allow.principal.is_some() {
                    "ok"
                } else {
                    "public"
                };
                log.cache_hit = allow.principal.as_ref().map(|_| allow.cache_hit);
                self.count_decision(log);
                if let Some(p) = &allow.principal
                    && let Some(consumer) = p.consumer.as_deref()
                {
                    let label = self.metrics.consumer_labels.label(consumer);
                    self.metrics
                        .consumer_requests
                        .with_label_values(&[&*allow.route.id, p.kind.as_str(), &label])
                        .inc();
                }
                Ok(allow)
            }
            Decision::Deny(deny) => {
                log.decision = "deny";
                log.reason = deny.reason.as_str();
                log.cache_hit = deny.fingerprint.map(|_| deny.cache_hit);
                if deny.reason != DenyReason::NoRoute {
                    self.count_decision(log);
                }
                if deny.reason == DenyReason::Retired
                    && let Some(route) = deny.route
                {
                    self.metrics
                        .retired_requests
                        .with_label_values(&[&*route.id])
                        .inc();
                }
                Err(deny_response(&deny))
            }
            Decision::Pending(_) => {
                // `resume` never answers Pending; refuse rather than guess.
                log.decision = "deny";
                log.reason = "pending";
                Err(plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "credentials could not be checked",
                ))
            }
        }
    }

    /// Answers a request refused before or beside the token decision (a bad target or
    /// header), counting it by reason.
    pub(super) fn refuse(
        &self,
        log: &mut RequestLog,
        status: StatusCode,
        reason: &'static str,
        text: &'static str,
    ) -> Response<ProxyBody> {
        self.metrics
            .requests_refused
            .with_label_values(&[reason])
            .inc();
        log.reason = reason;
        // The request may be half-read or ambiguous: do not reuse the connection.
        log.close = true;
        plain(status, text)
    }

    fn count_decision(&self, log: &RequestLog) {
        let route = log.route.as_deref().unwrap_or("none");
        self.metrics
            .auth_decisions
            .with_label_values(&[route, log.decision, log.reason])
            .inc();
        match log.cache_hit {
            Some(true) => self.metrics.token_cache_hits.inc(),
            Some(false) => self.metrics.token_cache_misses.inc(),
            None => {}
        }
    }
}

/// The MCP headers of a request (decided on only on MCP routes). A header that is not
/// visible ASCII reads as absent here, and the body check refuses what it hides. An
/// `Mcp-Name` in the Base64 form (`=?base64?...?=`) is decoded into `decoded`.
pub(super) fn mcp_headers<'h>(
    headers: &'h HeaderMap,
    decoded: &'h mut Option<String>,
) -> portcullis_policy::mcp::McpHeaders<'h> {
    use portcullis_policy::mcp::{MCP_METHOD, MCP_NAME, MCP_PROTOCOL_VERSION};
    let one = |name: HeaderName| -> Option<&'h str> {
        let mut all = headers.get_all(name).iter();
        match (all.next(), all.next()) {
            (Some(v), None) => v.to_str().ok(),
            // Two values: no single reading; an unknown method matches no rule and
            // fails the body check.
            (Some(_), Some(_)) => Some("\u{0}duplicate"),
            _ => None,
        }
    };
    let raw_name = one(MCP_NAME);
    let name = match raw_name.map(portcullis_policy::mcp::decode_header_value) {
        Some(Some(Ok(s))) => {
            *decoded = Some(s);
            let d: &'h Option<String> = decoded;
            d.as_deref()
        }
        // Not decodable: no tool has this name, and the body check refuses it.
        Some(Some(Err(()))) => Some("\u{0}undecodable"),
        Some(None) => raw_name,
        None => None,
    };
    portcullis_policy::mcp::McpHeaders {
        method: one(MCP_METHOD),
        name,
        protocol_version: one(MCP_PROTOCOL_VERSION),
        origin: one(header::ORIGIN),
    }
}

/// `DPoP-Nonce` (RFC 9449 section 8.1).
const DPOP_NONCE: HeaderName = HeaderName::from_static("dpop-nonce");

/// The RFC 6750 answer to a denial.
fn deny_response(deny: &Deny<'_>) -> Response<ProxyBody> {
    let status = StatusCode::from_u16(deny.status()).unwrap_or(StatusCode::UNAUTHORIZED);
    let mut body = serde_json::json!({
        "error": deny.reason.error_code().unwrap_or(match deny.reason {
            DenyReason::NoRoute => "not_found",
            DenyReason::IntrospectionUnavailable => "temporarily_unavailable",
            DenyReason::Retired => "gone",
            _ => "unauthorized",
        }),
        "reason": deny.reason.as_str(),
        "error_description": deny.reason.description(),
    });
    // 410 Gone: where the API went (RFC 8594 section 1), in the body and as a Link.
    let lifecycle = deny.route.and_then(|r| r.lifecycle.as_ref());
    let successor = lifecycle
        .filter(|_| deny.reason == DenyReason::Retired)
        .and_then(|l| l.successor.as_deref());
    if deny.reason == DenyReason::Retired
        && let Some(l) = lifecycle
    {
        body["successor"] = successor.into();
        body["sunset_at"] = l.sunset_text.as_deref().into();
    }
    let mut resp = response(status, "application/json", body.to_string());
    // A deprecated API says so on every answer, refusals included (RFC 9745 section 2).
    if let Some(l) = lifecycle.filter(|l| l.stage == portcullis_api::LifecycleStage::Deprecated) {
        for (k, v) in l.headers.iter() {
            resp.headers_mut().insert(k.clone(), v.clone());
        }
    }
    if let Some(u) = successor
        && let Ok(v) = HeaderValue::from_str(&format!("<{u}>; rel=\"successor-version\""))
    {
        resp.headers_mut().insert(header::LINK, v);
    }
    if let Some(challenge) = deny.www_authenticate()
        && let Ok(v) = HeaderValue::from_str(&challenge)
    {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    // RFC 9449 section 9: the nonce the client must put in its next proof.
    if let Some(nonce) = &deny.dpop_nonce
        && let Ok(v) = HeaderValue::from_str(nonce)
    {
        resp.headers_mut().insert(DPOP_NONCE, v);
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if deny.reason == DenyReason::IntrospectionUnavailable {
        // The token was not judged: the client may retry shortly.
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
    }
    resp
}
