//! A differential test against a real backend that normalizes paths: Debian's nginx, as
//! the upstream, with `location /admin` and a catch-all. For a table of hostile request
//! targets sent to the gateway without a token, whatever nginx serves must be what the
//! gateway authorized: never its `/admin` location, and always the very path the gateway
//! decided on (nginx's own resolution, `$uri`, equals the path it was sent).
//!
//! nginx comes from Debian's `nginx-light` (or `nginx`) package, which `.ci/run` installs;
//! the test fails, it does not skip, when nginx is missing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portcullis_proxy::{StandaloneOptions, start_standalone};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn nginx_binary() -> PathBuf {
    for p in ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    panic!(
        "nginx not found: this test needs a real nginx (Debian: apt-get install nginx-light); .ci/run installs it"
    );
}

/// nginx in the foreground, one process, everything under a temp dir.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_nginx() -> Nginx {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let d = dir.path().display();
    // `$uri` is nginx's own normalization of the path it received (decoded, dot segments
    // resolved, slashes merged); `$request_uri` is what it received.
    let conf = format!(
        r#"daemon off;
master_process off;
worker_processes 1;
error_log {d}/error.log;
pid {d}/nginx.pid;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  default_type text/plain;
  server {{
    listen 127.0.0.1:{port};
    location /admin {{ return 200 "location=admin uri=$uri sent=$request_uri\n"; }}
    location / {{ return 200 "location=other uri=$uri sent=$request_uri\n"; }}
  }}
}}
"#
    );
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let child = Command::new(nginx_binary())
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting nginx");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "nginx did not start: {}",
            std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Nginx {
        child,
        addr,
        _dir: dir,
    }
}

async fn send(addr: SocketAddr, target: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned());
    (status, body)
}

/// Percent-decodes a path the way nginx does for `$uri`.
fn decode(p: &str) -> String {
    let b = p.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(v) = p
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

const HOSTILE: &[&str] = &[
    "/public/x",
    "/public/../admin/x",
    "/public/%2e%2e/admin/x",
    "/public/%2E%2E/admin/x",
    "/public/.%2e/admin/x",
    "/public/%2e./admin/x",
    "/public/./../admin/x",
    "/public//../admin/x",
    "/public/a/../../admin/x",
    "/public/%2e%2e%2fadmin/x",
    "/public/..%2Fadmin/x",
    "/public/..%5Cadmin/x",
    "/public/..\\admin/x",
    "/public/%00../admin/x",
    "/public/..;/admin/x",
    "/public/%2e%2e;/admin/x",
    "//admin/x",
    "///admin/x",
    "/%61dmin/x",
    "/%2561dmin/x",
    "/public/%252e%252e/admin/x",
    "/public/.././admin/x",
    "/public/x/..%2f..%2fadmin",
    "/public/%c0%ae%c0%ae/admin/x",
    "/public/x?/../../admin/x",
    "/public/x#/../../admin/x",
    "/admin/x",
    "/ADMIN/x",
];

#[tokio::test]
async fn hostile_targets_nginx_serves_only_what_the_gateway_authorized() {
    let nginx = start_nginx();
    // Directly, nginx resolves the traversal: the gateway is what stands between.
    let (status, body) = send(nginx.addr, "/public/../admin/x").await;
    assert_eq!(status, 200);
    assert!(body.starts_with("location=admin"), "{body}");

    let dir = tempfile::tempdir().unwrap();
    let key = portcullis_testkit::rsa("k1");
    let policy = serde_json::json!({
        "apiVersion": "portcullis.dev/v1alpha1", "kind": "TokenPolicy",
        "metadata": {"name": "default"},
        "spec": {"issuers": [{"issuer": "https://issuer.test", "audiences": ["api"], "algorithms": ["RS256"], "jwks": {"inline": {"keys": [key.jwk]}}}]}
    });
    std::fs::write(
        dir.path().join("all.yaml"),
        format!(
            "{policy}\n---\napiVersion: portcullis.dev/v1alpha1\nkind: ApiRoute\nmetadata: {{name: main}}\nspec:\n  hosts: [localhost]\n  policyRef: {{name: default}}\n  backend: {{url: \"http://{}\"}}\n  rules:\n    - match: {{pathPrefix: /public}}\n      auth: none\n    - match: {{pathPrefix: /admin}}\n      requiredScopes: [admin]\n",
            nginx.addr
        ),
    )
    .unwrap();
    let mut opts = StandaloneOptions::new(dir.path().to_owned());
    opts.listen = "127.0.0.1:0".parse().unwrap();
    opts.admin = "127.0.0.1:0".parse().unwrap();
    let gw = start_standalone(opts).await.unwrap();
    assert!(gw.config.info().errors.is_empty());

    let mut served = 0;
    for target in HOSTILE {
        let (status, body) = send(gw.proxy_addr, target).await;
        match status {
            200 => {
                served += 1;
                let field = |name: &str| {
                    body.split_whitespace()
                        .find_map(|w| w.strip_prefix(name))
                        .unwrap_or_default()
                        .to_owned()
                };
                assert_eq!(
                    field("location="),
                    "other",
                    "{target}: nginx served its admin location through the gateway: {body}"
                );
                let sent = field("sent=");
                let sent_path = sent.split('?').next().unwrap_or_default();
                // nginx's resolution of what it was sent is that same path: the backend
                // cannot move the request to a path the gateway did not decide on.
                assert_eq!(
                    field("uri="),
                    decode(sent_path),
                    "{target}: nginx resolved {sent_path} elsewhere"
                );
                assert!(sent_path.starts_with("/public/") || sent_path == "/public");
            }
            400 | 401 | 404 => {}
            other => panic!("{target}: unexpected status {other}: {body}"),
        }
    }
    assert!(served >= 2, "the public path itself must be served");
}
