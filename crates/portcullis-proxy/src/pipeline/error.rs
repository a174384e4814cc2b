//! Data-path errors: what went wrong between accepting a request and finishing its
//! response, where it came from ([`ErrorSource`]), the status it becomes and its metric
//! label.
//!
//! ```text
//! client   request_body 400 · body_too_large 413 · invalid_json 400 · body_rejected 4xx
//!          request_body_timeout 408 · client_closed 499 (nginx's "client closed request")
//! upstream connect_refused 502 · connect_timeout 504 · connect_failed 502
//!          response_timeout 504 · upstream_protocol 502
//! proxy    bad_target 400 · internal 500
//! ```
//!
//! Upstream failures are classified by structure, never by message text: the connector
//! returns [`ConnectTimedOut`] for its own timeout, found by downcasting along the error's
//! source chain, and the OS's `ECONNREFUSED` / `ETIMEDOUT` are `std::io::Error` kinds.

use std::time::Duration;

use http::{Response, StatusCode};

use super::{ProxyBody, plain, response};

/// Where a data-path error came from: the `source` label of
/// `portcullis_request_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorSource {
    /// The client: a broken or unacceptable request, or a client that went away.
    Client,
    /// The backend: unreachable, too slow, or speaking broken HTTP.
    Upstream,
    /// The gateway itself.
    Proxy,
}

impl ErrorSource {
    /// The label: `client`, `upstream` or `proxy`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorSource::Client => "client",
            ErrorSource::Upstream => "upstream",
            ErrorSource::Proxy => "proxy",
        }
    }
}

impl std::fmt::Display for ErrorSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure on the request path after the request was accepted for forwarding.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The client's request body broke its own framing (RFC 9112 section 7.1: a bare LF, a
    /// bad chunk size) or was cut off; nothing after it is read.
    #[error("malformed request body")]
    RequestBody,
    /// The request body is larger than the route's body filter reads.
    #[error("request body over the {limit}-byte limit")]
    RequestBodyTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// A JSON body filter read a body that is not JSON.
    #[error("request body is not valid JSON: {0}")]
    InvalidJson(#[source] serde_json::Error),
    /// A body filter's check refused the request.
    #[error("{}", .0.message)]
    BodyRejected(super::BodyRejection),
    /// The client did not send the body a filter reads within the route's request
    /// timeout.
    #[error("request body not received in time")]
    RequestBodyTimeout,
    /// The client closed the connection (or reset the stream) before the response was
    /// complete.
    #[error("client closed the request")]
    ClientClosed,
    /// The backend refused the connection (`ECONNREFUSED`).
    #[error("upstream refused the connection")]
    ConnectRefused,
    /// No connection to the backend within the route's connect timeout.
    #[error("upstream connect timed out")]
    ConnectTimeout,
    /// Any other failure to connect: name resolution, unreachable network, TLS.
    #[error("upstream connect failed")]
    ConnectFailed,
    /// The backend sent no response headers within the route's request timeout.
    #[error("upstream sent no response within {} ms", .0.as_millis())]
    ResponseTimeout(Duration),
    /// The backend closed the connection early or sent something that is not HTTP.
    #[error("upstream broke the HTTP exchange")]
    UpstreamProtocol,
    /// The upstream request target could not be built from the route and the path.
    #[error("bad upstream request target")]
    BadTarget,
    /// A state the gateway should never reach.
    #[error("internal error: {0}")]
    Internal(&'static str),
}

/// 499: the client closed the request before the response (nginx's convention; no RFC
/// assigns it). Only ever logged and counted: nobody is left to receive it.
pub(crate) fn client_closed_status() -> StatusCode {
    StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST)
}

