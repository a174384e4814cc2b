//! `Snapshot::authorize`: every acceptance and every rejection of DESIGN.md, each named.

mod support;

use jsonwebtoken::Algorithm;
use portcullis_policy::{AuthorizationHeader, Decision, DenyReason, RequestParts};
use serde_json::json;
use support::*;

const HOST: &str = "api.example.com";

/// Allowed (forwarded headers) or denied (status, reason, challenge).
type Outcome = Result<Vec<(String, String)>, (u16, DenyReason, Option<String>)>;

fn decide(f: &Fixture, method: &str, path: &str, token: Option<&str>) -> Outcome {
    let header = token.map(|t| format!("Bearer {t}"));
    let mut req = RequestParts::new(method, HOST, path);
    if let Some(h) = &header {
        req = req.with_authorization(h);
    }
    outcome(f.snapshot.authorize(&req))
}

fn outcome(d: Decision<'_>) -> Outcome {
    match d {
        Decision::Allow(a) => Ok(a
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
            .collect()),
        Decision::Deny(d) => Err((d.status(), d.reason, d.www_authenticate())),
        Decision::Pending(_) => panic!("no introspection in these fixtures"),
    }
}

fn denied(f: &Fixture, token: &str) -> DenyReason {
    match decide(f, "GET", "/orders/1", Some(token)) {
        Ok(_) => panic!("token was accepted"),
        Err((status, reason, challenge)) => {
            assert_eq!(status, 401, "{reason:?}");
            let challenge = challenge.unwrap();
            assert!(
                challenge.starts_with("Bearer realm=\"portcullis\", error=\"invalid_token\""),
                "{challenge}"
            );
            reason
        }
    }
}

// === accepted ===

#[test]
fn valid_rs256_token_is_allowed_with_forwarded_claims() {
    let f = standard();
    let headers = decide(&f, "GET", "/orders/1", Some(&mint(&keys().rsa, &claims()))).unwrap();
    assert!(headers.contains(&("x-user".into(), "alice".into())));
    assert!(headers.contains(&("x-email".into(), "alice@example.com".into())));
}

#[test]
fn every_asymmetric_algorithm_verifies() {
    let f = standard();
    let k = keys();
    for key in [&k.rsa, &k.rsa2, &k.ec256, &k.ec384, &k.ed] {
        assert!(
            decide(&f, "GET", "/orders", Some(&mint(key, &claims()))).is_ok(),
            "{:?}",
            key.alg
        );
    }
    // PS256 with an RSA key.
    let mut header = jsonwebtoken::Header::new(Algorithm::PS256);
    header.kid = Some("rsa-1".into());
    let t = jsonwebtoken::encode(&header, &claims(), &k.rsa.encoding).unwrap();
    assert!(decide(&f, "GET", "/orders", Some(&t)).is_ok());
}

#[test]
fn hmac_from_a_secret_verifies() {
    let mut p = policy();
    p.spec.issuers[0].algorithms = vec!["HS256".into()];
    p.spec.issuers[0].jwks =
        serde_json::from_value(json!({"secretRef": {"name": "hmac", "key": "key"}})).unwrap();
    let f = build(&[route()], &[p], &[hmac_secret()]);
    assert!(
        decide(
            &f,
            "GET",
            "/orders",
            Some(&mint_hmac(HMAC_SECRET, Algorithm::HS256, &claims()))
        )
        .is_ok()
    );
    assert_eq!(
        denied(
            &f,
            &mint_hmac(
                b"another secret, also 32 bytes long!!",
                Algorithm::HS256,
                &claims()
            )
        ),
        DenyReason::BadSignature
    );
}

