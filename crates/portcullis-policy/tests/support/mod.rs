//! Test support: freshly generated keys of every kind, token minting (including tokens no
//! honest issuer would mint), and manifest fixtures.
#![allow(dead_code, missing_docs)]

use std::sync::{Arc, OnceLock};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{self, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use k8s_openapi::api::core::v1::Secret;
use portcullis_api::{ApiRoute, TokenPolicy};
use portcullis_policy::{CompileOptions, ManualClock, Snapshot};
use serde_json::{Value, json};

pub const NOW: i64 = 1_800_000_000;
pub const ISSUER: &str = "https://auth.example.com";
pub const AUDIENCE: &str = "orders-api";
pub const HMAC_SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test-only";

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// A signing key and its public JWK.
pub struct TestKey {
    pub alg: Algorithm,
    pub kid: String,
    pub encoding: EncodingKey,
    pub jwk: Value,
    pub public_pem: Option<String>,
}

pub struct Keys {
    pub rsa: TestKey,
    pub rsa2: TestKey,
    pub ec256: TestKey,
    pub ec384: TestKey,
    pub ed: TestKey,
}

fn rsa(kid: &str) -> TestKey {
    let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let pkcs8 = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der<'_>>::as_der(&kp).unwrap();
    let encoding =
        EncodingKey::from_rsa_pem(pem("PRIVATE KEY", pkcs8.as_ref()).as_bytes()).unwrap();
    let public = kp.public_key();
    let spki = AsDer::<aws_lc_rs::encoding::PublicKeyX509Der<'_>>::as_der(public).unwrap();
    let jwk = json!({
        "kty": "RSA", "kid": kid, "use": "sig",
        "n": b64(public.modulus().big_endian_without_leading_zero()),
        "e": b64(public.exponent().big_endian_without_leading_zero()),
    });
    TestKey {
        alg: Algorithm::RS256,
        kid: kid.into(),
        encoding,
        jwk,
        public_pem: Some(pem("PUBLIC KEY", spki.as_ref())),
    }
}

fn ec(kid: &str, p384: bool) -> TestKey {
    let alg = if p384 {
        &signature::ECDSA_P384_SHA384_FIXED_SIGNING
    } else {
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING
    };
    let kp = signature::EcdsaKeyPair::generate(alg).unwrap();
    let pkcs8 = kp.to_pkcs8v1().unwrap();
    let point = kp.public_key().as_ref().to_vec();
    let n = (point.len() - 1) / 2;
    let jwk = json!({
        "kty": "EC", "kid": kid, "crv": if p384 { "P-384" } else { "P-256" },
        "x": b64(&point[1..1 + n]), "y": b64(&point[1 + n..]),
    });
    TestKey {
        alg: if p384 {
            Algorithm::ES384
        } else {
            Algorithm::ES256
        },
        kid: kid.into(),
        encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
        jwk,
        public_pem: None,
    }
}

fn ed(kid: &str) -> TestKey {
    let kp = signature::Ed25519KeyPair::generate().unwrap();
    let pkcs8 = kp.to_pkcs8().unwrap();
    let jwk =
        json!({"kty": "OKP", "kid": kid, "crv": "Ed25519", "x": b64(kp.public_key().as_ref())});
    TestKey {
        alg: Algorithm::EdDSA,
        kid: kid.into(),
        encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
        jwk,
        public_pem: None,
    }
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
    let mut header = Header::new(key.alg);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, claims, &key.encoding).unwrap()
}

/// Signs with an arbitrary header JSON (for `crit`, duplicate members, odd `alg`s).
pub fn mint_raw(key: &TestKey, header_json: &str, claims_json: &str) -> String {
    let input = format!(
        "{}.{}",
        b64(header_json.as_bytes()),
        b64(claims_json.as_bytes())
    );
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &key.encoding, key.alg).unwrap();
    format!("{input}.{sig}")
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
