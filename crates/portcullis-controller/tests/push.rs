//! The push protocol over real sockets: a real push server, real proxies (the same code as
//! `portcullis proxy`) serving real traffic to a real upstream.

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

const SHARED: &str = "proxy-shared-token-for-tests";

// === keys, tokens, sources ===

/// One RSA signing key for the whole test binary.
fn signer() -> &'static portcullis_testkit::TestKey {
    static S: std::sync::OnceLock<portcullis_testkit::TestKey> = std::sync::OnceLock::new();
    S.get_or_init(|| portcullis_testkit::rsa("k1"))
}

fn token(jti: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    h.kid = Some("k1".into());
    jsonwebtoken::encode(&h, &json!({"iss": "https://issuer.test", "aud": "api", "sub": "alice", "jti": jti, "scope": "orders:read", "iat": now, "exp": now + 600}), &signer().encoding).unwrap()
}

fn sources(upstream: SocketAddr, revoked: &[&str], extra_routes: usize) -> SourceSet {
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

async fn upstream() -> SocketAddr {
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

struct Controller {
    addr: SocketAddr,
    publisher: Arc<Publisher>,
    registry: Arc<ProxyRegistry>,
    metrics: Metrics,
    stop: watch::Sender<bool>,
}

async fn controller_on(addr: SocketAddr, publisher: Arc<Publisher>) -> Controller {
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

struct Proxy {
    running: Running,
    _dir: tempfile::TempDir,
}

async fn proxy(controller: SocketAddr, state_file: Option<std::path::PathBuf>) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, SHARED).unwrap();
    let running = start_proxy(ProxyOptions {
        unknown_kid_hold: Duration::from_secs(1),
        listen: "127.0.0.1:0".parse().unwrap(),
        admin: "127.0.0.1:0".parse().unwrap(),
        tls: None,
        limits: Default::default(),
        subscriber: SubscriberOptions {
            controller: format!("http://{controller}").parse().unwrap(),
            token_file: Some(token_file),
            name: "test-proxy".into(),
            state_file,
            compile: Default::default(),
            ca_file: None,
        },
    })
    .await
    .unwrap();
    Proxy { running, _dir: dir }
}

async fn status_of(p: &Proxy, t: &str) -> StatusCode {
    let client: hyper_util::client::legacy::Client<_, Empty<Bytes>> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let req = Request::get(format!("http://{}/orders", p.running.proxy_addr))
        .header("host", "localhost")
        .header("authorization", format!("Bearer {t}"))
        .body(Empty::new())
        .unwrap();
    client.request(req).await.unwrap().status()
}

async fn wait_for(what: &str, mut ok: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A raw subscription: returns the HTTP status and the first `n` messages.
async fn raw_subscribe(
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

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_snapshot_then_revocation_delta_on_every_proxy() {
    let up = upstream().await;
    let publisher = Arc::new(Publisher::new());
    publisher.publish(sources(up, &[], 0), 10);
    let ctl = controller_on("127.0.0.1:0".parse().unwrap(), publisher.clone()).await;
    let proxies = vec![
        proxy(ctl.addr, None).await,
        proxy(ctl.addr, None).await,
        proxy(ctl.addr, None).await,
    ];
    let t = token("victim");
    for p in &proxies {
        wait_for("full snapshot", async || {
            p.running.config.info().version == 10
        })
        .await;
        assert_eq!(status_of(p, &t).await, StatusCode::OK);
    }
    wait_for("acks", async || ctl.registry.programmed(10) == (3, 3)).await;

    // A revocation: every proxy refuses the token, and says so.
    let v = ctl
        .publisher
        .publish(sources(up, &["victim"], 0), 0)
        .unwrap();
    assert_eq!(v, 11);
    for p in &proxies {
        wait_for("revocation", async || {
            status_of(p, &t).await == StatusCode::UNAUTHORIZED
        })
        .await;
        assert_eq!(p.running.config.info().version, 11);
    }
    wait_for("acks of the delta", async || {
        ctl.registry.programmed(11) == (3, 3)
    })
    .await;
    // Propagation latency is labelled by what carried the version.
    let m = String::from_utf8(ctl.metrics.render()).unwrap();
    for (kind, n) in [("full", 3), ("revocation", 3)] {
        let line =
            format!("portcullis_controller_push_latency_seconds_count{{message=\"{kind}\"}} {n}");
        assert!(m.contains(&line), "{line} in:\n{m}");
    }
    let _ = ctl.stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_deltas_stay_small_and_resume_sends_only_deltas() {
    let up = upstream().await;
    let publisher = Arc::new(Publisher::new());
    publisher.publish(sources(up, &[], 300), 100);
    let ctl = controller_on("127.0.0.1:0".parse().unwrap(), publisher.clone()).await;
    publisher.publish(sources(up, &["a"], 300), 0);
    publisher.publish(sources(up, &["a", "b"], 300), 0);

    // New subscriber: one full snapshot.
    let (status, msgs) = raw_subscribe(ctl.addr, Some(&format!("Bearer {SHARED}")), None, 1).await;
    assert_eq!(status, StatusCode::OK);
    let ServerMessage::Full {
        version,
        sources: full,
    } = &msgs[0]
    else {
        panic!("expected full, got {msgs:?}")
    };
    assert_eq!((*version, full.objects.len()), (102, 302));
    let full_size = serde_json::to_vec(&msgs[0]).unwrap().len();

    // Resume from 100: two revocation-only deltas, whose size does not depend on the 301 routes.
    let (_, msgs) = raw_subscribe(ctl.addr, Some(&format!("Bearer {SHARED}")), Some(100), 2).await;
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    for (m, expect) in msgs.iter().zip([(100, 101, "a"), (101, 102, "b")]) {
        let ServerMessage::Delta {
            from,
            version,
            changes,
        } = m
        else {
            panic!("expected delta, got {m:?}")
        };
        assert_eq!((*from, *version), (expect.0, expect.1));
        assert!(changes.upserts.is_empty() && changes.deletes.is_empty());
        assert_eq!(changes.revocations.len(), 1);
        assert_eq!(
            changes.revocations[0].added[0].jti.as_deref(),
            Some(expect.2)
        );
        let size = serde_json::to_vec(m).unwrap().len();
        assert!(size < 400, "revocation delta is {size} bytes");
        assert!(size * 100 < full_size, "delta {size} vs full {full_size}");
    }
    // Resume from the current version: nothing to send.
    let (_, msgs) = raw_subscribe(ctl.addr, Some(&format!("Bearer {SHARED}")), Some(102), 1).await;
    assert!(msgs.is_empty(), "{msgs:?}");
    // Resume from a version this replica does not know (ahead of it): nothing older is sent.
    let (_, msgs) = raw_subscribe(ctl.addr, Some(&format!("Bearer {SHARED}")), Some(5000), 1).await;
    assert!(
        msgs.is_empty(),
        "a proxy ahead of the controller got {msgs:?}"
    );
    // Resume from a version older than the history: a full snapshot.
    let (_, msgs) = raw_subscribe(ctl.addr, Some(&format!("Bearer {SHARED}")), Some(7), 1).await;
    assert!(matches!(msgs[0], ServerMessage::Full { version: 102, .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_streams_are_refused() {
    let publisher = Arc::new(Publisher::new());
    publisher.publish(sources("127.0.0.1:1".parse().unwrap(), &[], 0), 1);
    let ctl = controller_on("127.0.0.1:0".parse().unwrap(), publisher).await;
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Basic cHJveHk6cHc="),
        Some(SHARED),
    ] {
        let (status, msgs) = raw_subscribe(ctl.addr, auth, None, 1).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert!(msgs.is_empty());
    }
    assert_eq!(ctl.registry.connected(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_restart_stale_versions_and_state_file() {
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("proxy-state.json");
    let publisher = Arc::new(Publisher::new());
    publisher.publish(sources(up, &["victim"], 0), 50);
    let ctl = controller_on("127.0.0.1:0".parse().unwrap(), publisher).await;
    let addr = ctl.addr;
    let p = proxy(addr, Some(state.clone())).await;
    let t = token("victim");
    let ok = token("fine");
    wait_for("first config", async || {
        p.running.config.info().version == 50
    })
    .await;
    assert_eq!(status_of(&p, &t).await, StatusCode::UNAUTHORIZED);

    // The controller goes away: the proxy keeps enforcing, revocation included.
    let _ = ctl.stop.send(true);
    drop(ctl);
    wait_for("disconnect seen", async || {
        p.running.metrics.controller_connected.get() == 0
    })
    .await;
    assert_eq!(status_of(&p, &t).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status_of(&p, &ok).await, StatusCode::OK);

    // A controller comes back on the same address with an OLDER view (version 40, no
    // revocation): the proxy must not apply it.
    let stale = Arc::new(Publisher::new());
    stale.publish(sources(up, &[], 0), 40);
    let ctl2 = controller_on(addr, stale.clone()).await;
    wait_for("reconnect", async || ctl2.registry.connected() == 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(p.running.config.info().version, 50);
    assert_eq!(
        status_of(&p, &t).await,
        StatusCode::UNAUTHORIZED,
        "a stale controller un-applied a revocation"
    );

    // It catches up past the proxy's version: the proxy follows.
    stale.publish(sources(up, &["victim", "other"], 0), 60);
    wait_for("catch up", async || p.running.config.info().version == 60).await;
    assert_eq!(status_of(&p, &t).await, StatusCode::UNAUTHORIZED);

    // A proxy restarted with its state file serves at once, before any controller answers.
    let _ = ctl2.stop.send(true);
    drop(ctl2);
    p.running.shutdown();
    let nowhere: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let restarted = proxy(nowhere, Some(state)).await;
    assert_eq!(restarted.running.config.info().version, 60);
    assert!(restarted.running.config.is_loaded());
    assert_eq!(status_of(&restarted, &t).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status_of(&restarted, &ok).await, StatusCode::OK);
}
