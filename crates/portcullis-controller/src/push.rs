//! The push endpoint: `POST /v1/stream` (see `portcullis_api::push` for the protocol)
//! with `/healthz` and `/readyz`; and, on a port of its own, `/metrics` with the same
//! health endpoints. Every replica serves streams.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use portcullis_api::push::{ProxyMessage, STREAM_PATH, ServerMessage};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::auth::ProxyAuth;
use crate::metrics::Metrics;
use crate::publisher::{Catchup, Publisher};
use crate::registry::ProxyRegistry;

type Body = BoxBody<Bytes, Infallible>;

/// Everything the push endpoint needs.
pub struct PushState {
    /// The config being published.
    pub publisher: Arc<Publisher>,
    /// Connected proxies.
    pub registry: Arc<ProxyRegistry>,
    /// Who may subscribe.
    pub auth: ProxyAuth,
    /// Metrics.
    pub metrics: Metrics,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// The quota ledger (leases from proxies, relays between replicas).
    pub quota: Arc<crate::quota::QuotaService>,
    /// Writes the revocations of identity events proxies validated.
    pub events: Arc<crate::events::EventService>,
}

/// Serves the push endpoint (config streams, `/healthz`, `/readyz`) until `shutdown`
/// turns true; open streams then end, so proxies reconnect to another replica.
pub async fn serve(listener: TcpListener, state: Arc<PushState>, shutdown: watch::Receiver<bool>) {
    serve_port(listener, state, shutdown, Port::Push, None).await
}

/// [`serve`] over TLS: config streams carry keys, revocations and introspection client
/// secrets, so they travel encrypted, and a proxy verifies it is talking to the
/// controller. `acceptor` re-reads its certificate when the files change (cert-manager
/// renewals need no restart) and may require client certificates (mutual TLS).
pub async fn serve_tls(
    listener: TcpListener,
    state: Arc<PushState>,
    shutdown: watch::Receiver<bool>,
    acceptor: tokio_rustls::TlsAcceptor,
) {
    serve_port(listener, state, shutdown, Port::Push, Some(acceptor)).await
}

/// Serves the metrics port (`/metrics`, `/healthz`, `/readyz`; no config streams), kept
/// apart from the push port so a NetworkPolicy can let only proxies reach the one and
/// only Prometheus the other.
pub async fn serve_metrics(
    listener: TcpListener,
    state: Arc<PushState>,
    shutdown: watch::Receiver<bool>,
) {
    serve_port(listener, state, shutdown, Port::Metrics, None).await
}

#[derive(Clone, Copy, Debug)]
enum Port {
    Push,
    Metrics,
}

async fn serve_port(
    listener: TcpListener,
    state: Arc<PushState>,
    mut shutdown: watch::Receiver<bool>,
    port: Port,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let addr = listener.local_addr().ok();
    info!(?addr, ?port, "controller endpoint listening");
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let shutdown = shutdown.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                let shutdown = shutdown.clone();
                async move { Ok::<_, Infallible>(route(req, peer, state, shutdown, port).await) }
            });
            let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            b.http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(Some(Duration::from_secs(20)));
            b.http1()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10));
            match tls {
                None => {
                    let _ = b.serve_connection(TokioIo::new(stream), service).await;
                }
                Some(acceptor) => {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(tls)) => {
                            let _ = b.serve_connection(TokioIo::new(tls), service).await;
                        }
                        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn route(
    req: Request<Incoming>,
    peer: SocketAddr,
    state: Arc<PushState>,
    shutdown: watch::Receiver<bool>,
    port: Port,
) -> Response<Body> {
    match (port, req.method().as_str(), req.uri().path()) {
        (Port::Push, "POST", STREAM_PATH) => stream(req, peer, state, shutdown).await,
        (Port::Push, "POST", crate::quota::QUOTA_PATH) => relayed(req, peer, state).await,
        (Port::Metrics, "GET", "/metrics") => text(StatusCode::OK, state.metrics.render()),
        (_, "GET", "/healthz") => text(StatusCode::OK, "ok\n"),
        (_, "GET", "/readyz") if state.publisher.current().0 > 0 => text(StatusCode::OK, "ready\n"),
        (_, "GET", "/readyz") => text(StatusCode::SERVICE_UNAVAILABLE, "no config compiled yet\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Remembers what carried `version` (bounded: a proxy that never acks cannot grow it).
fn note(carried: &std::sync::Mutex<HashMap<u64, &'static str>>, version: u64, kind: &'static str) {
    let mut m = carried.lock().unwrap_or_else(|e| e.into_inner());
    if m.len() >= 1024 {
        m.clear();
    }
    m.insert(version, kind);
}

fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then_some(v)
    })
}

fn line(msg: &ServerMessage) -> Bytes {
    let mut v = serde_json::to_vec(msg).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

/// The caller's identity, or the refusal to answer with (401, 403 or 503).
async fn authenticate(
    req: &Request<Incoming>,
    peer: SocketAddr,
    state: &PushState,
) -> Result<String, Response<Body>> {
    match state
        .auth
        .check(
            req.headers()
                .get(header::AUTHORIZATION)
                .map(|v| v.as_bytes()),
        )
        .await
    {
        Ok(id) => Ok(id),
        Err(e) => {
            state.metrics.refused.with_label_values(&[e.label()]).inc();
            warn!(%peer, reason = e.label(), "config stream refused");
            let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED);
            let mut r = text(
                status,
                format!("{}\n", status.canonical_reason().unwrap_or("refused")),
            );
            if status == StatusCode::UNAUTHORIZED {
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer realm=\"portcullis-controller\""),
                );
            }
            Err(r)
        }
    }
}

