//! MCP resource-server mode of an ApiRoute (`spec.mcp`): the route fronts an MCP server
//! (Streamable HTTP transport) as an OAuth 2.0 protected resource, as the MCP
//! authorization specification asks: RFC 9728 metadata, RFC 8707 audience, per-method and
//! per-tool scopes read from the `Mcp-Method` and `Mcp-Name` headers.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use crate::token_policy::SecretKeyRef;

/// The route is an MCP server's front door (OAuth 2.0 protected resource, RFC 9728):
/// - `GET /.well-known/oauth-protected-resource` plus the resource's path (and the bare
///   form, when the resource has no path or is the only MCP resource on the host) serves
///   the metadata document, without a token;
/// - a token is accepted only when its audience (`aud`, RFC 8707) holds `resource`
///   exactly; API keys are refused;
/// - 401 and 403 answers carry `WWW-Authenticate: Bearer resource_metadata="...",
///   scope="..."` with every scope the call needs;
/// - the client's token never reaches the MCP server (`passAuthorization` must be off);
///   `upstreamCredential` can send one of the gateway's instead;
/// - `rules` demand scopes per JSON-RPC method and tool, read from the `Mcp-Method` and
///   `Mcp-Name` headers and checked against the body;
/// - a browser `Origin` not allowed is answered 403 (DNS rebinding).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct McpSpec {
    /// The MCP server's canonical URI (RFC 8707 section 2, MCP "canonical server URI"),
    /// e.g. `https://mcp.example.com/mcp`: what clients send as `resource` when they ask
    /// for a token, and what the token's `aud` must hold. An absolute `https://` URI
    /// (`http://` only for loopback hosts) without query or fragment.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(
        validation = Rule::new("self.startsWith('https://') || self.startsWith('http://127.0.0.1') || self.startsWith('http://localhost') || self.startsWith('http://[::1]')").message("mcp.resource must be an https:// URI (plain http only for loopback hosts), e.g. https://mcp.example.com/mcp"),
        validation = Rule::new("!self.contains('#') && !self.contains('?')").message("mcp.resource cannot hold a query or a fragment (RFC 8707 section 2)")
    )]
    pub resource: String,

    /// Authorization servers clients should get tokens from, listed in the metadata
    /// (`authorization_servers`). Default: the issuers of the route's TokenPolicy.
    #[schemars(length(max = 16), inner(length(max = 2048)))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorization_servers: Vec<String>,

    /// Scopes listed in the metadata (`scopes_supported`). Default: every scope the
    /// route's rules and `mcp.rules` demand.
    #[schemars(length(max = 128), inner(length(max = 128)))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes_supported: Vec<String>,

    /// A human-readable name for the metadata (`resource_name`).
    #[schemars(length(max = 256))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_name: Option<String>,

    /// A URL of documentation for developers (`resource_documentation`).
    #[schemars(length(max = 2048))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_documentation: Option<String>,

    /// Browser origins allowed to call (`Origin` header, compared exactly, e.g.
    /// `https://app.example.com`). A request with an `Origin` that is neither listed nor
    /// the resource's own origin is answered 403, as the Streamable HTTP transport
    /// requires against DNS rebinding. Requests without `Origin` (non-browser clients)
    /// are not affected.
    #[schemars(length(max = 32), inner(length(max = 512)))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_origins: Vec<String>,

    /// A credential of the gateway's own sent to the MCP server instead of the client's
    /// token (which is never forwarded, MCP "token passthrough" is forbidden).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_credential: Option<McpUpstreamCredential>,

    /// Scopes per JSON-RPC method and name, on top of what the path rule demands. The
    /// most specific rule applies: `method` + `name` beats `method` alone. Requests are
    /// matched on the `Mcp-Method` and `Mcp-Name` headers, which must then agree with the
    /// JSON-RPC body (`method`, and `params.name` or `params.uri`), else 400. While any
    /// rule exists, a POST without `Mcp-Method`, a JSON-RPC batch, or an
    /// `MCP-Protocol-Version` older than `minProtocolVersion` is answered 400.
    #[schemars(length(max = 256))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<McpRule>,

    /// The oldest `MCP-Protocol-Version` accepted while `rules` exist: older versions do
    /// not promise the `Mcp-Method`/`Mcp-Name` headers the rules are matched on. Default
    /// `2026-07-28`. Versions compare as dates.
    #[schemars(length(max = 10))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]{4}-[0-9]{2}-[0-9]{2}$')").message("minProtocolVersion is a date such as 2026-07-28"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_protocol_version: Option<String>,
}

/// A credential from a Secret, sent to the MCP server in place of the client's token.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct McpUpstreamCredential {
    /// The Secret key holding the credential, in the route's namespace.
    pub secret_ref: SecretKeyRef,
    /// The header it is sent in. Default `authorization`, as `Bearer <value>`; any other
    /// header gets the value as it is.
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9][-A-Za-z0-9]*$')").message("upstreamCredential.header must be a header name (letters, digits and dashes)"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
}

/// Scopes demanded of one JSON-RPC method, or of one tool, prompt or resource.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("(has(self.requiredScopes) && self.requiredScopes.size() > 0) || (has(self.anyScopes) && self.anyScopes.size() > 0) || (has(self.deny) && self.deny)").message("an mcp rule needs requiredScopes, anyScopes or deny: true")
)]
pub struct McpRule {
    /// The JSON-RPC method (`Mcp-Method`), e.g. `tools/call`, `resources/read`,
    /// `prompts/get`, `tools/list`.
    #[schemars(length(min = 1, max = 128))]
    pub method: String,
    /// The tool or prompt name, or resource URI (`Mcp-Name`), e.g. `delete_repository`.
    /// Unset: every call of the method without a more specific rule.
    #[schemars(length(min = 1, max = 512))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Scopes the token must hold, all of them.
    #[schemars(length(max = 64), inner(length(max = 128)))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_scopes: Vec<String>,
    /// Scopes of which the token must hold at least one.
    #[schemars(length(max = 64), inner(length(max = 128)))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub any_scopes: Vec<String>,
    /// Refuse the call whatever the token holds (403).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deny: bool,
}
