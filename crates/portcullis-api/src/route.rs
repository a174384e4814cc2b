//! `ApiRoute`: what is protected, and what each path demands of a token.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::status::ResourceStatus;

/// An ApiRoute exposes a backend on one or more hosts and says, rule by rule, which token
/// scopes each path and method demands. Tokens are judged by the TokenPolicy named in
/// `policyRef`. A request that matches no rule is answered 404 and never reaches the
/// backend; a rule without scopes still needs a valid token unless it says `auth: none`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "portcullis.dev",
    version = "v1alpha1",
    kind = "ApiRoute",
    plural = "apiroutes",
    singular = "apiroute",
    shortname = "ar",
    category = "portcullis",
    namespaced,
    status = "ResourceStatus",
    derive = "PartialEq",
    doc = "ApiRoute exposes a backend on a set of hosts and says which token scopes each path and method demands.",
    printcolumn(name = "Hosts", type_ = "string", json_path = ".spec.hosts"),
    printcolumn(name = "Policy", type_ = "string", json_path = ".spec.policyRef.name"),
    printcolumn(name = "Stage", type_ = "string", json_path = ".status.stage"),
    printcolumn(
        name = "Sunset",
        type_ = "string",
        priority = 1,
        json_path = ".spec.lifecycle.sunsetAt"
    ),
    printcolumn(
        name = "Owner",
        type_ = "string",
        priority = 1,
        json_path = ".spec.owner.team"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Programmed\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        priority = 1,
        json_path = ".status.conditions[?(@.type==\"Programmed\")].reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.mcp) || !has(self.passAuthorization) || !self.passAuthorization").message("an mcp route never passes the client's token to the MCP server (token passthrough is forbidden): remove passAuthorization, or set mcp.upstreamCredential"),
    validation = Rule::new("!has(self.mcp) || !has(self.backend.llm)").message("mcp and backend.llm cannot be combined: an MCP server is a service or url backend")
)]
pub struct ApiRouteSpec {
    /// Host names this route answers for, matched against the request's Host (or HTTP/2
    /// :authority) without its port. Exact names (`api.example.com`) win over wildcards
    /// (`*.example.com`, which matches exactly one extra label). At least one is required.
    #[schemars(length(max = 32), inner(length(max = 253)))]
    #[x_kube(
        validation = Rule::new("self.size() > 0").message("spec.hosts must list at least one host name, e.g. api.example.com"),
        validation = Rule::new("self.all(h, h.matches('^(\\\\*\\\\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$'))").message("each host must be a lowercase DNS name, optionally starting with '*.' (e.g. api.example.com or *.example.com), without a port")
    )]
    pub hosts: Vec<String>,

    /// The TokenPolicy, in this namespace, that says which tokens are trusted here.
    pub policy_ref: PolicyRef,

    /// Where allowed requests are sent: a Service in this namespace, or (standalone mode
    /// only) a URL.
    pub backend: Backend,

    /// Rules, tried most specific first: an exact `path` beats a `pathPrefix`, a longer
    /// prefix beats a shorter one, a rule naming methods beats one that does not. A request
    /// no rule matches gets 404.
    #[schemars(length(max = 256))]
    #[serde(default)]
    pub rules: Vec<RouteRule>,

    /// Pass the client's `Authorization` header on to the backend. Off by default: the
    /// backend gets the claims named in the policy's `forwardClaims` instead of the token.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pass_authorization: bool,

    /// Timeouts for calls to the backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<RouteTimeouts>,

    /// How the request path is normalized before it is matched against the rules. The
    /// normalized path is exactly the path the backend receives (with `backend.url`'s path
    /// in front): the gateway never authorizes one path and forwards another. Always, per
    /// RFC 3986 section 6.2.2: percent-encoded unreserved characters are decoded
    /// (`%61dmin` is `admin`), other escapes get upper-case hex, dot segments (`.`, `..`,
    /// `%2e%2e`) are removed, and a path that does not start with `/`, or holds NUL, a
    /// control character, a raw `\`, a broken escape or escapes that are not UTF-8, is
    /// answered 400. Matching is case-sensitive (`/Admin` is not `/admin`): if the backend
    /// folds case, do not leave a public catch-all that it would serve protected paths
    /// from. The settings here relax this for the route: the first match is made with
    /// slashes merged and `%2F`/`;` kept; when the route found asks for other settings,
    /// the path is normalized again with them and must lead to a route with the same
    /// settings, and whatever a relaxed setting keeps (`//`, `%2F`, `;params`) must not
    /// move the path to another rule once a backend resolves it; otherwise 400.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_normalization: Option<PathNormalization>,

    /// What to do with request headers whose names hold anything but letters, digits and
    /// `-` (typically `_`, as in `X_User_Id`): `Drop` them before the request reaches the
    /// backend (default), or `Reject` the request with 400. CGI, WSGI, PHP and Rack
    /// backends read `X_User_Id` and `X-User-Id` as the same variable, so such a header
    /// could stand in for one the gateway sets; none is ever forwarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers_with_underscores: Option<UnderscoreHeaders>,

    /// Refuse credentials sent in cleartext: a request reaching this route over plain HTTP
    /// (not TLS at the proxy, nor `X-Forwarded-Proto: https` from a trusted load balancer)
    /// that carries an `Authorization`, `DPoP`, `Cookie` or API-key header is answered 403 without
    /// the token being verified or cached (RFC 6750 section 5.3: a token seen in cleartext
    /// must be considered disclosed; revoke it). Public rules without credentials still
    /// answer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_tls: bool,

    /// MCP resource-server mode: the route fronts an MCP server (Streamable HTTP) as an
    /// OAuth 2.0 protected resource (RFC 9728 metadata, RFC 8707 audience, per-tool
    /// scopes). Cannot be combined with `passAuthorization` or an `llm` backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp: Option<crate::mcp::McpSpec>,

    /// Where the API is in its life, from draft to retired: `Draft` answers only tokens
    /// holding the preview scope; `Deprecated` adds `Deprecation` (RFC 9745), `Sunset`
    /// (RFC 8594) and a `Link` to the successor to every answer; `Retired`, or any stage
    /// once `sunsetAt` has passed, answers 410 Gone without calling the backend. Default:
    /// `Published`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<Lifecycle>,

    /// The team that owns this API and how to reach it, shown in the catalog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,

    /// What the API does, in plain text, shown in the catalog.
    #[schemars(length(max = 2000))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,

    /// Keywords the catalog can be searched and filtered by.
    #[schemars(
        length(max = 16),
        inner(
            length(min = 1, max = 63),
            regex(pattern = "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
        )
    )]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,

    /// Who sees this API in the catalog. Default: its own namespace only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog: Option<CatalogSpec>,
}

