//! Keys, policies and routes the targets compile once per process (keys come from
//! `portcullis-testkit`, generated fresh per process, so a token in a seed file never
//! verifies: the `jwt` target signs at run time instead).

use std::sync::{Arc, OnceLock};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use k8s_openapi::api::core::v1::Secret;
use portcullis_api::{ApiRoute, TokenPolicy};
use portcullis_policy::{CompileOptions, ManualClock, Snapshot};
use portcullis_testkit::{TestKey, ec, ed, rsa};
use serde_json::{Value, json};

/// The fixed clock every fixture snapshot decides with: 2027-01-15T08:00:00Z.
pub const NOW: i64 = 1_800_000_000;
/// `clockSkew` of the fixture policy, in seconds.
pub const SKEW: i64 = 30;
/// `maxTokenLifetime` of the fixture policy, in seconds.
pub const MAX_LIFETIME: i64 = 3600;
/// The issuer with public keys.
pub const ISSUER: &str = "https://auth.example.com";
/// The issuer with an HMAC secret (from a Secret).
pub const HMAC_ISSUER: &str = "https://hmac.example.com";
/// The accepted audience.
pub const AUDIENCE: &str = "orders-api";
/// The HMAC issuer's shared secret.
pub const HMAC_SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-fuzz-only";
/// A revoked `jti`.
pub const REVOKED_JTI: &str = "revoked-jti";
/// A subject whose tokens issued before `REVOKED_SUBJECT_BEFORE` are revoked.
pub const REVOKED_SUBJECT: &str = "mallory";
/// `issuedBefore` of that revocation (NOW - 600 s).
pub const REVOKED_SUBJECT_BEFORE: i64 = NOW - 600;
/// A revoked key ID (of `Keys::rsa2`).
pub const REVOKED_KID: &str = "rsa-2";

/// Signing keys: the issuer's five, the HMAC secret, and attackers' keys.
pub struct Keys {
    pub rsa: TestKey,
    pub rsa2: TestKey,
    pub ec256: TestKey,
    pub ec384: TestKey,
    pub ed: TestKey,
    /// Not in any policy; kid "rsa-1" (spoofs the real RSA key's kid).
    pub attacker_rsa: TestKey,
}

pub fn keys() -> &'static Keys {
    static K: OnceLock<Keys> = OnceLock::new();
    K.get_or_init(|| Keys {
        rsa: rsa("rsa-1"),
        rsa2: rsa(REVOKED_KID),
        ec256: ec("ec-1", false),
        ec384: ec("ec-384", true),
        ed: ed("ed-1"),
        attacker_rsa: rsa("rsa-1"),
    })
}

/// One way the `jwt` target can sign: which key, which algorithm, and whether a token so
/// signed may ever be allowed (a real key of the issuer it is trusted for).
pub struct Signer {
    pub name: &'static str,
    pub alg: Algorithm,
    pub key: EncodingKey,
    /// The issuer this key is trusted for; `None`: an attacker's key.
    pub trusted_for: Option<&'static str>,
    /// Tokens with this key's kid are revoked.
    pub revoked: bool,
}

pub fn signers() -> &'static [Signer] {
    static S: OnceLock<Vec<Signer>> = OnceLock::new();
    S.get_or_init(|| {
        let k = keys();
        let real = |name, key: &TestKey| Signer {
            name,
            alg: key.alg,
            key: key.encoding.clone(),
            trusted_for: Some(ISSUER),
            revoked: false,
        };
        let hmac = |name, alg, secret: &[u8], trusted| Signer {
            name,
            alg,
            key: EncodingKey::from_secret(secret).expect("HMAC key"),
            trusted_for: trusted,
            revoked: false,
        };
        let rsa_pem = k.rsa.public_pem.clone().unwrap_or_default();
        let rsa_n = k.rsa.jwk["n"].as_str().unwrap_or_default().to_owned();
        let rsa_jwk = k.rsa.jwk.to_string();
        vec![
            real("rsa-1", &k.rsa),
            Signer {
                revoked: true,
                ..real("rsa-2 (revoked kid)", &k.rsa2)
            },
            real("ec-1", &k.ec256),
            real("ec-384", &k.ec384),
            real("ed-1", &k.ed),
            hmac("hmac", Algorithm::HS256, HMAC_SECRET, Some(HMAC_ISSUER)),
            // HS/RS confusion: HMAC keyed with the RSA public key in its published forms.
            hmac("hs256(rsa pem)", Algorithm::HS256, rsa_pem.as_bytes(), None),
            hmac("hs256(rsa n)", Algorithm::HS256, rsa_n.as_bytes(), None),
            hmac("hs256(rsa jwk)", Algorithm::HS256, rsa_jwk.as_bytes(), None),
            hmac("hs384(secret)", Algorithm::HS384, HMAC_SECRET, None),
            Signer {
                name: "attacker rsa (kid rsa-1)",
                alg: Algorithm::RS256,
                key: k.attacker_rsa.encoding.clone(),
                trusted_for: None,
                revoked: false,
            },
            // The right secret under the wrong issuer's name is still an attacker's key
            // for ISSUER: handled by `trusted_for` (HMAC_ISSUER only).
        ]
    })
}

