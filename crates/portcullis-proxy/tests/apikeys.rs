//! API keys end to end in the standalone gateway, over real TCP sockets against a real
//! upstream that echoes what it receives: a key in `Authorization: Bearer` or in the
//! policy's header, the consumer forwarded, the credential never forwarded, one
//! credential per request (RFC 6750 section 2), and revocation by key id and by deleting
//! the key's Secret while the gateway runs.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_policy::apikey::{self, ApiKey};
use portcullis_proxy::{Running, StandaloneOptions, start_standalone};
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// Echoes the request's path and headers as JSON.
async fn upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let headers: serde_json::Map<String, Value> = req
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or(""))))
                        .collect();
                    let body = json!({"path": req.uri().path(), "headers": headers}).to_string();
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn key(seed: u8) -> String {
    let random: Vec<u8> = (0..128u16)
        .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed))
        .collect();
    apikey::generate(&random).unwrap()
}

/// The Secret `portcullis apikey create` writes: the key's hash, never the key.
fn secret_yaml(name: &str, key: &str, consumer: &str, scopes: &str) -> String {
    let sha = portcullis_policy::token_digest(key).to_hex();
    let id = ApiKey::parse(key).unwrap().id().to_owned();
    format!(
        r#"apiVersion: v1
kind: Secret
type: portcullis.dev/api-key
metadata:
  name: {name}
  labels: {{portcullis.dev/api-key: "true", team: payments}}
stringData:
  keyId: {id}
  sha256: {sha}
  consumer: {consumer}
  scopes: "{scopes}"
"#
    )
}

fn policy_yaml(revoked_ids: &[&str]) -> String {
    let revocations: Vec<Value> = revoked_ids.iter().map(|i| json!({"apiKeyId": i})).collect();
    serde_yaml::to_string(&json!({
        "apiVersion": "portcullis.dev/v1alpha1", "kind": "TokenPolicy",
        "metadata": {"name": "keys"},
        "spec": {
            "apiKeys": {"selector": {"matchLabels": {"team": "payments"}}},
            "forwardClaims": {"consumer": "X-Consumer", "api_key_id": "X-Key-Id"},
            "revocations": revocations,
        }
    }))
    .unwrap()
}

fn route_yaml(up: SocketAddr) -> String {
    format!(
        r#"apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {{name: orders}}
spec:
  hosts: [localhost]
  policyRef: {{name: keys}}
  backend: {{url: "http://{up}"}}
  rules:
    - match: {{pathPrefix: /orders, methods: [GET]}}
      requiredScopes: [orders:read]
    - match: {{pathPrefix: /orders, methods: [POST]}}
      requiredScopes: [orders:write]
"#
    )
}

struct Gateway {
    running: Running,
    dir: tempfile::TempDir,
}

