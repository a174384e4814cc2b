//! The proxy's controller subscription on real sockets: a scripted controller (an h2c
//! server on loopback speaking the push protocol) sends a full config, then revocation
//! deltas, one by one and in a burst. The proxy enforces each, acknowledges each, keeps
//! its state file at the newest version (written off the stream's read loop), and a
//! restarted proxy serves that version before any controller answers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_api::push::{
    Changes, ObjectKey, ProxyMessage, RevocationEdit, ServerMessage, SourceObject, SourceSet,
};
use portcullis_api::{ApiRoute, TokenPolicy};
use portcullis_proxy::subscriber::SubscriberOptions;
use portcullis_proxy::{ProxyOptions, Running, start_proxy};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const ISSUER: &str = "https://issuer.test";

fn signer() -> &'static portcullis_testkit::TestKey {
    static KEY: OnceLock<portcullis_testkit::TestKey> = OnceLock::new();
    KEY.get_or_init(|| portcullis_testkit::rsa("k1"))
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn token(jti: &str) -> String {
    let now = now();
    signer().mint(&json!({
        "iss": ISSUER, "aud": "api", "sub": "alice", "jti": jti,
        "scope": "orders:read", "iat": now, "exp": now + 600,
    }))
}

fn sources(upstream: SocketAddr) -> SourceSet {
    let policy: TokenPolicy = serde_json::from_value(json!({
        "apiVersion": "portcullis.dev/v1alpha1", "kind": "TokenPolicy",
        "metadata": {"name": "default", "namespace": "shop", "generation": 1},
        "spec": {
            "issuers": [{"issuer": ISSUER, "audiences": ["api"], "algorithms": ["RS256"],
                         "jwks": {"inline": {"keys": [signer().jwk]}}}],
        }
    }))
    .unwrap();
    let mut set = SourceSet::default();
    set.upsert(SourceObject::TokenPolicy(policy));
    for i in 0..50 {
        let host = if i == 0 {
            "localhost".to_string()
        } else {
            format!("h{i}.example.com")
        };
        let route: ApiRoute = serde_json::from_value(json!({
            "apiVersion": "portcullis.dev/v1alpha1", "kind": "ApiRoute",
            "metadata": {"name": format!("r{i}"), "namespace": "shop", "generation": 1},
            "spec": {"hosts": [host], "policyRef": {"name": "default"},
                     "backend": {"url": format!("http://{upstream}")},
                     "rules": [{"match": {"pathPrefix": "/orders"}, "requiredScopes": ["orders:read"]}]}
        }))
        .unwrap();
        set.upsert(SourceObject::ApiRoute(route));
    }
    set
}

fn revoke(from: u64, jti: &str) -> ServerMessage {
    ServerMessage::Delta {
        from,
        version: from + 1,
        changes: Changes {
            revocations: vec![RevocationEdit {
                policy: ObjectKey {
                    kind: "TokenPolicy".into(),
                    namespace: "shop".into(),
                    name: "default".into(),
                },
                generation: Some(from as i64 + 1),
                resource_version: Some(format!("{}", from + 1)),
                added: vec![serde_json::from_value(json!({"jti": jti})).unwrap()],
                removed: Vec::new(),
            }],
            ..Default::default()
        },
    }
}

// === a scripted controller ===

/// An h2c push endpoint on loopback: every stream gets the messages sent with `send`, and
/// the acknowledgements a proxy sends are collected.
struct ScriptedController {
    addr: SocketAddr,
    streams: Arc<Mutex<Vec<mpsc::UnboundedSender<Bytes>>>>,
    acks: Arc<Mutex<Vec<u64>>>,
}

impl ScriptedController {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let streams: Arc<Mutex<Vec<mpsc::UnboundedSender<Bytes>>>> = Arc::default();
        let acks: Arc<Mutex<Vec<u64>>> = Arc::default();
        let (s, a) = (streams.clone(), acks.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (s, a) = (s.clone(), a.clone());
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (s, a) = (s.clone(), a.clone());
                    async move { Ok::<_, Infallible>(stream(req, s, a)) }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        ScriptedController {
            addr,
            streams,
            acks,
        }
    }

    /// Sends one message to every open stream.
    fn send(&self, msg: &ServerMessage) {
        let mut line = serde_json::to_vec(msg).unwrap();
        line.push(b'\n');
        let line = Bytes::from(line);
        self.streams
            .lock()
            .unwrap()
            .retain(|tx| tx.send(line.clone()).is_ok());
    }

