//! The phases after the decision: build the upstream request, call the upstream, and
//! turn what came back into the response.

// A phase that answers the request itself returns the response as its `Err`: built once
// and handed straight up to `respond`. Boxing it would allocate on every refusal.
#![allow(clippy::result_large_err)]

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::{Request, Response, Uri, Version};
use http_body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use portcullis_policy::Allow;
use tracing::warn;

use super::body::{RequestBodyFilter, ResponseBodyFilter};
use super::error::{ErrorSource, ProxyError};
use super::headers::{scrub_headers, strip_hop_by_hop};
use super::phases::{Outcome, Target};
use super::request_log::{RecordedBody, RequestLog};
use super::upstream::{RequestBody, with_connect_timeout};
use super::{Pipeline, ProxyBody};

/// What the upstream call needs once the decision is made (the snapshot can go).
pub(super) struct Forward<'p> {
    route: std::sync::Arc<str>,
    connect_timeout: Duration,
    request_timeout: Duration,
    request_filter: Option<&'p RequestBodyFilter>,
    response_filter: Option<&'p ResponseBodyFilter>,
    /// Set on an LLM route: the AI gateway answers instead of a plain forward.
    pub(super) llm: Option<crate::llm::LlmCall>,
    /// Headers the gateway adds to the response (rate-limit state).
    pub(super) response_headers: super::quota::QuotaHeaders,
    /// MCP: the body must agree with these headers before it goes upstream.
    mcp_check: Option<McpCheck>,
}

/// What an MCP request's body must say: the `Mcp-Method` and `Mcp-Name` the decision
/// was made on.
struct McpCheck {
    method: Option<String>,
    name: Option<String>,
    strict: bool,
    /// The request's `MCP-Protocol-Version`, when the route does not accept it.
    refused_version: Option<(Option<String>, String)>,
}

/// The most an MCP request body may hold (it is read whole to be checked).
const MCP_BODY_LIMIT: usize = 4 << 20;

