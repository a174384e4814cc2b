//! Edge security over real sockets: no request reaches the backend unless the gateway
//! authorized that exact request. Hostile targets, forged identity headers, ambiguous
//! hosts and framing, each against a real upstream that records everything it receives,
//! so "the upstream never saw it" is asserted, not assumed. Each test names the RFC section
//! that decides it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, Header};
use portcullis_proxy::{Running, StandaloneOptions, start_standalone};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// === upstream ===

/// What the upstream received: method, path and query, headers, body.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// A real HTTP/1.1 server that records every request and answers 200 with its path.
async fn upstream() -> (SocketAddr, Log) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log: Log = Arc::default();
    let l = log.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let log = l.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let log = log.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.map(|b| b.to_bytes().to_vec());
                        let seen = Seen {
                            method: parts.method.to_string(),
                            target: parts.uri.to_string(),
                            headers: parts
                                .headers
                                .iter()
                                .map(|(k, v)| {
                                    (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into())
                                })
                                .collect(),
                            body: body.unwrap_or_default(),
                        };
                        let text = seen.target.clone();
                        log.lock().unwrap().push(seen);
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, log)
}

// === tokens ===

fn signer() -> &'static portcullis_testkit::TestKey {
    static S: std::sync::OnceLock<portcullis_testkit::TestKey> = std::sync::OnceLock::new();
    S.get_or_init(|| portcullis_testkit::rsa("k1"))
}

fn token(scope: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("k1".into());
    let claims = json!({"iss": "https://issuer.test", "aud": "api", "sub": "alice", "scope": scope, "iat": now - 5, "exp": now + 300});
    jsonwebtoken::encode(&h, &claims, &signer().encoding).unwrap()
}

// === gateway ===

fn manifests(up: SocketAddr) -> String {
    let policy = json!({
        "apiVersion": "portcullis.dev/v1alpha1", "kind": "TokenPolicy",
        "metadata": {"name": "default"},
        "spec": {
            "issuers": [{"issuer": "https://issuer.test", "audiences": ["api"], "algorithms": ["RS256"], "jwks": {"inline": {"keys": [signer().jwk]}}}],
            "forwardClaims": {"sub": "X-User-Id"},
        }
    });
    format!(
        r#"{policy}
---
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {{name: main}}
spec:
  hosts: [localhost]
  policyRef: {{name: default}}
  backend: {{url: "http://{up}"}}
  rules:
    - match: {{pathPrefix: /public}}
      auth: none
    - match: {{pathPrefix: /admin}}
      requiredScopes: [admin]
    - match: {{pathPrefix: /orders}}
      requiredScopes: [orders:read]
    - match: {{pathPrefix: /items, methods: [DELETE]}}
      requiredScopes: [items:write]
    - match: {{pathPrefix: /items}}
      auth: none
---
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {{name: files}}
spec:
  hosts: [files.test]
  policyRef: {{name: default}}
  backend: {{url: "http://{up}"}}
  pathNormalization: {{mergeSlashes: false, escapedSlashes: Keep, semicolons: Keep}}
  rules:
    - match: {{pathPrefix: /files}}
      auth: none
    - match: {{pathPrefix: /files/private}}
      requiredScopes: [admin]
---
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {{name: strict}}
spec:
  hosts: [strict.test]
  policyRef: {{name: default}}
  backend: {{url: "http://{up}"}}
  headersWithUnderscores: Reject
  rules:
    - match: {{pathPrefix: /}}
      auth: none
"#
    )
}

struct Gateway {
    running: Running,
    log: Log,
    _dir: tempfile::TempDir,
}

impl Gateway {
    async fn start() -> Gateway {
        Self::start_with(Vec::new()).await
    }

