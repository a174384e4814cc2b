//! Listeners: the proxy port (HTTP/1.1 and h2c, or TLS with ALPN h2) and the admin port.
//!
//! Every connection on the proxy port is bounded, so that connections which never get
//! anywhere (slowloris) cannot pile up:
//!
//! - at most `Limits::max_connections` are open at once; beyond it a plain-HTTP client is
//!   answered `503` with `Retry-After: 1` and closed, a TLS client is closed;
//! - the TLS handshake must finish within 10 s;
//! - from then on the first complete request (an HTTP/1 head, or for HTTP/2 the preface,
//!   SETTINGS and a first HEADERS) must arrive within the smaller of
//!   `Limits::first_request_timeout` and `Limits::header_read_timeout`;
//! - a connection with no request in flight (its last response body finished or dropped)
//!   is closed after `Limits::idle_timeout`, so on a keep-alive connection each next
//!   request head must be complete within `idle_timeout` of the previous response; a long
//!   response stream is never idle;
//! - hyper's own HTTP/1 header read timer is a backstop behind these (it starts when a
//!   connection goes idle, so it runs for `header_read_timeout + idle_timeout`), and
//!   HTTP/2 PINGs detect dead peers.
//!
//! A connection that runs out of time is shut down gracefully (HTTP/1: closed when idle;
//! HTTP/2: GOAWAY) and dropped, closing the socket, if it has not finished within a second.
//! The admin port is not counted and has none of these bounds.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::config::LiveConfig;
use crate::metrics::Metrics;
use crate::pipeline::{Limits, Peer, Pipeline, ProxyBody, plain, response};

/// The TLS handshake's own bound; it counts toward no other timeout.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// After a timed-out connection is asked to shut down gracefully, how long it may take
/// before it is dropped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// Connections over `max_connections` being answered `503` at once; past this they are
/// closed without an answer, so refusing costs a bounded amount.
const REJECT_SLOTS: usize = 64;
/// How long a refused connection may take to receive its `503` and close.
const REJECT_LINGER: Duration = Duration::from_secs(1);
/// Stands in for "never" where a deadline would overflow.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);
/// The longest timer handed to hyper, which adds durations to instants unchecked.
const MAX_TIMER: Duration = Duration::from_secs(86_400 * 365);

fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        // hyper starts this timer when a keep-alive connection goes idle after a response,
        // not at the next request's first byte: at the header read timeout alone, every
        // idle connection would close after it, well before `idle_timeout`. So hyper's
        // timer runs past `idle_timeout`, and the watchdog (which counts a request in
        // flight only once its head is complete) decides: the first head must be complete
        // within min(`first_request_timeout`, `header_read_timeout`) of the accept, each
        // next one within `idle_timeout` of the previous response.
        .header_read_timeout(
            limits
                .header_read_timeout
                .saturating_add(limits.idle_timeout)
                .min(MAX_TIMER),
        )
        // hyper's own hard caps, above the limits the pipeline counts.
        .max_headers(limits.max_headers + 28)
        .max_buf_size((limits.max_header_bytes * 2).max(8192));
    // A zero interval turns the PINGs off.
    let ping = Some(limits.http2_keep_alive_interval.min(MAX_TIMER)).filter(|d| !d.is_zero());
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes * 2).unwrap_or(u32::MAX))
        .keep_alive_interval(ping)
        .keep_alive_timeout(limits.http2_keep_alive_timeout.min(MAX_TIMER));
    b
}

/// `from + d`, or far in the future when that does not fit.
fn deadline(from: Instant, d: Duration) -> Instant {
    from.checked_add(d)
        .or_else(|| from.checked_add(FAR_FUTURE))
        .unwrap_or(from)
}

/// Why the gateway itself closed a connection: the `reason` label of
/// `portcullis_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CloseReason {
    /// No complete first request within `first_request_timeout`.
    FirstRequestTimeout,
    /// No request in flight for `idle_timeout`.
    IdleTimeout,
    /// hyper's HTTP/1 header read timeout.
    HeaderReadTimeout,
    /// The TLS handshake did not finish in time.
    TlsHandshakeTimeout,
    /// Over `max_connections`.
    Limit,
}

