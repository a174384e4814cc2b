//! What the push tests share: a real push server on a loopback port, real proxies (the
//! same code as `portcullis proxy`), a real upstream, tokens and sources.

// Each test binary uses a part of this.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_api::push::{ServerMessage, SourceObject, SourceSet};
use portcullis_api::{ApiRoute, TokenPolicy};
use portcullis_controller::push::{PushState, serve};
use portcullis_controller::{Metrics, ProxyAuth, ProxyRegistry, Publisher};
use portcullis_proxy::subscriber::SubscriberOptions;
use portcullis_proxy::{ProxyOptions, Running, start_proxy};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub const SHARED: &str = "proxy-shared-token-for-tests";

// === keys, tokens, sources ===

/// One RSA signing key for the whole test binary.
pub fn signer() -> &'static portcullis_testkit::TestKey {
    static S: std::sync::OnceLock<portcullis_testkit::TestKey> = std::sync::OnceLock::new();
    S.get_or_init(|| portcullis_testkit::rsa("k1"))
}

pub fn token(jti: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    h.kid = Some("k1".into());
    jsonwebtoken::encode(&h, &json!({"iss": "https://issuer.test", "aud": "api", "sub": "alice", "jti": jti, "scope": "orders:read", "iat": now, "exp": now + 600}), &signer().encoding).unwrap()
}

pub fn sources(upstream: SocketAddr, revoked: &[&str], extra_routes: usize) -> SourceSet {
    let mut set = SourceSet::default();
    let policy: TokenPolicy = serde_json::from_value(json!({
        "apiVersion": "portcullis.dev/v1alpha1", "kind": "TokenPolicy",
        "metadata": {"name": "default", "namespace": "shop", "generation": 1},
        "spec": {
            "issuers": [{"issuer": "https://issuer.test", "audiences": ["api"], "algorithms": ["RS256"], "jwks": {"inline": {"keys": [signer().jwk]}}}],
            "revocations": revoked.iter().map(|j| json!({"jti": j})).collect::<Vec<_>>(),
        }
    }))
    .unwrap();
    set.upsert(SourceObject::TokenPolicy(policy));
    for i in 0..=extra_routes {
        let host = if i == 0 {
            "localhost".to_string()
        } else {
            format!("h{i}.example.com")
        };
        let route: ApiRoute = serde_json::from_value(json!({
            "apiVersion": "portcullis.dev/v1alpha1", "kind": "ApiRoute",
            "metadata": {"name": format!("r{i}"), "namespace": "shop", "generation": 1},
            "spec": {"hosts": [host], "policyRef": {"name": "default"}, "backend": {"url": format!("http://{upstream}")},
                     "rules": [{"match": {"pathPrefix": "/orders"}, "requiredScopes": ["orders:read"]}]}
        }))
        .unwrap();
        set.upsert(SourceObject::ApiRoute(route));
    }
    set
}

pub async fn upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(
                        http_body_util::Full::new(Bytes::from("ok")),
                    ))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

// === controller and proxies ===

pub struct Controller {
    pub addr: SocketAddr,
    pub publisher: Arc<Publisher>,
    pub registry: Arc<ProxyRegistry>,
    pub metrics: Metrics,
    pub stop: watch::Sender<bool>,
}

pub async fn controller_on(addr: SocketAddr, publisher: Arc<Publisher>) -> Controller {
    let listener = loop {
        match TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let addr = listener.local_addr().unwrap();
    let registry = Arc::new(ProxyRegistry::default());
    let metrics = Metrics::new();
    let state = Arc::new(PushState {
        publisher: publisher.clone(),
        registry: registry.clone(),
        auth: ProxyAuth::shared(SHARED),
        metrics: metrics.clone(),
        heartbeat: Duration::from_millis(200),
        quota: Arc::new(portcullis_controller::quota::QuotaService::new(
            Metrics::new(),
        )),
        events: Arc::new(portcullis_controller::events::EventService::new(
            None,
            &prometheus::Registry::new(),
        )),
    });
    let (stop, rx) = watch::channel(false);
    tokio::spawn(serve(listener, state, rx));
    Controller {
        addr,
        publisher,
        registry,
        metrics,
        stop,
    }
}

pub struct Proxy {
    pub running: Running,
    pub _dir: tempfile::TempDir,
}

pub async fn proxy(controller: SocketAddr, state_file: Option<std::path::PathBuf>) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, SHARED).unwrap();
    let running = start_proxy(ProxyOptions {
        unknown_kid_hold: Duration::from_secs(1),
        unknown_kid_refetch: true,
        listen: "127.0.0.1:0".parse().unwrap(),
        admin: "127.0.0.1:0".parse().unwrap(),
        tls: None,
        tls_client_ca: None,
        tls_client_any_certificate: false,
        limits: Default::default(),
        subscriber: SubscriberOptions {
            controller: format!("http://{controller}").parse().unwrap(),
            token_file: Some(token_file),
            name: "test-proxy".into(),
            state_file,
            compile: Default::default(),
            ca_file: None,
            client_cert: None,
            server_name: None,
        },
    })
    .await
    .unwrap();
    Proxy { running, _dir: dir }
}

pub async fn status_of(p: &Proxy, t: &str) -> StatusCode {
    let client: hyper_util::client::legacy::Client<_, Empty<Bytes>> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let req = Request::get(format!("http://{}/orders", p.running.proxy_addr))
        .header("host", "localhost")
        .header("authorization", format!("Bearer {t}"))
        .body(Empty::new())
        .unwrap();
    client.request(req).await.unwrap().status()
}

pub async fn wait_for(what: &str, mut ok: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A raw subscription: returns the HTTP status and the first `n` messages.
pub async fn raw_subscribe(
    addr: SocketAddr,
    auth: Option<&str>,
    since: Option<u64>,
    n: usize,
) -> (StatusCode, Vec<ServerMessage>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let (_tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let body = StreamBody::new(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(Frame::data(b)), rx))
    })));
    let q = since.map(|s| format!("?since={s}")).unwrap_or_default();
    let mut req = Request::post(format!("http://{addr}/v1/stream{q}"));
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let resp = send.send_request(req.body(body).unwrap()).await.unwrap();
    let status = resp.status();
    let mut body = resp.into_body();
    let mut out = Vec::new();
    let mut buf = Vec::new();
    // Heartbeats keep coming: stop after a bounded wait for the messages that matter.
    let deadline = Instant::now() + Duration::from_millis(1500);
    while out.len() < n && status == StatusCode::OK {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some(Ok(f))) = tokio::time::timeout(left, body.frame()).await else {
            break;
        };
        if let Ok(d) = f.into_data() {
            buf.extend_from_slice(&d);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                let msg: ServerMessage = serde_json::from_slice(&line).unwrap();
                if !matches!(msg, ServerMessage::Heartbeat { .. }) {
                    out.push(msg);
                }
            }
        }
    }
    if status != StatusCode::OK {
        let b = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        assert!(b.len() < 64, "a refused stream must carry no config");
    }
    (status, out)
}
