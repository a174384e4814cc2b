//! MCP resource-server mode (`spec.mcp` of an ApiRoute), compiled.
//!
//! What the MCP authorization specification asks of the server side, decided here:
//! - RFC 9728 protected-resource metadata, served without a token at
//!   `/.well-known/oauth-protected-resource` + the resource's path (RFC 9728 section 3.1);
//! - `WWW-Authenticate: Bearer resource_metadata="...", scope="..."` on 401 and 403
//!   (RFC 9728 section 5.1, RFC 6750 section 3);
//! - the token's audience must hold the canonical resource URI (RFC 8707 section 2);
//! - scopes per JSON-RPC method and tool, matched on the `Mcp-Method`/`Mcp-Name`
//!   headers; the proxy checks the body agrees ([`expected_call`], [`body_agrees`]);
//! - the `Origin` check of the Streamable HTTP transport (DNS rebinding).

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use serde_json::Value;

use crate::reason::DenyReason;

/// The header naming the JSON-RPC method of a POST (`tools/call`).
pub const MCP_METHOD: HeaderName = HeaderName::from_static("mcp-method");
/// The header naming the tool or prompt (or resource URI) a call is about.
pub const MCP_NAME: HeaderName = HeaderName::from_static("mcp-name");
/// The negotiated protocol version, sent by clients after initialization.
pub const MCP_PROTOCOL_VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");

/// The well-known path prefix of RFC 9728 metadata.
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// The default oldest protocol version accepted while per-method rules exist: the first
/// revision whose clients send `Mcp-Method` and `Mcp-Name` on every POST.
pub const DEFAULT_MIN_PROTOCOL_VERSION: &str = "2026-07-28";

/// The MCP headers of a request, read by the proxy (borrowed: building it allocates
/// nothing).
#[derive(Debug, Clone, Copy, Default)]
pub struct McpHeaders<'a> {
    /// `Mcp-Method`.
    pub method: Option<&'a str>,
    /// `Mcp-Name`.
    pub name: Option<&'a str>,
    /// `MCP-Protocol-Version`.
    pub protocol_version: Option<&'a str>,
    /// `Origin`.
    pub origin: Option<&'a str>,
}

/// Scopes one MCP rule demands.
#[derive(Debug, Clone, Default)]
pub(crate) struct McpScopes {
    pub(crate) all: Box<[Box<str>]>,
    pub(crate) any: Box<[Box<str>]>,
    pub(crate) deny: bool,
}

/// The rules of one JSON-RPC method.
#[derive(Debug, Clone, Default)]
pub(crate) struct MethodRules {
    pub(crate) any_name: Option<McpScopes>,
    pub(crate) by_name: HashMap<Box<str>, McpScopes>,
}

/// A route's MCP resource-server mode.
#[derive(Debug, Clone)]
pub struct McpRoute {
    /// The canonical resource URI the token's `aud` must hold.
    pub resource: Arc<str>,
    /// The absolute URL of the metadata document (for `resource_metadata`).
    pub metadata_url: Box<str>,
    /// The paths the metadata is served at on the route's hosts.
    pub metadata_paths: Vec<String>,
    /// The metadata document (JSON).
    pub metadata: Arc<str>,
    /// Allowed `Origin` values (the resource's own origin included).
    pub(crate) origins: Box<[Box<str>]>,
    /// What the MCP server gets in place of the client's token.
    pub upstream_credential: Option<(HeaderName, HeaderValue)>,
    pub(crate) rules: HashMap<Box<str>, MethodRules>,
    /// True when per-method rules exist: JSON-RPC requests must name their method in
    /// `Mcp-Method`, and old protocol versions are refused.
    pub strict: bool,
    pub(crate) min_version: Box<str>,
}

impl McpRoute {
    /// The rule for a call, most specific first.
    pub(crate) fn rule_for(&self, h: &McpHeaders<'_>) -> Option<&McpScopes> {
        let m = self.rules.get(h.method?)?;
        h.name
            .and_then(|n| m.by_name.get(n))
            .or(m.any_name.as_ref())
    }

