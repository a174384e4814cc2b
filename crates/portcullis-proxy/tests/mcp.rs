//! MCP resource-server mode over real sockets: the standalone gateway in front of a real
//! upstream that records what reaches it. Each test names the specification text that
//! decides it: the MCP authorization specification (revision 2026-07-28), RFC 9728
//! (protected-resource metadata), RFC 8707 (resource indicators), RFC 6750 (bearer
//! challenges).

mod support;

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use support::{Gateway, client, signer, upstream};

const RESOURCE: &str = "https://mcp.example.com/mcp";

/// What the MCP server received: headers and body of each request.
type Seen = Arc<Mutex<Vec<(http::HeaderMap, Bytes)>>>;

fn token(aud: &str, scope: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    signer().mint(&json!({
        "iss": support::ISSUER, "aud": aud, "sub": "alice", "scope": scope,
        "iat": now - 5, "exp": now + 300,
    }))
}

fn policy() -> String {
    let mut doc: Value = serde_yaml::from_str(&support::policy()).unwrap();
    doc["spec"]["issuers"][0]["audiences"] = json!(["api", RESOURCE]);
    serde_yaml::to_string(&doc).unwrap()
}

fn route(up: std::net::SocketAddr) -> String {
    let doc = json!({
        "apiVersion": "portcullis.dev/v1alpha1", "kind": "ApiRoute",
        "metadata": {"name": "mcp", "namespace": "default"},
        "spec": {
            "hosts": ["mcp.example.com"],
            "policyRef": {"name": "default"},
            "backend": {"url": format!("http://{up}")},
            "rules": [{"match": {"pathPrefix": "/mcp"}, "requiredScopes": ["mcp"]}],
            "mcp": {
                "resource": RESOURCE,
                "resourceName": "Example tools",
                "allowedOrigins": ["https://app.example.com"],
                "upstreamCredential": {"secretRef": {"name": "mcp-upstream", "key": "token"}},
                "rules": [
                    {"method": "tools/call", "requiredScopes": ["tools:call"]},
                    {"method": "tools/call", "name": "delete_everything",
                     "requiredScopes": ["tools:call", "admin"]},
                    {"method": "tools/call", "name": "shutdown", "deny": true},
                ],
            },
        }
    });
    serde_yaml::to_string(&doc).unwrap()
}

const SECRET: &str = "apiVersion: v1\nkind: Secret\nmetadata: {name: mcp-upstream, namespace: default}\nstringData: {token: gateway-own-credential}\n";

async fn gateway() -> (Gateway, Seen) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let up = upstream(move |req: Request<hyper::body::Incoming>| {
        let s = s.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            s.lock().unwrap().push((parts.headers, body));
            Response::builder()
                .header("content-type", "application/json")
                .body(
                    Full::new(Bytes::from(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#))
                        .map_err(|e| match e {})
                        .boxed(),
                )
                .unwrap()
        }
    })
    .await;
    let gw = Gateway::start(
        &[
            ("p.yaml", policy()),
            ("r.yaml", route(up)),
            ("s.yaml", SECRET.to_owned()),
        ],
        |_| {},
    )
    .await;
    (gw, seen)
}

async fn send(
    gw: &Gateway,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Response<Bytes> {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", gw.addr()))
        .header("host", "mcp.example.com");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client()
        .request(req.body(Full::new(Bytes::from(body.to_owned()))).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    Response::from_parts(parts, body.collect().await.unwrap().to_bytes())
}

fn call(tool: &str) -> String {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
           "params": {"name": tool, "arguments": {}}})
    .to_string()
}

fn challenge(r: &Response<Bytes>) -> String {
    r.headers()["www-authenticate"].to_str().unwrap().to_owned()
}

const VERSION: (&str, &str) = ("mcp-protocol-version", "2026-07-28");
const JSON: (&str, &str) = ("content-type", "application/json");

#[tokio::test]
async fn metadata_is_served_without_a_token_at_the_path_suffixed_uri_rfc9728_s3() {
    let (gw, seen) = gateway().await;
    for path in [
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource",
    ] {
        let r = send(&gw, "GET", path, &[], "").await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_eq!(r.headers()["content-type"], "application/json");
        let doc: Value = serde_json::from_slice(r.body()).unwrap();
        // RFC 9728 section 3.3: `resource` is the resource identifier the client used.
        assert_eq!(doc["resource"], RESOURCE);
        assert_eq!(doc["authorization_servers"], json!([support::ISSUER]));
        assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
        assert_eq!(doc["resource_name"], "Example tools");
        assert_eq!(
            doc["scopes_supported"],
            json!(["admin", "mcp", "tools:call"])
        );
        // RFC 9728 section 2: DPoP proofs the issuer accepts (its defaults here), not
        // required (dpop mode Optional).
        let algs = doc["dpop_signing_alg_values_supported"].as_array().unwrap();
        assert!(
            algs.contains(&json!("ES256")) && algs.contains(&json!("EdDSA")),
            "{algs:?}"
        );
        assert_eq!(doc["dpop_bound_access_tokens_required"], false);
    }
    assert!(seen.lock().unwrap().is_empty(), "served by the gateway");
}