#[test]
fn pem_public_key_from_a_secret_verifies() {
    let mut p = policy();
    p.spec.issuers[0].jwks =
        serde_json::from_value(json!({"secretRef": {"name": "pem", "key": "key.pem"}})).unwrap();
    let secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "pem", "namespace": "shop"},
        "stringData": {"key.pem": keys().rsa.public_pem.clone().unwrap()},
    }))
    .unwrap();
    let f = build(&[route()], &[p], &[secret]);
    // The PEM key has no kid: a token without kid uses it; the token's kid is ignored only
    // when it is absent.
    let mut c = claims();
    c["jti"] = json!("pem");
    let t = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::RS256),
        &c,
        &keys().rsa.encoding,
    )
    .unwrap();
    assert!(decide(&f, "GET", "/orders", Some(&t)).is_ok());
}

#[test]
fn public_rule_needs_no_token() {
    let f = standard();
    assert!(decide(&f, "GET", "/health", None).is_ok());
}

#[test]
fn scheme_name_is_case_insensitive() {
    let f = standard();
    let t = mint(&keys().rsa, &claims());
    for scheme in ["bearer", "BEARER", "BeArEr"] {
        let h = format!("{scheme} {t}");
        let req = RequestParts::new("GET", HOST, "/orders").with_authorization(&h);
        assert!(f.snapshot.authorize(&req).is_allow(), "{scheme}");
    }
}

// === request-level refusals ===

#[test]
fn no_credentials_gets_a_bare_challenge() {
    let f = standard();
    let (status, reason, challenge) = decide(&f, "GET", "/orders", None).unwrap_err();
    assert_eq!((status, reason), (401, DenyReason::MissingToken));
    assert_eq!(challenge.unwrap(), "Bearer realm=\"portcullis\"");
}

#[test]
fn other_scheme_gets_a_bare_challenge() {
    let f = standard();
    let req = RequestParts::new("GET", HOST, "/orders").with_authorization("Basic YWxpY2U6cHc=");
    let (status, reason, challenge) = outcome(f.snapshot.authorize(&req)).unwrap_err();
    assert_eq!((status, reason), (401, DenyReason::UnsupportedScheme));
    assert_eq!(challenge.unwrap(), "Bearer realm=\"portcullis\"");
}

#[test]
fn malformed_authorization_header_is_400_invalid_request() {
    let f = standard();
    for h in [
        "Bearer",
        "Bearer ",
        "Bearer a b",
        "Bearer \"quoted\"",
        "Bearer abc=def",
    ] {
        let req = RequestParts::new("GET", HOST, "/orders").with_authorization(h);
        let (status, reason, challenge) = outcome(f.snapshot.authorize(&req)).unwrap_err();
        assert_eq!(
            (status, reason),
            (400, DenyReason::MalformedHeader),
            "{h:?}"
        );
        assert!(challenge.unwrap().contains("error=\"invalid_request\""));
    }
}

#[test]
fn duplicated_authorization_header_is_400() {
    let f = standard();
    let mut req = RequestParts::new("GET", HOST, "/orders");
    req.credentials.authorization = AuthorizationHeader::Duplicated;
    let (status, reason, _) = outcome(f.snapshot.authorize(&req)).unwrap_err();
    assert_eq!((status, reason), (400, DenyReason::DuplicateHeader));
}

#[test]
fn token_in_query_string_is_refused_unverified() {
    let f = standard();
    let t = mint(&keys().rsa, &claims());
    for q in [
        format!("access_token={t}"),
        format!("a=1&ACCESS_TOKEN={t}"),
        "access_token".to_string(),
    ] {
        let h = format!("Bearer {t}");
        let req = RequestParts::new("GET", HOST, "/orders")
            .with_query(&q)
            .with_authorization(&h);
        let (status, reason, challenge) = outcome(f.snapshot.authorize(&req)).unwrap_err();
        assert_eq!((status, reason), (400, DenyReason::TokenInQuery));
        assert!(challenge.unwrap().contains("invalid_request"));
    }
    // Nothing was verified: the token is not in the cache, so the next request misses.
    let h = format!("Bearer {t}");
    let req = RequestParts::new("GET", HOST, "/orders").with_authorization(&h);
    let Decision::Allow(a) = f.snapshot.authorize(&req) else {
        panic!()
    };
    assert!(!a.cache_hit);
}