    /// The check made before any token is looked at: the `Origin` (403).
    pub(crate) fn check_request(&self, h: &McpHeaders<'_>) -> Result<(), DenyReason> {
        if let Some(origin) = h.origin
            && !self.origins.iter().any(|o| **o == *origin)
        {
            return Err(DenyReason::McpOrigin);
        }
        Ok(())
    }

    /// Whether a POST's `MCP-Protocol-Version` promises the `Mcp-Method`/`Mcp-Name`
    /// headers the rules are matched on (MCP 2026-07-28, transport, "Request Metadata":
    /// intermediaries SHOULD reject rather than trust the headers of older versions).
    /// Always true without rules. Versions are dates (YYYY-MM-DD) and compare as
    /// strings; one that is not a date is refused rather than guessed at.
    pub fn version_accepted(&self, version: Option<&str>) -> bool {
        !self.strict || version.is_some_and(|v| is_version(v) && v >= &*self.min_version)
    }

    /// The oldest protocol version accepted while rules exist.
    pub fn min_version(&self) -> &str {
        &self.min_version
    }
}

fn is_version(v: &str) -> bool {
    let b = v.as_bytes();
    b.len() == 10
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            _ => c.is_ascii_digit(),
        })
}

/// Decodes an `Mcp-Name` (or `Mcp-Method`) value sent in the Base64 form of MCP
/// 2026-07-28 (`=?base64?<base64 of UTF-8>?=`, for values that are not plain visible
/// ASCII). `None` when the value is not in that form; `Some(Err)` when it is but does not
/// decode.
pub fn decode_header_value(v: &str) -> Option<Result<String, ()>> {
    use base64::Engine;
    let inner = v.strip_prefix("=?base64?")?.strip_suffix("?=")?;
    Some(
        base64::engine::general_purpose::STANDARD
            .decode(inner)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or(()),
    )
}

/// The origin (`scheme://host[:port]`) of an absolute URL.
pub(crate) fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    // Browsers send the host lower-cased (RFC 6454 section 6.2, from the URL's host).
    (!authority.is_empty()).then(|| format!("{scheme}://{authority}").to_ascii_lowercase())
}

/// Parses an MCP request body as JSON in which no object repeats a member, at any depth:
/// `{"method":"tools/list","method":"tools/call"}` reads as `tools/call` to a last-wins
/// parser and `tools/list` to a first-wins one, so the gateway and the MCP server could
/// decide on different calls. Refused instead.
pub fn parse_body(bytes: &[u8]) -> Result<Value, &'static str> {
    use serde::Deserialize;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let v = StrictValue::deserialize(&mut de)
        .map_err(|_| "the body is not JSON with unique members")?;
    de.end().map_err(|_| "the body is not one JSON value")?;
    Ok(v.0)
}

/// A JSON value whose objects have unique members, at every depth.
struct StrictValue(Value);