impl Gateway {
    async fn start(files: &[(&str, String)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let mut opts = StandaloneOptions::new(dir.path().to_owned());
        opts.listen = "127.0.0.1:0".parse().unwrap();
        opts.admin = "127.0.0.1:0".parse().unwrap();
        let running = start_standalone(opts).await.unwrap();
        let errors = &running.config.info().errors;
        assert!(errors.is_empty(), "{errors:?}");
        Gateway { running, dir }
    }

    fn write(&self, file: &str, content: &str) {
        let tmp = self.dir.path().join(format!(".{file}.tmp"));
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(tmp, self.dir.path().join(file)).unwrap();
    }

    async fn wait_version_after(&self, v: u64) {
        // A bound, not a timing claim.
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.running.config.info().version <= v {
            assert!(Instant::now() < deadline, "config was not reloaded");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn send(&self, method: &str, headers: &[(&str, &str)]) -> (StatusCode, String) {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}/orders/1", self.running.proxy_addr))
            .header("host", "localhost");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let resp = client
            .request(req.body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    async fn metrics(&self) -> String {
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let resp = client
            .get(
                format!("http://{}/metrics", self.running.admin_addr)
                    .parse()
                    .unwrap(),
            )
            .await
            .unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8_lossy(&body).into_owned()
    }
}

fn echoed(body: &str) -> serde_json::Map<String, Value> {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not echoed: {body}"));
    v["headers"].as_object().unwrap().clone()
}

#[tokio::test]
async fn api_keys_end_to_end() {
    let up = upstream().await;
    let alice = key(1);
    let bob = key(2);
    let gw = Gateway::start(&[
        ("policy.yaml", policy_yaml(&[])),
        ("routes.yaml", route_yaml(up)),
        (
            "alice.yaml",
            secret_yaml("alice-key", &alice, "alice", "orders:read"),
        ),
        (
            "bob.yaml",
            secret_yaml("bob-key", &bob, "bob", "orders:read"),
        ),
    ])
    .await;

    // In Authorization: Bearer, and in the policy's header (default x-api-key).
    let bearer = format!("Bearer {alice}");
    for headers in [
        vec![("authorization", bearer.as_str())],
        vec![("x-api-key", alice.as_str())],
    ] {
        let (status, body) = gw.send("GET", &headers).await;
        assert_eq!(status, StatusCode::OK, "{headers:?}: {body}");
        let h = echoed(&body);
        assert_eq!(h["x-consumer"], "alice");
        assert_eq!(h["x-key-id"], json!(ApiKey::parse(&alice).unwrap().id()));
        // The credential stops at the gateway.
        assert!(!h.contains_key("authorization"), "{h:?}");
        assert!(!h.contains_key("x-api-key"), "{h:?}");
    }
    // A DPoP proof (RFC 9449) is bound to the gateway's URL: it stops here too.
    let (_, body) = gw
        .send("GET", &[("x-api-key", &alice), ("dpop", "proof")])
        .await;
    assert!(!echoed(&body).contains_key("dpop"));
    // A forged X-Consumer from the client is replaced by the key's consumer.
    let (_, body) = gw
        .send("GET", &[("x-api-key", &bob), ("x-consumer", "alice")])
        .await;
    assert_eq!(echoed(&body)["x-consumer"], "bob");

    // Scopes: 403 insufficient_scope (RFC 6750 section 3.1).
    let (status, _) = gw.send("POST", &[("x-api-key", &alice)]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // One credential per request (RFC 6750 section 2).
    let (status, _) = gw
        .send("GET", &[("x-api-key", &alice), ("authorization", &bearer)])
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // A mistyped key (checksum) and an unknown one.
    let mut typo = alice.clone().into_bytes();
    typo[30] = if typo[30] == b'x' { b'y' } else { b'x' };
    let typo = String::from_utf8(typo).unwrap();
    assert_eq!(
        gw.send("GET", &[("x-api-key", &typo)]).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        gw.send("GET", &[("x-api-key", &key(3))]).await.0,
        StatusCode::UNAUTHORIZED
    );

    // Revoke alice's key by id while the gateway runs: bob's key still works.
    let v = gw.running.config.info().version;
    let alice_id = ApiKey::parse(&alice).unwrap().id().to_owned();
    gw.write("policy.yaml", &policy_yaml(&[&alice_id]));
    gw.wait_version_after(v).await;
    assert_eq!(
        gw.send("GET", &[("x-api-key", &alice)]).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        gw.send("GET", &[("x-api-key", &bob)]).await.0,
        StatusCode::OK
    );
    // Delete bob's Secret: his key is unknown from the next snapshot on.
    let v = gw.running.config.info().version;
    std::fs::remove_file(gw.dir.path().join("bob.yaml")).unwrap();
    gw.wait_version_after(v).await;
    assert_eq!(
        gw.send("GET", &[("x-api-key", &bob)]).await.0,
        StatusCode::UNAUTHORIZED
    );

    let metrics = gw.metrics().await;
    for reason in ["revoked_api_key", "unknown_api_key", "multiple_credentials"] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("portcullis_auth_decisions_total")
                    && l.contains(&format!("reason=\"{reason}\""))),
            "no {reason} decision counted"
        );
    }
    // Requests per consumer: hashed (SHA-256("alice")[..12]), never the name.
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("portcullis_consumer_requests_total")
                && l.contains("consumer=\"2bd806c97f0e\"")
                && l.contains("kind=\"api_key\"")),
        "no per-consumer count"
    );
    assert!(!metrics.contains("alice"));
    // Never a key in the metrics.
    assert!(!metrics.contains(&alice[16..]) && !metrics.contains(&bob[16..]));
}

/// The example a user copies compiles without errors.
#[tokio::test]
async fn the_api_keys_example_compiles() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/apikeys");
    let mut opts = StandaloneOptions::new(dir);
    opts.listen = "127.0.0.1:0".parse().unwrap();
    opts.admin = "127.0.0.1:0".parse().unwrap();
    let running = start_standalone(opts).await.unwrap();
    let info = running.config.info();
    assert!(info.errors.is_empty(), "{:?}", info.errors);
    assert!(info.version > 0);
}
