//! The per-request context and its drop guard: the one place that records request metrics
//! and writes the access log, exactly once per request, from `Drop`.
//!
//! ```text
//! handle ── RequestLog::start (inflight +1)
//!   ├─ answered with a fixed body ........ dropped at the end of handle ──▶ record
//!   ├─ answered with an upstream body .... moved into RecordedBody; dropped when the body
//!   │                                      ends, fails or is dropped ──▶ record (bytes, body_us)
//!   └─ handler dropped (client gone) ..... dropped with the future ──▶ record as 499
//! ```
//!
//! The access log's fields are listed in the `pipeline` module docs.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Method, Request, StatusCode};
use http_body::{Body, Frame, SizeHint};
use portcullis_policy::Fingerprint;
use tracing::info;

use super::Peer;
use super::error::{ErrorSource, ProxyError, client_closed_status};
use crate::metrics::{Metrics, method_label};

/// Per-request state, filled in as the phases run; records the request when dropped.
pub(crate) struct RequestLog {
    metrics: Arc<Metrics>,
    start: Instant,
    pub(crate) method: Method,
    /// The request target as received (a clone shares its bytes).
    uri: http::Uri,
    /// The canonical path, once known, where it differs from the received one.
    pub(crate) canonical_path: Option<String>,
    pub(crate) request_id: HeaderValue,
    pub(crate) client: SocketAddr,
    /// The client's IP address as a header value (`X-Forwarded-For`), made once per
    /// connection.
    pub(crate) client_ip: HeaderValue,
    pub(crate) route: Option<Arc<str>>,
    pub(crate) decision: &'static str,
    pub(crate) reason: &'static str,
    pub(crate) fingerprint: Option<Fingerprint>,
    pub(crate) cache_hit: Option<bool>,
    pub(crate) upstream_time: Option<Duration>,
    /// Close an HTTP/1 connection after this response.
    pub(crate) close: bool,
    error: Option<ErrorSource>,
    /// Set once the response head is ready; `None` at drop means the client left first.
    status: Option<StatusCode>,
    /// Time to the response head.
    head_time: Option<Duration>,
    /// Response body bytes sent.
    bytes: u64,
    /// Set when the body streams after the head: when it started.
    body_start: Option<Instant>,
}

impl RequestLog {
    /// Starts the record of `req` (counted in flight until it is dropped).
    pub(crate) fn start<B>(metrics: &Arc<Metrics>, req: &Request<B>, peer: &Peer) -> Self {
        metrics.inflight.inc();
        let request_id = req
            .headers()
            .get("x-request-id")
            .filter(|v| !v.is_empty() && v.len() <= 128)
            .cloned()
            .unwrap_or_else(new_request_id);
        Self {
            metrics: metrics.clone(),
            start: Instant::now(),
            method: req.method().clone(),
            uri: req.uri().clone(),
            canonical_path: None,
            request_id,
            client: peer.addr,
            client_ip: peer.ip_header.clone(),
            route: None,
            decision: "none",
            reason: "none",
            fingerprint: None,
            cache_hit: None,
            upstream_time: None,
            close: false,
            error: None,
            status: None,
            head_time: None,
            bytes: 0,
            body_start: None,
        }
    }

    /// Counts `e` (`portcullis_request_errors_total`, and `portcullis_upstream_errors_total`
    /// for upstream ones) and makes it the request's reason.
    pub(crate) fn error(&mut self, e: &ProxyError) {
        let origin = e.origin();
        self.metrics
            .request_errors
            .with_label_values(&[origin.as_str(), e.reason()])
            .inc();
        if origin == ErrorSource::Upstream {
            self.metrics
                .upstream_errors
                .with_label_values(&[self.route.as_deref().unwrap_or("none"), e.upstream_kind()])
                .inc();
        }
        self.reason = e.reason();
        self.error = Some(origin);
        if e.closes_connection() {
            self.close = true;
        }
    }

