//! Test support: freshly generated keys of every kind, token minting (including tokens no
//! honest issuer would mint), and manifest fixtures.
#![allow(dead_code, missing_docs, unused_imports)]

use std::sync::{Arc, OnceLock};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use k8s_openapi::api::core::v1::Secret;
use portcullis_api::{ApiRoute, TokenPolicy};
use portcullis_policy::{CompileOptions, ManualClock, Snapshot};
use serde_json::{Value, json};

pub const NOW: i64 = 1_800_000_000;
pub const ISSUER: &str = "https://auth.example.com";
pub const AUDIENCE: &str = "orders-api";
pub const HMAC_SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test-only";

pub use portcullis_testkit::{TestKey, b64url as b64};
use portcullis_testkit::{ec, ed, rsa};

pub struct Keys {
    pub rsa: TestKey,
    pub rsa2: TestKey,
    pub ec256: TestKey,
    pub ec384: TestKey,
    pub ed: TestKey,
}

pub fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        rsa: rsa("rsa-1"),
        rsa2: rsa("rsa-2"),
        ec256: ec("ec-1", false),
        ec384: ec("ec-384", true),
        ed: ed("ed-1"),
    })
}

/// Standard claims: valid for an hour around NOW, for AUDIENCE, with `orders:read`.
pub fn claims() -> Value {
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "jti": "jti-1",
        "iat": NOW - 60, "exp": NOW + 600, "scope": "orders:read profile",
        "email": "alice@example.com",
    })
}

/// Signs `claims` with `key`, kid in the header.
pub fn mint(key: &TestKey, claims: &Value) -> String {
    key.mint(claims)
}

/// Signs with an arbitrary header JSON (for `crit`, duplicate members, odd `alg`s).
pub fn mint_raw(key: &TestKey, header_json: &str, claims_json: &str) -> String {
    key.mint_raw(header_json, claims_json)
}

pub fn mint_hmac(secret: &[u8], alg: Algorithm, claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        claims,
        &EncodingKey::from_secret(secret).unwrap(),
    )
    .unwrap()
}

/// A policy `shop/default` trusting ISSUER with every test key inline.
pub fn policy() -> TokenPolicy {
    let k = keys();
    let jwks = json!({"keys": [k.rsa.jwk, k.rsa2.jwk, k.ec256.jwk, k.ec384.jwk, k.ed.jwk]});
    serde_json::from_value(json!({
        "apiVersion": "portcullis.dev/v1alpha1", "kind": "TokenPolicy",
        "metadata": {"name": "default", "namespace": "shop"},
        "spec": {
            "issuers": [{
                "issuer": ISSUER, "audiences": [AUDIENCE],
                "algorithms": ["RS256", "PS256", "ES256", "ES384", "EdDSA"],
                "jwks": {"inline": jwks},
            }],
            "forwardClaims": {"sub": "X-User", "email": "X-Email"},
        }
    }))
    .unwrap()
}

/// A route `shop/orders` on api.example.com with a few rules.
pub fn route() -> ApiRoute {
    serde_yaml::from_str(
        r#"
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {name: orders, namespace: shop}
spec:
  hosts: [api.example.com]
  policyRef: {name: default}
  backend: {url: "http://127.0.0.1:9000"}
  rules:
    - match: {pathPrefix: /orders, methods: [GET]}
      requiredScopes: [orders:read]
    - match: {pathPrefix: /orders, methods: [POST, DELETE]}
      requiredScopes: [orders:write]
    - match: {path: /health}
      auth: none
    - match: {pathPrefix: /me}
    - match: {pathPrefix: /reports}
      anyScopes: [reports:read, admin]
"#,
    )
    .unwrap()
}

pub fn hmac_secret() -> Secret {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "hmac", "namespace": "shop"},
        "data": {"key": STANDARD.encode(HMAC_SECRET)},
    }))
    .unwrap()
}

pub struct Fixture {
    pub snapshot: Snapshot,
    pub clock: Arc<ManualClock>,
}

pub fn options(clock: &Arc<ManualClock>) -> CompileOptions {
    CompileOptions {
        clock: clock.clone(),
        ..Default::default()
    }
}

pub fn build(routes: &[ApiRoute], policies: &[TokenPolicy], secrets: &[Secret]) -> Fixture {
    let clock = Arc::new(ManualClock::new(NOW));
    let (snapshot, errors) =
        portcullis_policy::compile_with(&options(&clock), routes, policies, secrets);
    assert!(errors.is_empty(), "unexpected compile errors: {errors:#?}");
    Fixture { snapshot, clock }
}

pub fn standard() -> Fixture {
    build(&[route()], &[policy()], &[])
}
