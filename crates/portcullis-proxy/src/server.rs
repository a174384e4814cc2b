//! Listeners: the proxy port (HTTP/1.1 and h2c, or TLS with ALPN h2) and the admin port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::config::LiveConfig;
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, ProxyBody, plain, response};

fn builder(limits: &crate::pipeline::Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // hyper's own hard caps, above the limits the pipeline counts.
        .max_headers(limits.max_headers + 28)
        .max_buf_size((limits.max_header_bytes * 2).max(8192));
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size((limits.max_header_bytes * 2) as u32)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    b
}

/// Serves the proxy on `listener` until `shutdown` turns true; then stops accepting and
/// lets open connections finish.
pub async fn serve_proxy(
    listener: TcpListener,
    pipeline: Arc<Pipeline>,
    tls: Option<TlsAcceptor>,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let builder = Arc::new(builder(pipeline.limits()));
    loop {
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
        let _ = stream.set_nodelay(true);
        let pipeline = pipeline.clone();
        let builder = builder.clone();
        let tls = tls.clone();
        let metrics = metrics.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let is_tls = tls.is_some();
            let service = service_fn(move |req: Request<Incoming>| {
                let pipeline = pipeline.clone();
                async move { pipeline.handle(req, peer, is_tls).await }
            });
            let result = match tls {
                None => {
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    tokio::pin!(conn);
                    tokio::select! {
                        r = conn.as_mut() => r,
                        _ = shutdown.changed() => { conn.as_mut().graceful_shutdown(); conn.await }
                    }
                }
                Some(acceptor) => {
                    let stream = match tokio::time::timeout(
                        Duration::from_secs(10),
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            debug!(%peer, error = %e, "TLS handshake failed");
                            metrics
                                .limit_rejections
                                .with_label_values(&["tls_handshake"])
                                .inc();
                            return;
                        }
                        Err(_) => {
                            metrics
                                .limit_rejections
                                .with_label_values(&["tls_handshake_timeout"])
                                .inc();
                            return;
                        }
                    };
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    tokio::pin!(conn);
                    tokio::select! {
                        r = conn.as_mut() => r,
                        _ = shutdown.changed() => { conn.as_mut().graceful_shutdown(); conn.await }
                    }
                }
            };
            if let Err(e) = result {
                if let Some(h) = e.downcast_ref::<hyper::Error>()
                    && h.is_timeout()
                {
                    metrics
                        .limit_rejections
                        .with_label_values(&["header_read_timeout"])
                        .inc();
                }
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    info!("proxy listener stopped");
}

/// Serves `/metrics`, `/healthz`, `/readyz` and `/config` on the admin port.
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