impl Pipeline {
    /// Phase: forward. Points `head` at the upstream, scrubs what the backend must not get
    /// from the client and adds what it gets from the gateway.
    #[allow(clippy::too_many_arguments)] // each is one thing the phase reads or writes
    pub(super) fn forward_phase(
        &self,
        head: &mut http::request::Parts,
        uri: &Uri,
        target: &Target<'_>,
        allow: &Allow<'_>,
        log: &mut RequestLog,
        tls: bool,
    ) -> Result<Forward<'_>, Response<ProxyBody>> {
        let route = allow.route;
        if let Some(llm) = &route.llm {
            // The provider request is built from scratch (no client header goes through).
            return Ok(Forward {
                route: route.id.clone(),
                connect_timeout: route.connect_timeout,
                request_timeout: route.request_timeout,
                request_filter: None,
                response_filter: None,
                llm: Some(crate::llm::LlmCall {
                    llm: llm.clone(),
                    route_id: route.id.clone(),
                    rule: route.rule,
                    principal: allow.principal.clone(),
                    path: target.path.to_string(),
                    connect_timeout: route.connect_timeout,
                    request_timeout: route.request_timeout,
                    quotas: route.quotas.clone(),
                }),
                response_headers: Vec::new(),
                mcp_check: None,
            });
        }
        let upstream = allow.upstream();
        let query = uri.query();
        let mut path_and_query = String::with_capacity(
            upstream.base_path.len() + target.path.len() + 1 + query.map_or(0, str::len),
        );
        path_and_query.push_str(&upstream.base_path);
        path_and_query.push_str(&target.path);
        if let Some(q) = query {
            path_and_query.push('?');
            path_and_query.push_str(q);
        }
        let upstream_uri = match Uri::builder()
            .scheme(upstream.scheme.clone())
            .authority(upstream.authority.clone())
            .path_and_query(path_and_query)
            .build()
        {
            Ok(u) => u,
            Err(_) => return Err(self.fail(log, ProxyError::BadTarget)),
        };
        let peer_trusted = self
            .limits
            .trusted_proxies
            .iter()
            .any(|net| net.contains(&log.client.ip()));
        let headers = &mut head.headers;
        if let Err(reason) = scrub_headers(headers, route, peer_trusted) {
            return Err(self.refuse(
                log,
                http::StatusCode::BAD_REQUEST,
                reason,
                "header names may hold only letters, digits and -",
            ));
        }
        // The gateway's credentials stop here (before the identity headers go in, so no
        // name can remove those): Authorization, the DPoP proof (RFC 9449: bound to the
        // gateway's URL, nothing the backend can check), and the API-key header of the
        // route's own policy. Another policy's header name is just a header to this route.
        if !route.pass_authorization {
            headers.remove(header::AUTHORIZATION);
            headers.remove(&portcullis_policy::DPOP);
            if let Some(name) = allow.credential_header {
                headers.remove(name);
            }
        }
        for (name, value) in allow.headers() {
            headers.insert(name.clone(), value.clone());
        }
        let mut mcp_check = None;
        if let Some(mcp) = &route.mcp {
            // The client's token never reaches the MCP server (removed above: an MCP
            // route cannot pass it on); the gateway's own credential may.
            if let Some((name, value)) = &mcp.upstream_credential {
                headers.insert(name.clone(), value.clone());
            }
            // Read as the decision read them (a repeated header has no single value).
            let mut decoded = None;
            let seen = super::phases::mcp_headers(headers, &mut decoded);
            let (method, name) = (seen.method.map(str::to_owned), seen.name.map(str::to_owned));
            // Any method that may carry a JSON-RPC body is checked like POST (a server that
            // routes without looking at the method would run it).
            let bodiless = matches!(
                head.method,
                http::Method::GET
                    | http::Method::HEAD
                    | http::Method::DELETE
                    | http::Method::OPTIONS
            );
            if !bodiless && (mcp.strict || method.is_some()) {
                let version = seen.protocol_version;
                mcp_check = Some(McpCheck {
                    name,
                    method,
                    strict: mcp.strict,
                    refused_version: (!mcp.version_accepted(version))
                        .then(|| (version.map(str::to_owned), mcp.min_version().to_owned())),
                });
            }
        }
        // The peer's address as a header value is made once per connection.
        let xff = match headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .filter(|_| peer_trusted)
        {
            Some(prev) => HeaderValue::from_str(&format!("{prev}, {}", log.client.ip())).ok(),
            None => Some(log.client_ip.clone()),
        };
        if let Some(v) = xff {
            headers.insert("x-forwarded-for", v);
        }
        headers.insert(
            "x-forwarded-proto",
            HeaderValue::from_static(if tls { "https" } else { "http" }),
        );
        // The client's own Host value when it is already the canonical host (the common
        // case: no copy), else the canonical host.
        let forwarded_host = match headers.get(header::HOST) {
            Some(v) if v.as_bytes() == target.host.as_bytes() => Some(v.clone()),
            _ => HeaderValue::from_str(&target.host).ok(),
        };
        if let Some(v) = forwarded_host {
            headers.insert("x-forwarded-host", v);
        }
        headers.insert("x-request-id", log.request_id.clone());
        headers.insert(header::HOST, upstream.host_header.clone());
        head.uri = upstream_uri;
        head.version = Version::HTTP_11;
        let filters = self.body_filters.as_deref();
        Ok(Forward {
            route: route.id.clone(),
            connect_timeout: route.connect_timeout,
            request_timeout: route.request_timeout,
            request_filter: filters.and_then(|f| f.request_filter(route)),
            response_filter: filters.and_then(|f| f.response_filter(route)),
            llm: None,
            response_headers: Vec::new(),
            mcp_check,
        })
    }

    /// Phase: the upstream call. The request body streams through, or is read and
    /// filtered first when the route has a JSON filter; a new connection is bounded by the
    /// route's connect timeout, the response headers by its request timeout.
    pub(super) async fn upstream_phase<'p>(
        &self,
        mut head: http::request::Parts,
        body: Incoming,
        fwd: Forward<'p>,
        log: &mut RequestLog,
    ) -> Outcome<'p> {
        if let Some(check) = &fwd.mcp_check {
            let bytes = match super::body::read_limited(
                &head.headers,
                body,
                MCP_BODY_LIMIT,
                fwd.request_timeout,
            )
            .await
            {
                Ok(b) => b,
                Err(e) => return Outcome::Local(self.fail(log, e)),
            };
            let parsed = portcullis_policy::mcp::parse_body(&bytes);
            let id = parsed
                .as_ref()
                .ok()
                .and_then(|v| v.get("id"))
                .cloned()
                .unwrap_or(serde_json::Value::Null);
            if let Some((requested, min)) = &check.refused_version {
                // MCP 2026-07-28: UnsupportedProtocolVersionError. Older versions do not
                // promise the headers the route's rules are matched on.
                let error = serde_json::json!({
                    "code": -32022,
                    "message": "Unsupported protocol version",
                    "data": {"supported": [min], "requested": requested},
                });
                return Outcome::Local(self.mcp_refusal(log, id, error));
            }
            let verdict = parsed.and_then(|v| {
                portcullis_policy::mcp::body_agrees(
                    &v,
                    check.method.as_deref(),
                    check.name.as_deref(),
                    check.strict,
                )
            });
            if let Err(why) = verdict {
                // The decision was made on the headers: a body saying otherwise is refused
                // before the MCP server sees it (MCP 2026-07-28 HeaderMismatch).
                let error = serde_json::json!({"code": -32020, "message": why});
                return Outcome::Local(self.mcp_refusal(log, id, error));
            }
            head.headers.remove(header::TRANSFER_ENCODING);
            head.headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            return self
                .send_upstream(head, RequestBody::Full(Some(bytes)), None, fwd, log)
                .await;
        }
        let (body, body_failed) = match fwd.request_filter {
            Some(filter)
                if !body.is_end_stream() && RequestBodyFilter::applies_to(&head.headers) =>
            {
                match filter
                    .read(&mut head.headers, body, fwd.request_timeout)
                    .await
                {
                    Ok(bytes) => (
                        RequestBody::Full((!bytes.is_empty()).then_some(bytes)),
                        None,
                    ),
                    Err(e) => return Outcome::Local(self.fail(log, e)),
                }
            }
            _ => RequestBody::streaming(body),
        };
        self.send_upstream(head, body, body_failed, fwd, log).await
    }

    /// A 400 for an MCP request refused on its headers and body, as a JSON-RPC error
    /// answering the request's `id`.
    fn mcp_refusal(
        &self,
        log: &mut RequestLog,
        id: serde_json::Value,
        error: serde_json::Value,
    ) -> Response<ProxyBody> {
        self.metrics
            .requests_refused
            .with_label_values(&["mcp_headers"])
            .inc();
        log.reason = "mcp_headers";
        log.close = true;
        let body = serde_json::json!({"jsonrpc": "2.0", "id": id, "error": error});
        super::response(
            http::StatusCode::BAD_REQUEST,
            "application/json",
            body.to_string(),
        )
    }

    /// Sends the request and waits for the response head, within the route's timeouts.
    async fn send_upstream<'p>(
        &self,
        head: http::request::Parts,
        body: RequestBody,
        body_failed: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
        fwd: Forward<'p>,
        log: &mut RequestLog,
    ) -> Outcome<'p> {
        let started = Instant::now();
        let call = tokio::time::timeout(
            fwd.request_timeout,
            self.client.request(Request::from_parts(head, body)),
        );
        let result = with_connect_timeout(fwd.connect_timeout, call).await;
        log.upstream_time = Some(started.elapsed());
        let error = match result {
            Ok(Ok(resp)) => {
                return Outcome::Upstream {
                    resp,
                    sse: fwd.response_filter,
                };
            }
            Ok(Err(e)) => {
                let failed = body_failed.is_some_and(|f| f.load(Ordering::Relaxed));
                let error = ProxyError::from_upstream(&e, failed);
                if error.origin() == ErrorSource::Upstream {
                    warn!(
                        route = %fwd.route,
                        reason = error.reason(),
                        error = %portcullis_fetch::client::error_chain(&e),
                        "upstream request failed"
                    );
                }
                error
            }
            Err(_) => {
                warn!(
                    route = %fwd.route,
                    timeout_ms = fwd.request_timeout.as_millis() as u64,
                    "upstream timed out"
                );
                ProxyError::ResponseTimeout(fwd.request_timeout)
            }
        };
        Outcome::Local(self.fail(log, error))
    }

    /// Answers with `error`, counting it.
    pub(super) fn fail(&self, log: &mut RequestLog, error: ProxyError) -> Response<ProxyBody> {
        if matches!(error, ProxyError::RequestBody) {
            // RFC 9112 section 7.1: a chunked body that breaks its own framing is refused
            // like any other malformed request.
            self.metrics
                .requests_refused
                .with_label_values(&["request_body"])
                .inc();
        }
        log.error(&error);
        error.response()
    }

    /// The response: the gateway's headers on it, and its record. A fixed body is
    /// recorded now (`log` drops at the end); a body still to stream takes the log with it.
    pub(super) fn respond(
        &self,
        outcome: Outcome<'_>,
        mut log: RequestLog,
        version: Version,
    ) -> Response<ProxyBody> {
        match outcome {
            Outcome::Streamed(resp) => {
                let (mut parts, body) = resp.into_parts();
                gateway_headers(&mut parts, &log, version);
                log.head(parts.status, None);
                Response::from_parts(parts, RecordedBody::new(body, log).boxed())
            }
            Outcome::Local(resp) => {
                let (mut parts, body) = resp.into_parts();
                gateway_headers(&mut parts, &log, version);
                log.head(parts.status, body.size_hint().exact());
                Response::from_parts(parts, body)
            }
            Outcome::Upstream { resp, sse } => {
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                gateway_headers(&mut parts, &log, version);
                log.head(parts.status, None);
                let body = if body.is_end_stream() {
                    body.boxed()
                } else {
                    match sse.filter(|_| ResponseBodyFilter::applies_to(&parts.headers)) {
                        Some(filter) => RecordedBody::new(filter.wrap(body), log).boxed(),
                        None => RecordedBody::new(body, log).boxed(),
                    }
                };
                Response::from_parts(parts, body)
            }
        }
    }
}

/// The request ID on every response, and `Connection: close` (HTTP/1) when the request
/// may have been half-read.
fn gateway_headers(parts: &mut http::response::Parts, log: &RequestLog, version: Version) {
    parts.headers.insert("x-request-id", log.request_id.clone());
    if log.close && version < Version::HTTP_2 {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
}