// === token refusals (DESIGN.md's list) ===

#[test]
fn alg_none_is_refused() {
    let f = standard();
    let body = b64(claims().to_string().as_bytes());
    for alg in ["none", "None", "NONE"] {
        let t = format!(
            "{}.{body}.",
            b64(format!("{{\"alg\":\"{alg}\",\"typ\":\"JWT\"}}").as_bytes())
        );
        let t2 = format!("{t}c2ln");
        assert!(
            matches!(denied(&f, &t2), DenyReason::AlgorithmNone),
            "{alg}"
        );
        assert_eq!(denied(&f, &t), DenyReason::MalformedToken);
    }
}

#[test]
fn algorithm_not_on_the_allow_list_is_refused() {
    let f = standard();
    let mut header = jsonwebtoken::Header::new(Algorithm::RS384);
    header.kid = Some("rsa-1".into());
    let t = jsonwebtoken::encode(&header, &claims(), &keys().rsa.encoding).unwrap();
    assert_eq!(denied(&f, &t), DenyReason::AlgorithmNotAllowed);
    let t = mint_raw(
        &keys().rsa,
        r#"{"alg":"XS256","kid":"rsa-1"}"#,
        &claims().to_string(),
    );
    assert_eq!(denied(&f, &t), DenyReason::AlgorithmNotAllowed);
}

#[test]
fn hs_rs_confusion_is_refused() {
    // The classic attack: sign HS256 using the issuer's RSA public key as the HMAC secret.
    let f = standard();
    let public = keys().rsa.public_pem.clone().unwrap();
    let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
    header.kid = Some("rsa-1".into());
    let secret = jsonwebtoken::EncodingKey::from_secret(public.as_bytes()).unwrap();
    let t = jsonwebtoken::encode(&header, &claims(), &secret).unwrap();
    assert_eq!(denied(&f, &t), DenyReason::AlgorithmNotAllowed);

    // And a policy that would allow HS256 against a public key does not compile.
    let mut p = policy();
    p.spec.issuers[0].algorithms = vec!["HS256".into()];
    p.spec.issuers[0].jwks =
        serde_json::from_value(json!({"secretRef": {"name": "pem", "key": "k"}})).unwrap();
    let secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "pem", "namespace": "shop"},
        "stringData": {"k": public},
    }))
    .unwrap();
    let (_, errors) = portcullis_policy::compile(&[route()], &[p], &[secret]);
    assert!(
        errors
            .iter()
            .any(|e| e.path == "spec.issuers[0].jwks" && e.message.contains("no key fits")),
        "{errors:#?}"
    );
}

#[test]
fn key_type_not_fitting_the_algorithm_is_refused() {
    // ES384 signature claiming the P-256 key.
    let f = standard();
    let mut header = jsonwebtoken::Header::new(Algorithm::ES384);
    header.kid = Some("ec-1".into());
    let t = jsonwebtoken::encode(&header, &claims(), &keys().ec384.encoding).unwrap();
    assert_eq!(denied(&f, &t), DenyReason::KeyAlgorithmMismatch);
}

#[test]
fn unknown_kid_is_refused() {
    let f = standard();
    let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
    header.kid = Some("rotated-away".into());
    let t = jsonwebtoken::encode(&header, &claims(), &keys().rsa.encoding).unwrap();
    assert_eq!(denied(&f, &t), DenyReason::UnknownKey);
}

#[test]
fn missing_kid_with_several_fitting_keys_is_refused() {
    let f = standard();
    let t = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::RS256),
        &claims(),
        &keys().rsa.encoding,
    )
    .unwrap();
    assert_eq!(denied(&f, &t), DenyReason::UnknownKey);
    // With exactly one fitting key (the only EdDSA key), no kid is fine.
    let t = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::EdDSA),
        &claims(),
        &keys().ed.encoding,
    )
    .unwrap();
    assert!(decide(&f, "GET", "/orders", Some(&t)).is_ok());
}

