//! `portcullis echo`: a tiny backend to put behind Portcullis when trying it out or
//! testing it. HTTP/1.1 and h2c (HTTP/2 with prior knowledge) on one port.
//!
//! | path              | answer                                                        |
//! |-------------------|---------------------------------------------------------------|
//! | `/sse`, `/events` | `text/event-stream`: `data: event N` for N in 0..5, 200 ms apart |
//! | `/slow?ms=N`      | waits N ms (at most 10 minutes), then echoes                   |
//! | `/status/NNN`     | echoes with status NNN (200-599)                               |
//! | anything else     | 200 and `{"method","path","query","headers","version","bodyBytes"}` |
//!
//! Headers are echoed as a map of lowercase name to value, repeated headers joined with
//! `", "`, so a test can see exactly what the proxy forwarded (and what it stripped).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// Events sent on `/sse`.
const SSE_EVENTS: u32 = 5;
/// Pause between two events.
const SSE_INTERVAL: Duration = Duration::from_millis(200);
/// Longest wait `/slow` honours.
const MAX_SLOW: Duration = Duration::from_secs(600);

/// Arguments of `portcullis echo`.
#[derive(clap::Args, Debug)]
pub struct EchoArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub listen: SocketAddr,
}

/// Serves until Ctrl-C.
pub async fn run(args: EchoArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    eprintln!("echo listening on {}", listener.local_addr()?);
    tokio::select! {
        r = serve(listener) => r,
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C"),
    }
}

/// Accepts connections on `listener` forever, each served as HTTP/1.1 or h2c.
pub async fn serve(listener: TcpListener) -> anyhow::Result<()> {
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: pause rather than spin or die.
                eprintln!("echo: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(handle);
            // A client going away mid-request is no news for an echo server.
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

type EchoBody = BoxBody<Bytes, Infallible>;

async fn handle(req: Request<Incoming>) -> Result<Response<EchoBody>, Infallible> {
    let path = req.uri().path();
    if path == "/sse" || path == "/events" || path.starts_with("/events/") {
        let mut resp = Response::new(
            SseBody {
                next: 0,
                pause: None,
            }
            .boxed(),
        );
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        return Ok(resp);
    }

    let mut status = StatusCode::OK;
    if let Some(code) = path.strip_prefix("/status/") {
        match code
            .parse::<u16>()
            .ok()
            .filter(|c| (200..=599).contains(c))
            .and_then(|c| StatusCode::from_u16(c).ok())
        {
            Some(s) => status = s,
            None => {
                let mut resp = Response::new(
                    Full::from("/status/NNN takes a status from 200 to 599\n").boxed(),
                );
                *resp.status_mut() = StatusCode::BAD_REQUEST;
                return Ok(resp);
            }
        }
    }
    if path == "/slow" {
        let ms = req
            .uri()
            .query()
            .into_iter()
            .flat_map(|q| q.split('&'))
            .find_map(|kv| kv.strip_prefix("ms="))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms).min(MAX_SLOW)).await;
    }

    let (parts, mut body) = req.into_parts();
    let mut body_bytes = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        body_bytes += frame.data_ref().map_or(0, Bytes::len);
    }
    let mut headers: BTreeMap<&str, String> = BTreeMap::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        headers
            .entry(name.as_str())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    let echo = serde_json::json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "version": format!("{:?}", parts.version),
        "bodyBytes": body_bytes,
    });
    let mut resp = if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        Response::new(Empty::new().boxed())
    } else {
        let mut json = serde_json::to_vec(&echo).unwrap_or_default();
        json.push(b'\n');
        let mut resp = Response::new(Full::from(json).boxed());
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        resp
    };
    *resp.status_mut() = status;
    Ok(resp)
}