/// The lifecycle of an API.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.stage) || self.stage != 'Deprecated' || has(self.deprecatedAt)").message("a Deprecated route needs deprecatedAt: the Deprecation header (RFC 9745) carries that date"),
    validation = Rule::new("!has(self.deprecatedAt) || !has(self.sunsetAt) || timestamp(self.deprecatedAt) <= timestamp(self.sunsetAt)").message("sunsetAt cannot come before deprecatedAt")
)]
pub struct Lifecycle {
    /// `Draft`, `Published` (default), `Deprecated` or `Retired`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<LifecycleStage>,
    /// When the API was (or will be) deprecated, RFC 3339 (`2026-01-31T00:00:00Z`). Sent
    /// as `Deprecation: @<seconds>` (RFC 9745 section 2) while the stage is `Deprecated`.
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\\\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$')").message("deprecatedAt must be an RFC 3339 date-time such as 2026-01-31T00:00:00Z"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deprecated_at: Option<String>,
    /// When the API stops answering, RFC 3339. Sent as `Sunset` (RFC 8594) while the stage
    /// is `Deprecated`; from this instant on, every request is answered 410 Gone.
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\\\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$')").message("sunsetAt must be an RFC 3339 date-time such as 2026-06-30T00:00:00Z"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sunset_at: Option<String>,
    /// Where callers should go instead: an absolute https:// (or http://) URL, sent as
    /// `Link: <successor>; rel="successor-version"` and named in the 410 answer.
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self.matches('^https?://[^\\\\s<>\"]+$')").message("successor must be an absolute http(s) URL without spaces, quotes or angle brackets"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub successor: Option<String>,
    /// The scope a token needs to call a `Draft` route, besides what each rule demands.
    /// Default `preview`.
    #[schemars(length(min = 1, max = 128))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_scope: Option<String>,
}

/// Stages of an API's life.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum LifecycleStage {
    /// Being built: only tokens with the preview scope may call it.
    Draft,
    /// In service.
    #[default]
    Published,
    /// Still served, with deprecation headers; callers should move to the successor.
    Deprecated,
    /// No longer served: 410 Gone.
    Retired,
}

impl Lifecycle {
    /// `sunsetAt` in seconds since the epoch, when it is a valid date-time.
    pub fn sunset_seconds(&self) -> Option<i64> {
        self.sunset_at
            .as_deref()
            .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
            .map(|t| t.as_second())
    }

    /// The stage in effect at `now` (seconds since the epoch): `Retired` from `sunsetAt`
    /// on, whatever `stage` says.
    pub fn stage_at(&self, now: i64) -> LifecycleStage {
        if self.sunset_seconds().is_some_and(|t| now >= t) {
            LifecycleStage::Retired
        } else {
            self.stage.unwrap_or_default()
        }
    }
}