impl ProxyError {
    /// The status the client is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::RequestBody | ProxyError::InvalidJson(_) | ProxyError::BadTarget => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::RequestBodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BodyRejected(r) => r.status,
            ProxyError::RequestBodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::ClientClosed => client_closed_status(),
            ProxyError::ConnectRefused
            | ProxyError::ConnectFailed
            | ProxyError::UpstreamProtocol => StatusCode::BAD_GATEWAY,
            ProxyError::ConnectTimeout | ProxyError::ResponseTimeout(_) => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The metric label and access-log `reason`: a closed set, [`ProxyError::REASONS`].
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::RequestBody => "request_body",
            ProxyError::RequestBodyTooLarge { .. } => "body_too_large",
            ProxyError::InvalidJson(_) => "invalid_json",
            ProxyError::BodyRejected(_) => "body_rejected",
            ProxyError::RequestBodyTimeout => "request_body_timeout",
            ProxyError::ClientClosed => "client_closed",
            ProxyError::ConnectRefused => "connect_refused",
            ProxyError::ConnectTimeout => "connect_timeout",
            ProxyError::ConnectFailed => "connect_failed",
            ProxyError::ResponseTimeout(_) => "response_timeout",
            ProxyError::UpstreamProtocol => "upstream_protocol",
            ProxyError::BadTarget => "bad_target",
            ProxyError::Internal(_) => "internal",
        }
    }

    /// Where the error came from. (Not named `source`: that is
    /// `std::error::Error::source`, the cause chain.)
    pub fn origin(&self) -> ErrorSource {
        match self {
            ProxyError::RequestBody
            | ProxyError::RequestBodyTooLarge { .. }
            | ProxyError::InvalidJson(_)
            | ProxyError::BodyRejected(_)
            | ProxyError::RequestBodyTimeout
            | ProxyError::ClientClosed => ErrorSource::Client,
            ProxyError::ConnectRefused
            | ProxyError::ConnectTimeout
            | ProxyError::ConnectFailed
            | ProxyError::ResponseTimeout(_)
            | ProxyError::UpstreamProtocol => ErrorSource::Upstream,
            ProxyError::BadTarget | ProxyError::Internal(_) => ErrorSource::Proxy,
        }
    }

    /// Every `(source, reason)` pair, exported at zero from the start.
    pub const REASONS: &'static [(&'static str, &'static str)] = &[
        ("client", "request_body"),
        ("client", "body_too_large"),
        ("client", "invalid_json"),
        ("client", "body_rejected"),
        ("client", "request_body_timeout"),
        ("client", "client_closed"),
        ("upstream", "connect_refused"),
        ("upstream", "connect_timeout"),
        ("upstream", "connect_failed"),
        ("upstream", "response_timeout"),
        ("upstream", "upstream_protocol"),
        ("proxy", "bad_target"),
        ("proxy", "internal"),
    ];

    /// The `kind` label of `portcullis_upstream_errors_total` (kept from before the typed
    /// errors): `timeout` for both timeouts, `error` for every other upstream failure.
    pub fn upstream_kind(&self) -> &'static str {
        match self {
            ProxyError::ConnectTimeout | ProxyError::ResponseTimeout(_) => "timeout",
            _ => "error",
        }
    }

    /// What a failed upstream call was, from hyper's error and whether the client's own
    /// body broke first (then the failure is the client's: 400, not 502).
    pub(crate) fn from_upstream(e: &hyper_util::client::legacy::Error, body_failed: bool) -> Self {
        if body_failed {
            return ProxyError::RequestBody;
        }
        if !e.is_connect() {
            return ProxyError::UpstreamProtocol;
        }
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(s) = source {
            if s.downcast_ref::<super::upstream::ConnectTimedOut>()
                .is_some()
            {
                return ProxyError::ConnectTimeout;
            }
            if let Some(io) = s.downcast_ref::<std::io::Error>() {
                match io.kind() {
                    std::io::ErrorKind::ConnectionRefused => return ProxyError::ConnectRefused,
                    std::io::ErrorKind::TimedOut => return ProxyError::ConnectTimeout,
                    _ => {}
                }
            }
            source = s.source();
        }
        ProxyError::ConnectFailed
    }

    /// The answer to the client.
    pub fn response(&self) -> Response<ProxyBody> {
        let status = self.status();
        match self {
            ProxyError::RequestBody => plain(status, "malformed request body"),
            ProxyError::RequestBodyTooLarge { .. } => plain(status, "request body too large"),
            ProxyError::InvalidJson(_) | ProxyError::BodyRejected(_) => {
                response(status, "text/plain; charset=utf-8", format!("{self}\n"))
            }
            ProxyError::RequestBodyTimeout => plain(status, "request body not received in time"),
            ProxyError::ClientClosed => plain(status, "client closed request"),
            ProxyError::ConnectRefused | ProxyError::ConnectFailed => {
                plain(status, "upstream unavailable")
            }
            ProxyError::ConnectTimeout | ProxyError::ResponseTimeout(_) => {
                plain(status, "upstream timed out")
            }
            ProxyError::UpstreamProtocol => plain(status, "upstream unavailable"),
            ProxyError::BadTarget => plain(status, "bad request target"),
            ProxyError::Internal(_) => plain(status, "internal error"),
        }
    }

    /// Whether the connection must not be reused after answering (the request body may
    /// be half-read).
    pub(crate) fn closes_connection(&self) -> bool {
        matches!(
            self,
            ProxyError::RequestBody
                | ProxyError::RequestBodyTooLarge { .. }
                | ProxyError::RequestBodyTimeout
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every() -> Vec<ProxyError> {
        vec![
            ProxyError::RequestBody,
            ProxyError::RequestBodyTooLarge { limit: 1 },
            ProxyError::InvalidJson(serde_json::from_str::<u8>("x").unwrap_err()),
            ProxyError::BodyRejected(crate::pipeline::BodyRejection::new(
                StatusCode::FORBIDDEN,
                "no",
            )),
            ProxyError::RequestBodyTimeout,
            ProxyError::ClientClosed,
            ProxyError::ConnectRefused,
            ProxyError::ConnectTimeout,
            ProxyError::ConnectFailed,
            ProxyError::ResponseTimeout(Duration::from_secs(1)),
            ProxyError::UpstreamProtocol,
            ProxyError::BadTarget,
            ProxyError::Internal("x"),
        ]
    }

    #[test]
    fn every_reason_is_pre_registered_once() {
        let all = every();
        assert_eq!(all.len(), ProxyError::REASONS.len());
        for e in &all {
            let pair = (e.origin().as_str(), e.reason());
            assert_eq!(
                ProxyError::REASONS.iter().filter(|p| **p == pair).count(),
                1,
                "{pair:?}"
            );
        }
    }

    #[test]
    fn statuses_follow_the_source() {
        for e in every() {
            let s = e.status();
            match e.origin() {
                ErrorSource::Client => assert!(s.is_client_error(), "{e}: {s}"),
                ErrorSource::Upstream => assert!(
                    s == StatusCode::BAD_GATEWAY || s == StatusCode::GATEWAY_TIMEOUT,
                    "{e}: {s}"
                ),
                ErrorSource::Proxy => {}
            }
        }
        assert_eq!(ProxyError::ClientClosed.status().as_u16(), 499);
    }
}