/// `data: event N\n\n` for N in 0..SSE_EVENTS, the first at once, then one per
/// `SSE_INTERVAL`, each its own frame so a proxy that buffers shows up.
struct SseBody {
    next: u32,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.next >= SSE_EVENTS {
            return Poll::Ready(None);
        }
        if let Some(pause) = self.pause.as_mut() {
            ready!(pause.as_mut().poll(cx));
        }
        let n = self.next;
        self.next += 1;
        self.pause = Some(Box::pin(tokio::time::sleep(SSE_INTERVAL)));
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(format!(
            "data: event {n}\n\n"
        ))))))
    }

    fn is_end_stream(&self) -> bool {
        self.next >= SSE_EVENTS
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    async fn start() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener));
        addr
    }

    async fn http1(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        send
    }

    fn get(uri: &str) -> Request<Full<Bytes>> {
        Request::get(uri)
            .header("host", "localhost")
            .body(Full::default())
            .unwrap()
    }

    async fn json(resp: Response<Incoming>) -> serde_json::Value {
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&body).unwrap()
    }

    #[tokio::test]
    async fn echoes_method_path_query_and_headers() {
        let addr = start().await;
        let mut send = http1(addr).await;
        let req = Request::post("/orders/1?x=1&y=2")
            .header("host", "localhost")
            .header("x-user", "alice")
            .header("accept", "a")
            .header("accept", "b")
            .body(Full::from("hello"))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/json");
        let v = json(resp).await;
        assert_eq!(v["method"], "POST");
        assert_eq!(v["path"], "/orders/1");
        assert_eq!(v["query"], "x=1&y=2");
        assert_eq!(v["headers"]["x-user"], "alice");
        assert_eq!(v["headers"]["accept"], "a, b");
        assert_eq!(v["version"], "HTTP/1.1");
        assert_eq!(v["bodyBytes"], 5);

        // Same connection: keep-alive works, and no query is null.
        let v = json(send.send_request(get("/")).await.unwrap()).await;
        assert_eq!(v["query"], serde_json::Value::Null);
    }

    #[tokio::test]
    async fn status_and_slow() {
        let addr = start().await;
        let mut send = http1(addr).await;
        let resp = send.send_request(get("/status/418")).await.unwrap();
        assert_eq!(resp.status(), 418);
        assert_eq!(json(resp).await["path"], "/status/418");
        let resp = send.send_request(get("/status/204")).await.unwrap();
        assert_eq!(resp.status(), 204);
        resp.into_body().collect().await.unwrap();
        let resp = send.send_request(get("/status/99")).await.unwrap();
        assert_eq!(resp.status(), 400);
        resp.into_body().collect().await.unwrap();

        let start = Instant::now();
        let resp = send.send_request(get("/slow?ms=150")).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(start.elapsed() >= Duration::from_millis(150));
        assert_eq!(json(resp).await["query"], "ms=150");
    }

    #[tokio::test]
    async fn sse_streams_events_as_they_come() {
        let addr = start().await;
        let mut send = http1(addr).await;
        let start = Instant::now();
        let resp = send.send_request(get("/sse")).await.unwrap();
        assert_eq!(resp.headers()[CONTENT_TYPE], "text/event-stream");
        let mut body = resp.into_body();
        let mut events = Vec::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                events.push((start.elapsed(), String::from_utf8(data.to_vec()).unwrap()));
            }
        }
        let text: String = events.iter().map(|(_, s)| s.as_str()).collect();
        let want: String = (0..5).map(|n| format!("data: event {n}\n\n")).collect();
        assert_eq!(text, want);
        // Streamed, not buffered: the last event comes about 800 ms after the first.
        let spread = events.last().unwrap().0 - events[0].0;
        assert!(spread >= Duration::from_millis(600), "{events:?}");
    }

    #[tokio::test]
    async fn speaks_h2c() {
        let addr = start().await;
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = Request::get("http://localhost/h2?z=9")
            .body(Full::<Bytes>::default())
            .unwrap();
        let v = json(send.send_request(req).await.unwrap()).await;
        assert_eq!(v["version"], "HTTP/2.0");
        assert_eq!(v["path"], "/h2");
        assert_eq!(v["query"], "z=9");
    }
}
