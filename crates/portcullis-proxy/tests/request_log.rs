//! The request record (metrics and access log) over real sockets: written exactly once,
//! when the response is complete, when a streamed body ends or is dropped, and when the
//! client hangs up before the response (499); per-route connect timeouts; the access
//! log's fields.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use serde_json::Value;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc};

/// Requests recorded, all codes and routes.
fn requests_total(gw: &Gateway) -> f64 {
    gw.metrics()
        .lines()
        .filter(|l| l.starts_with("portcullis_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn inflight(gw: &Gateway) -> f64 {
    gw.metric("portcullis_inflight_requests")
}

/// An upstream whose body is what the test sends on the returned channel (closing it
/// ends the body).
async fn streaming_upstream() -> (std::net::SocketAddr, mpsc::Sender<Bytes>) {
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    let slot = Arc::new(Mutex::new(Some(rx)));
    let addr = upstream(move |_req| {
        let rx = slot.lock().unwrap().take();
        async move {
            let Some(rx) = rx else {
                return Response::new(Full::new(Bytes::from("once only")).boxed());
            };
            let chunks = futures::stream::unfold(rx, |mut rx| async move {
                let chunk = rx.recv().await?;
                Some((Ok(Frame::data(chunk)), rx))
            });
            Response::builder()
                .header("content-type", "text/plain")
                .body(StreamBody::new(chunks).boxed())
                .unwrap()
        }
    })
    .await;
    (addr, tx)
}

async fn gateway_to(up: std::net::SocketAddr, extra: &str) -> Gateway {
    Gateway::start(
        &[
            ("policy.yaml", policy()),
            ("route.yaml", route("r", &format!("http://{up}"), extra)),
        ],
        |_| {},
    )
    .await
}

fn raw_request(request_id: &str) -> String {
    format!(
        "GET /x HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nX-Request-Id: {request_id}\r\n\r\n",
        token()
    )
}

/// A client that hangs up while the upstream has not answered yet: the handler is
/// dropped, and its guard records the request once, as 499 `client_closed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gone_before_the_response_is_recorded_once_as_499() {
    capture_access_log();
    let (arrived_tx, mut arrived) = mpsc::channel::<()>(1);
    let gate = Arc::new(Notify::new());
    let up = {
        let gate = gate.clone();
        upstream(move |_req| {
            let arrived = arrived_tx.clone();
            let gate = gate.clone();
            async move {
                let _ = arrived.send(()).await;
                gate.notified().await;
                Response::new(Full::new(Bytes::from("late")).boxed())
            }
        })
        .await
    };
    let gw = gateway_to(up, "  timeouts: {request: 60s}").await;

    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(raw_request("gone-before-headers").as_bytes())
        .await
        .unwrap();
    tokio::time::timeout(EVENTUALLY, arrived.recv())
        .await
        .expect("the upstream got the request");
    assert_eq!(inflight(&gw), 1.0);
    assert!(access_log("gone-before-headers").is_empty());
    drop(s);

    gw.eventually("in flight back to 0", |g| inflight(g) == 0.0)
        .await;
    let lines = access_log_eventually("gone-before-headers").await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["status"], 499);
    assert_eq!(lines[0]["reason"], "client_closed");
    assert_eq!(lines[0]["error"], "client");
    assert_eq!(lines[0]["route"], "default/r");
    assert_eq!(
        gw.metric(r#"portcullis_requests_total{code="499",method="GET",route="default/r"}"#),
        1.0
    );
    assert_eq!(requests_total(&gw), 1.0);
    assert_eq!(
        gw.metric(r#"portcullis_request_errors_total{reason="client_closed",source="client"}"#),
        1.0
    );

    // The upstream answering late changes nothing: the request was recorded once.
    gate.notify_waiters();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(access_log("gone-before-headers").len(), 1);
    assert_eq!(requests_total(&gw), 1.0);
    assert_eq!(inflight(&gw), 0.0);
}

/// A streamed body is recorded when it ends, with its byte count; while it streams, the
/// request is in flight and not yet recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_body_is_recorded_when_it_ends() {
    capture_access_log();
    let (up, chunks) = streaming_upstream().await;
    let gw = gateway_to(up, "").await;

    let resp = client()
        .request(
            Request::get(format!("http://{}/x", gw.addr()))
                .header("host", "localhost")
                .header("authorization", format!("Bearer {}", token()))
                .header("x-request-id", "streamed-body")
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    chunks.send(Bytes::from("first\n")).await.unwrap();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "first\n");

    // Mid-stream: counted in flight, not yet recorded.
    assert_eq!(inflight(&gw), 1.0);
    assert_eq!(requests_total(&gw), 0.0);
    assert!(access_log("streamed-body").is_empty());

    chunks.send(Bytes::from("second\n")).await.unwrap();
    chunks.send(Bytes::from("third\n")).await.unwrap();
    drop(chunks);
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "second\nthird\n");

    let lines = access_log_eventually("streamed-body").await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert_eq!(line["status"], 200);
    assert_eq!(line["bytes"], 19);
    assert!(line["body_us"].is_u64(), "{line}");
    assert_eq!(line["reason"], "ok");
    assert!(line.get("error").is_none(), "{line}");
    gw.eventually("in flight back to 0", |g| inflight(g) == 0.0)
        .await;
    assert_eq!(
        gw.metric(r#"portcullis_requests_total{code="200",method="GET",route="default/r"}"#),
        1.0
    );
    assert_eq!(
        gw.metric(r#"portcullis_response_body_bytes_sum{route="default/r"}"#),
        19.0
    );
}

/// A client that drops a streamed response midway: recorded once, with what was sent,
/// and no longer in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_dropping_a_stream_midway_is_recorded_once() {
    capture_access_log();
    let (up, chunks) = streaming_upstream().await;
    let gw = gateway_to(up, "").await;

    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(raw_request("dropped-midway").as_bytes())
        .await
        .unwrap();
    chunks.send(Bytes::from("first\n")).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("first") {
        let n = tokio::time::timeout(EVENTUALLY, s.read(&mut buf))
            .await
            .expect("the first chunk arrives")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert_eq!(inflight(&gw), 1.0);
    drop(s);

    gw.eventually("in flight back to 0", |g| inflight(g) == 0.0)
        .await;
    let lines = access_log_eventually("dropped-midway").await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["status"], 200);
    assert_eq!(lines[0]["reason"], "client_closed");
    assert_eq!(lines[0]["bytes"], 6);
    assert_eq!(requests_total(&gw), 1.0);
    // The upstream going on changes nothing.
    let _ = chunks.send(Bytes::from("second\n")).await;
    drop(chunks);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(access_log("dropped-midway").len(), 1);
    assert_eq!(requests_total(&gw), 1.0);
}

/// A listener whose accept queue is full: connects to it hang (the kernel drops the SYNs)
/// until the caller gives up. Returns its address and what keeps it full.
async fn blackhole() -> (
    std::net::SocketAddr,
    Vec<TcpStream>,
    tokio::net::TcpListener,
) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..16 {
        match tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => fillers.push(s),
            Ok(Err(e)) => panic!("connect to the blackhole: {e}"),
            // The queue is full: the next connect hangs too.
            Err(_) => return (addr, fillers, listener),
        }
    }
    panic!("the accept queue never filled up");
}

