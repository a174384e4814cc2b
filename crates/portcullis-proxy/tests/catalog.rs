//! The API catalog over real sockets: who may read it (a token of the catalog policy with
//! the catalog scope, from `Authorization` or the login form's cookie), what each reader
//! sees (public, own namespace, shared), search, the detail page with the OpenAPI
//! document of an LLM route, and what it never shows (keys, Secrets, backends).

mod support;

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use support::{Gateway, signer};

const SECRET_KEY: &str = "sk-catalog-must-never-show-this";

fn policy(ns: &str, revoked_jti: &str) -> String {
    serde_yaml::to_string(&json!({
        "apiVersion": "portcullis.dev/v1alpha1", "kind": "TokenPolicy",
        "metadata": {"name": "default", "namespace": ns},
        "spec": {
            "issuers": [{"issuer": support::ISSUER, "audiences": ["api"], "algorithms": ["RS256"],
                         "jwks": {"inline": {"keys": [signer().jwk]}}}],
            "revocations": [{"jti": revoked_jti}],
        }
    }))
    .unwrap()
}

fn route(ns: &str, name: &str, extra: &str) -> String {
    format!(
        "apiVersion: portcullis.dev/v1alpha1\nkind: ApiRoute\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  hosts: [{name}.test]\n  policyRef: {{name: default}}\n  backend: {{url: \"http://127.0.0.1:9\"}}\n{extra}\n  rules:\n    - match: {{pathPrefix: /orders, methods: [GET]}}\n      requiredScopes: [orders:read]\n    - match: {{path: /health}}\n      auth: none\n"
    )
}

fn llm_route() -> String {
    format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: llm-keys, namespace: default}}
stringData: {{key: {SECRET_KEY}}}
---
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {{name: assistant, namespace: default}}
spec:
  hosts: [llm.test]
  policyRef: {{name: default}}
  tags: [ai]
  backend:
    llm:
      provider: openaiCompatible
      url: http://127.0.0.1:9/v1
      credentials: [{{secretRef: {{name: llm-keys, key: key}}}}]
      models: [{{name: gpt-4o-mini, providerModel: stub-small}}]
  rules:
    - match: {{pathPrefix: /v1}}
"#
    )
}

fn mint(scope: &str, jti: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    signer().mint(
        &json!({"iss": support::ISSUER, "aud": "api", "sub": "alice", "iat": now - 5,
        "exp": now + 300, "scope": scope, "jti": jti}),
    )
}