    async fn start_with(trusted_proxies: Vec<ipnet::IpNet>) -> Gateway {
        let (up, log) = upstream().await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("all.yaml"), manifests(up)).unwrap();
        let mut opts = StandaloneOptions::new(dir.path().to_owned());
        opts.listen = "127.0.0.1:0".parse().unwrap();
        opts.admin = "127.0.0.1:0".parse().unwrap();
        opts.limits.trusted_proxies = trusted_proxies;
        let running = start_standalone(opts).await.unwrap();
        let errors = &running.config.info().errors;
        assert!(errors.is_empty(), "{errors:?}");
        Gateway {
            running,
            log,
            _dir: dir,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.running.proxy_addr
    }

    /// Everything the upstream has received so far, and forget it.
    fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }

    /// Sends one raw HTTP/1.1 request (the caller writes every byte) and returns the
    /// status code of the first response, or 0 if the connection closed without one.
    async fn raw(&self, bytes: &[u8]) -> (u16, String) {
        let mut s = TcpStream::connect(self.addr()).await.unwrap();
        s.write_all(bytes).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text
            .get(9..12)
            .filter(|_| text.starts_with("HTTP/1."))
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (status, text)
    }

    /// `GET <target>` on a fresh connection, with `Host: localhost` and optional extra
    /// header lines.
    async fn get(&self, target: &str, extra: &str) -> (u16, String) {
        self.raw(
            format!("GET {target} HTTP/1.1\r\nHost: localhost\r\n{extra}Connection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
    }

    /// An HTTP/2 (prior knowledge) request with exactly this `:path`, `:authority` and
    /// headers.
    async fn h2(&self, path: &str, authority: &str, headers: &[(&str, &str)]) -> u16 {
        let stream = TcpStream::connect(self.addr()).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let uri = http::Uri::builder()
            .scheme("http")
            .authority(authority)
            .path_and_query(path)
            .build()
            .unwrap();
        let mut b = Request::get(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let resp = send
            .send_request(b.body(Full::<Bytes>::default()).unwrap())
            .await
            .unwrap();
        resp.status().as_u16()
    }
}

fn body_of(resp: &str) -> &str {
    resp.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

// === tests ===

/// RFC 3986 section 5.2.4 (remove_dot_segments) and 6.2.2 (encoded unreserved characters
/// are the characters): every spelling of a climb out of `/public` is decided as the path
/// it resolves to, so without a token the answer is 401 and the upstream sees nothing;
/// spellings whose resolution backends disagree on (NUL, `%2F`, `\`, `;`) are 400.
#[tokio::test]
async fn rfc3986_5_2_4_traversal_past_the_policy_never_reaches_the_upstream() {
    let gw = Gateway::start().await;
    let cases: &[(&str, u16)] = &[
        ("/public/../admin/x", 401),
        ("/public/%2e%2e/admin/x", 401),
        ("/public/%2E%2E/admin/x", 401),
        ("/public/.%2e/admin/x", 401),
        ("/public/%2e./admin/x", 401),
        ("/public/./../admin/x", 401),
        ("/public//../admin/x", 401),
        ("/public/a/../../admin/x", 401),
        ("/public/../../../admin/x", 401),
        ("/%61dmin/x", 401),
        ("//admin/x", 401),
        ("/public/%00../admin/x", 400),
        ("/public/%00/../../admin/x", 400),
        ("/public/..%2Fadmin/x", 400),
        ("/public/..%2fadmin/x", 400),
        ("/public/%2e%2e%2fadmin/x", 400),
        ("/public/..%5Cadmin/x", 400),
        ("/public/..\\admin/x", 400),
        ("/public/..;/admin/x", 400),
        ("/public/%2e%2e;/admin/x", 400),
        ("/admin;x/y", 400),
        ("/public/%zz", 400),
        ("/public/%c3", 400),
    ];
    for (target, want) in cases {
        let (status, resp) = gw.get(target, "").await;
        assert_eq!(status, *want, "{target}: {resp}");
        assert!(gw.take().is_empty(), "{target} reached the upstream");
    }
    // Absolute form (RFC 9112 section 3.2.2) goes through the same normalizer.
    let (status, _) = gw
        .raw(b"GET http://localhost/public/../admin/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(status, 401);
    assert!(gw.take().is_empty());
    // A public path that only looks odd is served, and the upstream gets the same path
    // the decision was made on.
    let (status, resp) = gw.get("/public/./a/%7e/../b/%41", "").await;
    assert_eq!(status, 200, "{resp}");
    let seen = gw.take();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, "/public/a/b/A");
    // The query is forwarded as sent.
    let (status, _) = gw.get("/public/x?a=%2e%2e/b&c", "").await;
    assert_eq!(status, 200);
    assert_eq!(gw.take()[0].target, "/public/x?a=%2e%2e/b&c");
}

/// RFC 9113 section 8.3.1: HTTP/2 `:path` is normalized exactly like an HTTP/1 target.
#[tokio::test]
async fn rfc9113_8_3_1_http2_path_is_normalized_too() {
    let gw = Gateway::start().await;
    assert_eq!(gw.h2("/public/../admin/x", "localhost", &[]).await, 401);
    assert_eq!(gw.h2("/public/%2e%2e/admin/x", "localhost", &[]).await, 401);
    assert_eq!(gw.h2("/public/..%2Fadmin/x", "localhost", &[]).await, 400);
    assert!(gw.take().is_empty());
    assert_eq!(gw.h2("/public/a/../b", "localhost", &[]).await, 200);
    assert_eq!(gw.take()[0].target, "/public/b");
}

/// A caller who may use one route cannot climb into another: the decision is made on
/// `/admin/x`, where `orders:read` is not enough (RFC 6750 section 3.1, 403).
#[tokio::test]
async fn rfc3986_5_2_4_climbing_from_an_allowed_route_is_judged_at_the_destination() {
    let gw = Gateway::start().await;
    let t = token("orders:read");
    let auth = format!("Authorization: Bearer {t}\r\n");
    let (status, _) = gw.get("/orders/1", &auth).await;
    assert_eq!(status, 200);
    assert_eq!(gw.take()[0].target, "/orders/1");
    for target in [
        "/orders/../admin/x",
        "/orders/%2e%2e/admin/x",
        "/orders/./../admin",
    ] {
        let (status, resp) = gw.get(target, &auth).await;
        assert_eq!(status, 403, "{target}: {resp}");
    }
    assert!(gw.take().is_empty());
}

/// A route may keep `%2F`, `//` and `;`: they stay in the path, unchanged, both for the
/// decision and for the upstream; the default routes still refuse them.
#[tokio::test]
async fn route_path_normalization_settings_apply_only_on_their_route() {
    let gw = Gateway::start().await;
    let host = |h: &str, target: &str| {
        format!("GET {target} HTTP/1.1\r\nHost: {h}\r\nConnection: close\r\n\r\n")
    };
    let (status, resp) = gw
        .raw(host("files.test", "/files/a%2fb//c;v=1").as_bytes())
        .await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(gw.take()[0].target, "/files/a%2Fb//c;v=1");
    // Dot segments are still removed, and `..;` still refused.
    let (status, _) = gw.raw(host("files.test", "/files/x/../y").as_bytes()).await;
    assert_eq!(status, 200);
    assert_eq!(gw.take()[0].target, "/files/y");
    let (status, _) = gw.raw(host("files.test", "/files/..;/y").as_bytes()).await;
    assert_eq!(status, 400);
    let (status, _) = gw.get("/public/a%2fb", "").await;
    assert_eq!(status, 400);
    assert!(gw.take().is_empty());
    // What the route keeps, a backend may still resolve away: merge `//`, decode `%2F`,
    // strip `;params`. If that would land on another rule (here the protected
    // /files/private), the request is ambiguous and refused rather than decided by the
    // public rule.
    for target in [
        "/files//private/x",
        "/files/x/..%2F..%2Fprivate/x",
        "/files/private;x/y",
        "/files/private%2Fx",
        // Decided as /files//private/, which a merging backend serves as /files/private/.
        "/files//private//.%2e",
        "/files//private//x/..",
    ] {
        let (status, resp) = gw.raw(host("files.test", target).as_bytes()).await;
        assert!(matches!(status, 400 | 401), "{target}: {resp}");
    }
    assert!(gw.take().is_empty());
}

/// CVE-2015-0219 class: CGI, WSGI, PHP and Rack read `X_User_Id`, `x_user-id` and
/// `X-User-Id` as one variable (RFC 3875 section 4.1.18 maps `-` to `_`). Names with `_`
/// never reach the backend, so only the proxy's own `X-User-Id` does.
#[tokio::test]
async fn rfc3875_4_1_18_underscore_headers_cannot_forge_identity() {
    let gw = Gateway::start().await;
    let t = token("orders:read");
    let (status, _) = gw
        .get(
            "/orders/1",
            &format!("Authorization: Bearer {t}\r\nX_User_Id: root\r\nx_user-id: root\r\nX-User-Id: root\r\nX.User.Id: root\r\n"),
        )
        .await;
    assert_eq!(status, 200);
    let seen = gw.take();
    assert_eq!(seen[0].header("x-user-id"), vec!["alice"]);
    for (name, value) in &seen[0].headers {
        assert!(
            !name.contains('_') && !name.contains('.'),
            "{name}: {value} reached the upstream"
        );
        assert_ne!(value, "root", "{name}");
    }
    // On a public rule too: no identity is set, and none can be smuggled.
    let (status, _) = gw.get("/public/x", "X_User_Id: root\r\n").await;
    assert_eq!(status, 200);
    assert!(gw.take()[0].header("x_user_id").is_empty());
    // A route that refuses them answers 400.
    let (status, _) = gw
        .raw(b"GET / HTTP/1.1\r\nHost: strict.test\r\nX_User_Id: root\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(status, 400);
    assert!(gw.take().is_empty());
}

/// RFC 9110 section 7.6.1: headers named in `Connection` are removed, but that cannot
/// remove a header the proxy sets (`X-User-Id`, `X-Forwarded-For`) or the message's own
/// `Host`/`Content-Length`.
#[tokio::test]
async fn rfc9110_7_6_1_connection_cannot_strip_what_the_proxy_adds() {
    let gw = Gateway::start().await;
    let t = token("orders:read");
    let (status, _) = gw
        .raw(format!("POST /orders/1 HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {t}\r\nConnection: close, X-User-Id, X-Forwarded-For, X-Request-Id, Content-Length, Host\r\nContent-Length: 5\r\n\r\nhello").as_bytes())
        .await;
    assert_eq!(status, 200);
    let seen = gw.take();
    assert_eq!(seen[0].header("x-user-id"), vec!["alice"]);
    assert_eq!(seen[0].header("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(seen[0].header("x-request-id").len(), 1);
    assert_eq!(seen[0].body, b"hello");
}

/// Headers that frameworks honour to change the path or method behind the gateway's back
/// (IIS/Symfony `X-Original-URL`, `X-Rewrite-URL`; method overrides) never reach the
/// backend; client-address headers (RFC 7239 `Forwarded`, `X-Real-IP`) are believed only
/// from a trusted proxy, and `X-Forwarded-For` is what the proxy saw.
#[tokio::test]
async fn rfc7239_override_and_client_address_headers_are_removed() {
    let gw = Gateway::start().await;
    let (status, _) = gw
        .get(
            "/public/x",
            "X-Original-URL: /admin/x\r\nX-Rewrite-URL: /admin/x\r\nX-HTTP-Method-Override: DELETE\r\nX-Method-Override: DELETE\r\nX-HTTP-Method: DELETE\r\nForwarded: for=10.0.0.1;host=admin\r\nX-Real-IP: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Prefix: /admin\r\nTrue-Client-IP: 10.0.0.1\r\n",
        )
        .await;
    assert_eq!(status, 200);
    let seen = gw.take();
    for h in [
        "x-original-url",
        "x-rewrite-url",
        "x-http-method-override",
        "x-method-override",
        "x-http-method",
        "forwarded",
        "x-real-ip",
        "x-forwarded-prefix",
        "true-client-ip",
    ] {
        assert!(seen[0].header(h).is_empty(), "{h} reached the upstream");
    }
    assert_eq!(seen[0].header("x-forwarded-for"), vec!["127.0.0.1"]);
}

/// RFC 7239 section 8.1 (and the de-facto `X-Forwarded-For`): a load balancer listed as a
/// trusted proxy keeps its client-address headers, and the proxy appends the peer it saw.
#[tokio::test]
async fn rfc7239_8_1_a_trusted_proxy_keeps_its_client_address_headers() {
    let gw = Gateway::start_with(vec!["127.0.0.0/8".parse().unwrap()]).await;
    let (status, _) = gw
        .get(
            "/public/x",
            "Forwarded: for=10.0.0.1\r\nX-Real-IP: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.1\r\nX-Original-URL: /admin\r\n",
        )
        .await;
    assert_eq!(status, 200);
    let seen = gw.take();
    assert_eq!(
        seen[0].header("x-forwarded-for"),
        vec!["10.0.0.1, 127.0.0.1"]
    );
    assert_eq!(seen[0].header("forwarded"), vec!["for=10.0.0.1"]);
    assert_eq!(seen[0].header("x-real-ip"), vec!["10.0.0.1"]);
    // Override headers go whoever sends them.
    assert!(seen[0].header("x-original-url").is_empty());
}

/// RFC 9110 section 9.1: methods are case-sensitive; `delete` is not `DELETE`, but a
/// backend that folds case would act on it. Refused, so it cannot slip past the method
/// rule into the public catch-all.
#[tokio::test]
async fn rfc9110_9_1_lower_case_methods_cannot_slip_past_a_method_rule() {
    let gw = Gateway::start().await;
    for m in ["delete", "Delete", "get"] {
        let (status, _) = gw
            .raw(
                format!("{m} /items/1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await;
        assert_eq!(status, 400, "{m}");
    }
    let (status, _) = gw
        .raw(b"DELETE /items/1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(status, 401);
    assert!(gw.take().is_empty());
}

/// RFC 9112 section 3.2: no Host, two Hosts or an invalid Host is a 400; section 3.2.2:
/// with an absolute-form target the target's authority decides, and it is the host the
/// decision and `X-Forwarded-Host` both use.
#[tokio::test]
async fn rfc9112_3_2_one_host_decides() {
    let gw = Gateway::start().await;
    let cases: &[(&[u8], u16)] = &[
        (b"GET /public/x HTTP/1.1\r\nConnection: close\r\n\r\n", 400),
        (b"GET /public/x HTTP/1.0\r\n\r\n", 400),
        (b"GET /public/x HTTP/1.1\r\nHost: localhost\r\nHost: files.test\r\nConnection: close\r\n\r\n", 400),
        (b"GET /public/x HTTP/1.1\r\nHost: user@localhost\r\nConnection: close\r\n\r\n", 400),
        (b"GET /public/x HTTP/1.1\r\nHost: local host\r\nConnection: close\r\n\r\n", 400),
        (b"GET /public/x HTTP/1.1\r\nHost: localhost/admin\r\nConnection: close\r\n\r\n", 400),
        // Absolute form naming a host the Host header does not: the target decides
        // (no route for other.test: 404), never the Host header.
        (b"GET http://other.test/public/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", 404),
    ];
    for (req, want) in cases {
        let (status, resp) = gw.raw(req).await;
        assert_eq!(status, *want, "{}: {resp}", String::from_utf8_lossy(req));
    }
    assert!(gw.take().is_empty());
    let (status, _) = gw
        .raw(b"GET http://localhost/public/x HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(status, 200);
    assert_eq!(gw.take()[0].header("x-forwarded-host"), vec!["localhost"]);
}

/// RFC 9113 section 8.3.1: `:authority` and `host` naming different hosts is malformed.
#[tokio::test]
async fn rfc9113_8_3_1_authority_and_host_must_agree() {
    let gw = Gateway::start().await;
    assert_eq!(
        gw.h2("/public/x", "localhost", &[("host", "strict.test")])
            .await,
        400
    );
    assert_eq!(
        gw.h2("/public/x", "localhost", &[("host", "LOCALHOST")])
            .await,
        200
    );
    assert_eq!(gw.take().len(), 1);
}

/// RFC 9112 section 6.1: a transfer coding other than one final `chunked` is 501; `chunked`
/// twice, or beside Content-Length, is refused (section 6.3: the message framing is
/// ambiguous, which is how requests are smuggled). Whatever happens, a request hidden in a
/// body never reaches the upstream as a request of its own.
#[tokio::test]
async fn rfc9112_6_1_transfer_coding_conflicts_never_smuggle_a_request() {
    let gw = Gateway::start().await;
    let smuggled = "GET /admin/x HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let cases: Vec<(String, &[u16])> = vec![
        // Content-Length beside chunked: hyper drops Content-Length and reads the body as
        // chunked (section 6.3 item 3), then closes the connection (section 6.1), so the
        // bytes after the body are never read as a request.
        (
            format!(
                "POST /public/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            &[200, 400],
        ),
        (
            format!(
                "POST /public/x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            &[501],
        ),
        (
            format!(
                "POST /public/x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            &[400],
        ),
        (
            format!(
                "POST /public/x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip\r\n\r\n{smuggled}"
            ),
            &[400, 501],
        ),
        (
            format!(
                "POST /public/x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: xchunked\r\n\r\n{smuggled}"
            ),
            &[400, 501],
        ),
        // Two different Content-Lengths (section 6.3 item 5).
        (
            format!(
                "POST /public/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nContent-Length: 44\r\n\r\n{smuggled}"
            ),
            &[400],
        ),
        // obs-fold (section 5.2): refused with 400.
        (
            format!("GET /public/x HTTP/1.1\r\nHost: localhost\r\nX-A: a\r\n b\r\n\r\n{smuggled}"),
            &[400],
        ),
        // Bare LF in a chunk-size line (section 7.1: chunk lines end in CRLF).
        (
            format!(
                "POST /public/x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n{smuggled}"
            ),
            &[400],
        ),
    ];
    for (req, want) in cases {
        let (status, resp) = gw.raw(req.as_bytes()).await;
        assert!(want.contains(&status), "{req:?}: {resp}");
        assert_eq!(
            resp.matches("HTTP/1.1 ").count(),
            1,
            "the bytes after the body were read as a request: {resp}"
        );
        let seen = gw.take();
        assert!(
            seen.iter().all(|s| !s.target.contains("admin")),
            "{req:?} smuggled {seen:?}"
        );
    }
    // A well-framed chunked body is forwarded, re-framed by the proxy.
    let (status, resp) = gw
        .raw(b"POST /public/x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        .await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(body_of(&resp), "/public/x");
    let seen = gw.take();
    assert_eq!(
        (seen[0].method.as_str(), &seen[0].body[..]),
        ("POST", &b"hello"[..])
    );
}

/// The upstream receives exactly the canonical target the decision was made on, and the
/// access decision is counted by its reason.
#[tokio::test]
async fn refusals_are_counted_by_reason() {
    let gw = Gateway::start().await;
    let _ = gw.get("/public/..%2Fadmin", "").await;
    let _ = gw.get("/public/%00", "").await;
    let metrics = reqwest_metrics(gw.running.admin_addr).await;
    assert!(
        metrics.contains("reason=\"path_escaped_slash\""),
        "{metrics}"
    );
    assert!(metrics.contains("reason=\"path_control_character\""));
}

async fn reqwest_metrics(admin: SocketAddr) -> String {
    let stream = TcpStream::connect(admin).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = send
        .send_request(
            Request::get("/metrics")
                .header("host", "admin")
                .body(Full::<Bytes>::default())
                .unwrap(),
        )
        .await
        .unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}
