//! Body filters: the one place the proxy reads or rewrites bodies, bounded in size and
//! time, and only on the routes a [`BodyFilters`] picks.
//!
//! ```text
//! request  (content-type JSON) ──▶ RequestBodyFilter: read ≤ max_bytes (413), parse (400),
//!                                  check/rewrite the Value (JsonCheck), new content-length
//! response (text/event-stream) ──▶ ResponseBodyFilter: SseBody forwards every chunk as it
//!                                  comes and hands each parsed event to an SseObserver
//! ```
//!
//! The SSE side never holds a chunk back: [`SseBody`] is an `http_body::Body` polled by
//! hyper, so the client's back-pressure reaches the upstream as before.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http::header::{self, HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use portcullis_policy::RouteInfo;

use super::error::ProxyError;
use super::sse::{SseObserver, SseParser};

/// Chooses the body filters of a route. Both default to none.
pub trait BodyFilters: Send + Sync {
    /// The filter for JSON request bodies on `route`, if any.
    fn request_filter(&self, route: &RouteInfo) -> Option<&RequestBodyFilter> {
        let _ = route;
        None
    }

    /// The filter for `text/event-stream` responses on `route`, if any.
    fn response_filter(&self, route: &RouteInfo) -> Option<&ResponseBodyFilter> {
        let _ = route;
        None
    }
}

impl std::fmt::Debug for dyn BodyFilters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BodyFilters")
    }
}

/// A body filter's refusal: the status and the text the client gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyRejection {
    /// The status, normally a 4xx.
    pub status: StatusCode,
    /// Said to the client as `text/plain`; never include secrets.
    pub message: String,
}

impl BodyRejection {
    /// A refusal with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

/// What a [`JsonCheck`] did to the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonVerdict {
    /// Left as it was: the client's bytes go upstream unchanged.
    Unchanged,
    /// Changed: the value is serialized again and sent with its new length.
    Rewritten,
}

/// Looks at (and may change) a JSON request body before it goes upstream.
pub type JsonCheck =
    dyn Fn(&mut serde_json::Value) -> Result<JsonVerdict, BodyRejection> + Send + Sync;

/// Reads a JSON request body (`application/json` or `*/*+json`, RFC 6839) in full, up to
/// a size limit, and hands it to a [`JsonCheck`].
#[derive(Clone)]
pub struct RequestBodyFilter {
    max_bytes: usize,
    check: Arc<JsonCheck>,
}

impl std::fmt::Debug for RequestBodyFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestBodyFilter")
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

impl RequestBodyFilter {
    /// Reads bodies of at most `max_bytes` (more is answered 413) and runs `check` on each.
    pub fn new(
        max_bytes: usize,
        check: impl Fn(&mut serde_json::Value) -> Result<JsonVerdict, BodyRejection>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        Self {
            max_bytes,
            check: Arc::new(check),
        }
    }

    /// The size limit.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Whether a request with these headers has a JSON body to filter.
    pub fn applies_to(headers: &HeaderMap) -> bool {
        let Some(media) = media_type(headers) else {
            return false;
        };
        media.eq_ignore_ascii_case("application/json")
            || (media.len() > "application/+json".len()
                && media[.."application/".len()].eq_ignore_ascii_case("application/")
                && media[media.len() - "+json".len()..].eq_ignore_ascii_case("+json"))
    }

    /// Parses and checks a body already read: the bytes to forward. An empty body passes
    /// as it is (nothing to parse).
    pub fn filter(&self, body: Bytes) -> Result<Bytes, ProxyError> {
        if body.is_empty() {
            return Ok(body);
        }
        if body.len() > self.max_bytes {
            return Err(ProxyError::RequestBodyTooLarge {
                limit: self.max_bytes,
            });
        }
        let mut value: serde_json::Value =
            serde_json::from_slice(&body).map_err(ProxyError::InvalidJson)?;
        match (self.check)(&mut value).map_err(ProxyError::BodyRejected)? {
            JsonVerdict::Unchanged => Ok(body),
            JsonVerdict::Rewritten => serde_json::to_vec(&value)
                .map(Bytes::from)
                .map_err(|_| ProxyError::Internal("rewritten JSON body does not serialize")),
        }
    }

    /// Reads `body` (within `timeout`), filters it and sets `content-length` in `headers`
    /// for what is forwarded. A declared length over the limit is refused before anything
    /// is read.
    pub(crate) async fn read<B>(
        &self,
        headers: &mut HeaderMap,
        body: B,
        timeout: Duration,
    ) -> Result<Bytes, ProxyError>
    where
        B: Body<Data = Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let read = read_limited(headers, body, self.max_bytes, timeout).await?;
        let out = self.filter(read)?;
        headers.remove(header::TRANSFER_ENCODING);
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
        Ok(out)
    }
}

/// Reads a request body in full: at most `limit` bytes (a declared `content-length` over
/// it is refused before anything is read), within `timeout`.
pub(crate) async fn read_limited<B>(
    headers: &HeaderMap,
    body: B,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ProxyError>
where
    B: Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ProxyError::RequestBodyTooLarge { limit });
    }
    let limited = http_body_util::Limited::new(body, limit);
    match tokio::time::timeout(timeout, limited.collect()).await {
        Err(_) => Err(ProxyError::RequestBodyTimeout),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ProxyError::RequestBodyTooLarge { limit })
        }
        Ok(Err(_)) => Err(ProxyError::RequestBody),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// Makes the observer of one response stream.