#[tokio::test]
async fn no_token_is_401_with_resource_metadata_and_scope_rfc9728_s5_1() {
    let (gw, seen) = gateway().await;
    let r = send(
        &gw,
        "POST",
        "/mcp",
        &[
            JSON,
            VERSION,
            ("mcp-method", "tools/call"),
            ("mcp-name", "get_weather"),
        ],
        &call("get_weather"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let c = challenge(&r);
    assert!(
        c.contains(r#"resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource/mcp""#),
        "{c}"
    );
    assert!(c.contains(r#"scope="mcp tools:call""#), "{c}");
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_token_for_another_audience_is_refused_rfc8707_s2() {
    let (gw, seen) = gateway().await;
    // Valid at the policy (aud `api`), but not meant for this MCP server.
    let t = token("api", "mcp tools:call");
    let auth = format!("Bearer {t}");
    let r = send(
        &gw,
        "POST",
        "/mcp",
        &[
            JSON,
            VERSION,
            ("authorization", &auth),
            ("mcp-method", "tools/list"),
        ],
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let c = challenge(&r);
    assert!(c.contains(r#"error="invalid_token""#), "{c}");
    assert!(c.contains("resource_metadata="), "{c}");
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn the_clients_token_never_reaches_the_server_and_the_gateways_credential_does() {
    let (gw, seen) = gateway().await;
    let t = token(RESOURCE, "mcp tools:call");
    let auth = format!("Bearer {t}");
    let r = send(
        &gw,
        "POST",
        "/mcp",
        &[
            JSON,
            VERSION,
            ("authorization", &auth),
            ("mcp-method", "tools/call"),
            ("mcp-name", "get_weather"),
        ],
        &call("get_weather"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let seen = seen.lock().unwrap();
    let (headers, body) = &seen[0];
    // MCP authorization, "Token passthrough": the client's token stops at the gateway.
    assert_eq!(headers["authorization"], "Bearer gateway-own-credential");
    assert!(!format!("{headers:?}").contains(&t));
    assert_eq!(body, &Bytes::from(call("get_weather")));
}

#[tokio::test]
async fn a_tool_rule_demands_its_scopes_and_403_lists_every_scope_needed() {
    let (gw, seen) = gateway().await;
    let t = token(RESOURCE, "mcp tools:call");
    let auth = format!("Bearer {t}");
    let r = send(
        &gw,
        "POST",
        "/mcp",
        &[
            JSON,
            VERSION,
            ("authorization", &auth),
            ("mcp-method", "tools/call"),
            ("mcp-name", "delete_everything"),
        ],
        &call("delete_everything"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let c = challenge(&r);
    assert!(c.contains(r#"error="insufficient_scope""#), "{c}");
    // Every scope of the call, not only the missing one: a client stepping up asks for
    // all at once and keeps what it had.
    assert!(c.contains(r#"scope="mcp tools:call admin""#), "{c}");
    assert!(c.contains("resource_metadata="), "{c}");

    // With admin too, it passes.
    let t = token(RESOURCE, "mcp tools:call admin");
    let auth = format!("Bearer {t}");
    let r = send(
        &gw,
        "POST",
        "/mcp",
        &[
            JSON,
            VERSION,
            ("authorization", &auth),
            ("mcp-method", "tools/call"),
            ("mcp-name", "delete_everything"),
        ],
        &call("delete_everything"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    // A denied tool stays denied whatever the token holds.
    let r = send(
        &gw,
        "POST",
        "/mcp",
        &[
            JSON,
            VERSION,
            ("authorization", &auth),
            ("mcp-method", "tools/call"),
            ("mcp-name", "shutdown"),
        ],
        &call("shutdown"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_body_that_disagrees_with_its_headers_never_reaches_the_server() {
    let (gw, seen) = gateway().await;
    let t = token(RESOURCE, "mcp tools:call");
    let auth = format!("Bearer {t}");
    let base = [JSON, VERSION, ("authorization", auth.as_str())];
    let cases: Vec<(Vec<(&str, &str)>, String)> = vec![
        // Headers name a harmless tool; the body calls the one that needs admin.
        (
            vec![("mcp-method", "tools/call"), ("mcp-name", "get_weather")],
            call("delete_everything"),
        ),
        // No Mcp-Method while rules exist: the body is the only place the method is.
        (vec![], call("delete_everything")),
        // Another method in the header than in the body.
        (
            vec![("mcp-method", "tools/list")],
            call("delete_everything"),
        ),
        // A batch could carry a second call the headers do not name.
        (
            vec![("mcp-method", "tools/call"), ("mcp-name", "get_weather")],
            format!("[{},{}]", call("get_weather"), call("delete_everything")),
        ),
        // The header given twice: no single reading.
        (
            vec![
                ("mcp-method", "tools/call"),
                ("mcp-method", "tools/call"),
                ("mcp-name", "delete_everything"),
            ],
            call("delete_everything"),
        ),
        // Not JSON at all.
        (vec![("mcp-method", "tools/call")], "tools/call".to_owned()),
    ];
    for (extra, body) in cases {
        let mut headers = base.to_vec();
        headers.extend(extra.iter().copied());
        let r = send(&gw, "POST", "/mcp", &headers, &body).await;
        assert!(
            r.status() == StatusCode::BAD_REQUEST || r.status() == StatusCode::FORBIDDEN,
            "{extra:?} {body}: {}",
            r.status()
        );
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "a mismatched call reached the MCP server"
    );
    // HeaderMismatch (-32020), answering the request's id.
    let mut headers = base.to_vec();
    headers.extend([("mcp-method", "tools/call"), ("mcp-name", "get_weather")]);
    let r = send(&gw, "POST", "/mcp", &headers, &call("delete_everything")).await;
    let body: Value = serde_json::from_slice(r.body()).unwrap();
    assert_eq!(
        (body["error"]["code"].clone(), body["id"].clone()),
        (json!(-32020), json!(1))
    );
    // A JSON-RPC response from the client (no method) needs no Mcp-Method.
    let r = send(
        &gw,
        "POST",
        "/mcp",
        &base,
        r#"{"jsonrpc":"2.0","id":7,"result":{}}"#,
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn other_methods_and_repeated_members_cannot_smuggle_a_call() {
    let (gw, seen) = gateway().await;
    let t = token(RESOURCE, "mcp tools:call");
    let auth = format!("Bearer {t}");
    // A PUT carrying tools/call: a server routing on the body alone would run it.
    let r = send(
        &gw,
        "PUT",
        "/mcp",
        &[JSON, VERSION, ("authorization", &auth)],
        &call("delete_everything"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // A name given twice: a first-wins parser and a last-wins one disagree (RFC 8259
    // section 4: names SHOULD be unique; here they must).
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_weather","name":"delete_everything"}}"#;
    let r = send(
        &gw,
        "POST",
        "/mcp",
        &[
            JSON,
            VERSION,
            ("authorization", &auth),
            ("mcp-method", "tools/call"),
            ("mcp-name", "get_weather"),
        ],
        body,
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn old_protocol_versions_are_refused_while_method_rules_exist() {
    let (gw, seen) = gateway().await;
    let t = token(RESOURCE, "mcp tools:call");
    let auth = format!("Bearer {t}");
    // 2025-06-18 clients do not send Mcp-Method: per-tool rules could not hold.
    let r = send(
        &gw,
        "POST",
        "/mcp",
        &[
            JSON,
            ("mcp-protocol-version", "2025-06-18"),
            ("authorization", &auth),
            ("mcp-method", "tools/list"),
        ],
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // MCP 2026-07-28: UnsupportedProtocolVersionError, answering the request's id.
    let body: Value = serde_json::from_slice(r.body()).unwrap();
    assert_eq!(body["error"]["code"], -32022);
    assert_eq!(body["id"], 1);
    assert_eq!(body["error"]["data"]["requested"], "2025-06-18");
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_base64_mcp_name_is_decoded_before_the_rule_is_chosen_mcp_2026_07_28() {
    // "Request Metadata": `Mcp-Name: =?base64?...?=` is compared decoded. Read raw, the
    // encoded name would match no tool rule and fall back to the method's rule.
    let (gw, seen) = gateway().await;
    let t = token(RESOURCE, "mcp tools:call");
    let auth = format!("Bearer {t}");
    let r = send(
        &gw,
        "POST",
        "/mcp",
        &[
            JSON,
            VERSION,
            ("authorization", &auth),
            ("mcp-method", "tools/call"),
            // base64("delete_everything")
            ("mcp-name", "=?base64?ZGVsZXRlX2V2ZXJ5dGhpbmc=?="),
        ],
        &call("delete_everything"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(challenge(&r).contains("admin"));
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_post_without_a_protocol_version_is_refused_while_method_rules_exist() {
    let (gw, seen) = gateway().await;
    let t = token(RESOURCE, "mcp tools:call");
    let auth = format!("Bearer {t}");
    let r = send(
        &gw,
        "POST",
        "/mcp",
        &[JSON, ("authorization", &auth), ("mcp-method", "tools/list")],
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_foreign_origin_is_403_before_anything_else_dns_rebinding() {
    let (gw, seen) = gateway().await;
    let t = token(RESOURCE, "mcp tools:call");
    let auth = format!("Bearer {t}");
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
    let headers = |origin| {
        vec![
            JSON,
            VERSION,
            ("authorization", auth.as_str()),
            ("mcp-method", "tools/list"),
            ("origin", origin),
        ]
    };
    let r = send(&gw, "POST", "/mcp", &headers("http://evil.example"), body).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(seen.lock().unwrap().is_empty());
    for ok in ["https://app.example.com", "https://mcp.example.com"] {
        let r = send(&gw, "POST", "/mcp", &headers(ok), body).await;
        assert_eq!(r.status(), StatusCode::OK, "{ok}");
    }
}