    /// The response head is ready: its status, and the body size when already known.
    pub(crate) fn head(&mut self, status: StatusCode, bytes: Option<u64>) {
        self.status = Some(status);
        self.head_time = Some(self.start.elapsed());
        self.bytes = bytes.unwrap_or(0);
    }

    /// Records the request: metrics and the access log line.
    fn record(&mut self) {
        let status = match self.status {
            Some(s) => s,
            None => {
                // The handler was dropped before answering: the client went away.
                self.error(&ProxyError::ClientClosed);
                client_closed_status()
            }
        };
        let route = self.route.as_deref().unwrap_or("none");
        let head_time = self.head_time.unwrap_or_else(|| self.start.elapsed());
        let body_time = self.body_start.map(|t| t.elapsed());
        let m = &self.metrics;
        m.requests
            .with_label_values(&[route, method_label(&self.method), status.as_str()])
            .inc();
        m.request_duration
            .with_label_values(&[route])
            .observe(head_time.as_secs_f64());
        if let Some(up) = self.upstream_time {
            m.upstream_duration
                .with_label_values(&[route])
                .observe(up.as_secs_f64());
        }
        m.response_body_bytes
            .with_label_values(&[route])
            .observe(self.bytes as f64);
        m.inflight.dec();
        info!(
            target: "portcullis::access",
            request_id = self.request_id.to_str().unwrap_or("-"),
            client = %self.client.ip(),
            method = %self.method,
            path = self.canonical_path.as_deref().unwrap_or(self.uri.path()),
            route,
            status = status.as_u16(),
            decision = self.decision,
            reason = self.reason,
            error = self.error.map(ErrorSource::as_str),
            token = self.fingerprint.map(|f| f.to_string()).as_deref().unwrap_or("-"),
            cache_hit = self.cache_hit,
            duration_us = head_time.as_micros() as u64,
            upstream_us = self.upstream_time.map(|d| d.as_micros() as u64),
            body_us = body_time.map(|d| d.as_micros() as u64),
            bytes = self.bytes,
            "request"
        );
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        self.record();
    }
}

/// A streamed response body carrying its request's [`RequestLog`], which it records when
/// the body ends, fails, or is dropped (the client went away mid-body).
pub(crate) struct RecordedBody<B: Body> {
    inner: B,
    log: RequestLog,
    ended: bool,
}

impl<B: Body> RecordedBody<B> {
    /// Takes over `log`; the body starts streaming now.
    pub(crate) fn new(inner: B, mut log: RequestLog) -> Self {
        log.body_start = Some(Instant::now());
        Self {
            inner,
            log,
            ended: false,
        }
    }
}

impl<B> Body for RecordedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.log.bytes += data.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.ended = true;
                }
            }
            Poll::Ready(None) => this.ended = true,
            Poll::Ready(Some(Err(_))) if !this.ended => {
                // The upstream broke its body off: the client gets a cut response.
                this.ended = true;
                this.log.error(&ProxyError::UpstreamProtocol);
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for RecordedBody<B>
where
    B: Body,
{
    fn drop(&mut self) {
        if !self.ended && !self.inner.is_end_stream() {
            // Dropped mid-body: the client went away (or its connection was cut).
            self.log.error(&ProxyError::ClientClosed);
        }
        // `self.log` records as it drops, after this.
    }
}

/// A fresh request ID: a per-process prefix and a sequence number.
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
    // `{prefix:016x}-{n:08x}`, written without the formatting machinery.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [0u8; 25];
    for (i, slot) in id[..16].iter_mut().enumerate() {
        *slot = HEX[((prefix >> (60 - 4 * i)) & 0xf) as usize];
    }
    id[16] = b'-';
    for (i, slot) in id[17..].iter_mut().enumerate() {
        *slot = HEX[((n >> (28 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&id).unwrap_or(HeaderValue::from_static("-"))
}