impl CloseReason {
    fn label(self) -> &'static str {
        match self {
            CloseReason::FirstRequestTimeout => "first_request_timeout",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::HeaderReadTimeout => "header_read_timeout",
            CloseReason::TlsHandshakeTimeout => "tls_handshake_timeout",
            CloseReason::Limit => "limit",
        }
    }
}

fn count_close(metrics: &Metrics, reason: CloseReason) {
    metrics
        .connections_closed
        .with_label_values(&[reason.label()])
        .inc();
}

/// What one connection's requests are doing, for its watchdog.
#[derive(Debug)]
struct Activity {
    /// Requests whose head has been received.
    started: u64,
    /// Requests whose response body is not yet finished or dropped.
    in_flight: usize,
    /// When `in_flight` last fell to zero.
    last_end: Instant,
}

/// Per-connection request tracking, shared by the service and the watchdog.
#[derive(Debug)]
struct ConnTracker {
    /// When the connection became ready for HTTP (accept, or the end of the TLS handshake).
    opened: Instant,
    activity: Mutex<Activity>,
}

impl ConnTracker {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            opened: now,
            activity: Mutex::new(Activity {
                started: 0,
                in_flight: 0,
                last_end: now,
            }),
        }
    }

    fn activity(&self) -> MutexGuard<'_, Activity> {
        // The state stays consistent even if a holder panicked: plain counters.
        self.activity.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Resolves when the connection has run out of time: no first request within
    /// `first`, or nothing in flight for `idle`. Never resolves while a request is in flight.
    async fn expired(&self, first: Duration, idle: Duration) -> CloseReason {
        loop {
            let next = {
                let a = self.activity();
                if a.started == 0 {
                    Some((
                        deadline(self.opened, first),
                        CloseReason::FirstRequestTimeout,
                    ))
                } else if a.in_flight == 0 {
                    Some((deadline(a.last_end, idle), CloseReason::IdleTimeout))
                } else {
                    None
                }
            };
            // Deadlines only ever move later (a request starting, or ending after the last
            // check), so the watchdog needs no wake-up from the request path: it sleeps to
            // the deadline it saw and looks again. A request path that notified it would
            // cost two cross-task wake-ups and a timer re-registration per request.
            match next {
                Some((at, reason)) if at <= Instant::now() => return reason,
                Some((at, _)) => tokio::time::sleep_until(at).await,
                None => tokio::time::sleep(idle.min(MAX_TIMER)).await,
            }
        }
    }
}

/// One request in flight on a connection; dropping it ends the request.
#[derive(Debug)]
struct InFlight(Arc<ConnTracker>);

