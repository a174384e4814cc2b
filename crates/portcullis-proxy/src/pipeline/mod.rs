//! The request path, as named phases over one per-request `RequestLog`:
//!
//! ```text
//! handle ─▶ limits_phase (431)
//!        ─▶ target_phase: edge checks + canonical target (400/501)
//!        ─▶ authorize_phase: Snapshot::authorize, key refetch wait, introspection
//!        │      └─ deny: answered here, the upstream never sees the request
//!        ─▶ forward_phase: the upstream request, scrubbed headers
//!        ─▶ upstream_phase: request body filter, pooled client, timeouts (ProxyError)
//!        ─▶ respond: response headers; the body keeps the log when it streams
//! RequestLog (drop guard): metrics + access log, exactly once, when it is dropped:
//!   at the end of `handle`, when the body ends or is dropped, or when the client
//!   hangs up mid-request and hyper drops the handler (status 499).
//! ```
//!
//! The access log (target `portcullis::access`, INFO) has these fields: `request_id`,
//! `client` (IP), `method`, `path` (canonical once known), `route` (`none` when no route
//! matched), `status` (499 when the client closed the request before its response),
//! `decision` (`allow`/`deny`/`none`), `reason` (the decision's reason, or the refusal or
//! error that answered instead: `request_body`, `connect_timeout`, `client_closed`, ...),
//! `error` (`client`/`upstream`/`proxy`, only when an error answered or cut the response),
//! `token` (fingerprint of the token's SHA-256, `-` when none), `cache_hit` (`true`/`false`,
//! only when a token was read), `duration_us` (to the response headers), `upstream_us` (the
//! upstream's time to headers, when it was called), `body_us` (from the headers to the end
//! of a streamed body, only for those) and `bytes` (response body bytes sent).
//!
//! Tokens appear in logs only as the fingerprint of their SHA-256. No field is ever a Rust
//! `Debug` form: optional ones are left out rather than written as `None`.

mod body;
mod edge;
mod error;
mod forward;
mod headers;
mod phases;
pub(crate) mod quota;
mod request_log;
mod sse;
mod upstream;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

pub(crate) use body::read_limited;
pub use body::{
    BodyFilters, BodyRejection, JsonCheck, JsonVerdict, RequestBodyFilter, ResponseBodyFilter,
    SseBody, SseObserverFactory,
};
pub use error::{ErrorSource, ProxyError};
pub use headers::strip_hop_by_hop;
pub use sse::{SseEvent, SseObserver, SseParser};
pub(crate) use upstream::{RequestBody, UpstreamClient, with_connect_timeout};

use crate::config::LiveConfig;
use crate::keywait::KeyWaiter;
use crate::metrics::Metrics;
use request_log::RequestLog;