async fn stream(
    req: Request<Incoming>,
    peer: SocketAddr,
    state: Arc<PushState>,
    mut shutdown: watch::Receiver<bool>,
) -> Response<Body> {
    let identity = match authenticate(&req, peer, &state).await {
        Ok(id) => id,
        Err(r) => return r,
    };
    let since = match query_param(req.uri().query(), "since").map(str::parse::<u64>) {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(_)) => return text(StatusCode::BAD_REQUEST, "since must be a version number\n"),
    };
    let proxy_name = query_param(req.uri().query(), "proxy")
        .unwrap_or("-")
        .to_owned();
    let id = state.registry.connect(identity.clone());
    state
        .metrics
        .connected_proxies
        .set(state.registry.connected() as i64);
    info!(proxy = %proxy_name, %identity, %peer, ?since, "proxy subscribed");

    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let body = StreamBody::new(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    }));
    // Relayed quota messages authenticate as this proxy.
    let proxy_auth = req.headers().get(header::AUTHORIZATION).cloned();
    let incoming = req.into_body();
    let grants = tx.clone();
    let (reconnect, mut reconnect_rx) = watch::channel(false);

    // What carried each version to this proxy (full, delta, revocation), for the
    // push-latency label; filled by the sender, read when the ack comes back.
    let carried: Arc<std::sync::Mutex<HashMap<u64, &'static str>>> = Default::default();

    // Acks from the proxy.
    let ack_task = {
        let state = state.clone();
        let carried = carried.clone();
        tokio::spawn(async move {
            let mut body = incoming;
            let mut buf = Vec::new();
            while let Some(Ok(frame)) = body.frame().await {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                buf.extend_from_slice(&data);
                while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let l: Vec<u8> = buf.drain(..=pos).collect();
                    match serde_json::from_slice::<ProxyMessage>(&l) {
                        Ok(ProxyMessage::Ack { version }) => {
                            state.registry.ack(id, version);
                            let kind = carried
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .remove(&version);
                            if let (Some(created), Some(kind)) =
                                (state.publisher.created_at(version), kind)
                            {
                                state
                                    .metrics
                                    .push_latency
                                    .with_label_values(&[kind])
                                    .observe(created.elapsed().as_secs_f64());
                            }
                        }
                        Ok(ProxyMessage::Refetch { url }) if url.len() <= 2048 => {
                            state.registry.request_refetch(url);
                        }
                        Ok(ProxyMessage::Refetch { .. }) => {
                            debug!("refetch request with an oversized URL ignored")
                        }
                        Ok(ProxyMessage::Lease { id, ask }) => {
                            let (quota, grants, auth, reconnect) = (
                                state.quota.clone(),
                                grants.clone(),
                                proxy_auth.clone(),
                                reconnect.clone(),
                            );
                            tokio::spawn(async move {
                                let (slot, shape, limit) = (ask.slot.clone(), ask.shape, ask.limit);
                                let (grant, refused) = quota.lease(ask, auth.clone()).await;
                                let granted = grant.granted;
                                let line = line(&ServerMessage::Grant { id, grant });
                                if grants.send(line).await.is_err() && granted > 0 {
                                    // The stream ended first: the slice goes back, it
                                    // would be counted as held with nobody to use it.
                                    let back = portcullis_api::push::Release {
                                        slot,
                                        unused: granted,
                                        over: 0,
                                        end: shape.end(),
                                        limit,
                                    };
                                    quota.release(back, auth).await;
                                }
                                if refused {
                                    // Its token expired under the open stream: end the
                                    // stream, the proxy reconnects with its current one.
                                    reconnect.send_replace(true);
                                }
                            });
                        }
                        Ok(ProxyMessage::Event { id, event }) => {
                            let (events, answers) = (state.events.clone(), grants.clone());
                            tokio::spawn(async move {
                                let result = events.apply(event).await;
                                let (error, replay) = match result {
                                    Ok(replay) => (None, replay),
                                    Err(e) => (Some(e), false),
                                };
                                let msg = ServerMessage::Applied { id, error, replay };
                                let _ = answers.send(line(&msg)).await;
                            });
                        }
                        Ok(ProxyMessage::Release(r)) => {
                            let (quota, auth) = (state.quota.clone(), proxy_auth.clone());
                            tokio::spawn(async move { quota.release(r, auth).await });
                        }
                        Err(e) => debug!(error = %e, "unreadable message from a proxy"),
                    }
                }
                if buf.len() > 1 << 20 {
                    break;
                }
            }
        })
    };

    // Config to the proxy.
    let state2 = state.clone();
    tokio::spawn(async move {
        let mut versions = state2.publisher.subscribe();
        let mut sent = since;
        let mut heartbeat = tokio::time::interval(state2.heartbeat);
        heartbeat.tick().await;
        'outer: loop {
            match state2.publisher.catchup(sent) {
                Catchup::UpToDate => {}
                Catchup::Full(msg) => {
                    if let ServerMessage::Full { version, .. } = &msg {
                        sent = Some(*version);
                        note(&carried, *version, "full");
                    }
                    if tx.send(line(&msg)).await.is_err() {
                        break;
                    }
                }
                Catchup::Deltas(msgs) => {
                    for msg in msgs {
                        if let ServerMessage::Delta {
                            version, changes, ..
                        } = &msg
                        {
                            sent = Some(*version);
                            let only_revocations =
                                changes.upserts.is_empty() && changes.deletes.is_empty();
                            note(
                                &carried,
                                *version,
                                if only_revocations {
                                    "revocation"
                                } else {
                                    "delta"
                                },
                            );
                        }
                        if tx.send(line(&msg)).await.is_err() {
                            break 'outer;
                        }
                    }
                }
            }
            tokio::select! {
                r = versions.changed() => if r.is_err() { break },
                _ = heartbeat.tick() => {
                    let version = state2.publisher.current().0;
                    if tx.send(line(&ServerMessage::Heartbeat { version })).await.is_err() {
                        break;
                    }
                }
                _ = tx.closed() => break,
                _ = shutdown.changed() => break,
                _ = reconnect_rx.changed() => {
                    info!(proxy = %proxy_name, "the leader refused this proxy's credentials: ending its stream");
                    break;
                }
            }
        }
        ack_task.abort();
        state2.registry.disconnect(id);
        state2
            .metrics
            .connected_proxies
            .set(state2.registry.connected() as i64);
        info!(proxy = %proxy_name, "proxy stream ended");
    });

    let mut resp = Response::new(body.boxed());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-ndjson"),
    );
    resp
}

/// `POST /v1/quota`: a quota message relayed by a replica that does not lead,
/// authenticated like a stream (with the proxy's token).
async fn relayed(
    req: Request<Incoming>,
    peer: SocketAddr,
    state: Arc<PushState>,
) -> Response<Body> {
    if let Err(r) = authenticate(&req, peer, &state).await {
        return r;
    }
    let body = match tokio::time::timeout(
        Duration::from_secs(5),
        http_body_util::Limited::new(req.into_body(), 64 << 10).collect(),
    )
    .await
    {
        Ok(Ok(b)) => b.to_bytes(),
        _ => return text(StatusCode::BAD_REQUEST, "unreadable quota message\n"),
    };
    let msg: crate::quota::Relayed = match serde_json::from_slice(&body) {
        Ok(m) => m,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("bad quota message: {e}\n")),
    };
    match state.quota.relayed(msg).await {
        Some(grant) => {
            let mut r = Response::new(
                Full::new(Bytes::from(serde_json::to_vec(&grant).unwrap_or_default())).boxed(),
            );
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            r
        }
        None => {
            let mut r = text(StatusCode::NO_CONTENT, "");
            *r.body_mut() = Full::new(Bytes::new()).boxed();
            r
        }
    }
}