impl<'de> serde::Deserialize<'de> for StrictValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{Error, MapAccess, SeqAccess, Visitor};
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StrictValue;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("JSON with unique object members")
            }
            fn visit_bool<E>(self, v: bool) -> Result<StrictValue, E> {
                Ok(StrictValue(Value::Bool(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<StrictValue, E> {
                Ok(StrictValue(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<StrictValue, E> {
                Ok(StrictValue(v.into()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<StrictValue, E> {
                Ok(StrictValue(
                    serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number),
                ))
            }
            fn visit_str<E>(self, v: &str) -> Result<StrictValue, E> {
                Ok(StrictValue(Value::String(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<StrictValue, E> {
                Ok(StrictValue(Value::String(v)))
            }
            fn visit_unit<E>(self) -> Result<StrictValue, E> {
                Ok(StrictValue(Value::Null))
            }
            fn visit_none<E>(self) -> Result<StrictValue, E> {
                Ok(StrictValue(Value::Null))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<StrictValue, A::Error> {
                let mut out = Vec::new();
                while let Some(StrictValue(v)) = a.next_element()? {
                    out.push(v);
                }
                Ok(StrictValue(Value::Array(out)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<StrictValue, A::Error> {
                let mut map = serde_json::Map::new();
                while let Some((k, StrictValue(v))) = a.next_entry::<String, StrictValue>()? {
                    if map.insert(k, v).is_some() {
                        return Err(A::Error::custom("duplicate member"));
                    }
                }
                Ok(StrictValue(Value::Object(map)))
            }
        }
        d.deserialize_any(V)
    }
}

/// The JSON-RPC method and name a request body carries: `(method, name)` for a request or
/// notification, `None` for a response (no `method`). `Err` when the body is not one
/// JSON-RPC message (a batch, a non-object, a non-string method).
pub fn body_call(body: &Value) -> Result<Option<(&str, Option<&str>)>, &'static str> {
    let Value::Object(msg) = body else {
        return Err(if body.is_array() {
            "JSON-RPC batches are not accepted"
        } else {
            "the body is not a JSON-RPC message"
        });
    };
    let Some(method) = msg.get("method") else {
        return Ok(None);
    };
    let method = method.as_str().ok_or("method must be a string")?;
    let params = msg.get("params");
    let field = match method {
        "tools/call" | "prompts/get" => "name",
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => "uri",
        _ => return Ok(Some((method, None))),
    };
    let name = params
        .and_then(|p| p.get(field))
        .map(|v| v.as_str().ok_or("params name or uri must be a string"))
        .transpose()?;
    Ok(Some((method, name)))
}

/// Whether a request body agrees with its `Mcp-Method`/`Mcp-Name` headers. With `strict`
/// (per-method rules), a JSON-RPC request or notification must carry `Mcp-Method`; a
/// response (no `method`) must not. An `Mcp-Name` without a name in the body, or the
/// reverse on a method that names something, disagrees.
pub fn body_agrees(
    body: &Value,
    method: Option<&str>,
    name: Option<&str>,
    strict: bool,
) -> Result<(), &'static str> {
    match (body_call(body)?, method) {
        (None, None) => Ok(()),
        (None, Some(_)) => Err("Mcp-Method is set but the body is not a JSON-RPC request"),
        (Some(_), None) if strict => Err("Mcp-Method is required on this MCP server"),
        (Some(_), None) => Ok(()),
        (Some((m, n)), Some(hm)) => {
            if m != hm {
                Err("Mcp-Method does not match the body's method")
            } else if n != name {
                Err("Mcp-Name does not match the body's name or uri")
            } else {
                Ok(())
            }
        }
    }
}

/// Compiles `spec.mcp`. `policy_issuers` are the issuers of the route's policy (the
/// default `authorization_servers`); `route_scopes` every scope the route's rules demand.
pub(crate) fn compile(
    spec: &portcullis_api::McpSpec,
    policy_issuers: &[String],
    route_scopes: &[String],
    upstream_credential: Option<(HeaderName, HeaderValue)>,
) -> Result<McpRoute, (String, String)> {
    let resource = spec.resource.as_str();
    let Some(origin) = origin_of(resource) else {
        return Err((
            "spec.mcp.resource".into(),
            format!("{resource:?} is not an absolute URI"),
        ));
    };
    if resource.contains(['#', '?']) {
        return Err((
            "spec.mcp.resource".into(),
            "the resource URI cannot hold a query or a fragment (RFC 8707 section 2)".into(),
        ));
    }
    let path = resource[origin.len()..].trim_end_matches('/');
    // RFC 9728 section 3.1: the well-known segment goes between host and path.
    let suffixed = format!("{METADATA_PATH}{path}");
    let metadata_url = format!("{origin}{suffixed}");
    let mut metadata_paths = vec![suffixed];
    if !path.is_empty() {
        metadata_paths.push(METADATA_PATH.to_owned());
    }

    let mut rules: HashMap<Box<str>, MethodRules> = HashMap::new();
    let mut all_scopes: Vec<String> = route_scopes.to_vec();
    for (i, r) in spec.rules.iter().enumerate() {
        let at = format!("spec.mcp.rules[{i}]");
        if r.method.is_empty() || r.method.bytes().any(|b| b.is_ascii_whitespace()) {
            return Err((
                format!("{at}.method"),
                "method must be a JSON-RPC method such as tools/call".into(),
            ));
        }
        if r.required_scopes.is_empty() && r.any_scopes.is_empty() && !r.deny {
            return Err((
                at,
                "an mcp rule needs requiredScopes, anyScopes or deny: true".into(),
            ));
        }
        let scopes = McpScopes {
            all: r.required_scopes.iter().map(|s| Box::from(&**s)).collect(),
            any: r.any_scopes.iter().map(|s| Box::from(&**s)).collect(),
            deny: r.deny,
        };
        all_scopes.extend(r.required_scopes.iter().cloned());
        all_scopes.extend(r.any_scopes.iter().cloned());
        let entry = rules.entry(r.method.as_str().into()).or_default();
        let dup = match &r.name {
            Some(n) => entry.by_name.insert(n.as_str().into(), scopes).is_some(),
            None => entry.any_name.replace(scopes).is_some(),
        };
        if dup {
            return Err((
                at,
                format!(
                    "method {:?}{} has an earlier rule already",
                    r.method,
                    r.name
                        .as_deref()
                        .map(|n| format!(" name {n:?}"))
                        .unwrap_or_default()
                ),
            ));
        }
    }
    let min_version = spec
        .min_protocol_version
        .clone()
        .unwrap_or_else(|| DEFAULT_MIN_PROTOCOL_VERSION.into());
    if !is_version(&min_version) {
        return Err((
            "spec.mcp.minProtocolVersion".into(),
            "must be a date such as 2026-07-28".into(),
        ));
    }
    all_scopes.sort();
    all_scopes.dedup();
    let scopes_supported = if spec.scopes_supported.is_empty() {
        all_scopes
    } else {
        spec.scopes_supported.clone()
    };
    let servers = if spec.authorization_servers.is_empty() {
        policy_issuers.to_vec()
    } else {
        spec.authorization_servers.clone()
    };
    // RFC 9728 section 2.
    let mut doc = serde_json::json!({
        "resource": resource,
        "authorization_servers": servers,
        "scopes_supported": scopes_supported,
        "bearer_methods_supported": ["header"],
    });
    if let Some(n) = &spec.resource_name {
        doc["resource_name"] = n.clone().into();
    }
    if let Some(d) = &spec.resource_documentation {
        doc["resource_documentation"] = d.clone().into();
    }
    let mut origins: Vec<Box<str>> = vec![origin.into()];
    origins.extend(spec.allowed_origins.iter().map(|o| Box::from(o.as_str())));
    Ok(McpRoute {
        resource: resource.into(),
        metadata_url: metadata_url.into(),
        metadata_paths,
        metadata: doc.to_string().into(),
        origins: origins.into(),
        upstream_credential,
        strict: !spec.rules.is_empty(),
        rules,
        min_version: min_version.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn route(rules: serde_json::Value) -> McpRoute {
        let spec: portcullis_api::McpSpec = serde_json::from_value(json!({
            "resource": "https://mcp.example.com/mcp",
            "rules": rules,
        }))
        .unwrap();
        compile(
            &spec,
            &["https://idp.example.com".into()],
            &["mcp".into()],
            None,
        )
        .unwrap()
    }

    #[test]
    fn metadata_is_served_at_the_path_suffixed_well_known_uri() {
        // RFC 9728 section 3.1: https://mcp.example.com/mcp ->
        // https://mcp.example.com/.well-known/oauth-protected-resource/mcp
        let r = route(json!([]));
        assert_eq!(
            &*r.metadata_url,
            "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(
            r.metadata_paths,
            [
                "/.well-known/oauth-protected-resource/mcp",
                "/.well-known/oauth-protected-resource"
            ]
        );
        let doc: Value = serde_json::from_str(&r.metadata).unwrap();
        assert_eq!(doc["resource"], "https://mcp.example.com/mcp");
        assert_eq!(
            doc["authorization_servers"],
            json!(["https://idp.example.com"])
        );
        assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
        assert_eq!(doc["scopes_supported"], json!(["mcp"]));
    }

    #[test]
    fn the_most_specific_rule_applies() {
        let r = route(json!([
            {"method": "tools/call", "requiredScopes": ["tools"]},
            {"method": "tools/call", "name": "delete", "requiredScopes": ["admin"]},
        ]));
        let h = |name| McpHeaders {
            method: Some("tools/call"),
            name,
            ..Default::default()
        };
        assert_eq!(&*r.rule_for(&h(Some("delete"))).unwrap().all[0], "admin");
        assert_eq!(&*r.rule_for(&h(Some("get"))).unwrap().all[0], "tools");
        assert_eq!(&*r.rule_for(&h(None)).unwrap().all[0], "tools");
        assert!(
            r.rule_for(&McpHeaders {
                method: Some("tools/list"),
                ..Default::default()
            })
            .is_none()
        );
    }

    #[test]
    fn foreign_origins_and_old_versions_are_refused() {
        let r = route(json!([{"method": "tools/call", "requiredScopes": ["tools"]}]));
        let with = |origin, version| McpHeaders {
            origin,
            protocol_version: version,
            ..Default::default()
        };
        const V: Option<&str> = Some("2026-07-28");
        assert!(r.check_request(&with(None, V)).is_ok());
        assert!(
            r.check_request(&with(Some("https://mcp.example.com"), V))
                .is_ok()
        );
        assert_eq!(
            r.check_request(&with(Some("https://evil.example"), V)),
            Err(DenyReason::McpOrigin)
        );
        // 2025-06-18 clients do not promise Mcp-Method: refused while rules exist, and so
        // is a POST that names no version at all.
        for v in [Some("2025-06-18"), Some("garbage"), None] {
            assert!(!r.version_accepted(v), "{v:?}");
        }
        assert!(r.version_accepted(V));
        assert!(r.version_accepted(Some("2027-01-01")));
        assert!(
            route(json!([])).version_accepted(None),
            "no rules, no demand"
        );
    }

    #[test]
    fn body_and_headers_must_agree() {
        let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "get_weather", "arguments": {}}});
        assert!(body_agrees(&call, Some("tools/call"), Some("get_weather"), true).is_ok());
        // The header names a harmless tool, the body a dangerous one.
        assert!(body_agrees(&call, Some("tools/call"), Some("other"), true).is_err());
        assert!(body_agrees(&call, Some("tools/list"), None, true).is_err());
        assert!(body_agrees(&call, Some("tools/call"), None, true).is_err());
        assert!(body_agrees(&call, None, None, true).is_err());
        assert!(body_agrees(&call, None, None, false).is_ok());
        let read = json!({"jsonrpc": "2.0", "id": 2, "method": "resources/read",
            "params": {"uri": "file:///a"}});
        assert!(body_agrees(&read, Some("resources/read"), Some("file:///a"), true).is_ok());
        let response = json!({"jsonrpc": "2.0", "id": 3, "result": {}});
        assert!(body_agrees(&response, None, None, true).is_ok());
        assert!(body_agrees(&response, Some("tools/call"), None, true).is_err());
        // Batches were removed in 2025-06-18; a batch could hide a second call.
        assert!(
            body_agrees(
                &json!([call]),
                Some("tools/call"),
                Some("get_weather"),
                true
            )
            .is_err()
        );
    }

    #[test]
    fn a_body_repeating_a_member_is_refused_at_any_depth() {
        assert!(parse_body(br#"{"method":"tools/list","method":"tools/call"}"#).is_err());
        assert!(
            parse_body(br#"{"method":"tools/call","params":{"name":"a","name":"b"}}"#).is_err()
        );
        assert!(parse_body(br#"{"a":[{"x":1,"x":2}]}"#).is_err());
        assert!(parse_body(br#"{"a":1} {"b":2}"#).is_err(), "two values");
        let v = parse_body(br#"{"method":"tools/call","params":{"name":"a"},"id":1.5}"#).unwrap();
        assert_eq!(v["params"]["name"], "a");
    }

    #[test]
    fn base64_header_values_are_decoded_mcp_2026_07_28() {
        // "Request Metadata": values that are not plain visible ASCII travel as
        // =?base64?...?= and are compared decoded.
        assert_eq!(
            decode_header_value("=?base64?w6lt w6k=?="),
            Some(Err(())),
            "not base64"
        );
        assert_eq!(
            decode_header_value("=?base64?w6l0w6k=?="),
            Some(Ok("été".to_owned()))
        );
        assert_eq!(decode_header_value("get_weather"), None);
    }
}