/// The body type of every response the proxy sends.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Limits against abuse.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most request header bytes (names + values) accepted; more gets 431.
    pub max_header_bytes: usize,
    /// Most request headers accepted; more gets 431.
    pub max_headers: usize,
    /// Time from the accept to the first complete request head (the smaller of this and
    /// `first_request_timeout` applies). On a keep-alive connection each next head must be
    /// complete within `idle_timeout` of the previous response: hyper starts its own
    /// header timer when a connection goes idle, so it cannot bound the next head alone.
    pub header_read_timeout: Duration,
    /// HTTP/2 concurrent streams per connection.
    pub max_concurrent_streams: u32,
    /// Upstream connect timeout when nothing more specific applies; a route's
    /// `timeouts.connect` (`RouteInfo::connect_timeout`) takes precedence.
    pub connect_timeout: Duration,
    /// Time from accept to the first complete request head (HTTP/1) or the first request
    /// stream (HTTP/2, after its preface and SETTINGS); a connection that has not
    /// managed it is closed. Defaults to `header_read_timeout`'s 10s.
    pub first_request_timeout: Duration,
    /// A connection with no request in flight is closed after this long (keep-alive idle
    /// timeout, both protocols).
    pub idle_timeout: Duration,
    /// HTTP/2 keep-alive: a PING is sent after this much silence, and the connection is
    /// closed when it is not answered within `http2_keep_alive_timeout`.
    pub http2_keep_alive_interval: Duration,
    /// See `http2_keep_alive_interval`.
    pub http2_keep_alive_timeout: Duration,
    /// Most client connections open at once on the proxy port; beyond it a new connection
    /// is answered `503` with `Retry-After` (plain HTTP) or closed (TLS). The admin port is
    /// not counted.
    pub max_connections: usize,
    /// Peers whose `Forwarded`, `X-Forwarded-For` and `X-Real-IP` headers are believed
    /// (load balancers in front of the proxy). From any other peer these headers are
    /// removed and replaced with what the proxy saw.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Threads serving the proxy port, each with a runtime and an upstream connection pool
    /// of its own (see `server::serve_proxy`); 0 serves on the caller's runtime.
    pub workers: usize,
    /// `Strict-Transport-Security` sent on every response over TLS (e.g.
    /// `max-age=31536000`), so browsers never send credentials in cleartext again; `None`
    /// sends none.
    pub hsts: Option<HeaderValue>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            header_read_timeout: Duration::from_secs(10),
            max_concurrent_streams: 128,
            connect_timeout: Duration::from_secs(5),
            first_request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            http2_keep_alive_interval: Duration::from_secs(30),
            http2_keep_alive_timeout: Duration::from_secs(20),
            max_connections: 10_000,
            trusted_proxies: Vec::new(),
            workers: 0,
            hsts: None,
        }
    }
}

/// The SHA-256 of a client's verified TLS certificate, as a request extension: what an
/// mTLS-bound token's `cnf.x5t#S256` must name (RFC 8705 section 3.1).
#[derive(Debug, Clone, Copy)]
pub struct PeerCertificate(pub [u8; 32]);

/// The client end of a connection, as the request path uses it.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The peer's address.
    pub addr: SocketAddr,
    /// Its IP address as a header value (`X-Forwarded-For`).
    ip_header: HeaderValue,
}

impl Peer {
    /// The peer at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        let ip_header = HeaderValue::from_str(&addr.ip().to_string())
            .expect("an IP address is a valid header value");
        Self { addr, ip_header }
    }
}

/// Everything the request path needs, shared by all connections.
pub struct Pipeline {
    pub(crate) config: Arc<LiveConfig>,
    pub(crate) metrics: Arc<Metrics>,
    limits: Limits,
    pub(crate) client: upstream::UpstreamClient,
    introspector: Arc<portcullis_fetch::Introspector>,
    pub(crate) keys: Arc<KeyWaiter>,
    body_filters: Option<Arc<dyn BodyFilters>>,
    /// Provider key cooldowns of LLM routes, shared by every worker.
    pub(crate) key_pools: Arc<crate::llm::KeyPools>,
    /// Budgets and rate limits: slices leased from the ledger, shared by every worker.
    pub(crate) quota: Arc<crate::quota::QuotaClient>,
    /// Where validated identity events go (the controller, or the standalone overlay).
    pub(crate) events: Arc<dyn crate::events::EventSink>,
    /// Identity events applied recently (by issuer and `jti`), shared by every worker.
    pub(crate) replay: Arc<crate::events::ReplayCache>,
}

impl Pipeline {
    /// Builds the pipeline and its pooled upstream client.
    pub fn new(config: Arc<LiveConfig>, metrics: Metrics, limits: Limits) -> Self {
        let client = upstream::client(limits.connect_timeout);
        let introspector = Arc::new(portcullis_fetch::Introspector::new(
            Arc::new(portcullis_fetch::HttpClient::default()),
            metrics.registry(),
        ));
        let quota = Arc::new(crate::quota::QuotaClient::new(
            Arc::new(crate::quota::LocalLedger::default()),
            metrics.registry(),
        ));
        Self {
            config,
            metrics: Arc::new(metrics),
            limits,
            client,
            introspector,
            keys: Arc::new(KeyWaiter::disabled()),
            body_filters: None,
            key_pools: Arc::default(),
            quota,
            events: Arc::new(crate::events::NoEvents),
            replay: Arc::default(),
        }
    }

