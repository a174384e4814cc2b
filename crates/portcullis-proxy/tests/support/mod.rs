//! Shared by the request-path tests: a standalone gateway in a temp dir, upstream servers
//! on real sockets, tokens, metrics samples and a capture of the access log.

#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_proxy::{Running, StandaloneOptions, start_standalone};
use serde_json::{Value, json};
use tokio::net::TcpListener;

pub const ISSUER: &str = "https://issuer.test";

/// A generous bound for "eventually" checks on a loaded machine.
pub const EVENTUALLY: Duration = Duration::from_secs(20);

/// The body type of test upstreams.
pub type UpBody = BoxBody<Bytes, Infallible>;

/// An upstream HTTP server on 127.0.0.1 answering with `handler`.
pub async fn upstream<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<UpBody>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// The RSA key tokens are signed with (kid `k1`).
pub fn signer() -> &'static portcullis_testkit::TestKey {
    static S: OnceLock<portcullis_testkit::TestKey> = OnceLock::new();
    S.get_or_init(|| portcullis_testkit::rsa("k1"))
}

/// A token for `aud: api`, valid for five minutes, signed by `key`.
pub fn token_by(key: &portcullis_testkit::TestKey) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    key.mint(
        &json!({"iss": ISSUER, "aud": "api", "sub": "alice", "iat": now - 5, "exp": now + 300}),
    )
}

/// A token signed by [`signer`].
pub fn token() -> String {
    token_by(signer())
}

/// A TokenPolicy `default` trusting [`signer`] with inline keys.
pub fn policy() -> String {
    let doc = json!({
        "apiVersion": "portcullis.dev/v1alpha1", "kind": "TokenPolicy",
        "metadata": {"name": "default", "namespace": "default"},
        "spec": {"issuers": [{"issuer": ISSUER, "audiences": ["api"], "algorithms": ["RS256"],
                  "jwks": {"inline": {"keys": [signer().jwk]}}}]}
    });
    serde_yaml::to_string(&doc).unwrap()
}

/// An ApiRoute `name` for host `localhost`, every path, to `backend`, with `extra` spec
/// lines (indented two spaces, e.g. `  timeouts: {connect: 200ms}`).
pub fn route(name: &str, backend: &str, extra: &str) -> String {
    format!(
        "apiVersion: portcullis.dev/v1alpha1\nkind: ApiRoute\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  hosts: [localhost]\n  policyRef: {{name: default}}\n  backend: {{url: \"{backend}\"}}\n{extra}\n  rules:\n    - match: {{pathPrefix: /}}\n"
    )
}

/// A standalone gateway serving a temp dir of manifests.
pub struct Gateway {
    pub running: Running,
    pub dir: tempfile::TempDir,
}

impl Gateway {
    /// Writes `files` and starts the gateway, after `tweak` on its options.
    pub async fn start(
        files: &[(&str, String)],
        tweak: impl FnOnce(&mut StandaloneOptions),
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in files {
            std::fs::write(dir.path().join(name), content).unwrap();
        }
        let mut opts = StandaloneOptions::new(dir.path().to_owned());
        opts.listen = "127.0.0.1:0".parse().unwrap();
        opts.admin = "127.0.0.1:0".parse().unwrap();
        tweak(&mut opts);
        let running = start_standalone(opts).await.unwrap();
        assert!(
            running.config.info().errors.is_empty(),
            "{:?}",
            running.config.info().errors
        );
        Gateway { running, dir }
    }

    pub fn addr(&self) -> SocketAddr {
        self.running.proxy_addr
    }

    /// The Prometheus text of every metric.
    pub fn metrics(&self) -> String {
        String::from_utf8(self.running.metrics.render()).unwrap()
    }

    /// The value of one sample, `name{labels}` exactly as rendered (labels sorted); 0 when
    /// absent.
    pub fn metric(&self, sample: &str) -> f64 {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// Waits (bounded) until `check` holds on the metrics text.
    pub async fn eventually(&self, what: &str, check: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + EVENTUALLY;
        while !check(self) {
            assert!(Instant::now() < deadline, "{what}\n{}", self.metrics());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A hyper client for plain HTTP/1.1.
pub fn client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<Bytes>,
> {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

// === access log capture ===

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture() -> &'static Capture {
    static C: OnceLock<Capture> = OnceLock::new();
    C.get_or_init(|| {
        let c = Capture::default();
        let writer = c.clone();
        tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "off,portcullis::access=info",
            ))
            .with_writer(move || writer.clone())
            .try_init()
            .expect("one subscriber per test binary");
        c
    })
}

/// Starts capturing the access log (JSON lines) for this test binary.
pub fn capture_access_log() {
    capture();
}

/// Every captured access-log line, raw.
pub fn access_log_raw() -> Vec<String> {
    let bytes = capture().0.lock().unwrap().clone();
    String::from_utf8(bytes)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The captured access-log lines of one request, parsed.
pub fn access_log(request_id: &str) -> Vec<Value> {
    access_log_raw()
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["request_id"] == request_id)
        .collect()
}

/// Waits (bounded) until the access log has a line for `request_id`; returns them all.
pub async fn access_log_eventually(request_id: &str) -> Vec<Value> {
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let lines = access_log(request_id);
        if !lines.is_empty() {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "no access log line for {request_id}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One request to the gateway for host `localhost`, with `headers` and `body`; the
/// response with its whole body.
pub async fn send(
    gw: &Gateway,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: String,
) -> Response<Bytes> {
    use http_body_util::{BodyExt, Full};
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", gw.addr()))
        .header("host", "localhost");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client()
        .request(req.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    Response::from_parts(parts, body.collect().await.unwrap().to_bytes())
}