impl LifecycleStage {
    /// The stage as the spec spells it (`Draft`, `Published`, ...), for status.
    pub fn name(self) -> &'static str {
        match self {
            Self::Draft => "Draft",
            Self::Published => "Published",
            Self::Deprecated => "Deprecated",
            Self::Retired => "Retired",
        }
    }

    /// The stage in lower case, for labels and CSS classes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Published => "published",
            Self::Deprecated => "deprecated",
            Self::Retired => "retired",
        }
    }
}

/// Who owns an API.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Owner {
    /// The owning team.
    #[schemars(length(max = 128))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// How to reach it: an e-mail address, a chat channel or a URL.
    #[schemars(length(max = 256))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact: Option<String>,
}

/// Who sees an API in the catalog.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.namespaces) || size(self.namespaces) == 0 || (has(self.visibility) && self.visibility == 'Namespaces')").message("namespaces only applies to visibility: Namespaces"))]
pub struct CatalogSpec {
    /// `Private` (default): viewers of this namespace (scope `catalog:namespace:<ns>`);
    /// `Namespaces`: those and viewers of the listed namespaces; `Public`: every catalog
    /// reader. `catalog:all` sees every API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visibility: Option<CatalogVisibility>,
    /// With `Namespaces`: the other namespaces (teams) that see this API.
    #[schemars(length(max = 64), inner(length(min = 1, max = 63)))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
}

/// Catalog visibility of an API.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum CatalogVisibility {
    /// Its own namespace only.
    #[default]
    Private,
    /// Its namespace and the listed ones.
    Namespaces,
    /// Every catalog reader.
    Public,
}

/// Path normalization settings of a route. The first match is always made with slashes
/// merged and `%2F`/`;` kept; when the route found asks for other settings, the path is
/// normalized again with them and must lead to a route with the same settings. What a
/// relaxed setting keeps, a backend may still resolve away (merge `//`, decode `%2F`,
/// strip `;params`): the resulting path must be decided by the same rule. Otherwise the
/// request is answered 400.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PathNormalization {
    /// Merge repeated slashes (`/a//b` becomes `/a/b`). Default true; turn off only for a
    /// backend that gives `//` a meaning of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge_slashes: Option<bool>,

    /// What to do with an encoded `/` or `\` (`%2F`, `%5C`): `Reject` with 400 (default;
    /// backends disagree on whether it separates segments), `Keep` it encoded as part of
    /// a segment (only for a backend that never decodes it before routing), or `Decode` it
    /// to `/` and normalize the result like any other slash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escaped_slashes: Option<EscapedSlashAction>,

    /// What to do with `;` (path parameters), raw or as `%3B`: `Reject` with 400 (default;
    /// Tomcat and Spring strip `;params` from segments before routing, so `/admin;x/y`
    /// reaches their `/admin/y`), or `Keep` it as an ordinary character. A dot segment
    /// with parameters (`..;x`) is refused either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semicolons: Option<SemicolonAction>,
}

/// What to do with an encoded `/` or `\\` (`%2F`, `%5C`) in a request path: `Reject` with
/// 400 (default; backends disagree on whether it separates segments), `Keep` it encoded as
/// part of a segment (only for a backend that never decodes it before routing; a path
/// that a decoding backend would move to another rule is still refused), or `Decode` it to
/// `/` and normalize the result like any other slash.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum EscapedSlashAction {
    /// Answer 400.
    #[default]
    Reject,
    /// Keep the escape, as part of the segment.
    Keep,
    /// Decode to `/`, then normalize.
    Decode,
}

/// What to do with `;` (path parameters), raw or as `%3B`, in a request path: `Reject`
/// with 400 (default; Tomcat and Spring strip `;params` from segments before routing, so
/// `/admin;x/y` reaches their `/admin/y`), or `Keep` it as an ordinary character (a path
/// whose stripped form another rule decides is still refused). A dot segment with
/// parameters (`..;x`) is refused either way.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum SemicolonAction {
    /// Answer 400.
    #[default]
    Reject,
    /// Keep it as an ordinary character.
    Keep,
}

/// What to do with request headers whose names hold anything but letters, digits and `-`
/// (typically `_`, as in `X_User_Id`): `Drop` them before the request reaches the backend
/// (default), or `Reject` the request with 400. CGI, WSGI, PHP and Rack backends read
/// `X_User_Id` and `X-User-Id` as the same variable, so such a header could stand in for
/// one the gateway sets; none is ever forwarded.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum UnderscoreHeaders {
    /// Remove them; the request goes on without them.
    #[default]
    Drop,
    /// Answer 400.
    Reject,
}

