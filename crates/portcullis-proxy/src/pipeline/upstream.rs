//! The pooled upstream client, its connector and the request body on its way upstream.
//!
//! Each route has its own connect timeout (`spec.timeouts.connect`), but the pool and its
//! connector are shared. The request path sets the route's timeout in a task-local
//! ([`with_connect_timeout`]) around the client call; [`TimedConnector`] reads it when the
//! client opens a new connection (the pool's `connect` is first polled inside that call)
//! and bounds the TCP connect with `tokio::time::timeout`, failing with
//! [`ConnectTimedOut`], which [`super::ProxyError::from_upstream`] finds by downcasting
//! along the error's source chain. Outside such a scope the default
//! (`Limits::connect_timeout`) applies.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The client every proxied request goes through.
pub(crate) type UpstreamClient = Client<hyper_rustls::HttpsConnector<TimedConnector>, RequestBody>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

tokio::task_local! {
    /// The connect timeout of the route whose request is being sent.
    static CONNECT_TIMEOUT: Duration;
}

/// Runs `fut` (an upstream call) with `timeout` as the bound on any connection it opens.
pub(crate) fn with_connect_timeout<F: Future>(
    timeout: Duration,
    fut: F,
) -> impl Future<Output = F::Output> {
    CONNECT_TIMEOUT.scope(timeout, fut)
}

/// The connector's own timeout: no TCP connection within the route's connect timeout.
#[derive(Debug, thiserror::Error)]
#[error("connect timed out after {} ms", .0.as_millis())]
pub(crate) struct ConnectTimedOut(pub(crate) Duration);

/// An [`HttpConnector`] whose connects are bounded by the calling route's timeout.
#[derive(Clone)]
pub(crate) struct TimedConnector {
    http: HttpConnector,
    default_timeout: Duration,
}

impl tower_service::Service<Uri> for TimedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let timeout = CONNECT_TIMEOUT
            .try_with(|t| *t)
            .unwrap_or(self.default_timeout);
        let connecting = self.http.call(dst);
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(connected) => connected.map_err(Into::into),
                Err(_) => Err(Box::new(ConnectTimedOut(timeout)) as BoxError),
            }
        })
    }
}

/// The pooled client: HTTP/1.1 to http and https backends, connects bounded per route.
pub(crate) fn client(default_connect_timeout: Duration) -> UpstreamClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    // The connect timeout is TimedConnector's, per route.
    http.set_connect_timeout(None);
    http.set_nodelay(true);
    let connector = TimedConnector {
        http,
        default_timeout: default_connect_timeout,
    };
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
        .wrap_connector(connector);
    Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .build(https)
}

/// The client's request body on its way upstream.
pub(crate) enum RequestBody {
    /// Streamed as it arrives, remembering whether the client broke it (bad chunked
    /// framing, a reset): a failed upstream call is then the client's fault (400), not
    /// the backend's (502). An empty body carries no flag (nothing to break, nothing to
    /// allocate).
    Streaming {
        /// The client's body.
        inner: Incoming,
        /// Set when reading it failed.
        failed: Option<Arc<AtomicBool>>,
    },
    /// Read in full (by a body filter) and sent with its `content-length`.
    Full(Option<Bytes>),
}

impl RequestBody {
    /// Streams `inner`, and a flag to learn whether the client broke it.
    pub(crate) fn streaming(inner: Incoming) -> (Self, Option<Arc<AtomicBool>>) {
        let failed = (!inner.is_end_stream()).then(|| Arc::new(AtomicBool::new(false)));
        (
            RequestBody::Streaming {
                inner,
                failed: failed.clone(),
            },
            failed,
        )
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Streaming { inner, failed } => {
                let polled = Pin::new(inner).poll_frame(cx);
                if let (Poll::Ready(Some(Err(_))), Some(failed)) = (&polled, failed) {
                    failed.store(true, Ordering::Relaxed);
                }
                polled
            }
            RequestBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Streaming { inner, .. } => inner.is_end_stream(),
            RequestBody::Full(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Streaming { inner, .. } => inner.size_hint(),
            RequestBody::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}
