//! The fetcher and the introspector against a real HTTP server on loopback (a few lines of
//! tokio serving canned answers and counting requests).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis_fetch::keys::fetch_once;
use portcullis_fetch::{FetchResult, HttpClient, Introspector, KeyFetcher};
use portcullis_policy::{IntrospectionEndpoint, RemoteSource, RemoteSourceKind, discovery_url};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    delay: Duration,
}

fn json_reply(v: &Value) -> Reply {
    Reply {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: v.to_string().into_bytes(),
        delay: Duration::ZERO,
    }
}

#[derive(Default)]
struct State {
    replies: HashMap<String, Reply>,
    hits: HashMap<String, usize>,
    last_head: String,
    last_body: String,
}

#[derive(Clone)]
struct Server {
    base: String,
    state: Arc<Mutex<State>>,
}

impl Server {
    async fn start() -> Server {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://127.0.0.1:{}", l.local_addr().unwrap().port());
        let state: Arc<Mutex<State>> = Default::default();
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let (head, body) = loop {
                        let n = s.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).into_owned();
                        if let Some((h, b)) = text.split_once("\r\n\r\n") {
                            let len = h
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                                })
                                .unwrap_or(0);
                            if b.len() >= len {
                                break (h.to_owned(), b.to_owned());
                            }
                        }
                    };
                    let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                    let reply = {
                        let mut g = st.lock().unwrap();
                        *g.hits.entry(path.clone()).or_default() += 1;
                        g.last_head = head.clone();
                        g.last_body = body;
                        g.replies.get(&path).cloned()
                    };
                    let reply = reply.unwrap_or(Reply {
                        status: 404,
                        headers: vec![],
                        body: b"not found".to_vec(),
                        delay: Duration::ZERO,
                    });
                    tokio::time::sleep(reply.delay).await;
                    let mut out = format!(
                        "HTTP/1.1 {} X\r\ncontent-length: {}\r\nconnection: close\r\n",
                        reply.status,
                        reply.body.len()
                    );
                    for (k, v) in &reply.headers {
                        out.push_str(&format!("{k}: {v}\r\n"));
                    }
                    out.push_str("\r\n");
                    let _ = s.write_all(out.as_bytes()).await;
                    let _ = s.write_all(&reply.body).await;
                });
            }
        });
        Server { base, state }
    }

    fn set(&self, path: &str, reply: Reply) {
        self.state
            .lock()
            .unwrap()
            .replies
            .insert(path.into(), reply);
    }

    fn hits(&self, path: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .hits
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

fn jwks() -> Value {
    static KEY: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    KEY.get_or_init(|| json!({"keys": [portcullis_testkit::rsa("k1").jwk]}))
        .clone()
}

fn source(url: String, kind: RemoteSourceKind) -> RemoteSource {
    RemoteSource {
        key: url.clone(),
        url,
        kind,
        issuer: "test-issuer".into(),
        min_refresh: Duration::from_millis(300), // below the policy floor: tests only
        max_refresh: Duration::from_secs(3600),
        ca_pem: vec![],
        policies: vec!["ns/p".into()],
    }
}

fn discovery(srv: &Server, issuer: &str) -> RemoteSource {
    source(
        discovery_url(issuer),
        RemoteSourceKind::Discovery {
            issuer: issuer.into(),
        },
    )
    .tap(|s| s.url = format!("{}/.well-known/openid-configuration", srv.base))
}

trait Tap: Sized {
    fn tap(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }
}
impl<T> Tap for T {}

#[tokio::test]
async fn discovery_then_jwks_with_max_age() {
    let srv = Server::start().await;
    let issuer = srv.base.clone();
    srv.set(
        "/.well-known/openid-configuration",
        json_reply(&json!({"issuer": issuer, "jwks_uri": format!("{}/keys", srv.base)})),
    );
    let mut keys = json_reply(&jwks());
    keys.headers
        .push(("cache-control".into(), "public, max-age=120".into()));
    srv.set("/keys", keys);
    let http = HttpClient::default();
    let (doc, n, max_age) = fetch_once(&http, &discovery(&srv, &issuer)).await.unwrap();
    assert_eq!(doc, jwks());
    assert_eq!(n, 1);
    assert_eq!(max_age, Some(Duration::from_secs(120)));
}

#[tokio::test]
async fn every_bad_answer_is_named() {
    let srv = Server::start().await;
    let http = HttpClient::default();
    let issuer = srv.base.clone();
    let disc = "/.well-known/openid-configuration";
    let run = |src: RemoteSource| {
        let http = &http;
        async move { fetch_once(http, &src).await.map(|_| ()).unwrap_err() }
    };
    // Another issuer named by the discovery document.
    srv.set(
        disc,
        json_reply(
            &json!({"issuer": "https://evil.example", "jwks_uri": format!("{}/keys", srv.base)}),
        ),
    );
    let (r, m) = run(discovery(&srv, &issuer)).await;
    assert_eq!(r, FetchResult::IssuerMismatch, "{m}");
    assert!(m.contains("evil.example"), "{m}");
    // A jwks_uri that is plain http to a remote host.
    srv.set(
        disc,
        json_reply(&json!({"issuer": issuer, "jwks_uri": "http://keys.example.com/jwks"})),
    );
    let (r, m) = run(discovery(&srv, &issuer)).await;
    assert_eq!(r, FetchResult::InvalidDocument, "{m}");
    // Unparsable, empty, no usable key.
    let jwks_src = source(format!("{}/keys", srv.base), RemoteSourceKind::Jwks);
    for (body, want) in [
        (b"<html>".to_vec(), "not JSON"),
        (br#"{"keys": []}"#.to_vec(), "no usable"),
        (
            br#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#.to_vec(),
            "no usable",
        ),
    ] {
        srv.set(
            "/keys",
            Reply {
                status: 200,
                headers: vec![],
                body,
                delay: Duration::ZERO,
            },
        );
        let (r, m) = run(jwks_src.clone()).await;
        assert_eq!(r, FetchResult::InvalidDocument, "{m}");
        assert!(m.contains(want), "{m} lacks {want}");
    }
    // Errors from the server, a size over the limit, a refused connection.
    srv.set(
        "/keys",
        Reply {
            status: 503,
            headers: vec![],
            body: vec![],
            delay: Duration::ZERO,
        },
    );
    let (r, m) = run(jwks_src.clone()).await;
    assert_eq!(r, FetchResult::FetchFailed);
    assert!(m.contains("503"), "{m}");
    srv.set(
        "/keys",
        Reply {
            status: 200,
            headers: vec![],
            body: vec![b' '; 600 * 1024],
            delay: Duration::ZERO,
        },
    );
    let (r, m) = run(jwks_src.clone()).await;
    assert_eq!(r, FetchResult::FetchFailed);
    assert!(m.contains("larger than"), "{m}");
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (r, _) = run(source(
        format!("http://127.0.0.1:{dead}/keys"),
        RemoteSourceKind::Jwks,
    ))
    .await;
    assert_eq!(r, FetchResult::FetchFailed);
    // Plain http beyond loopback is never even tried.
    let (r, m) = run(source(
        "http://keys.example.com/jwks".into(),
        RemoteSourceKind::Jwks,
    ))
    .await;
    assert_eq!(r, FetchResult::FetchFailed);
    assert!(m.contains("only https"), "{m}");
}

async fn until(mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached in 5s");
}

#[tokio::test]
async fn fetcher_keeps_the_last_good_keys_and_rate_limits_refetches() {
    let srv = Server::start().await;
    srv.set("/keys", json_reply(&jwks()));
    let registry = prometheus::Registry::new();
    let fetcher = KeyFetcher::new(Arc::new(HttpClient::default()), &registry);
    let url = format!("{}/keys", srv.base);
    fetcher.set_sources(vec![source(url.clone(), RemoteSourceKind::Jwks)]);
    until(|| fetcher.states()[&url].result == FetchResult::Ok).await;
    assert_eq!(fetcher.documents()[&url], jwks());
    assert_eq!(srv.hits("/keys"), 1);

    // Refetches: the first is granted, the rest of the window is not.
    assert!(fetcher.request_refetch(&url));
    let granted = (0..100).filter(|_| fetcher.request_refetch(&url)).count();
    assert_eq!(granted, 0);
    until(|| srv.hits("/keys") == 2).await;
    assert!(!fetcher.request_refetch("http://unknown.example/keys"));

    // The provider breaks: the last good document stays, the state says why.
    srv.set(
        "/keys",
        Reply {
            status: 500,
            headers: vec![],
            body: vec![],
            delay: Duration::ZERO,
        },
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(fetcher.request_refetch(&url));
    until(|| fetcher.states()[&url].result == FetchResult::FetchFailed).await;
    let st = &fetcher.states()[&url];
    assert!(st.message.contains("500"), "{}", st.message);
    assert_eq!(fetcher.documents()[&url], jwks(), "last good keys kept");
    let text = {
        let mut out = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &registry.gather(),
            &mut out,
        )
        .unwrap();
        String::from_utf8(out).unwrap()
    };
    assert!(
        text.contains(
            r#"portcullis_jwks_fetches_total{issuer="test-issuer",result="fetch_failed"}"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"portcullis_jwks_refetch_requests_total{issuer="test-issuer",result="limited"} 100"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"portcullis_jwks_keys{issuer="test-issuer"} 1"#),
        "{text}"
    );

    // It recovers on the backoff retry (1 s after the first failure).
    srv.set("/keys", json_reply(&jwks()));
    until(|| fetcher.states()[&url].result == FetchResult::Ok).await;

    // Removed sources stop.
    fetcher.set_sources(vec![]);
    assert!(fetcher.states().is_empty());
}

#[tokio::test]
async fn concurrent_introspections_of_one_token_make_one_call() {
    let srv = Server::start().await;
    let mut slow = json_reply(&json!({"active": true, "scope": "a"}));
    slow.delay = Duration::from_millis(200);
    srv.set("/introspect", slow);
    let registry = prometheus::Registry::new();
    let intro = Arc::new(Introspector::new(
        Arc::new(HttpClient::default()),
        &registry,
    ));
    let ep = IntrospectionEndpoint {
        issuer: "iss".into(),
        url: format!("{}/introspect", srv.base).into(),
        client_id: "gate way".into(),
        client_secret: "p@ss:word".into(),
        timeout: Duration::from_secs(2),
    };
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (intro, ep) = (intro.clone(), ep.clone());
            tokio::spawn(async move { intro.introspect(&ep, [7; 32], "tok-en").await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap()["active"], json!(true));
    }
    assert_eq!(srv.hits("/introspect"), 1);
    // `introspect_then` hands the answer over while the flight still holds: a verdict
    // cached there is in place before a later request could start another call.
    let held = intro
        .introspect_then(&ep, [6; 32], "tok-en", |answer| {
            (answer.is_ok(), intro.flights())
        })
        .await;
    assert_eq!(held, (true, 1));
    assert_eq!(intro.flights(), 0);
    let (head, body) = {
        let g = srv.state.lock().unwrap();
        (g.last_head.clone(), g.last_body.clone())
    };
    // client_secret_basic with form-encoded id and secret (RFC 6749 2.3.1).
    use base64::Engine;
    let want = base64::engine::general_purpose::STANDARD.encode("gate+way:p%40ss%3Aword");
    assert!(head.contains(&format!("Basic {want}")), "{head}");
    assert!(
        body.contains("token=tok-en") && body.contains("token_type_hint=access_token"),
        "{body}"
    );

    // A later call is a new call; errors and timeouts are errors, never verdicts.
    srv.set(
        "/introspect",
        Reply {
            status: 500,
            headers: vec![],
            body: vec![],
            delay: Duration::ZERO,
        },
    );
    assert!(intro.introspect(&ep, [7; 32], "tok-en").await.is_err());
    let mut stuck = json_reply(&json!({"active": true}));
    stuck.delay = Duration::from_secs(5);
    srv.set("/introspect", stuck);
    let short = IntrospectionEndpoint {
        timeout: Duration::from_millis(100),
        ..ep.clone()
    };
    let err = intro
        .introspect(&short, [8; 32], "other")
        .await
        .unwrap_err();
    assert!(err.contains("timed out"), "{err}");
    srv.set("/introspect", json_reply(&json!(["not", "an", "object"])));
    assert!(intro.introspect(&ep, [9; 32], "third").await.is_err());
}

fn endpoint(srv: &Server, path: &str, client: &str) -> IntrospectionEndpoint {
    IntrospectionEndpoint {
        issuer: "iss".into(),
        url: format!("{}{path}", srv.base).into(),
        client_id: client.into(),
        client_secret: "s".into(),
        timeout: Duration::from_secs(2),
    }
}

#[tokio::test]
async fn answers_are_never_shared_between_endpoints_or_clients() {
    let srv = Server::start().await;
    let mut evil = json_reply(&json!({"active": true, "scope": "admin"}));
    evil.delay = Duration::from_millis(300);
    srv.set("/evil", evil);
    let mut honest = json_reply(&json!({"active": false}));
    honest.delay = Duration::from_millis(100);
    srv.set("/honest", honest);
    let intro = Arc::new(Introspector::new(
        Arc::new(HttpClient::default()),
        &prometheus::Registry::new(),
    ));
    let (a, b, c) = (
        endpoint(&srv, "/evil", "attacker"),
        endpoint(&srv, "/honest", "gateway"),
        endpoint(&srv, "/honest", "other-client"),
    );
    let (ra, rb, rc) = tokio::join!(
        intro.introspect(&a, [1; 32], "same-token"),
        async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            intro.introspect(&b, [1; 32], "same-token").await
        },
        async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            intro.introspect(&c, [1; 32], "same-token").await
        },
    );
    assert_eq!(ra.unwrap()["active"], json!(true));
    assert_eq!(
        rb.unwrap()["active"],
        json!(false),
        "the honest endpoint's own answer"
    );
    assert_eq!(rc.unwrap()["active"], json!(false));
    assert_eq!(srv.hits("/honest"), 2, "one call per client");
    assert_eq!(intro.flights(), 0);
}

#[tokio::test]
async fn a_flood_of_distinct_tokens_is_capped_and_a_failing_endpoint_paused() {
    use portcullis_fetch::introspect::{BREAKER_FAILURES, MAX_CONCURRENT_CALLS};
    let srv = Server::start().await;
    let mut slow = json_reply(&json!({"active": false}));
    slow.delay = Duration::from_millis(300);
    srv.set("/i", slow);
    let intro = Arc::new(Introspector::new(
        Arc::new(HttpClient::default()),
        &prometheus::Registry::new(),
    ));
    let ep = endpoint(&srv, "/i", "gw");
    let tasks: Vec<_> = (0..MAX_CONCURRENT_CALLS + 10)
        .map(|i| {
            let (intro, ep) = (intro.clone(), ep.clone());
            tokio::spawn(
                async move { intro.introspect(&ep, [i as u8; 32], &format!("t{i}")).await },
            )
        })
        .collect();
    let mut refused = 0;
    for t in tasks {
        if t.await.unwrap().is_err() {
            refused += 1;
        }
    }
    assert_eq!(refused, 10);
    assert_eq!(srv.hits("/i"), MAX_CONCURRENT_CALLS);

    // A cancelled request leaves nothing behind.
    let (i2, e2) = (intro.clone(), ep.clone());
    let h = tokio::spawn(async move { i2.introspect(&e2, [200; 32], "cancelled").await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    h.abort();
    let _ = h.await;
    assert_eq!(intro.flights(), 0);

    // Failures in a row open the breaker: calls fail fast without reaching the endpoint.
    srv.set(
        "/i",
        Reply {
            status: 500,
            headers: vec![],
            body: vec![],
            delay: Duration::ZERO,
        },
    );
    for i in 0..BREAKER_FAILURES {
        assert!(
            intro
                .introspect(&ep, [100 + i as u8; 32], "x")
                .await
                .is_err()
        );
    }
    let before = srv.hits("/i");
    let err = intro.introspect(&ep, [150; 32], "y").await.unwrap_err();
    assert!(err.contains("paused"), "{err}");
    assert_eq!(srv.hits("/i"), before);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    srv.set("/i", json_reply(&json!({"active": true})));
    assert!(
        intro.introspect(&ep, [151; 32], "z").await.is_ok(),
        "closed again"
    );
}

/// A JWKS over real TLS with a private CA: refused with the system roots alone, fetched
/// with the CA bundle; and `max-age` decides when the next refresh happens.
#[tokio::test]
async fn https_with_a_private_ca_and_max_age_refreshes() {
    let ca = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = ca.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::try_from(ca.signing_key.serialize_der()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (acceptor, h) = (acceptor.clone(), h.clone());
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(s).await else {
                    return;
                };
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let body = jwks().to_string();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncache-control: public, max-age=1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    let url = format!("https://localhost:{port}/keys");
    let http = HttpClient::default();
    let mut src = source(url.clone(), RemoteSourceKind::Jwks);
    let (r, m) = fetch_once(&http, &src).await.map(|_| ()).unwrap_err();
    assert_eq!(r, FetchResult::FetchFailed, "{m}");
    src.ca_pem = vec![ca.cert.pem().into_bytes()];
    let (doc, _, max_age) = fetch_once(&http, &src).await.unwrap();
    assert_eq!(doc, jwks());
    assert_eq!(max_age, Some(Duration::from_secs(1)));
    src.ca_pem = vec![b"not a certificate".to_vec()];
    let (r, m) = fetch_once(&http, &src).await.map(|_| ()).unwrap_err();
    assert_eq!(r, FetchResult::FetchFailed);
    assert!(m.contains("CA bundle"), "{m}");

    // max-age=1 (within [minRefresh 300ms, maxRefresh 1h]): refreshed about every second.
    src.ca_pem = vec![ca.cert.pem().into_bytes()];
    let fetcher = KeyFetcher::new(
        Arc::new(HttpClient::default()),
        &prometheus::Registry::new(),
    );
    let before = hits.load(std::sync::atomic::Ordering::SeqCst);
    fetcher.set_sources(vec![src.clone()]);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let n = hits.load(std::sync::atomic::Ordering::SeqCst) - before;
    assert!((2..=4).contains(&n), "{n} fetches in 2.5s with max-age=1");
    // The same with maxRefresh 1h and minRefresh 5s: max-age=1 is clamped up to 5s.
    fetcher.set_sources(vec![]);
    src.min_refresh = Duration::from_secs(5);
    src.key = format!("{url}#slow");
    let before = hits.load(std::sync::atomic::Ordering::SeqCst);
    fetcher.set_sources(vec![src]);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst) - before, 1);
}