/// A reference to a TokenPolicy in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
pub struct PolicyRef {
    /// Name of the TokenPolicy.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// The backend of a route: exactly one of `service`, `url` or `llm`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("(has(self.service) ? 1 : 0) + (has(self.url) ? 1 : 0) + (has(self.llm) ? 1 : 0) == 1").message("backend needs exactly one of service, url or llm")
)]
pub struct Backend {
    /// A Service in the route's namespace, reached through cluster DNS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceBackend>,
    /// A base URL (`http://127.0.0.1:8080`), for standalone mode and for backends outside
    /// the cluster. The request path is appended to it.
    #[schemars(length(max = 2048))]
    #[x_kube(
        validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("backend.url must start with http:// or https://")
    )]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// An LLM provider (OpenAI, Anthropic, or OpenAI-compatible): the route becomes an AI
    /// gateway endpoint. A rule with `pathPrefix: P` serves `P/v1/chat/completions`,
    /// `P/v1/embeddings`, `P/v1/models` and `P/v1/messages` (without the extra `/v1` when
    /// P ends in `/v1`: `pathPrefix: /v1` serves `/v1/chat/completions`), and no other
    /// path; a rule with an exact `path` serves it when it ends in one of those; a rule
    /// with a `prompt` serves the prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm: Option<crate::llm::LlmBackend>,
}

/// A Service and port to send traffic to.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ServiceBackend {
    /// Name of the Service, in the route's namespace.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Port of the Service (1-65535).
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

/// Timeouts for calls to the backend, as durations like `500ms`, `30s`, `5m`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RouteTimeouts {
    /// Time allowed to open a connection to the backend (default 5s).
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(crate::token_policy::DURATION_RULE).message("connect must be a positive duration such as 500ms, 5s or 1m"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<String>,
    /// Time allowed for the backend to send its response headers (default 30s). Streaming
    /// bodies are not cut by it.
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(crate::token_policy::DURATION_RULE).message("request must be a positive duration such as 500ms, 30s or 5m"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
}

/// One rule: a match, and what a token must hold to pass it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!(has(self.auth) && self.auth == 'none') || ((!has(self.requiredScopes) || self.requiredScopes.size() == 0) && (!has(self.anyScopes) || self.anyScopes.size() == 0))").message("a rule with auth: none is public and cannot also demand requiredScopes or anyScopes; remove one of them")
)]
pub struct RouteRule {
    /// Which requests this rule applies to.
    #[serde(rename = "match")]
    pub matches: RouteMatch,

    /// Scopes the token must hold, all of them (whole words; `orders:read` does not
    /// satisfy `orders`).
    #[schemars(length(max = 64), inner(length(max = 128)))]
    #[x_kube(validation = Rule::new(SCOPES_RULE).message("each scope must be one word of printable characters without spaces, quotes or backslashes, e.g. orders:read"))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_scopes: Vec<String>,

    /// Scopes of which the token must hold at least one.
    #[schemars(length(max = 64), inner(length(max = 128)))]
    #[x_kube(validation = Rule::new(SCOPES_RULE).message("each scope must be one word of printable characters without spaces, quotes or backslashes, e.g. orders:read"))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub any_scopes: Vec<String>,

    /// `none` makes the matched paths public: no token is asked for or checked. Leave it
    /// out (or say `required`) to demand a valid token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthMode>,

    /// Serve a prompt template as this rule's endpoint (`POST`, the variables as a JSON
    /// object). Only on routes with an `llm` backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<crate::llm::PromptTemplate>,
}

/// The CEL rule every scope list carries (RFC 6749 scope-token characters).
const SCOPES_RULE: &str = "self.all(s, s.matches('^[!#-\\\\[\\\\]-~]+$'))";

/// Whether a rule asks for a token.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// A valid token is required (the default).
    #[default]
    Required,
    /// No token is asked for: the path is public.
    None,
}

/// What a rule matches: exactly one of `path` or `pathPrefix`, and optionally methods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.path) != has(self.pathPrefix)").message("match needs exactly one of path or pathPrefix")
)]
pub struct RouteMatch {
    /// An exact request path, e.g. `/orders/export`. The query string is not part of it.
    #[schemars(length(max = 1024))]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("match.path must start with /"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,

    /// A path prefix matched on segment boundaries: `/orders` matches `/orders` and
    /// `/orders/1`, never `/ordersX`. `/` matches everything.
    #[schemars(length(max = 1024))]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("match.pathPrefix must start with /"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,

    /// HTTP methods (upper case) this rule applies to; empty means every method.
    #[schemars(length(max = 16), inner(length(max = 16)))]
    #[x_kube(validation = Rule::new("self.all(m, m in ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'CONNECT', 'TRACE'])").message("methods must be upper-case HTTP methods: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, CONNECT or TRACE"))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
}
