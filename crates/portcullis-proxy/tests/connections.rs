//! Connection bounds on the proxy port, over real TCP sockets against a real upstream:
//! connections that never send a complete first request (slowloris), idle keep-alive
//! connections, long streams that must not be taken for idle, the connection cap with its
//! `503`, and a healthy h2c client that must keep working under all of it.
//!
//! Timeouts are short (hundreds of milliseconds); every wait is bounded and generous, and
//! nothing asserts how fast the gateway is, only that a bound is kept or not overstepped
//! in a way a broken gateway could not pass.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use portcullis_proxy::{Limits, Running, StandaloneOptions, start_standalone};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};

/// The gap between the chunks of `/public/trickle`: longer than any idle timeout used here.
const TRICKLE_GAP: Duration = Duration::from_millis(1000);
/// Chunks `/public/trickle` sends.
const TRICKLE_CHUNKS: usize = 4;
/// The gateway gives a timed-out connection up to 1 s to shut down gracefully; this is that
/// plus generous slack for a loaded test machine.
const CLOSE_SLACK: Duration = Duration::from_secs(3);

// === upstream ===

/// A real HTTP server: `/public/trickle` streams `TRICKLE_CHUNKS` chunks `TRICKLE_GAP`
/// apart; anything else answers `hello`.
async fn upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    type B = http_body_util::combinators::BoxBody<Bytes, Infallible>;
                    let resp: Response<B> = match req.uri().path() {
                        "/public/trickle" => {
                            let stream = futures::stream::unfold(0usize, |i| async move {
                                if i == TRICKLE_CHUNKS {
                                    return None;
                                }
                                if i > 0 {
                                    tokio::time::sleep(TRICKLE_GAP).await;
                                }
                                Some((
                                    Ok::<_, Infallible>(Frame::data(Bytes::from(format!(
                                        "chunk {i}\n"
                                    )))),
                                    i + 1,
                                ))
                            });
                            Response::builder()
                                .header("content-type", "text/plain")
                                .body(StreamBody::new(stream).boxed())
                                .unwrap()
                        }
                        _ => Response::new(Full::new(Bytes::from("hello")).boxed()),
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

// === gateway ===

fn manifests(upstream: SocketAddr) -> (String, String) {
    static KEY: std::sync::OnceLock<portcullis_testkit::TestKey> = std::sync::OnceLock::new();
    let key = KEY.get_or_init(|| portcullis_testkit::ec("k1", false));
    let policy = json!({
        "apiVersion": "portcullis.dev/v1alpha1", "kind": "TokenPolicy",
        "metadata": {"name": "default"},
        "spec": {"issuers": [{"issuer": "https://issuer.test", "audiences": ["api"], "algorithms": ["ES256"], "jwks": {"inline": {"keys": [key.jwk]}}}]}
    });
    let route = format!(
        r#"apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {{name: public}}
spec:
  hosts: [localhost]
  policyRef: {{name: default}}
  backend: {{url: "http://{upstream}"}}
  rules:
    - match: {{pathPrefix: /public}}
      auth: none
"#
    );
    (serde_yaml::to_string(&policy).unwrap(), route)
}

struct Gateway {
    running: Running,
    _dir: tempfile::TempDir,
}

/// Test limits: short first-request and idle timeouts; hyper's header read timeout stays
/// long, so what cuts a connection here is the connection watchdog. Two worker threads, as
/// the binary runs on a 2-CPU machine: every bound here must hold across workers (the
/// connection cap is shared by them). The other test files serve on the test's runtime.
fn limits() -> Limits {
    Limits {
        first_request_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_millis(700),
        header_read_timeout: Duration::from_secs(10),
        workers: 2,
        ..Limits::default()
    }
}

impl Gateway {
    async fn start(limits: Limits, tls: Option<(PathBuf, PathBuf)>) -> Gateway {
        let up = upstream().await;
        let dir = tempfile::tempdir().unwrap();
        let (policy, route) = manifests(up);
        std::fs::write(dir.path().join("policy.yaml"), policy).unwrap();
        std::fs::write(dir.path().join("routes.yaml"), route).unwrap();
        let mut opts = StandaloneOptions::new(dir.path().to_owned());
        opts.listen = "127.0.0.1:0".parse().unwrap();
        opts.admin = "127.0.0.1:0".parse().unwrap();
        opts.tls = tls;
        opts.limits = limits;
        let running = start_standalone(opts).await.unwrap();
        assert!(
            running.config.info().errors.is_empty(),
            "{:?}",
            running.config.info().errors
        );
        Gateway { running, _dir: dir }
    }

    fn addr(&self) -> SocketAddr {
        self.running.proxy_addr
    }

    async fn admin_get(&self, path: &str) -> (StatusCode, String) {
        let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let url = format!("http://{}{path}", self.running.admin_addr);
        let resp = timeout(
            Duration::from_secs(5),
            client.request(Request::get(url).body(Empty::new()).unwrap()),
        )
        .await
        .expect("admin port answers")
        .unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// The value of one sample (`name{labels}`) on `/metrics`.
    async fn metric(&self, sample: &str) -> f64 {
        let (_, text) = self.admin_get("/metrics").await;
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{sample} not exported:\n{text}"))
    }

    async fn closed(&self, reason: &str) -> f64 {
        self.metric(&format!(
            "portcullis_connections_closed_total{{reason=\"{reason}\"}}"
        ))
        .await
    }

    /// Waits (bounded) until `portcullis_connections_open` is `n`.
    async fn wait_open(&self, n: f64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let open = self.metric("portcullis_connections_open").await;
            if open == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "portcullis_connections_open stayed {open}, expected {n}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Reads until the server closes the connection (EOF or reset), discarding what it sends;
/// `Err` if it is still open after `wait`.
async fn wait_closed(mut s: TcpStream, wait: Duration) -> Result<(), String> {
    let mut buf = [0u8; 1024];
    timeout(wait, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .map_err(|_| format!("still open after {wait:?}"))
}

/// Opens `n` connections, sends `bytes` on each (nothing if empty), and asserts that the
/// gateway closes every one within `first_request_timeout` plus slack.
async fn assert_all_cut(gw: &Gateway, n: usize, bytes: &'static [u8]) {
    let mut conns = Vec::new();
    for _ in 0..n {
        let mut s = TcpStream::connect(gw.addr()).await.unwrap();
        if !bytes.is_empty() {
            s.write_all(bytes).await.unwrap();
        }
        conns.push(s);
    }
    gw.wait_open(n as f64).await;
    let bound = limits().first_request_timeout + CLOSE_SLACK;
    let waits: Vec<JoinHandle<Result<(), String>>> = conns
        .into_iter()
        .map(|s| tokio::spawn(wait_closed(s, bound)))
        .collect();
    for (i, w) in waits.into_iter().enumerate() {
        if let Err(e) = w.await.unwrap() {
            panic!("connection {i} of {n}: {e}");
        }
    }
    gw.wait_open(0.0).await;
}

/// An HTTP/1.1 client on one TCP connection; the handle finishes when the server closes it.
async fn h1_conn(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    JoinHandle<hyper::Result<()>>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    (send, tokio::spawn(conn))
}

fn get(path: &str) -> Request<Empty<Bytes>> {
    Request::get(path)
        .header("host", "localhost")
        .body(Empty::new())
        .unwrap()
}

// === tests ===

/// (a) Slowloris, nothing sent. The first request must arrive within
/// `first_request_timeout` from accept (hyper's own header read timeout only starts on
/// the first byte, so it never fires for these). RFC 9112 section 9.5 lets a server close
/// a connection it has received nothing on at any time.
#[tokio::test]
async fn silent_connections_are_closed_after_first_request_timeout() {
    let gw = Gateway::start(limits(), None).await;
    assert_all_cut(&gw, 50, b"").await;
    assert_eq!(gw.closed("first_request_timeout").await, 50.0);
    assert_eq!(gw.closed("idle_timeout").await, 0.0);
}

/// (b) Slowloris on HTTP/2: only part of the client connection preface (RFC 9113 section
/// 3.4: `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`, then SETTINGS). Such a connection has no
/// request and never will; it is cut like a silent one.
#[tokio::test]
async fn partial_h2_preface_connections_are_closed_after_first_request_timeout() {
    let gw = Gateway::start(limits(), None).await;
    assert_all_cut(&gw, 50, b"PRI * HTTP/2.0\r\n").await;
    assert_eq!(gw.closed("first_request_timeout").await, 50.0);
}

/// (b, continued) The whole preface and an empty SETTINGS frame (RFC 9113 sections 3.4
/// and 6.5), but never a HEADERS frame: an HTTP/2 connection with no first request.
#[tokio::test]
async fn h2_preface_and_settings_without_headers_are_closed() {
    let gw = Gateway::start(limits(), None).await;
    // Preface, then a SETTINGS frame: length 0, type 0x4, flags 0, stream 0.
    const PREFACE_AND_SETTINGS: &[u8] =
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    assert_all_cut(&gw, 20, PREFACE_AND_SETTINGS).await;
    assert_eq!(gw.closed("first_request_timeout").await, 20.0);
}

/// (a, HTTP/1 variant) A request head that is started and never finished (RFC 9112 section
/// 2.1: the head ends with an empty line) counts as no first request.
#[tokio::test]
async fn partial_http1_head_is_closed_after_first_request_timeout() {
    let gw = Gateway::start(limits(), None).await;
    assert_all_cut(
        &gw,
        20,
        b"GET /public/hello HTTP/1.1\r\nHost: localhost\r\nX-Slow: 1\r\n",
    )
    .await;
    assert_eq!(gw.closed("first_request_timeout").await, 20.0);
}

/// (c) RFC 9112 section 9.3 makes HTTP/1.1 connections persistent, and section 9.5 lets a
/// server close an idle one: after its one request, a keep-alive connection with nothing
/// in flight is closed after `idle_timeout`. A response still streaming is in flight, even
/// with gaps longer than `idle_timeout` between chunks (RFC 9110 section 6.4: the message
/// is not complete until its body is), so it is never cut.
#[tokio::test]
async fn http1_idle_keep_alive_is_closed_but_a_slow_stream_is_not() {
    let gw = Gateway::start(limits(), None).await;
    let idle_bound = limits().idle_timeout + CLOSE_SLACK;

    // Idle after one request: closed.
    let (mut send, conn) = h1_conn(gw.addr()).await;
    let resp = send.send_request(get("/public/hello")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"hello");
    timeout(idle_bound, conn)
        .await
        .expect("idle keep-alive connection was not closed")
        .unwrap()
        .unwrap();
    assert_eq!(gw.closed("idle_timeout").await, 1.0);

    // A stream whose chunks come TRICKLE_GAP apart, longer than the idle timeout (plus the
    // shutdown grace): it arrives whole.
    assert!(TRICKLE_GAP > limits().idle_timeout);
    assert!(
        TRICKLE_GAP * (TRICKLE_CHUNKS as u32 - 1)
            > limits().idle_timeout * 2 + Duration::from_secs(1)
    );
    let (mut send, conn) = h1_conn(gw.addr()).await;
    let resp = send.send_request(get("/public/trickle")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("the stream was cut")
        .to_bytes();
    let expected: String = (0..TRICKLE_CHUNKS)
        .map(|i| format!("chunk {i}\n"))
        .collect();
    assert_eq!(String::from_utf8_lossy(&body), expected);
    // Nothing was cut while it streamed; once it is done the connection idles out.
    assert_eq!(gw.closed("idle_timeout").await, 1.0);
    timeout(idle_bound, conn)
        .await
        .expect("connection was not closed after the stream ended")
        .unwrap()
        .unwrap();
    assert_eq!(gw.closed("idle_timeout").await, 2.0);
    gw.wait_open(0.0).await;
}

/// (c2) The keep-alive idle timeout is `idle_timeout`, not the header read timeout: hyper
/// starts its HTTP/1 header read timer when a connection goes idle after a response, so a
/// shorter `header_read_timeout` used to close every idle connection early (RFC 9112
/// section 9.3: the connection persists until the server decides to close it; that
/// decision is `idle_timeout`).
#[tokio::test]
async fn http1_keep_alive_outlives_the_header_read_timeout() {
    let limits = Limits {
        header_read_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(1500),
        ..limits()
    };
    let gw = Gateway::start(limits.clone(), None).await;
    let (mut send, conn) = h1_conn(gw.addr()).await;
    let conn = tokio::spawn(conn);
    for _ in 0..2 {
        let resp = send.send_request(get("/public/hello")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.into_body().collect().await.unwrap();
        // Idle well past the header read timeout, well within the idle timeout.
        tokio::time::sleep(Duration::from_millis(800)).await;
    }
    let resp = send
        .send_request(get("/public/hello"))
        .await
        .expect("the idle keep-alive connection was closed before idle_timeout");
    assert_eq!(resp.status(), StatusCode::OK);
    resp.into_body().collect().await.unwrap();
    timeout(limits.idle_timeout + CLOSE_SLACK, conn)
        .await
        .expect("idle keep-alive connection was not closed")
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(gw.closed("idle_timeout").await, 1.0);
}

/// (d) With `max_connections` open, the next plain-HTTP connection is answered `503`
/// (RFC 9110 section 15.6.4: temporary overload) with `Retry-After` (section 10.2.3) and
/// `Connection: close` (RFC 9112 section 9.6); the admin port is not counted; once a
/// connection closes, a new one is served.
#[tokio::test]
async fn over_max_connections_gets_503_and_admin_stays_up() {
    let gw = Gateway::start(
        Limits {
            max_connections: 3,
            first_request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            ..Limits::default()
        },
        None,
    )
    .await;

    // Three keep-alive connections, each served once and held open.
    let mut held = Vec::new();
    for _ in 0..3 {
        let (mut send, conn) = h1_conn(gw.addr()).await;
        let resp = send.send_request(get("/public/hello")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.into_body().collect().await.unwrap();
        held.push((send, conn));
    }
    gw.wait_open(3.0).await;

    // The fourth.
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(b"GET /public/hello HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("the refused connection was not closed")
        .unwrap();
    let answer = String::from_utf8_lossy(&out).to_ascii_lowercase();
    assert!(
        answer.starts_with("http/1.1 503 service unavailable\r\n"),
        "{answer}"
    );
    assert!(answer.contains("\r\nretry-after: 1\r\n"), "{answer}");
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(
        head.contains(&format!("\r\ncontent-length: {}", body.len())),
        "{answer}"
    );
    assert!(gw.closed("limit").await >= 1.0);

    // The admin port is reachable while the proxy port is full.
    assert_eq!(gw.admin_get("/healthz").await.0, StatusCode::OK);
    assert_eq!(gw.metric("portcullis_connections_open").await, 3.0);

    // Close one: a new connection is served (bounded wait for the gateway to notice).
    let (send, conn) = held.pop().unwrap();
    drop(send);
    let _ = timeout(Duration::from_secs(5), conn).await;
    gw.wait_open(2.0).await;
    let (mut send, _conn) = h1_conn(gw.addr()).await;
    let resp = send.send_request(get("/public/hello")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

/// (d, TLS) Over the limit a TLS connection is closed without a word: an HTTP answer
/// before the handshake would be garbage to a TLS client (RFC 8446 section 5).
#[tokio::test]
async fn over_max_connections_tls_is_closed() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.path().join("tls.key"), c.signing_key.serialize_pem()).unwrap();
    std::fs::write(dir.path().join("tls.crt"), c.cert.pem()).unwrap();
    let gw = Gateway::start(
        Limits {
            max_connections: 1,
            ..limits()
        },
        Some((dir.path().join("tls.crt"), dir.path().join("tls.key"))),
    )
    .await;
    // One connection in its TLS handshake holds the only slot.
    let _first = TcpStream::connect(gw.addr()).await.unwrap();
    gw.wait_open(1.0).await;
    let mut second = TcpStream::connect(gw.addr()).await.unwrap();
    let mut out = Vec::new();
    let _ = timeout(Duration::from_secs(5), second.read_to_end(&mut out))
        .await
        .expect("the refused TLS connection was not closed");
    assert!(out.is_empty(), "sent {out:?}");
    assert!(gw.closed("limit").await >= 1.0);
}

/// (e) A healthy h2c client (RFC 9113 section 3.3, prior knowledge): requests spaced well
/// inside the idle timeout and a stream longer than it all succeed on one connection, the
/// server's keep-alive PINGs (section 6.7) are answered and cut nothing; once idle, the
/// connection is closed with GOAWAY (section 6.8).
#[tokio::test]
async fn healthy_h2c_client_keeps_working() {
    let idle = Duration::from_millis(1500);
    let gw = Gateway::start(
        Limits {
            idle_timeout: idle,
            http2_keep_alive_interval: Duration::from_millis(200),
            http2_keep_alive_timeout: Duration::from_secs(2),
            ..limits()
        },
        None,
    )
    .await;
    let tcp = TcpStream::connect(gw.addr()).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let url = format!("http://localhost:{}", gw.addr().port());
    let req = |path: &str| {
        Request::get(format!("{url}{path}"))
            .body(Empty::<Bytes>::new())
            .unwrap()
    };

    // Longer in all than the first-request and idle timeouts, each gap far inside idle.
    for _ in 0..10 {
        let resp = send.send_request(req("/public/hello")).await.unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"hello");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A stream longer than the idle timeout, with gaps longer than the PING interval.
    let resp = send.send_request(req("/public/trickle")).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let expected: String = (0..TRICKLE_CHUNKS)
        .map(|i| format!("chunk {i}\n"))
        .collect();
    assert_eq!(String::from_utf8_lossy(&body), expected);
    assert!(
        !conn.is_finished(),
        "the h2 connection was closed while in use"
    );
    assert_eq!(gw.closed("idle_timeout").await, 0.0);
    assert_eq!(gw.closed("first_request_timeout").await, 0.0);

    // Now idle: closed.
    timeout(idle + CLOSE_SLACK, conn)
        .await
        .expect("idle h2 connection was not closed")
        .unwrap()
        .unwrap();
    assert_eq!(gw.closed("idle_timeout").await, 1.0);
}

/// The names of this process's threads (`/proc/self/task/*/comm`, at most 15 bytes each).
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_owned())
        .collect()
}

/// Worker threads (`Limits::workers`): connections are served by threads of the gateway's
/// own (named `portcullis-worker-N`), every one of many concurrent keep-alive connections
/// gets its answers, the open-connection count spans the workers, and on shutdown the port
/// closes at once while a response in flight is sent in full (RFC 9112 section 9.6: a
/// server closes only after the response it is sending).
#[tokio::test]
async fn workers_serve_every_connection_and_drain_on_shutdown() {
    let gw = Gateway::start(
        Limits {
            idle_timeout: Duration::from_secs(30),
            ..limits()
        },
        None,
    )
    .await;
    // A thread names itself once it runs: wait (bounded) for both to have started.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let workers = thread_names()
            .into_iter()
            .filter(|n| n.starts_with("portcullis-work"))
            .count();
        if workers >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no worker threads: {:?}",
            thread_names()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let mut conns = Vec::new();
    for _ in 0..16 {
        conns.push(h1_conn(gw.addr()).await);
    }
    gw.wait_open(16.0).await;
    for round in 0..5 {
        for (i, (send, _)) in conns.iter_mut().enumerate() {
            send.ready().await.unwrap();
            let resp = send.send_request(get("/public/hello")).await.unwrap();
            assert_eq!(
                resp.status(),
                StatusCode::OK,
                "connection {i}, round {round}"
            );
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"hello");
        }
    }
    drop(conns);
    gw.wait_open(0.0).await;

    // A stream in flight when the shutdown comes.
    let (mut send, conn) = h1_conn(gw.addr()).await;
    let resp = send.send_request(get("/public/trickle")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = tokio::spawn(async move { resp.into_body().collect().await.map(|b| b.to_bytes()) });
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw.running.shutdown();

    // The port closes at once: a new connection is refused, or closed unanswered.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpStream::connect(gw.addr()).await {
            Err(_) => break,
            Ok(s) => {
                if wait_closed(s, Duration::from_millis(500)).await.is_ok() {
                    break;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "the proxy port still accepts after shutdown"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = timeout(TRICKLE_GAP * TRICKLE_CHUNKS as u32 + CLOSE_SLACK, body)
        .await
        .expect("the stream in flight did not finish")
        .unwrap()
        .unwrap();
    let expected: String = (0..TRICKLE_CHUNKS)
        .map(|i| format!("chunk {i}\n"))
        .collect();
    assert_eq!(String::from_utf8_lossy(&body), expected);
    // And the connection is closed after it.
    timeout(CLOSE_SLACK, conn)
        .await
        .expect("the connection stayed open after its response")
        .unwrap()
        .unwrap();
}
