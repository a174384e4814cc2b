//! Body filters over real sockets: a JSON request rewritten before the upstream sees it
//! (with its new length), refused when too large or not JSON (the upstream never called),
//! and an SSE response watched event by event without holding any chunk back.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use portcullis_policy::RouteInfo;
use portcullis_proxy::pipeline::{
    BodyFilters, BodyRejection, JsonVerdict, RequestBodyFilter, ResponseBodyFilter, SseEvent,
};
use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

const LIMIT: usize = 256;

/// Filters on route `default/r` only.
struct Filters {
    json: RequestBodyFilter,
    sse: ResponseBodyFilter,
}

impl BodyFilters for Filters {
    fn request_filter(&self, route: &RouteInfo) -> Option<&RequestBodyFilter> {
        (&*route.id == "default/r").then_some(&self.json)
    }

    fn response_filter(&self, route: &RouteInfo) -> Option<&ResponseBodyFilter> {
        (&*route.id == "default/r").then_some(&self.sse)
    }
}

/// The JSON check: `model` becomes `small`; `forbidden` is refused; anything else passes.
fn filters(events: mpsc::UnboundedSender<SseEvent>) -> Arc<Filters> {
    Arc::new(Filters {
        json: RequestBodyFilter::new(LIMIT, |v: &mut Value| {
            if v.get("forbidden").is_some() {
                return Err(BodyRejection::new(StatusCode::FORBIDDEN, "forbidden field"));
            }
            match v.get_mut("model") {
                Some(m) => {
                    *m = json!("small");
                    Ok(JsonVerdict::Rewritten)
                }
                None => Ok(JsonVerdict::Unchanged),
            }
        }),
        sse: ResponseBodyFilter::new(1024, move || {
            let events = events.clone();
            Box::new(move |e: SseEvent| {
                let _ = events.send(e);
            })
        }),
    })
}

/// An upstream that echoes the body and its `content-length` as JSON, counting calls; on
/// `/events` its body is what the test sends on `sse` (an event stream).
async fn echo_upstream(calls: Arc<AtomicUsize>, sse: mpsc::Receiver<Bytes>) -> SocketAddr {
    let sse = Arc::new(Mutex::new(Some(sse)));
    upstream(move |req: Request<hyper::body::Incoming>| {
        let calls = calls.clone();
        let sse = sse.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            if req.uri().path() == "/events" {
                let rx = sse.lock().unwrap().take().expect("one event stream");
                let chunks = futures::stream::unfold(rx, |mut rx| async move {
                    let chunk = rx.recv().await?;
                    Some((Ok(Frame::data(chunk)), rx))
                });
                return Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(StreamBody::new(chunks).boxed())
                    .unwrap();
            }
            let length = req
                .headers()
                .get("content-length")
                .map(|v| v.to_str().unwrap().to_owned());
            let chunked = req.headers().contains_key("transfer-encoding");
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let echo = json!({
                "content_length": length,
                "chunked": chunked,
                "body": String::from_utf8_lossy(&body),
            });
            Response::new(Full::new(Bytes::from(echo.to_string())).boxed())
        }
    })
    .await
}

struct Setup {
    gw: Gateway,
    calls: Arc<AtomicUsize>,
    sse: mpsc::Sender<Bytes>,
    events: mpsc::UnboundedReceiver<SseEvent>,
}

async fn setup() -> Setup {
    let calls = Arc::new(AtomicUsize::new(0));
    let (sse, sse_rx) = mpsc::channel(8);
    let up = echo_upstream(calls.clone(), sse_rx).await;
    let (events_tx, events) = mpsc::unbounded_channel();
    let filters = filters(events_tx);
    let gw = Gateway::start(
        &[
            ("policy.yaml", policy()),
            ("route.yaml", route("r", &format!("http://{up}"), "")),
        ],
        move |o| o.body_filters = Some(filters),
    )
    .await;
    Setup {
        gw,
        calls,
        sse,
        events,
    }
}