    /// A pipeline for one worker thread: the same config, metrics, caches and waiters, and
    /// an upstream connection pool of its own, so that a worker's upstream connections are
    /// driven by the thread that uses them.
    pub fn for_worker(&self) -> Self {
        Self {
            config: self.config.clone(),
            metrics: self.metrics.clone(),
            limits: self.limits.clone(),
            client: upstream::client(self.limits.connect_timeout),
            introspector: self.introspector.clone(),
            keys: self.keys.clone(),
            body_filters: self.body_filters.clone(),
            key_pools: self.key_pools.clone(),
            quota: self.quota.clone(),
            events: self.events.clone(),
            replay: self.replay.clone(),
        }
    }

    /// Sends validated identity events (Back-Channel Logout) to `sink`.
    pub fn with_events(mut self, sink: Arc<dyn crate::events::EventSink>) -> Self {
        self.events = sink;
        self
    }

    /// Leases quota slices from `backend` (the controller) instead of an in-process
    /// ledger.
    pub fn with_lease_backend(mut self, backend: Arc<dyn crate::quota::LeaseBackend>) -> Self {
        self.quota = Arc::new(crate::quota::QuotaClient::with_metrics(
            backend,
            self.quota.metrics.clone(),
        ));
        self
    }

    /// The quota client, whose idle slices [`crate::quota::QuotaClient::run`] gives back.
    pub fn quota_client(&self) -> Arc<crate::quota::QuotaClient> {
        self.quota.clone()
    }

    /// Holds requests with an unknown `kid` for refetched keys through `keys`.
    pub fn with_key_waiter(mut self, keys: Arc<KeyWaiter>) -> Self {
        self.keys = keys;
        self
    }

    /// Reads and rewrites JSON request bodies and watches SSE response bodies on the routes
    /// `filters` chooses. Without it (the default) bodies stream through untouched.
    pub fn with_body_filters(mut self, filters: Arc<dyn BodyFilters>) -> Self {
        self.body_filters = Some(filters);
        self
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Serves one request through every phase. The request's `RequestLog` records it
    /// once, whether this future completes, its response body ends or is dropped, or the
    /// future itself is dropped because the client went away.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        peer: &Peer,
        tls: bool,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let mut log = RequestLog::start(&self.metrics, &req, peer);
        let version = req.version();
        let outcome = self.phases(req, &mut log, tls).await;
        let mut resp = self.respond(outcome, log, version);
        // RFC 6797 section 7.2: only over TLS (a plain-HTTP answer's header is ignored, and
        // could be forged anyway).
        if tls && let Some(hsts) = &self.limits.hsts {
            resp.headers_mut()
                .insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
        }
        Ok(resp)
    }
}

impl Pipeline {
    /// The request path without sockets, for benchmarks: limits, the canonical target,
    /// the decision (resumed when pending on keys or introspection, as `handle` does) and
    /// the upstream request head, returned instead of sent. The request is recorded
    /// (metrics, access log) as if the upstream had answered `200` with an empty body; a
    /// refusal or denial is returned as the response `handle` would send.
    pub async fn prepare(
        &self,
        req: Request<()>,
        peer: &Peer,
        tls: bool,
    ) -> Result<Request<()>, Response<ProxyBody>> {
        let mut log = RequestLog::start(&self.metrics, &req, peer);
        let (mut head, ()) = req.into_parts();
        let uri = std::mem::take(&mut head.uri);
        match self.head_phases(&mut head, &uri, &mut log, tls).await {
            Ok(_) => {
                log.head(StatusCode::OK, Some(0));
                Ok(Request::from_parts(head, ()))
            }
            Err(resp) => {
                log.head(resp.status(), None);
                Err(resp)
            }
        }
    }
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
