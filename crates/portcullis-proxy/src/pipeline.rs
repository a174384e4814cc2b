//! The request path, as named phases:
//!
//! ```text
//! limits -> route + authenticate + authorize (Snapshot::authorize) -> forward -> log
//!                      └─ deny: answer here, the upstream never sees the request
//! ```
//!
//! A [`RequestContext`] travels through the phases; [`Pipeline::finish`] is the one place
//! that records metrics and writes the access log. Tokens appear in logs only as the
//! fingerprint of their SHA-256.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use portcullis_policy::{
    AuthorizationHeader, Decision, DenyReason, Fingerprint, RequestParts, Snapshot,
};
use tracing::{info, warn};

use crate::config::LiveConfig;
use crate::keywait::KeyWaiter;
use crate::metrics::{Metrics, method_label};

/// The body type of every response the proxy sends.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

type UpstreamClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Incoming>;

/// Limits against abuse.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most request header bytes (names + values) accepted; more gets 431.
    pub max_header_bytes: usize,
    /// Most request headers accepted; more gets 431.
    pub max_headers: usize,
    /// Time allowed to receive a request's headers (HTTP/1); slower clients are cut off.
    pub header_read_timeout: Duration,
    /// HTTP/2 concurrent streams per connection.
    pub max_concurrent_streams: u32,
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            header_read_timeout: Duration::from_secs(10),
            max_concurrent_streams: 128,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Per-request state, filled in as the phases run.
struct RequestContext {
    start: Instant,
    method: http::Method,
    path: String,
    request_id: HeaderValue,
    client: SocketAddr,
    route: Option<Arc<str>>,
    decision: &'static str,
    reason: &'static str,
    fingerprint: Option<Fingerprint>,
    cache_hit: Option<bool>,
    upstream_time: Option<Duration>,
}

/// Everything the request path needs, shared by all connections.
pub struct Pipeline {
    config: Arc<LiveConfig>,
    metrics: Metrics,
    limits: Limits,
    client: UpstreamClient,
    introspector: Arc<portcullis_fetch::Introspector>,
    keys: Arc<KeyWaiter>,
}