pub type SseObserverFactory = dyn Fn() -> Box<dyn SseObserver> + Send + Sync;

/// Watches `text/event-stream` responses: each event is parsed as it streams past and
/// handed to a fresh [`SseObserver`] per response; the bytes go on unchanged and
/// unbuffered.
#[derive(Clone)]
pub struct ResponseBodyFilter {
    max_event_bytes: usize,
    observer: Arc<SseObserverFactory>,
}

impl std::fmt::Debug for ResponseBodyFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBodyFilter")
            .field("max_event_bytes", &self.max_event_bytes)
            .finish_non_exhaustive()
    }
}

impl ResponseBodyFilter {
    /// Hands events of at most `max_event_bytes` to an observer made by `observer` for
    /// each response (larger ones are skipped and reported).
    pub fn new(
        max_event_bytes: usize,
        observer: impl Fn() -> Box<dyn SseObserver> + Send + Sync + 'static,
    ) -> Self {
        Self {
            max_event_bytes,
            observer: Arc::new(observer),
        }
    }

    /// Whether a response with these headers is an event stream.
    pub fn applies_to(headers: &HeaderMap) -> bool {
        media_type(headers).is_some_and(|m| m.eq_ignore_ascii_case("text/event-stream"))
    }

    /// Wraps a response body.
    pub fn wrap<B>(&self, body: B) -> SseBody<B> {
        SseBody {
            inner: body,
            parser: SseParser::new(self.max_event_bytes),
            observer: std::sync::Mutex::new((self.observer)()),
            ended: false,
        }
    }
}

/// A response body that parses the event stream passing through it.
pub struct SseBody<B> {
    inner: B,
    parser: SseParser,
    /// Only ever reached through `&mut self` (`Mutex::get_mut`, no locking): the mutex
    /// just makes the body `Sync`, as hyper's boxed bodies must be, whatever the observer.
    observer: std::sync::Mutex<Box<dyn SseObserver>>,
    ended: bool,
}

impl<B> SseBody<B> {
    fn observer(&mut self) -> &mut dyn SseObserver {
        &mut **self
            .observer
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn end(&mut self, complete: bool) {
        if !self.ended {
            self.ended = true;
            self.observer().on_end(complete);
        }
    }
}

impl<B> Body for SseBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let observer = &mut **this
                        .observer
                        .get_mut()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    this.parser.feed(data, observer);
                }
                if this.inner.is_end_stream() {
                    this.end(true);
                }
            }
            Poll::Ready(None) => this.end(true),
            Poll::Ready(Some(Err(_))) => this.end(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for SseBody<B> {
    fn drop(&mut self) {
        self.end(false);
    }
}

/// The media type of `content-type`, without parameters.
fn media_type(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(v.split(';').next().unwrap_or("").trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(content_type: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, content_type.parse().unwrap());
        h
    }

    #[test]
    fn json_media_types() {
        for yes in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/merge-patch+json",
            "application/vnd.api+json ; x=y",
        ] {
            assert!(RequestBodyFilter::applies_to(&headers(yes)), "{yes}");
        }
        for no in [
            "text/plain",
            "application/jsonx",
            "text/json+xml",
            "application/+json",
            "multipart/form-data",
        ] {
            assert!(!RequestBodyFilter::applies_to(&headers(no)), "{no}");
        }
        assert!(!RequestBodyFilter::applies_to(&HeaderMap::new()));
        assert!(ResponseBodyFilter::applies_to(&headers(
            "text/event-stream; charset=utf-8"
        )));
        assert!(!ResponseBodyFilter::applies_to(&headers("text/plain")));
    }

    #[test]
    fn json_filter_checks_and_rewrites() {
        let f = RequestBodyFilter::new(64, |v| {
            if v.get("deny").is_some() {
                return Err(BodyRejection::new(StatusCode::FORBIDDEN, "denied"));
            }
            match v.get_mut("model") {
                Some(m) => {
                    *m = "small".into();
                    Ok(JsonVerdict::Rewritten)
                }
                None => Ok(JsonVerdict::Unchanged),
            }
        });
        // Unchanged: the very bytes, spacing included.
        let raw = Bytes::from_static(b"{ \"a\" : 1 }");
        assert_eq!(f.filter(raw.clone()).unwrap(), raw);
        assert_eq!(
            f.filter(Bytes::from_static(b"{\"model\":\"big\"}"))
                .unwrap(),
            Bytes::from_static(b"{\"model\":\"small\"}")
        );
        let e = f.filter(Bytes::from_static(b"{\"deny\":1}")).unwrap_err();
        assert_eq!(
            (e.status(), e.reason()),
            (StatusCode::FORBIDDEN, "body_rejected")
        );
        let e = f.filter(Bytes::from_static(b"{\"a\":")).unwrap_err();
        assert_eq!(
            (e.status(), e.reason()),
            (StatusCode::BAD_REQUEST, "invalid_json")
        );
        assert!(
            e.to_string().starts_with("request body is not valid JSON"),
            "{e}"
        );
        let e = f.filter(Bytes::from(vec![b' '; 65])).unwrap_err();
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(f.filter(Bytes::new()).unwrap().is_empty());
    }
}