/// A real verification key: kid, issuer, key, the algorithms it may verify.
pub type Verifier = (&'static str, &'static str, DecodingKey, Vec<Algorithm>);

/// The issuers' verification keys with the algorithms each may verify: the independent
/// oracle for "this token verifies under a real key".
pub fn verifiers() -> &'static [Verifier] {
    static V: OnceLock<Vec<Verifier>> = OnceLock::new();
    V.get_or_init(|| {
        use Algorithm::*;
        let k = keys();
        let s = |v: &Value, f: &str| v[f].as_str().unwrap_or_default().to_owned();
        let rsa = |key: &TestKey| {
            DecodingKey::from_rsa_components(&s(&key.jwk, "n"), &s(&key.jwk, "e")).unwrap()
        };
        let ec = |key: &TestKey| {
            DecodingKey::from_ec_components(&s(&key.jwk, "x"), &s(&key.jwk, "y")).unwrap()
        };
        vec![
            ("rsa-1", ISSUER, rsa(&k.rsa), vec![RS256, PS256]),
            ("rsa-2", ISSUER, rsa(&k.rsa2), vec![RS256, PS256]),
            ("ec-1", ISSUER, ec(&k.ec256), vec![ES256]),
            ("ec-384", ISSUER, ec(&k.ec384), vec![ES384]),
            (
                "ed-1",
                ISSUER,
                DecodingKey::from_ed_components(&s(&k.ed.jwk, "x")).unwrap(),
                vec![EdDSA],
            ),
            (
                "hmac",
                HMAC_ISSUER,
                DecodingKey::from_secret(HMAC_SECRET).expect("HMAC key"),
                vec![HS256],
            ),
        ]
    })
}

/// The algorithms each issuer allows.
pub fn allowed_algs(issuer: &str) -> &'static [&'static str] {
    match issuer {
        ISSUER => &["RS256", "PS256", "ES256", "ES384", "EdDSA"],
        HMAC_ISSUER => &["HS256"],
        _ => &[],
    }
}

/// A token minted at start-up and revoked by its SHA-256.
pub fn revoked_token() -> &'static str {
    static T: OnceLock<String> = OnceLock::new();
    T.get_or_init(|| {
        keys().ec256.mint(&json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": NOW - 60, "exp": NOW + 600,
            "scope": "orders:read", "jti": "sha-revoked"
        }))
    })
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// SHA-256 (hex) of a token.
pub fn token_sha256(token: &str) -> String {
    sha256_hex(token)
}

/// `shop/default`: the public-key issuer (five keys inline) and the HMAC issuer (a Secret),
/// `requiredClaims: [sub]`, forwarded claims, and one revocation of each kind.
pub fn policy() -> TokenPolicy {
    let k = keys();
    let jwks = json!({"keys": [k.rsa.jwk, k.rsa2.jwk, k.ec256.jwk, k.ec384.jwk, k.ed.jwk]});
    serde_json::from_value(json!({
        "apiVersion": "portcullis.dev/v1alpha1", "kind": "TokenPolicy",
        "metadata": {"name": "default", "namespace": "shop"},
        "spec": {
            "issuers": [
                {
                    "issuer": ISSUER, "audiences": [AUDIENCE],
                    "algorithms": allowed_algs(ISSUER),
                    "jwks": {"inline": jwks},
                },
                {
                    "issuer": HMAC_ISSUER, "audiences": [AUDIENCE],
                    "algorithms": allowed_algs(HMAC_ISSUER),
                    "jwks": {"secretRef": {"name": "hmac", "key": "key"}},
                },
            ],
            "clockSkew": "30s",
            "maxTokenLifetime": "1h",
            "requiredClaims": ["sub"],
            "forwardClaims": {"sub": "X-User", "email": "X-Email"},
            "revocations": [
                {"jti": REVOKED_JTI},
                {"subject": REVOKED_SUBJECT, "issuedBefore": "2027-01-15T07:50:00Z"},
                {"keyId": REVOKED_KID},
                {"tokenSha256": token_sha256(revoked_token())},
            ],
        }
    }))
    .expect("fixture policy parses")
}

/// The Secret holding the HMAC issuer's key.
pub fn hmac_secret() -> Secret {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "hmac", "namespace": "shop"},
        "data": {"key": STANDARD.encode(HMAC_SECRET)},
    }))
    .expect("fixture secret parses")
}

/// Parses a YAML ApiRoute.
pub fn route_yaml(yaml: &str) -> ApiRoute {
    serde_yaml::from_str(yaml).expect("fixture route parses")
}

/// `shop/orders` on api.example.com (the `jwt` target's route).
pub fn orders_route() -> ApiRoute {
    route_yaml(
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
}

/// Compile options with the fixed clock.
pub fn options() -> CompileOptions {
    CompileOptions {
        clock: Arc::new(ManualClock::new(NOW)),
        ..Default::default()
    }
}

/// Compiles, insisting on no errors.
pub fn build(routes: &[ApiRoute]) -> Snapshot {
    let (snapshot, errors) =
        portcullis_policy::compile_with(&options(), routes, &[policy()], &[hmac_secret()]);
    assert!(errors.is_empty(), "fixture compile errors: {errors:#?}");
    snapshot
}