impl InFlight {
    fn start(tracker: &Arc<ConnTracker>) -> Self {
        {
            let mut a = tracker.activity();
            a.started += 1;
            a.in_flight += 1;
        }
        InFlight(tracker.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        {
            let mut a = self.0.activity();
            a.in_flight = a.in_flight.saturating_sub(1);
            if a.in_flight == 0 {
                a.last_end = Instant::now();
            }
        }
    }
}

/// A response body that keeps its request counted as in flight until the body has been
/// sent in full, has failed, or has been dropped (the client went away), so that a long
/// stream (SSE) is never taken for an idle connection.
struct TrackedBody {
    inner: ProxyBody,
    in_flight: Option<InFlight>,
}

impl TrackedBody {
    fn new(inner: ProxyBody, in_flight: InFlight) -> Self {
        Self {
            inner,
            in_flight: Some(in_flight),
        }
    }
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.in_flight = None;
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

/// Decrements `portcullis_connections_open` when the connection task ends, however it ends.
struct OpenConnection {
    metrics: Metrics,
    _permit: OwnedSemaphorePermit,
}

impl OpenConnection {
    fn new(metrics: Metrics, permit: OwnedSemaphorePermit) -> Self {
        metrics.connections_open.inc();
        Self {
            metrics,
            _permit: permit,
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.metrics.connections_open.dec();
    }
}

/// What every connection task needs.
struct ConnContext {
    pipeline: Arc<Pipeline>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    metrics: Metrics,
    peer: SocketAddr,
    is_tls: bool,
    /// The SHA-256 of the client's verified TLS certificate, if it presented one.
    peer_certificate: Option<[u8; 32]>,
    first_request_timeout: Duration,
    /// `first_request_timeout` is the header read timeout (the smaller of the two): a
    /// connection cut by it is counted as `header_read_timeout`.
    first_is_header_read: bool,
    idle_timeout: Duration,
}

/// Serves HTTP on one connection (already past TLS, if any) under its watchdog.
async fn serve_connection<I>(io: I, ctx: ConnContext, mut shutdown: watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ConnContext {
        pipeline,
        builder,
        metrics,
        peer,
        is_tls,
        peer_certificate,
        first_request_timeout,
        first_is_header_read,
        idle_timeout,
    } = ctx;
    let tracker = Arc::new(ConnTracker::new());
    let client = Arc::new(Peer::new(peer));
    let service = {
        let tracker = tracker.clone();
        service_fn(move |mut req: Request<Incoming>| {
            // Called once the request head is in: the request is in flight from here
            // until its response body is done.
            let in_flight = InFlight::start(&tracker);
            if let Some(c) = peer_certificate {
                req.extensions_mut()
                    .insert(crate::pipeline::PeerCertificate(c));
            }
            let pipeline = pipeline.clone();
            let client = client.clone();
            async move {
                pipeline
                    .handle(req, &client, is_tls)
                    .await
                    .map(|resp| resp.map(|body| TrackedBody::new(body, in_flight)))
            }
        })
    };
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let expired = tracker.expired(first_request_timeout, idle_timeout);
    tokio::pin!(expired);
    // Set once the watchdog has fired: when the connection is dropped at the latest.
    let mut cut_at: Option<Instant> = None;
    let mut draining = false;
    let result = loop {
        tokio::select! {
            r = conn.as_mut() => break Some(r),
            reason = expired.as_mut(), if cut_at.is_none() => {
                let reason = if reason == CloseReason::FirstRequestTimeout && first_is_header_read {
                    metrics
                        .limit_rejections
                        .with_label_values(&["header_read_timeout"])
                        .inc();
                    CloseReason::HeaderReadTimeout
                } else {
                    reason
                };
                let requests = tracker.activity().started;
                debug!(%peer, reason = reason.label(), requests, "closing connection");
                count_close(&metrics, reason);
                conn.as_mut().graceful_shutdown();
                cut_at = Some(deadline(Instant::now(), SHUTDOWN_GRACE));
            }
            _ = tokio::time::sleep_until(cut_at.unwrap_or_else(Instant::now)), if cut_at.is_some() => {
                debug!(%peer, "connection did not shut down in time; dropping it");
                break None;
            }
            _ = shutdown.changed(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    };
    // Dropping the connection (here, or as the task ends) closes the socket.
    if let Some(Err(e)) = result {
        if cut_at.is_none()
            && let Some(h) = e.downcast_ref::<hyper::Error>()
            && h.is_timeout()
        {
            metrics
                .limit_rejections
                .with_label_values(&["header_read_timeout"])
                .inc();
            count_close(&metrics, CloseReason::HeaderReadTimeout);
        }
        debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Answers a connection over `max_connections` with `503` and `Retry-After` (RFC 9110
/// sections 15.6.4 and 10.2.3) and closes it, half-closing first and reading what the
/// client sent so that the close does not reset the answer away (RFC 9112 section 9.6).
async fn refuse_over_limit(mut stream: TcpStream) {
    const BODY: &str = "too many connections; retry shortly\n";
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let exchange = async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        let mut buf = [0u8; 4096];
        let mut read = 0usize;
        while read < 64 * 1024 {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            read += n;
        }
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(REJECT_LINGER, exchange).await;
}

/// Serves the proxy on `listener` until `shutdown` turns true; then stops accepting and
/// lets open connections finish.
///
/// With `Limits::workers` at 0 the connections are served on the caller's runtime. With N
/// workers, each is an OS thread with a current-thread runtime of its own that accepts on
/// a duplicate of the listening socket (one socket, so a second process cannot bind the
/// same port by accident as it could with `SO_REUSEPORT`) and serves what it accepted
/// start to finish, with an upstream pool of its own: a request, its upstream call and its
/// response never wake another thread. The connection limit is shared by all workers.
/// Returns once every worker has stopped and its connections have finished.
pub async fn serve_proxy(
    listener: TcpListener,
    pipeline: Arc<Pipeline>,
    tls: Option<TlsAcceptor>,
    metrics: Metrics,
    shutdown: watch::Receiver<bool>,
) {
    let limits = pipeline.limits().clone();
    let max_connections = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let shared = Accepting {
        builder: Arc::new(builder(&limits)),
        connections: Arc::new(Semaphore::new(max_connections)),
        refusals: Arc::new(Semaphore::new(REJECT_SLOTS)),
        tls,
        metrics,
        max_connections,
        // hyper's header read timer starts at the accept too; it is the backstop now.
        first_request_timeout: limits.first_request_timeout.min(limits.header_read_timeout),
        first_is_header_read: limits.header_read_timeout < limits.first_request_timeout,
        idle_timeout: limits.idle_timeout,
    };
    if limits.workers == 0 {
        accept_loop(listener, pipeline, shared, shutdown).await;
        info!("proxy listener stopped");
        return;
    }
    let socket = match listener.into_std() {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot hand the proxy listener to worker threads");
            return;
        }
    };
    let mut done = Vec::with_capacity(limits.workers);
    for index in 0..limits.workers {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let started = socket.try_clone().and_then(|socket| {
            let worker = Arc::new(pipeline.for_worker());
            let shared = shared.clone();
            let shutdown = shutdown.clone();
            std::thread::Builder::new()
                .name(format!("portcullis-worker-{index}"))
                .spawn(move || {
                    run_worker(index, socket, worker, shared, shutdown);
                    let _ = tx.send(());
                })
        });
        match started {
            Ok(_) => done.push(rx),
            Err(e) => warn!(worker = index, error = %e, "cannot start a proxy worker thread"),
        }
    }
    // The workers hold the only copies now: the port closes as soon as they stop
    // accepting, not once their connections have finished.
    drop(socket);
    for rx in done {
        let _ = rx.await;
    }
    info!("proxy listener stopped");
}

/// One worker thread: its own current-thread runtime, accepting on its duplicate of the
/// listening socket until shutdown, then waiting for its connections to finish.
fn run_worker(
    index: usize,
    socket: std::net::TcpListener,
    pipeline: Arc<Pipeline>,
    shared: Accepting,
    shutdown: watch::Receiver<bool>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            warn!(worker = index, error = %e, "cannot start a proxy worker runtime");
            return;
        }
    };
    runtime.block_on(async move {
        // Registers the duplicate with this thread's reactor (it is non-blocking already).
        match TcpListener::from_std(socket) {
            Ok(listener) => accept_loop(listener, pipeline, shared, shutdown).await,
            Err(e) => warn!(worker = index, error = %e, "cannot listen on a proxy worker"),
        }
    });
}

/// What every accept loop shares: connection bounds, the HTTP builder, TLS.
#[derive(Clone)]
struct Accepting {
    builder: Arc<auto::Builder<TokioExecutor>>,
    connections: Arc<Semaphore>,
    refusals: Arc<Semaphore>,
    tls: Option<TlsAcceptor>,
    metrics: Metrics,
    max_connections: usize,
    first_request_timeout: Duration,
    /// `first_request_timeout` is the header read timeout (the smaller of the two): a
    /// connection cut by it is counted as `header_read_timeout`.
    first_is_header_read: bool,
    idle_timeout: Duration,
}

/// Accepts connections and serves each on a task of the current runtime until `shutdown`
/// turns true; then waits for those connections to finish (they shut down gracefully).
async fn accept_loop(
    listener: TcpListener,
    pipeline: Arc<Pipeline>,
    shared: Accepting,
    mut shutdown: watch::Receiver<bool>,
) {
    let Accepting {
        builder,
        connections,
        refusals,
        tls,
        metrics,
        max_connections,
        first_request_timeout,
        first_is_header_read,
        idle_timeout,
    } = shared;
    // Every connection task holds a sender; the receiver sees the channel close once the
    // last of them has ended.
    let (alive, mut all_done) = tokio::sync::mpsc::channel::<()>(1);
    let mut last_limit_warning: Option<Instant> = None;
    loop {
        if *shutdown.borrow() {
            break;
        }
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let permit = match connections.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                count_close(&metrics, CloseReason::Limit);
                if last_limit_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    last_limit_warning = Some(Instant::now());
                    warn!(%peer, max_connections, "connection limit reached; refusing new connections");
                } else {
                    debug!(%peer, "over the connection limit; refused");
                }
                // TLS clients are closed; plain ones get a 503 while that stays cheap.
                if tls.is_none()
                    && let Ok(slot) = refusals.clone().try_acquire_owned()
                {
                    tokio::spawn(async move {
                        refuse_over_limit(stream).await;
                        drop(slot);
                    });
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let open = OpenConnection::new(metrics.clone(), permit);
        let ctx = ConnContext {
            pipeline: pipeline.clone(),
            builder: builder.clone(),
            metrics: metrics.clone(),
            peer,
            is_tls: tls.is_some(),
            peer_certificate: None,
            first_request_timeout,
            first_is_header_read,
            idle_timeout,
        };
        let tls = tls.clone();
        let shutdown = shutdown.clone();
        let alive = alive.clone();
        tokio::spawn(async move {
            let _open = open;
            let _alive = alive;
            match tls {
                None => serve_connection(stream, ctx, shutdown).await,
                Some(acceptor) => {
                    let stream =
                        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                debug!(%peer, error = %e, "TLS handshake failed");
                                ctx.metrics
                                    .limit_rejections
                                    .with_label_values(&["tls_handshake"])
                                    .inc();
                                return;
                            }
                            Err(_) => {
                                debug!(%peer, "TLS handshake timed out");
                                ctx.metrics
                                    .limit_rejections
                                    .with_label_values(&["tls_handshake_timeout"])
                                    .inc();
                                count_close(&ctx.metrics, CloseReason::TlsHandshakeTimeout);
                                return;
                            }
                        };
                    // RFC 8705 section 3: the certificate mTLS-bound tokens name, verified
                    // against the client CA during the handshake.
                    let peer_certificate = stream.get_ref().1.peer_certificates().and_then(|c| {
                        c.first().map(|leaf| {
                            use sha2::Digest;
                            sha2::Sha256::digest(leaf.as_ref()).into()
                        })
                    });
                    serve_connection(
                        stream,
                        ConnContext {
                            peer_certificate,
                            ..ctx
                        },
                        shutdown,
                    )
                    .await
                }
            }
        });
    }
    drop(listener);
    drop(alive);
    let _ = all_done.recv().await;
}

/// Serves `/metrics`, `/healthz`, `/readyz`, `/config` and `/openapi.json` (the AI
/// gateway's OpenAPI document) on the admin port.
pub async fn serve_admin(
    listener: TcpListener,
    config: Arc<LiveConfig>,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
            _ = shutdown.changed() => break,
        };
        let config = config.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let config = config.clone();
                let metrics = metrics.clone();
                async move { Ok::<_, std::convert::Infallible>(admin(&req, &config, &metrics)) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn admin(
    req: &Request<Incoming>,
    config: &LiveConfig,
    metrics: &Metrics,
) -> http::Response<ProxyBody> {
    match req.uri().path() {
        "/metrics" => {
            let body = String::from_utf8(metrics.render()).unwrap_or_default();
            response(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                body,
            )
        }
        "/healthz" => plain(StatusCode::OK, "ok"),
        "/readyz" if config.is_loaded() => plain(StatusCode::OK, "ready"),
        "/readyz" => plain(StatusCode::SERVICE_UNAVAILABLE, "no config loaded yet"),
        "/openapi.json" => {
            let body = serde_json::to_string_pretty(config.load().openapi()).unwrap_or_default();
            response(StatusCode::OK, "application/json", body)
        }
        "/config" => {
            let body = serde_json::to_string_pretty(&*config.info()).unwrap_or_default();
            response(StatusCode::OK, "application/json", body)
        }
        _ => plain(StatusCode::NOT_FOUND, "not found"),
    }
}

/// Binds a TCP listener, naming the address on failure.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("binding {addr}: {e}")))
}