#[test]
fn crit_header_is_refused() {
    let f = standard();
    let t = mint_raw(
        &keys().rsa,
        r#"{"alg":"RS256","kid":"rsa-1","crit":["exp"]}"#,
        &claims().to_string(),
    );
    assert_eq!(denied(&f, &t), DenyReason::CriticalHeader);
}

#[test]
fn jwe_is_refused() {
    let f = standard();
    let h = b64(br#"{"alg":"RSA-OAEP","enc":"A256GCM"}"#);
    assert_eq!(
        denied(&f, &format!("{h}.a2V5.aXY.Y2lwaGVy.dGFn")),
        DenyReason::EncryptedToken
    );
}

#[test]
fn bad_signature_is_refused() {
    let f = standard();
    let t = mint(&keys().rsa, &claims());
    // Tamper with the claims, keep the signature.
    let mut parts: Vec<String> = t.split('.').map(String::from).collect();
    let mut c = claims();
    c["scope"] = json!("orders:read orders:write admin");
    parts[1] = b64(c.to_string().as_bytes());
    assert_eq!(denied(&f, &parts.join(".")), DenyReason::BadSignature);
    // A key of the right kind but the wrong key.
    let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
    header.kid = Some("rsa-1".into());
    let t = jsonwebtoken::encode(&header, &claims(), &keys().rsa2.encoding).unwrap();
    assert_eq!(denied(&f, &t), DenyReason::BadSignature);
}

#[test]
fn wrong_issuer_is_refused() {
    let f = standard();
    let mut c = claims();
    c["iss"] = json!("https://evil.example.com");
    assert_eq!(
        denied(&f, &mint(&keys().rsa, &c)),
        DenyReason::UnknownIssuer
    );
    c.as_object_mut().unwrap().remove("iss");
    assert_eq!(
        denied(&f, &mint(&keys().rsa, &c)),
        DenyReason::UnknownIssuer
    );
}

#[test]
fn wrong_audience_is_refused() {
    let f = standard();
    let mut c = claims();
    c["aud"] = json!("billing-api");
    assert_eq!(
        denied(&f, &mint(&keys().rsa, &c)),
        DenyReason::WrongAudience
    );
    c["aud"] = json!(["billing-api", AUDIENCE]);
    assert!(decide(&f, "GET", "/orders", Some(&mint(&keys().rsa, &c))).is_ok());
    c.as_object_mut().unwrap().remove("aud");
    assert_eq!(
        denied(&f, &mint(&keys().rsa, &c)),
        DenyReason::WrongAudience
    );
}

#[test]
fn expired_token_is_refused() {
    let f = standard();
    let mut c = claims();
    c["exp"] = json!(NOW - 31); // default clock skew 30s
    assert_eq!(denied(&f, &mint(&keys().rsa, &c)), DenyReason::Expired);
    c["exp"] = json!(NOW - 29);
    assert!(decide(&f, "GET", "/orders", Some(&mint(&keys().rsa, &c))).is_ok());
}

#[test]
fn cached_token_dies_at_exp() {
    let f = standard();
    let t = mint(&keys().rsa, &claims());
    assert!(decide(&f, "GET", "/orders", Some(&t)).is_ok());
    f.clock.advance(600 + 30);
    assert_eq!(denied(&f, &t), DenyReason::Expired);
}

#[test]
fn not_yet_valid_token_is_refused() {
    let f = standard();
    let mut c = claims();
    c["nbf"] = json!(NOW + 120);
    assert_eq!(denied(&f, &mint(&keys().rsa, &c)), DenyReason::NotYetValid);
    let mut c = claims();
    c["iat"] = json!(NOW + 120);
    assert_eq!(denied(&f, &mint(&keys().rsa, &c)), DenyReason::NotYetValid);
}

#[test]
fn missing_exp_is_refused() {
    let f = standard();
    let mut c = claims();
    c.as_object_mut().unwrap().remove("exp");
    assert_eq!(
        denied(&f, &mint(&keys().rsa, &c)),
        DenyReason::MissingExpiry
    );
}

#[test]
fn lifetime_over_the_maximum_is_refused() {
    let mut p = policy();
    p.spec.max_token_lifetime = Some("5m".into());
    let f = build(&[route()], &[p], &[]);
    // claims(): iat NOW-60, exp NOW+600: 11 minutes.
    assert_eq!(
        denied(&f, &mint(&keys().rsa, &claims())),
        DenyReason::LifetimeTooLong
    );
    let mut c = claims();
    c["exp"] = json!(NOW + 200);
    assert!(decide(&f, "GET", "/orders", Some(&mint(&keys().rsa, &c))).is_ok());
    c.as_object_mut().unwrap().remove("iat");
    assert_eq!(
        denied(&f, &mint(&keys().rsa, &c)),
        DenyReason::LifetimeTooLong
    );
}

#[test]
fn missing_required_claim_is_refused() {
    let mut p = policy();
    p.spec.required_claims = vec!["tenant".into()];
    let f = build(&[route()], &[p], &[]);
    assert_eq!(
        denied(&f, &mint(&keys().rsa, &claims())),
        DenyReason::MissingClaim
    );
    let mut c = claims();
    c["tenant"] = json!("acme");
    assert!(decide(&f, "GET", "/orders", Some(&mint(&keys().rsa, &c))).is_ok());
}

#[test]
fn oversized_token_is_refused() {
    let f = standard();
    let mut c = claims();
    c["padding"] = json!("x".repeat(9000));
    assert_eq!(
        denied(&f, &mint(&keys().rsa, &c)),
        DenyReason::TokenTooLarge
    );
}

#[test]
fn malformed_tokens_are_refused() {
    let f = standard();
    let good = mint(&keys().rsa, &claims());
    let (h, rest) = good.split_once('.').unwrap();
    let cases = [
        "abc".to_string(),
        "a.b".to_string(),
        "a.b.c.d".to_string(),
        format!("{h}..sig"),
        format!("a+b/.{rest}"),
        format!("{}.{rest}", b64(b"not json")),
        format!("{}.{rest}", b64(b"[1,2]")),
        format!("{h}.{}.c2ln", b64(b"{\"exp\": 1")),
    ];
    for t in cases {
        assert_eq!(denied(&f, &t), DenyReason::MalformedToken, "{t}");
    }
}

#[test]
fn duplicate_claims_are_refused() {
    let f = standard();
    let c = claims().to_string();
    let dup = c.replacen('{', "{\"sub\":\"mallory\",", 1);
    let t = mint_raw(&keys().rsa, r#"{"alg":"RS256","kid":"rsa-1"}"#, &dup);
    assert_eq!(denied(&f, &t), DenyReason::MalformedToken);
    let t = mint_raw(
        &keys().rsa,
        r#"{"alg":"RS256","kid":"rsa-1","alg":"HS256"}"#,
        &c,
    );
    assert_eq!(denied(&f, &t), DenyReason::MalformedToken);
}

#[test]
fn mistyped_claims_are_refused() {
    let f = standard();
    for (claim, value) in [
        ("exp", json!("soon")),
        ("iat", json!([1])),
        ("sub", json!(42)),
        ("aud", json!({"a": 1})),
        ("scope", json!(7)),
    ] {
        let mut c = claims();
        c[claim] = value;
        assert_eq!(
            denied(&f, &mint(&keys().rsa, &c)),
            DenyReason::MalformedToken,
            "{claim}"
        );
    }
}

#[test]
fn deeply_nested_json_is_refused() {
    let f = standard();
    let nested = format!("{}{}", "[".repeat(1000), "]".repeat(1000));
    let c = claims()
        .to_string()
        .replacen('{', &format!("{{\"deep\":{nested},"), 1);
    let t = mint_raw(&keys().rsa, r#"{"alg":"RS256","kid":"rsa-1"}"#, &c);
    let reason = denied(&f, &t);
    assert!(
        matches!(
            reason,
            DenyReason::MalformedToken | DenyReason::TokenTooLarge
        ),
        "{reason:?}"
    );
}

// === revocation ===

fn revoked(revocation: serde_json::Value) -> Fixture {
    let mut p = policy();
    p.spec.revocations = vec![serde_json::from_value(revocation).unwrap()];
    build(&[route()], &[p], &[])
}

#[test]
fn revoked_by_jti() {
    let f = revoked(json!({"jti": "jti-1"}));
    assert_eq!(
        denied(&f, &mint(&keys().rsa, &claims())),
        DenyReason::RevokedJti
    );
    let mut c = claims();
    c["jti"] = json!("jti-2");
    assert!(decide(&f, "GET", "/orders", Some(&mint(&keys().rsa, &c))).is_ok());
}

#[test]
fn revoked_by_token_hash() {
    let t = mint(&keys().rsa, &claims());
    let f = revoked(json!({"tokenSha256": portcullis_policy::token_digest(&t).to_hex()}));
    assert_eq!(denied(&f, &t), DenyReason::RevokedToken);
}

#[test]
fn revoked_by_subject_issued_before() {
    // Cut-off NOW-30: a token issued at NOW-60 is revoked, one issued at NOW-10 is not.
    let cutoff = k8s_openapi::jiff::Timestamp::from_second(NOW - 30)
        .unwrap()
        .to_string();
    let f = revoked(json!({"subject": "alice", "issuedBefore": cutoff}));
    assert_eq!(
        denied(&f, &mint(&keys().rsa, &claims())),
        DenyReason::RevokedSubject
    );
    let mut c = claims();
    c["iat"] = json!(NOW - 10);
    assert!(decide(&f, "GET", "/orders", Some(&mint(&keys().rsa, &c))).is_ok());
    c["sub"] = json!("bob");
    c["iat"] = json!(NOW - 60);
    assert!(decide(&f, "GET", "/orders", Some(&mint(&keys().rsa, &c))).is_ok());
}

#[test]
fn revoked_by_key_id() {
    let f = revoked(json!({"keyId": "rsa-1"}));
    assert_eq!(
        denied(&f, &mint(&keys().rsa, &claims())),
        DenyReason::RevokedKey
    );
    assert!(decide(&f, "GET", "/orders", Some(&mint(&keys().ec256, &claims()))).is_ok());
}

#[test]
fn expired_revocation_is_ignored() {
    let expires = k8s_openapi::jiff::Timestamp::from_second(NOW + 100)
        .unwrap()
        .to_string();
    let f = revoked(json!({"jti": "jti-1", "expiresAt": expires}));
    let mut c = claims();
    c["exp"] = json!(NOW + 3000);
    let t = mint(&keys().rsa, &c);
    assert_eq!(denied(&f, &t), DenyReason::RevokedJti);
    f.clock.advance(100);
    assert!(decide(&f, "GET", "/orders", Some(&t)).is_ok());
    assert_eq!(f.snapshot.expired_revocations(), 1);
}

#[test]
fn revocation_applies_to_cached_tokens() {
    let t = mint(&keys().rsa, &claims());
    let old = standard();
    assert!(decide(&old, "GET", "/orders", Some(&t)).is_ok());
    let mut p = policy();
    p.spec.revocations = vec![serde_json::from_value(json!({"jti": "jti-1"})).unwrap()];
    let clock = old.clock.clone();
    let (mut snapshot, errors) =
        portcullis_policy::compile_with(&options(&clock), &[route()], &[p], &[]);
    assert!(errors.is_empty());
    snapshot.inherit_caches(&old.snapshot);
    let h = format!("Bearer {t}");
    let req = RequestParts::new("GET", HOST, "/orders").with_authorization(&h);
    let Decision::Deny(d) = snapshot.authorize(&req) else {
        panic!("revoked token allowed")
    };
    assert_eq!(d.reason, DenyReason::RevokedJti);
    assert!(
        d.cache_hit,
        "the cache was carried over, and revocation still applied"
    );
}

// === scopes ===

#[test]
fn insufficient_scope_is_403_with_the_missing_scopes() {
    let f = standard();
    let t = mint(&keys().rsa, &claims());
    let (status, reason, challenge) = decide(&f, "POST", "/orders", Some(&t)).unwrap_err();
    assert_eq!((status, reason), (403, DenyReason::InsufficientScope));
    let c = challenge.unwrap();
    assert!(c.contains("error=\"insufficient_scope\""), "{c}");
    assert!(c.contains("scope=\"orders:write\""), "{c}");
}

#[test]
fn scopes_compare_as_whole_words() {
    let f = standard();
    let mut c = claims();
    c["scope"] = json!("orders:readonly xorders:read orders:rea");
    let (status, ..) = decide(&f, "GET", "/orders", Some(&mint(&keys().rsa, &c))).unwrap_err();
    assert_eq!(status, 403);
}

#[test]
fn scp_array_claim_is_supported() {
    let mut p = policy();
    p.spec.scope_claim = Some("scp".into());
    let f = build(&[route()], &[p], &[]);
    let mut c = claims();
    c["scp"] = json!(["orders:read"]);
    assert!(decide(&f, "GET", "/orders", Some(&mint(&keys().rsa, &c))).is_ok());
    c["scp"] = json!(["orders:write"]);
    assert_eq!(
        decide(&f, "GET", "/orders", Some(&mint(&keys().rsa, &c)))
            .unwrap_err()
            .0,
        403
    );
}

#[test]
fn any_scopes_needs_one_of_them() {
    let f = standard();
    let mut c = claims();
    assert_eq!(
        decide(&f, "GET", "/reports", Some(&mint(&keys().rsa, &c)))
            .unwrap_err()
            .0,
        403
    );
    c["scope"] = json!("admin");
    assert!(decide(&f, "GET", "/reports", Some(&mint(&keys().rsa, &c))).is_ok());
}

#[test]
fn rule_without_scopes_still_needs_a_valid_token() {
    let f = standard();
    assert_eq!(
        decide(&f, "GET", "/me", None).unwrap_err().1,
        DenyReason::MissingToken
    );
    let mut c = claims();
    c["scope"] = json!("");
    assert!(decide(&f, "GET", "/me", Some(&mint(&keys().rsa, &c))).is_ok());
}

#[test]
fn cache_is_used_and_keyed_by_digest() {
    let f = standard();
    let t = mint(&keys().rsa, &claims());
    let h = format!("Bearer {t}");
    let req = RequestParts::new("GET", HOST, "/orders").with_authorization(&h);
    let Decision::Allow(first) = f.snapshot.authorize(&req) else {
        panic!()
    };
    let Decision::Allow(second) = f.snapshot.authorize(&req) else {
        panic!()
    };
    assert!(!first.cache_hit && second.cache_hit);
    assert_eq!(
        second.fingerprint.unwrap().to_string(),
        format!(
            "sha256:{}",
            &portcullis_policy::token_digest(&t).to_hex()[..12]
        )
    );
    // A scope check still runs on the cached token.
    let req = RequestParts::new("DELETE", HOST, "/orders").with_authorization(&h);
    let Decision::Deny(d) = f.snapshot.authorize(&req) else {
        panic!()
    };
    assert!(d.cache_hit);
    assert_eq!(d.reason, DenyReason::InsufficientScope);
}
