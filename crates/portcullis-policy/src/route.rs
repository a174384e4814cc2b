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
