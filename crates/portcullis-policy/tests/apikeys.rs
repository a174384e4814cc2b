//! API keys, the credential kind beside JWTs and introspected tokens: one credential step
//! turns whichever credential a request carries into a `Principal`, and scopes and
//! revocations are checked on it.
//!
//! - a key is judged only as a key: format and checksum, id lookup, SHA-256, expiry; never
//!   sent to introspection nor parsed as a JWT;
//! - one credential per request (RFC 6750 section 2: "Clients MUST NOT use more than one
//!   method to transmit the token in each request");
//! - revocation by key id, by the key's SHA-256 (`tokenSha256`) and by consumer
//!   (`subject` + `issuedBefore`);
//! - the key's consumer reaches the upstream through `forwardClaims`.

mod support;

use k8s_openapi::api::core::v1::Secret;
use portcullis_api::TokenPolicy;
use portcullis_policy::apikey::{self, ApiKey};
use portcullis_policy::{Decision, DenyReason, PrincipalKind, RequestParts, Snapshot};
use portcullis_testkit::fixtures::{self, PolicyBuilder, RouteBuilder};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::*;

const HOST: &str = "api.example.com";

/// A key from fixed bytes (tests are deterministic).
fn key(seed: u8) -> String {
    let random: Vec<u8> = (0..128u16)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    apikey::generate(&random).unwrap()
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// The Secret `portcullis apikey create` writes for `key` (testkit builder).
fn key_secret(name: &str, key: &str, consumer: &str, scopes: &str, extra: Value) -> Secret {
    let id = ApiKey::parse(key).unwrap().id().to_owned();
    let mut extra = extra;
    if extra.get("createdAt").is_none() {
        extra["createdAt"] = json!("2027-01-01T00:00:00Z");
    }
    fixtures::api_key_secret(
        "shop",
        name,
        (&id, &sha256_hex(key)),
        consumer,
        scopes,
        &[("team", "payments")],
        extra,
    )
}

/// The standard policy, also taking API keys labelled `team: payments`.
fn key_policy() -> TokenPolicy {
    let keyed = PolicyBuilder::new("shop", "default")
        .api_keys(&[("team", "payments")])
        .build();
    let mut p = policy();
    p.spec.api_keys = keyed.spec.api_keys;
    p.spec
        .forward_claims
        .insert("consumer".into(), "X-Consumer".into());
    p
}

fn with_revocations(mut p: TokenPolicy, revocations: Value) -> TokenPolicy {
    p.spec.revocations = serde_json::from_value(revocations).unwrap();
    p
}

fn decide(s: &Snapshot, req: RequestParts<'_>) -> Result<Vec<(String, String)>, DenyReason> {
    match s.authorize(&req) {
        Decision::Allow(a) => {
            let p = a.principal.as_ref().expect("a principal");
            assert_eq!(p.kind, PrincipalKind::ApiKey);
            Ok(a.headers()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
                .collect())
        }
        Decision::Deny(d) => {
            assert_eq!(d.status(), d.reason.status());
            Err(d.reason)
        }
        Decision::Pending(p) => panic!("an API key never waits on IO: {p:?}"),
    }
}

fn bearer(s: &Snapshot, path: &str, key: &str) -> Result<Vec<(String, String)>, DenyReason> {
    let h = format!("Bearer {key}");
    decide(
        s,
        RequestParts::new("GET", HOST, path).with_authorization(&h),
    )
}

fn header(s: &Snapshot, path: &str, key: &str) -> Result<Vec<(String, String)>, DenyReason> {
    decide(
        s,
        RequestParts::new("GET", HOST, path).with_api_key_header("x-api-key", key),
    )
}

#[test]
fn a_selected_key_is_a_principal_with_its_scopes_and_consumer() {
    let k = key(1);
    let f = build(
        &[route()],
        &[key_policy()],
        &[key_secret("alice-1", &k, "alice", "orders:read", json!({}))],
    );
    assert_eq!(f.snapshot.api_key_headers()[0].as_str(), "x-api-key");
    for got in [
        bearer(&f.snapshot, "/orders/1", &k),
        header(&f.snapshot, "/orders/1", &k),
    ] {
        let headers = got.unwrap();
        assert!(
            headers.contains(&("x-user".into(), "alice".into())),
            "{headers:?}"
        );
        assert!(headers.contains(&("x-consumer".into(), "alice".into())));
    }
    // Scopes hold as for tokens (RFC 6750 section 3.1: 403 insufficient_scope).
    let h = format!("Bearer {k}");
    match f
        .snapshot
        .authorize(&RequestParts::new("POST", HOST, "/orders/1").with_authorization(&h))
    {
        Decision::Deny(d) => {
            assert_eq!(d.reason, DenyReason::InsufficientScope);
            assert_eq!(d.missing_scopes.as_deref(), Some("orders:write"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_mistyped_and_unselected_keys_are_refused() {
    let k = key(2);
    let other = key(3);
    let mut unlabelled = key_secret("bob", &other, "bob", "orders:read", json!({}));
    unlabelled
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .remove("portcullis.dev/api-key");
    let f = build(
        &[route()],
        &[key_policy()],
        &[
            key_secret("alice", &k, "alice", "orders:read", json!({})),
            unlabelled,
        ],
    );
    // Not selected: the Secret lacks the portcullis label.
    assert_eq!(
        bearer(&f.snapshot, "/orders/1", &other),
        Err(DenyReason::UnknownApiKey)
    );
    // A checksum that does not match is malformed, caught without a lookup.
    let mut typo = k.clone().into_bytes();
    typo[20] = if typo[20] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap();
    assert_eq!(
        bearer(&f.snapshot, "/orders/1", &typo),
        Err(DenyReason::MalformedToken)
    );
    // Same id, other secret (a forged key with a recomputed checksum): the hash decides.
    let id = ApiKey::parse(&k).unwrap().id();
    let forged = forge_with_checksum(&format!("pcl_{id}{}", "Z".repeat(apikey::SECRET_LEN)));
    assert_eq!(
        bearer(&f.snapshot, "/orders/1", &forged),
        Err(DenyReason::UnknownApiKey)
    );
}

/// A well-formed key with the given body (prefix + id + secret) and a valid checksum.
fn forge_with_checksum(body: &str) -> String {
    // The checksum is public (CRC32, base62): anyone can make a well-formed key. Computed
    // here independently (CRC-32/ISO-HDLC) as a second implementation.
    let mut crc = !0u32;
    for &b in body.as_bytes() {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    let mut n = u64::from(!crc);
    let alphabet = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut sum = [b'0'; 6];
    for slot in sum.iter_mut().rev() {
        *slot = alphabet[(n % 62) as usize];
        n /= 62;
    }
    let key = format!("{body}{}", std::str::from_utf8(&sum).unwrap());
    ApiKey::parse(&key).expect("forged key is well-formed");
    key
}

#[test]
fn one_credential_per_request_rfc6750_section_2() {
    let k = key(4);
    let f = build(
        &[route()],
        &[key_policy()],
        &[key_secret("alice", &k, "alice", "orders:read", json!({}))],
    );
    let jwt = format!("Bearer {}", mint(&keys().rsa, &claims()));
    let both = RequestParts::new("GET", HOST, "/orders/1")
        .with_authorization(&jwt)
        .with_api_key_header("x-api-key", &k);
    assert_eq!(
        decide(&f.snapshot, both),
        Err(DenyReason::MultipleCredentials)
    );
    assert_eq!(DenyReason::MultipleCredentials.status(), 400);
    let mut dup = RequestParts::new("GET", HOST, "/orders/1");
    dup.credentials.api_key = Some(("x-api-key", portcullis_policy::HeaderField::Duplicated));
    assert_eq!(
        decide(&f.snapshot, dup),
        Err(DenyReason::MultipleCredentials)
    );
    // A JWT alone still works on the same policy.
    match f
        .snapshot
        .authorize(&RequestParts::new("GET", HOST, "/orders/1").with_authorization(&jwt))
    {
        Decision::Allow(a) => {
            assert_eq!(a.principal.unwrap().kind, PrincipalKind::Jwt)
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_policy_without_api_keys_never_judges_one() {
    // Neither as a JWT nor (for an introspecting policy) by sending it to the endpoint.
    let k = key(5);
    let f = build(&[route()], &[policy()], &[]);
    let h = format!("Bearer {k}");
    match f
        .snapshot
        .authorize(&RequestParts::new("GET", HOST, "/orders/1").with_authorization(&h))
    {
        Decision::Deny(d) => assert_eq!(d.reason, DenyReason::UnknownApiKey),
        other => panic!("{other:?}"),
    }
    // An x-api-key header is just a header to a route whose policy reads none: the
    // request is judged by its Authorization header (here: none).
    match f.snapshot.authorize(
        &RequestParts::new("GET", HOST, "/orders/1").with_api_key_header("x-api-key", &k),
    ) {
        Decision::Deny(d) => assert_eq!(d.reason, DenyReason::MissingToken),
        other => panic!("{other:?}"),
    }
}

#[test]
fn expiry_and_rotation_overlap() {
    // The old key expires an hour after NOW (the overlap window), the new one does not.
    let old = key(6);
    let new = key(7);
    let f = build(
        &[route()],
        &[key_policy()],
        &[
            key_secret(
                "alice-old",
                &old,
                "alice",
                "orders:read",
                json!({"expiresAt": "2027-01-15T09:00:00Z"}),
            ),
            key_secret("alice-new", &new, "alice", "orders:read", json!({})),
        ],
    );
    // NOW is 2027-01-15T08:00:00Z.
    assert!(bearer(&f.snapshot, "/orders/1", &old).is_ok());
    assert!(bearer(&f.snapshot, "/orders/1", &new).is_ok());
    f.clock.advance(3600);
    assert_eq!(
        bearer(&f.snapshot, "/orders/1", &old),
        Err(DenyReason::Expired)
    );
    assert!(bearer(&f.snapshot, "/orders/1", &new).is_ok());
}

#[test]
fn revoked_by_key_id_by_hash_and_by_consumer() {
    let k = key(8);
    let id = ApiKey::parse(&k).unwrap().id().to_owned();
    let secret = key_secret("alice", &k, "alice", "orders:read", json!({}));
    for (revocation, reason) in [
        (json!({"apiKeyId": id}), DenyReason::RevokedApiKey),
        (
            json!({"tokenSha256": sha256_hex(&k)}),
            DenyReason::RevokedToken,
        ),
        (
            json!({"subject": "alice", "issuedBefore": "2027-01-02T00:00:00Z"}),
            DenyReason::RevokedSubject,
        ),
    ] {
        let p = with_revocations(key_policy(), json!([revocation.clone()]));
        let f = build(&[route()], &[p], std::slice::from_ref(&secret));
        assert_eq!(
            bearer(&f.snapshot, "/orders/1", &k),
            Err(reason),
            "{revocation}"
        );
        assert_eq!(
            header(&f.snapshot, "/orders/1", &k),
            Err(reason),
            "{revocation}"
        );
    }
    // Issued after the cut-off: not revoked.
    let p = with_revocations(
        key_policy(),
        json!([{"subject": "alice", "issuedBefore": "2026-12-31T00:00:00Z"}]),
    );
    let f = build(&[route()], &[p], std::slice::from_ref(&secret));
    assert!(bearer(&f.snapshot, "/orders/1", &k).is_ok());
}

#[test]
fn a_bad_key_secret_names_itself_and_spares_the_others() {
    let good = key(9);
    let bad = key(10);
    let clock = std::sync::Arc::new(portcullis_policy::ManualClock::new(NOW));
    let (s, errors) = portcullis_policy::compile_with(
        &options(&clock),
        &[route()],
        &[key_policy()],
        &[
            key_secret("good", &good, "alice", "orders:read", json!({})),
            key_secret("bad", &bad, "bob", "orders:read", json!({"sha256": "ABC"})),
        ],
    );
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let e = &errors[0];
    assert_eq!((e.kind, &*e.name), ("TokenPolicy", "default"));
    assert!(
        e.path.contains("Secret shop/bad") && e.path.ends_with("sha256"),
        "{e}"
    );
    assert!(bearer(&s, "/orders/1", &good).is_ok());
    assert_eq!(
        bearer(&s, "/orders/1", &bad),
        Err(DenyReason::UnknownApiKey)
    );
}

#[test]
fn an_api_key_only_policy() {
    let k = key(11);
    let mut p = PolicyBuilder::new("shop", "keys").api_keys(&[]).build();
    p.spec.api_keys.as_mut().unwrap().header = Some("X-Shop-Key".into());
    let route = RouteBuilder::new("shop", "orders")
        .host(HOST)
        .policy("keys")
        .prefix("/orders", &["GET"], &["orders:read"])
        .build();
    let f = build(
        &[route],
        &[p],
        &[key_secret("alice", &k, "alice", "orders:read", json!({}))],
    );
    assert_eq!(f.snapshot.api_key_headers()[0].as_str(), "x-shop-key");
    let got = decide(
        &f.snapshot,
        RequestParts::new("GET", HOST, "/orders/1").with_api_key_header("x-shop-key", &k),
    );
    assert!(got.is_ok(), "{got:?}");
    // A JWT means nothing to a policy without issuers.
    let jwt = format!("Bearer {}", mint(&keys().rsa, &claims()));
    match f
        .snapshot
        .authorize(&RequestParts::new("GET", HOST, "/orders/1").with_authorization(&jwt))
    {
        Decision::Deny(d) => assert_eq!(d.reason, DenyReason::UnknownApiKey),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_key_header_that_means_something_else_is_refused() {
    // `Authorization` as the key header would make every Bearer request two credentials
    // (RFC 6750 section 2); Cookie, DPoP (RFC 9449), Host and framing headers mean something
    // to every hop. The policy is refused with the field named, whatever the case.
    for header in [
        "Authorization",
        "cookie",
        "DPoP",
        "host",
        "Transfer-Encoding",
    ] {
        let mut p = PolicyBuilder::new("shop", "keys").api_keys(&[]).build();
        p.spec.api_keys.as_mut().unwrap().header = Some(header.into());
        let clock = std::sync::Arc::new(portcullis_policy::ManualClock::new(NOW));
        let (s, errors) = portcullis_policy::compile_with(&options(&clock), &[], &[p], &[]);
        let e = errors
            .iter()
            .find(|e| e.path == "spec.apiKeys.header")
            .unwrap_or_else(|| panic!("{header}: {errors:#?}"));
        assert!(e.message.contains("cannot carry API keys"), "{e}");
        assert!(s.api_key_headers().is_empty(), "{header}");
    }
}

#[test]
fn another_policys_key_header_neither_hides_nor_stands_in_for_this_routes() {
    // Policy `a` (another tenant) reads keys from `accept`-like common headers would be
    // refused; here it reads `x-a-key`. The route's policy reads `x-z-key`. Only the
    // route's own header counts: another policy's header is just a header here, and two
    // credentials the route's policy reads are still refused (RFC 6750 section 2).
    let k = key(12);
    let mut ours = PolicyBuilder::new("shop", "keys").api_keys(&[]).build();
    ours.spec.api_keys.as_mut().unwrap().header = Some("x-z-key".into());
    let mut theirs = PolicyBuilder::new("other", "keys").api_keys(&[]).build();
    theirs.spec.api_keys.as_mut().unwrap().header = Some("x-a-key".into());
    let mut jwt_too = policy();
    jwt_too.spec.api_keys = ours.spec.api_keys.clone();
    let route = RouteBuilder::new("shop", "orders")
        .host(HOST)
        .policy("default")
        .prefix("/orders", &["GET"], &["orders:read"])
        .build();
    let f = build(
        &[route],
        &[jwt_too, theirs],
        &[key_secret("alice", &k, "alice", "orders:read", json!({}))],
    );
    let mut headers = http::HeaderMap::new();
    headers.insert("x-a-key", "junk".parse().unwrap());
    headers.insert("x-z-key", k.parse().unwrap());
    let creds = portcullis_policy::Credentials::from_headers(&headers);
    let mut req = RequestParts::new("GET", HOST, "/orders/1");
    req.credentials = creds;
    assert!(
        decide(&f.snapshot, req).is_ok(),
        "the route's own header decides"
    );
    // A JWT plus this policy's key header: two credentials, whatever else is sent.
    let jwt = format!("Bearer {}", mint(&keys().rsa, &claims()));
    headers.insert("authorization", jwt.parse().unwrap());
    let mut req = RequestParts::new("GET", HOST, "/orders/1");
    req.credentials = portcullis_policy::Credentials::from_headers(&headers);
    assert_eq!(
        decide(&f.snapshot, req),
        Err(DenyReason::MultipleCredentials)
    );
    // Debug forms never show a credential.
    let shown = format!(
        "{:?}",
        portcullis_policy::Credentials::from_headers(&headers)
    );
    assert!(
        !shown.contains(&k[4..]) && !shown.contains("Bearer"),
        "{shown}"
    );
}

#[test]
fn a_key_header_may_not_shadow_content_forwarding_or_identity_headers() {
    for header in [
        "content-type",
        "Accept-Encoding",
        "x-forwarded-for",
        "upgrade",
        "x-user",
    ] {
        let mut p = policy();
        p.spec.api_keys = PolicyBuilder::new("shop", "default")
            .api_keys(&[])
            .build()
            .spec
            .api_keys;
        p.spec.api_keys.as_mut().unwrap().header = Some(header.into());
        let clock = std::sync::Arc::new(portcullis_policy::ManualClock::new(NOW));
        let (_, errors) = portcullis_policy::compile_with(&options(&clock), &[], &[p], &[]);
        assert!(
            errors.iter().any(|e| e.path == "spec.apiKeys.header"),
            "{header}: {errors:#?}"
        );
    }
}