async fn post(gw: &Gateway, content_type: &str, body: &str) -> (StatusCode, String) {
    let resp = client()
        .request(
            Request::post(format!("http://{}/chat", gw.addr()))
                .header("host", "localhost")
                .header("authorization", format!("Bearer {}", token()))
                .header("content-type", content_type)
                .body(Full::new(Bytes::from(body.to_owned())))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Sends a chunked request on a raw connection; returns the status line and body.
async fn post_chunked(gw: &Gateway, chunks: &[&str]) -> String {
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    let mut req = format!(
        "POST /chat HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        token()
    );
    for c in chunks {
        req.push_str(&format!("{:x}\r\n{c}\r\n", c.len()));
    }
    req.push_str("0\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(EVENTUALLY, s.read_to_end(&mut out))
        .await
        .expect("answered")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_body_is_rewritten_with_its_new_length() {
    let s = setup().await;
    let (status, echoed) = post(
        &s.gw,
        "application/json",
        r#"{"model": "a-very-large-model", "messages": ["hi"]}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{echoed}");
    let echoed: Value = serde_json::from_str(&echoed).unwrap();
    let body = echoed["body"].as_str().unwrap();
    let seen: Value = serde_json::from_str(body).unwrap();
    assert_eq!(seen, json!({"model": "small", "messages": ["hi"]}));
    assert_eq!(echoed["content_length"], body.len().to_string());
    assert_eq!(echoed["chunked"], false);

    // A chunked body (no declared length) arrives whole, with its length.
    let resp = post_chunked(&s.gw, &[r#"{"model":"#, r#" "x"}"#]).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let echoed: Value = serde_json::from_str(resp.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(echoed["body"], r#"{"model":"small"}"#);
    assert_eq!(echoed["content_length"], "17");
    assert_eq!(echoed["chunked"], false);

    // Unchanged bodies go as they were, byte for byte; other media types are not read.
    let (_, echoed) = post(&s.gw, "application/json", "{ \"keep\" : 1 }").await;
    assert_eq!(
        serde_json::from_str::<Value>(&echoed).unwrap()["body"],
        "{ \"keep\" : 1 }"
    );
    let (_, echoed) = post(&s.gw, "text/plain", "{\"model\": \"big\"} not json").await;
    assert_eq!(
        serde_json::from_str::<Value>(&echoed).unwrap()["body"],
        "{\"model\": \"big\"} not json"
    );
    assert_eq!(s.calls.load(Ordering::SeqCst), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_bodies_never_reach_the_upstream() {
    let s = setup().await;
    let big = format!(r#"{{"model": "{}"}}"#, "x".repeat(LIMIT));
    // Declared too large: refused before reading.
    let (status, _) = post(&s.gw, "application/json", &big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // Chunked, found too large while reading.
    let half = &big[..big.len() / 2];
    let resp = post_chunked(&s.gw, &[half, &big[half.len()..]]).await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    // Not JSON: 400 saying so.
    let (status, text) = post(&s.gw, "application/json", r#"{"model": "#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(text.starts_with("request body is not valid JSON"), "{text}");
    // The check refuses.
    let (status, text) = post(&s.gw, "application/json", r#"{"forbidden": true}"#).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(text, "forbidden field\n");
    assert_eq!(s.calls.load(Ordering::SeqCst), 0, "the upstream was called");
    for (reason, n) in [
        ("body_too_large", 2.0),
        ("invalid_json", 1.0),
        ("body_rejected", 1.0),
    ] {
        assert_eq!(
            s.gw.metric(&format!(
                r#"portcullis_request_errors_total{{reason="{reason}",source="client"}}"#
            )),
            n,
            "{reason}"
        );
    }
}

/// Each event reaches the observer as it passes, and the client has the first before the
/// upstream sends the second: nothing is held back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_events_are_watched_as_they_stream() {
    let mut s = setup().await;
    let resp = client()
        .request(
            Request::get(format!("http://{}/events", s.gw.addr()))
                .header("host", "localhost")
                .header("authorization", format!("Bearer {}", token()))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut next_data = async || {
        let frame = tokio::time::timeout(EVENTUALLY, body.frame())
            .await
            .expect("a chunk arrives")
            .unwrap()
            .unwrap();
        frame.into_data().unwrap()
    };

    s.sse
        .send(Bytes::from("id: 1\ndata: one\n\n"))
        .await
        .unwrap();
    assert_eq!(next_data().await, "id: 1\ndata: one\n\n");
    let first = tokio::time::timeout(EVENTUALLY, s.events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((first.data.as_str(), first.id.as_str()), ("one", "1"));
    assert!(s.events.try_recv().is_err());

    // The second event, split across chunks, each forwarded as it comes.
    s.sse
        .send(Bytes::from("event: done\ndata: t"))
        .await
        .unwrap();
    assert_eq!(next_data().await, "event: done\ndata: t");
    assert!(
        s.events.try_recv().is_err(),
        "an incomplete event was dispatched"
    );
    s.sse.send(Bytes::from("wo\r\n\r\n")).await.unwrap();
    assert_eq!(next_data().await, "wo\r\n\r\n");
    let second = tokio::time::timeout(EVENTUALLY, s.events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            second.event.as_str(),
            second.data.as_str(),
            second.id.as_str()
        ),
        ("done", "two", "1")
    );
    drop(s.sse);
    assert!(body.frame().await.is_none());
}