/// The route's `timeouts.connect` bounds the connect, not the global default: 504 with
/// reason `connect_timeout`, long before the 30 s request timeout or the 120 s global
/// connect timeout would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_connect_timeout_applies() {
    capture_access_log();
    let (hole, _fillers, _listener) = blackhole().await;
    let gw = Gateway::start(
        &[
            ("policy.yaml", policy()),
            (
                "route.yaml",
                route(
                    "r",
                    &format!("http://{hole}"),
                    "  timeouts: {connect: 200ms, request: 30s}",
                ),
            ),
        ],
        |o| o.limits.connect_timeout = Duration::from_secs(120),
    )
    .await;
    let resp = client()
        .request(
            Request::get(format!("http://{}/x", gw.addr()))
                .header("host", "localhost")
                .header("authorization", format!("Bearer {}", token()))
                .header("x-request-id", "connect-timeout")
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    let lines = access_log_eventually("connect-timeout").await;
    assert_eq!(lines[0]["reason"], "connect_timeout", "{lines:?}");
    assert_eq!(lines[0]["error"], "upstream");
    assert_eq!(
        gw.metric(r#"portcullis_request_errors_total{reason="connect_timeout",source="upstream"}"#),
        1.0
    );
    assert_eq!(
        gw.metric(r#"portcullis_upstream_errors_total{kind="timeout",route="default/r"}"#),
        1.0
    );
}

/// Access-log fields are plain values (no Rust `Debug` forms such as `Some(false)`), and
/// optional ones are absent rather than `None`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_fields_are_plain_values() {
    capture_access_log();
    let up = upstream(|_req| async { Response::new(Full::new(Bytes::from("ok")).boxed()) }).await;
    let gw = gateway_to(up, "").await;
    let t = token();
    for (id, auth) in [
        ("fields-first", Some(&t)),
        ("fields-cached", Some(&t)),
        ("fields-no-token", None),
    ] {
        let mut b = Request::get(format!("http://{}/x", gw.addr()))
            .header("host", "localhost")
            .header("x-request-id", id);
        if let Some(t) = auth {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        let resp = client()
            .request(b.body(Full::default()).unwrap())
            .await
            .unwrap();
        resp.into_body().collect().await.unwrap();
    }
    let first = &access_log_eventually("fields-first").await[0];
    let cached = &access_log_eventually("fields-cached").await[0];
    let anonymous = &access_log_eventually("fields-no-token").await[0];
    for (field, value) in [
        ("client", Value::from("127.0.0.1")),
        ("method", "GET".into()),
        ("path", "/x".into()),
        ("route", "default/r".into()),
        ("status", 200.into()),
        ("decision", "allow".into()),
        ("reason", "ok".into()),
        ("cache_hit", false.into()),
        ("bytes", 2.into()),
    ] {
        assert_eq!(first[field], value, "{field}: {first}");
    }
    assert_eq!(cached["cache_hit"], true, "{cached}");
    assert!(
        first["token"].as_str().unwrap().starts_with("sha256:"),
        "{first}"
    );
    assert!(first["duration_us"].is_u64() && first["upstream_us"].is_u64());
    assert_eq!(anonymous["status"], 401);
    assert_eq!(anonymous["token"], "-");
    assert!(anonymous.get("cache_hit").is_none(), "{anonymous}");
    assert!(anonymous.get("upstream_us").is_none(), "{anonymous}");
    for line in access_log_raw() {
        assert!(
            !line.contains("Some(") && !line.contains("None"),
            "a Debug form in {line}"
        );
    }
}
