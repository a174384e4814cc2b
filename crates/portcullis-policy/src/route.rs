//! What a matched route says about where and how a request goes.

use std::sync::Arc;

use http::HeaderName;

/// Where allowed traffic goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// `http` or `https`.
    pub scheme: http::uri::Scheme,
    /// `host:port`. A Service backend becomes `name.namespace.svc:port`.
    pub authority: http::uri::Authority,
    /// A path prefix to put before the request path (from a `backend.url` with a path),
    /// without a trailing slash; empty for none.
    pub base_path: String,
    /// `authority` as the `Host` header sent upstream, built once here rather than per
    /// request.
    pub host_header: http::HeaderValue,
}

/// The route and rule a request matched.
#[derive(Debug, Clone)]
pub struct RouteInfo {
    /// `namespace/name` of the ApiRoute: the metric label.
    pub id: Arc<str>,
    /// Index of the matched rule in `spec.rules`.
    pub rule: usize,
    /// Where to send the request.
    pub upstream: Arc<Upstream>,
    /// Pass the client's `Authorization` header upstream.
    pub pass_authorization: bool,
    /// Connect timeout for the upstream.
    pub connect_timeout: std::time::Duration,
    /// Time allowed for the upstream's response headers.
    pub request_timeout: std::time::Duration,
    /// Every header name the route's policy may set from claims: the proxy removes
    /// client-sent headers of these names before adding the token's values.
    pub forwarded_header_names: Arc<[HeaderName]>,
    /// How request paths are normalized for this route.
    pub path_options: crate::target::PathOptions,
    /// What to do with request headers whose names hold `_` (or anything but letters,
    /// digits and `-`).
    pub underscore_headers: UnderscoreHeaderAction,
    /// The LLM backend, when the route has one (`spec.backend.llm`): the proxy serves the
    /// AI gateway's API instead of forwarding.
    pub llm: Option<Arc<crate::llm::LlmRoute>>,
    /// The budgets and rate limits of the route's policy, if it has any.
    pub quotas: Option<Arc<crate::quota::Quotas>>,
    /// Credentials over plain HTTP are refused (`spec.requireTls`).
    pub require_tls: bool,
    /// MCP resource-server mode (`spec.mcp`), when the route has it.
    pub mcp: Option<Arc<crate::mcp::McpRoute>>,
    /// This rule serves the route's RFC 9728 metadata document (a public rule the
    /// compiler adds at `/.well-known/oauth-protected-resource...`), not the backend.
    pub serves_mcp_metadata: bool,
    /// The API's lifecycle (`spec.lifecycle`), unless it is simply `Published`.
    pub lifecycle: Option<Arc<CompiledLifecycle>>,
}

/// An ApiRoute's lifecycle, compiled: what its answers carry and when it is gone.
#[derive(Debug, Clone)]
pub struct CompiledLifecycle {
    /// The stage written in the spec.
    pub stage: portcullis_api::LifecycleStage,
    /// `sunsetAt`, seconds since the epoch: from then on every request gets 410.
    pub sunset_at: Option<i64>,
    /// `sunsetAt` as written, for the 410 answer and the catalog.
    pub sunset_text: Option<Arc<str>>,
    /// The successor's URL.
    pub successor: Option<Arc<str>>,
    /// The scope a token needs on a `Draft` route.
    pub preview_scope: Box<str>,
    /// `Deprecation`, `Sunset` and `Link` for the answers of a `Deprecated` route.
    pub headers: Arc<[(HeaderName, http::HeaderValue)]>,
}

impl CompiledLifecycle {
    /// Whether the route answers 410 at `now`: `Retired`, or past `sunsetAt`.
    pub fn retired(&self, now: i64) -> bool {
        self.stage == portcullis_api::LifecycleStage::Retired
            || self.sunset_at.is_some_and(|t| now >= t)
    }

    /// Compiles `spec.lifecycle`; `None` when it says nothing beyond `Published`, an error
    /// message (and the field) for a bad date.
    pub fn compile(l: &portcullis_api::Lifecycle) -> Result<Option<Self>, (&'static str, String)> {
        use portcullis_api::LifecycleStage;
        let stage = l.stage.unwrap_or_default();
        let parse = |field: &'static str, v: &Option<String>| match v {
            None => Ok(None),
            Some(t) => t
                .parse::<jiff::Timestamp>()
                .map(Some)
                .map_err(|e| (field, format!("{t:?} is not an RFC 3339 date-time: {e}"))),
        };
        let deprecated_at = parse("deprecatedAt", &l.deprecated_at)?;
        let sunset_at = parse("sunsetAt", &l.sunset_at)?;
        if stage == LifecycleStage::Deprecated && deprecated_at.is_none() {
            return Err((
                "deprecatedAt",
                "a Deprecated route needs deprecatedAt (the Deprecation header carries it)".into(),
            ));
        }
        if let (Some(d), Some(s)) = (deprecated_at, sunset_at)
            && s < d
        {
            return Err((
                "sunsetAt",
                "sunsetAt cannot come before deprecatedAt".into(),
            ));
        }
        if let Some(u) = &l.successor
            && (!(u.starts_with("https://") || u.starts_with("http://"))
                || u.bytes()
                    .any(|b| b <= b' ' || b"<>\"".contains(&b) || b >= 0x7f))
        {
            return Err((
                "successor",
                format!(
                    "{u:?} is not an absolute http(s) URL without spaces, quotes or angle brackets"
                ),
            ));
        }
        if stage == LifecycleStage::Published && sunset_at.is_none() && l.successor.is_none() {
            return Ok(None);
        }
        let mut headers = Vec::new();
        if stage == LifecycleStage::Deprecated {
            // RFC 9745 section 2.1: an Item Structured Field, a Date (`@` and seconds).
            if let Some(d) = deprecated_at
                && let Ok(v) = http::HeaderValue::from_str(&format!("@{}", d.as_second()))
            {
                headers.push((HeaderName::from_static("deprecation"), v));
            }
            if let Some(u) = &l.successor
                && let Ok(v) =
                    http::HeaderValue::from_str(&format!("<{u}>; rel=\"successor-version\""))
            {
                headers.push((http::header::LINK, v));
            }
        }
        // RFC 8594 section 3: an HTTP-date; sent while the route still answers.
        if stage != LifecycleStage::Retired
            && let Some(t) = sunset_at
            && let Ok(v) = http::HeaderValue::from_str(
                &jiff::fmt::rfc2822::DateTimePrinter::new()
                    .timestamp_to_rfc9110_string(&t)
                    .unwrap_or_default(),
            )
        {
            headers.push((HeaderName::from_static("sunset"), v));
        }
        Ok(Some(Self {
            stage,
            sunset_at: sunset_at.map(|t| t.as_second()),
            sunset_text: l.sunset_at.as_deref().map(Arc::from),
            successor: l.successor.as_deref().map(Arc::from),
            preview_scope: l.preview_scope.as_deref().unwrap_or("preview").into(),
            headers: headers.into(),
        }))
    }
}

/// What the proxy does with a request header whose name holds characters other than
/// letters, digits and `-` (CGI-style backends map `_` and `-` to the same variable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnderscoreHeaderAction {
    /// Remove the header.
    #[default]
    Drop,
    /// Answer 400.
    Reject,
}