impl Pipeline {
    /// Builds the pipeline and its pooled upstream client.
    pub fn new(config: Arc<LiveConfig>, metrics: Metrics, limits: Limits) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(limits.connect_timeout));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .or_else(|_| {
                // No system roots: https backends will fail to verify, plain http still works.
                Ok::<_, std::io::Error>(
                    hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(
                        rustls::ClientConfig::builder_with_provider(Arc::new(
                            rustls::crypto::aws_lc_rs::default_provider(),
                        ))
                        .with_safe_default_protocol_versions()
                        .expect("default protocol versions are valid")
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth(),
                    ),
                )
            })
            .expect("connector builder")
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build(https);
        let introspector = Arc::new(portcullis_fetch::Introspector::new(
            Arc::new(portcullis_fetch::HttpClient::default()),
            metrics.registry(),
        ));
        Self {
            config,
            metrics,
            limits,
            client,
            introspector,
            keys: Arc::new(KeyWaiter::disabled()),
        }
    }

    /// Holds requests with an unknown `kid` for refetched keys through `keys`.
    pub fn with_key_waiter(mut self, keys: Arc<KeyWaiter>) -> Self {
        self.keys = keys;
        self
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Serves one request through every phase.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        client: SocketAddr,
        tls: bool,
    ) -> Result<Response<ProxyBody>, Infallible> {
        self.metrics.inflight.inc();
        let request_id = req
            .headers()
            .get("x-request-id")
            .filter(|v| !v.is_empty() && v.len() <= 128)
            .cloned()
            .unwrap_or_else(new_request_id);
        let mut ctx = RequestContext {
            start: Instant::now(),
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            request_id,
            client,
            route: None,
            decision: "none",
            reason: "none",
            fingerprint: None,
            cache_hit: None,
            upstream_time: None,
        };
        let mut resp = self.phases(req, &mut ctx, tls).await;
        resp.headers_mut()
            .insert("x-request-id", ctx.request_id.clone());
        self.finish(&ctx, resp.status());
        self.metrics.inflight.dec();
        Ok(resp)
    }

    async fn phases(
        &self,
        req: Request<Incoming>,
        ctx: &mut RequestContext,
        tls: bool,
    ) -> Response<ProxyBody> {
        // Phase: limits.
        if let Some(limit) = self.over_limits(req.headers()) {
            self.metrics
                .limit_rejections
                .with_label_values(&[limit])
                .inc();
            ctx.reason = limit;
            return plain(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request headers too large",
            );
        }

        // Phases: route, authenticate, authorize.
        let snapshot = self.config.load();
        let host = request_host(&req).unwrap_or_default();
        let mut auth_values = req.headers().get_all(header::AUTHORIZATION).iter();
        let authorization = match (auth_values.next(), auth_values.next()) {
            (None, _) => AuthorizationHeader::Absent,
            (Some(v), None) => AuthorizationHeader::One(v.as_bytes()),
            (Some(_), Some(_)) => AuthorizationHeader::Duplicated,
        };
        let parts = RequestParts {
            method: req.method().as_str(),
            host: &host,
            path: req.uri().path(),
            query: req.uri().query(),
            authorization,
        };
        let mut decision = snapshot.authorize(&parts);
        // An unknown `kid` from an issuer whose keys are fetched: ask for a refetch and
        // decide again with the snapshot that brings it (bounded wait).
        let refreshed;
        let mut current: &Snapshot = &snapshot;
        if let Decision::Deny(d) = &decision
            && let Some(refetch) = d.refetch.clone()
            && let Some(newer) = self
                .keys
                .wait_for_keys(&refetch, &self.config, &snapshot)
                .await
        {
            refreshed = newer;
            current = &refreshed;
            decision = current.authorize(&parts);
        }
        // An opaque token with no cached verdict: ask the introspection endpoint (one call
        // per token however many requests wait for it).
        if let Decision::Introspect(pending) = &decision {
            let answer = match portcullis_policy::bearer_token(parts.authorization) {
                Ok(token) => {
                    self.introspector
                        .introspect(pending.endpoint, pending.digest.0, token)
                        .await
                }
                Err(_) => Err("no bearer token".into()),
            };
            decision = current.complete_introspection(pending, answer.as_ref().map_err(|_| ()));
        }
        ctx.route = decision.route().map(|r| r.id.clone());
        ctx.fingerprint = decision.fingerprint();
        let allow = match decision {
            Decision::Deny(deny) => {
                ctx.decision = "deny";
                ctx.reason = deny.reason.as_str();
                ctx.cache_hit = deny.fingerprint.map(|_| deny.cache_hit);
                if deny.reason != DenyReason::NoRoute {
                    self.count_decision(ctx);
                }
                return deny_response(&deny);
            }
            Decision::Allow(allow) => allow,
            Decision::Introspect(_) => {
                // complete_introspection never answers Introspect; refuse rather than guess.
                ctx.decision = "deny";
                ctx.reason = "introspection_unavailable";
                return plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "token could not be checked",
                );
            }
        };
        ctx.decision = "allow";
        ctx.reason = if allow.token.is_some() {
            "ok"
        } else {
            "public"
        };
        ctx.cache_hit = allow.token.as_ref().map(|_| allow.cache_hit);
        self.count_decision(ctx);

        // Phase: forward.
        let route = allow.route;
        let upstream = allow.upstream();
        let (mut head, body) = req.into_parts();
        let path_and_query = match head.uri.path_and_query() {
            Some(pq) => format!("{}{}", upstream.base_path, pq.as_str()),
            None => format!("{}/", upstream.base_path),
        };
        let uri = match Uri::builder()
            .scheme(upstream.scheme.clone())
            .authority(upstream.authority.clone())
            .path_and_query(path_and_query)
            .build()
        {
            Ok(u) => u,
            Err(_) => return plain(StatusCode::BAD_REQUEST, "bad request target"),
        };
        let headers = &mut head.headers;
        strip_hop_by_hop(headers);
        for name in route.forwarded_header_names.iter() {
            headers.remove(name);
        }
        for (name, value) in allow.headers() {
            headers.insert(name.clone(), value.clone());
        }
        if !route.pass_authorization {
            headers.remove(header::AUTHORIZATION);
        }
        let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prev) => format!("{prev}, {}", ctx.client.ip()),
            None => ctx.client.ip().to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(&xff) {
            headers.insert("x-forwarded-for", v);
        }
        headers.insert(
            "x-forwarded-proto",
            HeaderValue::from_static(if tls { "https" } else { "http" }),
        );
        if let Ok(v) = HeaderValue::from_str(&host) {
            headers.insert("x-forwarded-host", v);
        }
        headers.insert("x-request-id", ctx.request_id.clone());
        if let Ok(v) = HeaderValue::from_str(upstream.authority.as_str()) {
            headers.insert(header::HOST, v);
        }
        head.uri = uri;
        head.version = http::Version::HTTP_11;
        let timeout = route.request_timeout;
        let route_label = route.id.clone();
        drop(snapshot);

        let started = Instant::now();
        let result = tokio::time::timeout(
            timeout,
            self.client.request(Request::from_parts(head, body)),
        )
        .await;
        ctx.upstream_time = Some(started.elapsed());
        match result {
            Ok(Ok(resp)) => {
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, body.boxed())
            }
            Ok(Err(e)) => {
                let timed_out = is_connect_timeout(&e);
                let kind = if timed_out { "timeout" } else { "error" };
                self.metrics
                    .upstream_errors
                    .with_label_values(&[&*route_label, kind])
                    .inc();
                warn!(route = %route_label, error = %portcullis_fetch::client::error_chain(&e), "upstream request failed");
                if timed_out {
                    plain(StatusCode::GATEWAY_TIMEOUT, "upstream timed out")
                } else {
                    plain(StatusCode::BAD_GATEWAY, "upstream unavailable")
                }
            }
            Err(_) => {
                self.metrics
                    .upstream_errors
                    .with_label_values(&[&*route_label, "timeout"])
                    .inc();
                warn!(route = %route_label, timeout_ms = timeout.as_millis() as u64, "upstream timed out");
                plain(StatusCode::GATEWAY_TIMEOUT, "upstream timed out")
            }
        }
    }

    fn over_limits(&self, headers: &HeaderMap) -> Option<&'static str> {
        if headers.len() > self.limits.max_headers {
            return Some("header_count");
        }
        let bytes: usize = headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len())
            .sum();
        (bytes > self.limits.max_header_bytes).then_some("header_bytes")
    }

    fn count_decision(&self, ctx: &RequestContext) {
        let route = ctx.route.as_deref().unwrap_or("none");
        self.metrics
            .auth_decisions
            .with_label_values(&[route, ctx.decision, ctx.reason])
            .inc();
        match ctx.cache_hit {
            Some(true) => self.metrics.token_cache_hits.inc(),
            Some(false) => self.metrics.token_cache_misses.inc(),
            None => {}
        }
    }

    /// Phase: log. The one place that records request metrics and the access log.
    fn finish(&self, ctx: &RequestContext, status: StatusCode) {
        let route = ctx.route.as_deref().unwrap_or("none");
        let elapsed = ctx.start.elapsed();
        self.metrics
            .requests
            .with_label_values(&[route, method_label(&ctx.method), status.as_str()])
            .inc();
        self.metrics
            .request_duration
            .with_label_values(&[route])
            .observe(elapsed.as_secs_f64());
        if let Some(up) = ctx.upstream_time {
            self.metrics
                .upstream_duration
                .with_label_values(&[route])
                .observe(up.as_secs_f64());
        }
        info!(
            target: "portcullis::access",
            request_id = ctx.request_id.to_str().unwrap_or("-"),
            client = %ctx.client.ip(),
            method = %ctx.method,
            path = %ctx.path,
            route,
            status = status.as_u16(),
            decision = ctx.decision,
            reason = ctx.reason,
            token = ctx.fingerprint.map(|f| f.to_string()).as_deref().unwrap_or("-"),
            cache_hit = ?ctx.cache_hit,
            duration_us = elapsed.as_micros() as u64,
            upstream_us = ctx.upstream_time.map(|d| d.as_micros() as u64),
            "request"
        );
    }
}