async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, http::HeaderMap, String) {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("host", format!("{addr}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = support::client()
        .request(req.body(Full::new(Bytes::from(body.to_owned()))).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// A GET with `Authorization: <authorization>`.
async fn get(
    addr: SocketAddr,
    path: &str,
    authorization: &str,
) -> (StatusCode, http::HeaderMap, String) {
    call(addr, "GET", path, &[("authorization", authorization)], "").await
}

fn ids(body: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(body).unwrap();
    v["apis"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_catalog_shows_each_reader_what_it_may_see_and_never_a_secret() {
    let files = [
        ("p.yaml", policy("default", "revoked-1")),
        ("p2.yaml", policy("other", "none")),
        (
            "orders.yaml",
            route(
                "default",
                "orders",
                "  description: \"Orders <script>alert(1)</script>\"\n  tags: [orders, commerce]\n  owner: {team: commerce, contact: commerce@example.com}",
            ),
        ),
        (
            "v1.yaml",
            route(
                "default",
                "orders-v1",
                "  tags: [orders, legacy]\n  lifecycle: {stage: Deprecated, deprecatedAt: \"2026-01-01T00:00:00Z\", sunsetAt: \"2099-01-01T00:00:00Z\", successor: \"https://orders.test/v2\"}",
            ),
        ),
        ("llm.yaml", llm_route()),
        ("secret.yaml", route("other", "secret-api", "")),
        (
            "weather.yaml",
            route("other", "weather", "  catalog: {visibility: Public}"),
        ),
        (
            "shared.yaml",
            route(
                "other",
                "shared",
                "  catalog: {visibility: Namespaces, namespaces: [default]}",
            ),
        ),
    ];
    let gw = Gateway::start(&files, |o| {
        o.catalog = Some((
            "127.0.0.1:0".parse().unwrap(),
            portcullis_proxy::catalog::CatalogOptions {
                policy: "default/default".into(),
                scope: "catalog:read".into(),
            },
        ));
    })
    .await;
    assert!(
        gw.running.config.info().errors.is_empty(),
        "{:?}",
        gw.running.config.info().errors
    );
    let at = gw.running.catalog_addr.expect("the catalog listens");
    let reader = mint("catalog:read catalog:namespace:default", "r-1");
    let auth = format!("Bearer {reader}");
    let mut everything = String::new();

    // No credential: 401, the login form, a challenge.
    let (s, h, body) = call(at, "GET", "/", &[], "").await;
    assert_eq!(s, 401);
    assert!(body.contains(r#"id="login-form""#), "{body}");
    assert!(
        h["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    assert!(
        h["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    // A valid token without the catalog scope: 403. A revoked one: 401.
    let no_scope = format!("Bearer {}", mint("orders:read", "r-2"));
    let (s, _, _) = get(at, "/api/v1/apis", &no_scope).await;
    assert_eq!(s, 403);
    let revoked = format!("Bearer {}", mint("catalog:read catalog:all", "revoked-1"));
    let (s, _, _) = get(at, "/api/v1/apis", &revoked).await;
    assert_eq!(s, 401, "a revoked token reads the catalog");
    let (s, _, _) = get(at, "/api/v1/apis", "Bearer not-a-token").await;
    assert_eq!(s, 401);

    // What alice (namespace default) sees: her namespace, the public API, the one shared
    // with her namespace; not other/secret-api.
    let (s, _, body) = get(at, "/api/v1/apis", &auth).await;
    assert_eq!(s, 200);
    assert_eq!(
        ids(&body),
        [
            "default/assistant",
            "default/orders",
            "default/orders-v1",
            "other/shared",
            "other/weather"
        ]
    );
    everything.push_str(&body);
    let (s, _, _) = get(at, "/apis/other/secret-api", &auth).await;
    assert_eq!(s, 404);
    let (s, _, _) = get(at, "/api/v1/apis/other/secret-api", &auth).await;
    assert_eq!(s, 404);
    // catalog:all sees it.
    let all = format!("Bearer {}", mint("catalog:read catalog:all", "r-3"));
    let (_, _, body) = get(at, "/api/v1/apis", &all).await;
    assert!(ids(&body).contains(&"other/secret-api".to_owned()));

    // Search: free text, tag, scope.
    let search = |q: &'static str| {
        let auth = auth.clone();
        async move { ids(&get(at, q, &auth).await.2) }
    };
    assert_eq!(search("/api/v1/apis?q=legacy").await, ["default/orders-v1"]);
    assert_eq!(
        search("/api/v1/apis?tag=orders").await,
        ["default/orders", "default/orders-v1"]
    );
    assert_eq!(search("/api/v1/apis?q=COMMERCE").await, ["default/orders"]);
    assert_eq!(
        search("/api/v1/apis?scope=model%3Agpt-4o-mini").await,
        Vec::<String>::new()
    );
    assert_eq!(search("/api/v1/apis?scope=orders%3Aread").await.len(), 4);

    // The list page and a detail page: escaped, with the rules' scopes and the issuers.
    let (s, _, list) = get(at, "/?q=orders", &auth).await;
    assert_eq!(s, 200);
    assert!(
        list.contains(r#"<a class="api-name" href="/apis/default/orders">default/orders</a>"#),
        "{list}"
    );
    assert!(list.contains("stage-deprecated"));
    assert!(
        !list.contains("<script>"),
        "unescaped description in the list"
    );
    everything.push_str(&list);
    let (s, _, detail) = get(at, "/apis/default/orders", &auth).await;
    assert_eq!(s, 200);
    assert!(detail.contains("Orders &lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(detail.contains(r#"<table id="rules">"#) && detail.contains("orders:read"));
    assert!(detail.contains(support::ISSUER));
    assert!(detail.contains("commerce@example.com"));
    everything.push_str(&detail);
    let (_, _, deprecated) = get(at, "/apis/default/orders-v1", &auth).await;
    assert!(deprecated.contains(r#"id="deprecation-banner""#));
    assert!(deprecated.contains(r#"<a href="https://orders.test/v2">"#));
    // The LLM route: its OpenAPI document, rendered and as JSON.
    let (_, _, llm) = get(at, "/apis/default/assistant", &auth).await;
    assert!(
        llm.contains(r#"id="openapi""#) && llm.contains("/v1/chat/completions"),
        "{llm}"
    );
    everything.push_str(&llm);
    let (s, _, doc) = get(at, "/api/v1/apis/default/assistant/openapi.json", &auth).await;
    assert_eq!(s, 200);
    let doc: Value = serde_json::from_str(&doc).unwrap();
    assert!(doc["paths"]["/v1/chat/completions"]["post"].is_object());
    let (_, _, one) = get(at, "/api/v1/apis/default/assistant", &auth).await;
    everything.push_str(&one);
    // Never a secret, a key, a backend address or the reader's token.
    for needle in [SECRET_KEY, "-----BEGIN", "127.0.0.1:9", &reader, "\"n\":"] {
        assert!(
            !everything.contains(needle),
            "the catalog showed {needle:?}"
        );
    }

    // The login form: a cookie (HttpOnly, SameSite=Strict), then the pages with it.
    let form = format!("token={reader}");
    let (s, h, body) = call(
        at,
        "POST",
        "/login",
        &[("content-type", "application/x-www-form-urlencoded")],
        &form,
    )
    .await;
    assert_eq!(s, 303, "{body}");
    let cookie = h["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_owned();
    let (s, _, body) = call(at, "GET", "/", &[("cookie", &pair)], "").await;
    assert_eq!(s, 200);
    assert!(body.contains("default/orders") && !body.contains(&reader));
    // A bad token at the form: refused, and no cookie.
    let (s, h, _) = call(
        at,
        "POST",
        "/login",
        &[("content-type", "application/x-www-form-urlencoded")],
        "token=abc.def.ghi",
    )
    .await;
    assert_eq!(s, 401);
    assert!(h.get("set-cookie").is_none());
    // Sign out clears it.
    let (s, h, _) = call(at, "POST", "/logout", &[("cookie", &pair)], "").await;
    assert_eq!(s, 303);
    assert!(h["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
}