    fn acked(&self, version: u64) -> bool {
        self.acks.lock().unwrap().contains(&version)
    }

    fn connected(&self) -> usize {
        self.streams.lock().unwrap().len()
    }
}

type StreamBodyOf = StreamBody<
    std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send + 'static>,
    >,
>;

fn stream(
    req: Request<Incoming>,
    streams: Arc<Mutex<Vec<mpsc::UnboundedSender<Bytes>>>>,
    acks: Arc<Mutex<Vec<u64>>>,
) -> Response<StreamBodyOf> {
    assert_eq!(req.uri().path(), "/v1/stream");
    // Acknowledgements, read as they come.
    let mut body = req.into_body();
    tokio::spawn(async move {
        let mut buf = Vec::new();
        while let Some(Ok(frame)) = body.frame().await {
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                if let Ok(ProxyMessage::Ack { version }) = serde_json::from_slice(&line) {
                    acks.lock().unwrap().push(version);
                }
            }
        }
    });
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    streams.lock().unwrap().push(tx);
    let frames = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    Response::new(StreamBody::new(Box::pin(frames)))
}

// === the proxy and its upstream ===

async fn upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(Response::new(http_body_util::Full::new(Bytes::from("ok"))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

async fn proxy(controller: SocketAddr, state_file: std::path::PathBuf) -> Running {
    start_proxy(ProxyOptions {
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
            token_file: None,
            name: "test-proxy".into(),
            state_file: Some(state_file),
            compile: Default::default(),
            ca_file: None,
            client_cert: None,
            server_name: None,
        },
    })
    .await
    .unwrap()
}

async fn status_of(p: &Running, t: &str) -> StatusCode {
    let client: hyper_util::client::legacy::Client<_, Empty<Bytes>> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let req = Request::get(format!("http://{}/orders", p.proxy_addr))
        .header("host", "localhost")
        .header("authorization", format!("Bearer {t}"))
        .body(Empty::new())
        .unwrap();
    client.request(req).await.unwrap().status()
}

async fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The version in the state file, if it is there and readable.
fn persisted_version(path: &std::path::Path) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v["version"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_deltas_are_enforced_acknowledged_and_persisted() {
    let up = upstream().await;
    let ctl = ScriptedController::start().await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("proxy-state.json");
    let p = proxy(ctl.addr, state.clone()).await;
    wait_for("the proxy to subscribe", || ctl.connected() == 1).await;

    ctl.send(&ServerMessage::Full {
        version: 1,
        sources: sources(up),
    });
    wait_for("version 1", || p.config.info().version == 1).await;
    let (victim, fine) = (token("victim"), token("fine"));
    assert_eq!(status_of(&p, &victim).await, StatusCode::OK);
    assert_eq!(status_of(&p, &fine).await, StatusCode::OK);

    // One revocation delta: enforced and acknowledged.
    ctl.send(&revoke(1, "victim"));
    wait_for("version 2", || p.config.info().version == 2).await;
    assert_eq!(status_of(&p, &victim).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status_of(&p, &fine).await, StatusCode::OK);
    wait_for("ack of 2", || ctl.acked(2)).await;
    assert!(p.config.info().errors.is_empty());
    assert_eq!(p.config.info().stats.routes, 50);

    // A burst: every delta applies; the state file ends at the newest.
    for v in 2..22 {
        ctl.send(&revoke(v, &format!("burst-{v}")));
    }
    wait_for("version 22", || p.config.info().version == 22).await;
    wait_for("ack of 22", || ctl.acked(22)).await;
    assert_eq!(p.config.info().stats.revocations, 21);
    assert_eq!(
        status_of(&p, &token("burst-21")).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(status_of(&p, &fine).await, StatusCode::OK);
    wait_for("the state file at 22", || {
        persisted_version(&state) == Some(22)
    })
    .await;

    // Restarted with the state file and no controller: serves version 22 at once.
    p.shutdown();
    let nowhere: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let restarted = proxy(nowhere, state.clone()).await;
    assert_eq!(restarted.config.info().version, 22);
    assert!(restarted.config.is_loaded());
    assert_eq!(
        status_of(&restarted, &victim).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status_of(&restarted, &token("burst-12")).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(status_of(&restarted, &fine).await, StatusCode::OK);
}