/// The request's host: HTTP/2 `:authority` (in the URI) or the `Host` header.
fn request_host(req: &Request<Incoming>) -> Option<String> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str().to_owned());
    }
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
}

/// Removes hop-by-hop headers (RFC 9110 section 7.6.1), including those named in
/// `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
    ] {
        headers.remove(n);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

fn deny_response(deny: &portcullis_policy::Deny<'_>) -> Response<ProxyBody> {
    let status = StatusCode::from_u16(deny.status()).unwrap_or(StatusCode::UNAUTHORIZED);
    let body = serde_json::json!({
        "error": deny.reason.error_code().unwrap_or(match deny.reason {
            DenyReason::NoRoute => "not_found",
            DenyReason::IntrospectionUnavailable => "temporarily_unavailable",
            _ => "unauthorized",
        }),
        "reason": deny.reason.as_str(),
        "error_description": deny.reason.description(),
    })
    .to_string();
    let mut resp = response(status, "application/json", body);
    if let Some(challenge) = deny.www_authenticate()
        && let Ok(v) = HeaderValue::from_str(&challenge)
    {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    if deny.reason == DenyReason::IntrospectionUnavailable {
        // The token was not judged: the client may retry shortly.
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
    }
    resp
}

/// A small text response.
pub fn plain(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    response(status, "text/plain; charset=utf-8", format!("{text}\n"))
}

/// A response with a fixed body.
pub fn response(
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response<ProxyBody> {
    let mut resp = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn new_request_id() -> HeaderValue {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    static PREFIX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let prefix = *PREFIX.get_or_init(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        t ^ (std::process::id() as u64).rotate_left(32)
    });
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    HeaderValue::from_str(&format!("{prefix:016x}-{n:08x}"))
        .unwrap_or(HeaderValue::from_static("-"))
}

fn is_connect_timeout(e: &hyper_util::client::legacy::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return true;
        }
        if s.to_string().contains("timed out") {
            return true;
        }
        source = s.source();
    }
    false
}
