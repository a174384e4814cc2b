//! Keys from providers and opaque tokens: fetched key sets (discovery and `jwks.uri`), the
//! unknown-`kid` refetch hint, the list of sources to fetch, and RFC 7662 introspection
//! verdicts with their caches.

mod support;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use portcullis_api::TokenPolicy;
use portcullis_policy::{
    Decision, DenyReason, ManualClock, RemoteSourceKind, RequestParts, Snapshot, compile_with,
    discovery_url, remote_sources, source_key, token_digest, usable_keys,
};
use serde_json::{Value, json};
use support::*;

const HOST: &str = "api.example.com";
const ENDPOINT: &str = "https://auth.example.com/introspect";

fn policy_with(issuer: Value) -> TokenPolicy {
    serde_json::from_value(json!({
        "apiVersion": "portcullis.dev/v1alpha1", "kind": "TokenPolicy",
        "metadata": {"name": "default", "namespace": "shop"},
        "spec": {"issuers": [issuer], "forwardClaims": {"sub": "X-User"}},
    }))
    .unwrap()
}

/// The key the discovery source of ISSUER (no CA bundle) is known by.
fn disc_key() -> String {
    source_key(
        &discovery_url(ISSUER),
        &RemoteSourceKind::Discovery {
            issuer: ISSUER.into(),
        },
        None,
    )
}

fn discovery_policy() -> TokenPolicy {
    policy_with(json!({
        "issuer": ISSUER, "audiences": [AUDIENCE], "algorithms": ["RS256"],
        "jwks": {"discovery": true, "minRefreshInterval": "5s"},
    }))
}

fn creds() -> Secret {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "idp", "namespace": "shop"},
        "stringData": {"client-id": "gateway", "client-secret": "s3cret"},
    }))
    .unwrap()
}

fn introspection_issuer(jwks: bool) -> Value {
    let mut v = json!({
        "issuer": ISSUER, "audiences": [AUDIENCE],
        "introspection": {
            "endpoint": ENDPOINT, "credentialsSecretRef": {"name": "idp"},
            "cacheTTL": "60s", "negativeCacheTTL": "10s",
        },
    });
    if jwks {
        v["algorithms"] = json!(["RS256"]);
        v["jwks"] = json!({"inline": {"keys": [keys().rsa.jwk]}});
    }
    v
}

struct Env {
    snapshot: Snapshot,
    clock: Arc<ManualClock>,
}

fn compile(policy: TokenPolicy, remote: &[(&str, Value)]) -> (Env, Vec<String>) {
    let clock = Arc::new(ManualClock::new(NOW));
    let mut opts = options(&clock);
    for (url, doc) in remote {
        opts.remote_jwks.insert(url.to_string(), doc.clone());
    }
    let (snapshot, errors) = compile_with(&opts, &[route()], &[policy], &[creds()]);
    let errors = errors.iter().map(ToString::to_string).collect();
    (Env { snapshot, clock }, errors)
}

fn env(policy: TokenPolicy, remote: &[(&str, Value)]) -> Env {
    let (e, errors) = compile(policy, remote);
    assert!(errors.is_empty(), "{errors:#?}");
    e
}

fn get<'s>(s: &'s Snapshot, path: &str, h: &'s str) -> Decision<'s> {
    s.authorize(&RequestParts::new("GET", HOST, path).with_authorization(h))
}

fn answer(extra: Value) -> Value {
    let mut v = json!({
        "active": true, "iss": ISSUER, "aud": AUDIENCE, "sub": "svc", "jti": "op-1",
        "iat": NOW - 10, "exp": NOW + 600, "scope": "orders:read", "token_type": "Bearer",
    });
    for (k, x) in extra.as_object().unwrap() {
        if x.is_null() {
            v.as_object_mut().unwrap().remove(k);
        } else {
            v[k] = x.clone();
        }
    }
    v
}

/// Authorizes an opaque token, answering the introspection with `answer`; returns the
/// final outcome (status or 200) and whether an introspection was asked for.
fn opaque(s: &Snapshot, path: &str, token: &str, answer: Result<&Value, ()>) -> (u16, bool) {
    let h = format!("Bearer {token}");
    let req = RequestParts::new("GET", HOST, path).with_authorization(&h);
    match s.authorize(&req) {
        Decision::Pending(pending) => {
            let portcullis_policy::Need::Introspection { endpoint, digest } = &pending.need else {
                panic!("{pending:?}")
            };
            assert!(endpoint.url.starts_with("https://auth.example.com/"));
            assert_eq!(&*endpoint.client_id, "gateway");
            assert_eq!(&*endpoint.client_secret, "s3cret");
            assert_eq!(*digest, token_digest(token));
            match s.resume(
                &req,
                &pending.need,
                portcullis_policy::Answer::Introspection(answer),
            ) {
                Decision::Allow(_) => (200, true),
                Decision::Deny(d) => (d.status(), true),
                Decision::Pending(_) => panic!("introspection asked twice"),
            }
        }
        Decision::Allow(_) => (200, false),
        Decision::Deny(d) => (d.status(), false),
    }
}

fn deny_reason(d: Decision<'_>) -> DenyReason {
    match d {
        Decision::Deny(d) => d.reason,
        // An unknown kid of fetched keys waits for a refetch; when it brings nothing new
        // (as here, no new document), the answer is unknown_key.
        Decision::Pending(p) if matches!(p.need, portcullis_policy::Need::Keys(_)) => {
            DenyReason::UnknownKey
        }
        other => panic!("expected a denial, got {other:?}"),
    }
}

// === fetched key sets ===

#[test]
fn discovery_keys_come_from_the_fetched_document_under_the_issuers_discovery_url() {
    let url = discovery_url(ISSUER);
    assert_eq!(
        url,
        "https://auth.example.com/.well-known/openid-configuration"
    );
    assert_eq!(
        discovery_url("https://a.test/realm/"),
        "https://a.test/realm/.well-known/openid-configuration"
    );
    let (_, errors) = compile(discovery_policy(), &[]);
    assert!(
        errors[0].contains("spec.issuers[0].jwks.discovery")
            && errors[0].contains("not been fetched"),
        "{errors:?}"
    );
    // Fetched documents are looked up by source key, not by the bare URL.
    let (_, errors) = compile(
        discovery_policy(),
        &[(&url, json!({"keys": [keys().rsa.jwk]}))],
    );
    assert!(!errors.is_empty());
    let e = env(
        discovery_policy(),
        &[(&disc_key(), json!({"keys": [keys().rsa.jwk]}))],
    );
    let t = format!("Bearer {}", mint(&keys().rsa, &claims()));
    assert!(get(&e.snapshot, "/orders/1", &t).is_allow());
}

#[test]
fn a_fetched_set_skips_keys_portcullis_cannot_use_but_never_private_ones() {
    let k = keys();
    let odd = json!({"kty": "EC", "crv": "P-521", "kid": "p521", "x": "AA", "y": "AA"});
    let enc = json!({"kty": "RSA", "use": "enc", "kid": "enc", "alg": "RSA-OAEP", "n": "AA", "e": "AQAB"});
    let oct = json!({"kty": "oct", "kid": "sym", "k": "c2VjcmV0"});
    let doc = json!({"keys": [odd, enc, oct, k.rsa.jwk]});
    assert_eq!(usable_keys(&doc).unwrap(), 1);
    let e = env(discovery_policy(), &[(&disc_key(), doc)]);
    let t = format!("Bearer {}", mint(&k.rsa, &claims()));
    assert!(get(&e.snapshot, "/orders/1", &t).is_allow());

    let mut private = k.rsa.jwk.clone();
    private["d"] = json!("AAAA");
    assert!(usable_keys(&json!({"keys": [private]})).is_err());
    assert!(usable_keys(&json!({"keys": []})).is_err());
    assert!(usable_keys(&json!({"nokeys": 1})).is_err());
    let (_, errors) = compile(discovery_policy(), &[(&disc_key(), json!({"keys": []}))]);
    assert!(
        errors[0].contains("InvalidKeys") || errors[0].contains("no usable"),
        "{errors:?}"
    );
}

#[test]
fn an_unknown_kid_from_a_fetched_set_carries_a_refetch_hint() {
    let k = keys();
    let url = disc_key();
    let e = env(discovery_policy(), &[(&url, json!({"keys": [k.rsa.jwk]}))]);
    let t = format!("Bearer {}", mint(&k.rsa2, &claims()));
    match get(&e.snapshot, "/orders/1", &t) {
        Decision::Pending(p) => {
            let portcullis_policy::Need::Keys(r) = p.need else {
                panic!("{p:?}")
            };
            assert_eq!(&*r.url, url);
            assert_eq!(&*r.issuer, ISSUER);
            assert_eq!(r.min_interval, Duration::from_secs(5));
        }
        other => panic!("{other:?}"),
    }
    // A bad signature with a known kid is no reason to refetch.
    let forged = mint_raw(
        &k.rsa2,
        &format!(r#"{{"alg":"RS256","kid":"{}"}}"#, k.rsa.kid),
        &claims().to_string(),
    );
    match get(&e.snapshot, "/orders/1", &format!("Bearer {forged}")) {
        Decision::Deny(d) => {
            assert_eq!(d.reason, DenyReason::BadSignature);
        }
        other => panic!("{other:?}"),
    }
    // Inline keys: nothing to refetch.
    let inline = build(&[route()], &[policy()], &[]);
    let stranger = rsa_stranger();
    match get(
        &inline.snapshot,
        "/orders/1",
        &format!("Bearer {}", mint(&stranger, &claims())),
    ) {
        Decision::Deny(d) => {
            assert_eq!(d.reason, DenyReason::UnknownKey);
        }
        other => panic!("{other:?}"),
    }
}

fn rsa_stranger() -> TestKey {
    portcullis_testkit::rsa("stranger")
}

#[test]
fn a_key_removed_from_the_provider_is_refused_once_the_new_document_applies() {
    let k = keys();
    let url = disc_key();
    let t = format!("Bearer {}", mint(&k.rsa, &claims()));
    let both = env(
        discovery_policy(),
        &[(&url, json!({"keys": [k.rsa.jwk, k.rsa2.jwk]}))],
    );
    assert!(get(&both.snapshot, "/orders/1", &t).is_allow());
    let mut next = env(discovery_policy(), &[(&url, json!({"keys": [k.rsa2.jwk]}))]);
    // The verified-token cache does not survive a key set change.
    next.snapshot.inherit_caches(&both.snapshot);
    assert_eq!(
        deny_reason(get(&next.snapshot, "/orders/1", &t)),
        DenyReason::UnknownKey
    );
}

#[test]
fn sources_to_fetch_are_merged_by_url_with_the_tightest_bounds() {
    let mut a = discovery_policy();
    a.metadata.name = Some("a".into());
    let mut b: TokenPolicy = policy_with(json!({
        "issuer": ISSUER, "audiences": ["other"], "algorithms": ["ES256"],
        "jwks": {"discovery": true, "minRefreshInterval": "30s", "maxRefreshInterval": "2m"},
    }));
    b.metadata.name = Some("b".into());
    let c = policy_with(json!({
        "issuer": "https://other.example.com", "audiences": ["x"], "algorithms": ["RS256"],
        "jwks": {"uri": "https://other.example.com/keys", "caBundleSecretRef": {"name": "ca", "key": "ca.pem"}},
    }));
    let ca: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "ca", "namespace": "shop"},
        "stringData": {"ca.pem": "-----BEGIN CERTIFICATE-----\n..."},
    }))
    .unwrap();
    let inline = policy();
    let sources = remote_sources(&[a, b, c, inline], &[ca]);
    assert_eq!(sources.len(), 2, "{sources:#?}");
    let d = sources
        .iter()
        .find(|s| s.url == discovery_url(ISSUER))
        .unwrap();
    assert_eq!(
        d.kind,
        RemoteSourceKind::Discovery {
            issuer: ISSUER.into()
        }
    );
    assert_eq!(d.min_refresh, Duration::from_secs(5));
    assert_eq!(d.max_refresh, Duration::from_secs(120));
    assert_eq!(d.policies, vec!["shop/a".to_string(), "shop/b".to_string()]);
    let u = sources
        .iter()
        .find(|s| s.url == "https://other.example.com/keys")
        .unwrap();
    assert_eq!(u.kind, RemoteSourceKind::Jwks);
    assert_eq!(u.min_refresh, Duration::from_secs(60), "default 1m");
    assert_eq!(u.max_refresh, Duration::from_secs(3600), "default 1h");
    assert_eq!(u.ca_pem.len(), 1);
    assert_ne!(u.key, u.url, "a CA bundle makes the source its own");
}

#[test]
fn sources_are_shared_only_when_url_kind_issuer_and_ca_are_the_same() {
    let mk = |name: &str, issuer: &str, jwks: Value| {
        let mut p = policy_with(json!({
            "issuer": issuer, "audiences": ["a"], "algorithms": ["RS256"], "jwks": jwks,
        }));
        p.metadata.namespace = Some(name.into());
        p
    };
    let ca = |ns: &str, pem: &str| -> Secret {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "ca", "namespace": ns},
            "stringData": {"ca.pem": pem},
        }))
        .unwrap()
    };
    let url = "https://idp.example.com/keys";
    let disc = discovery_url("https://idp.example.com");
    let policies = [
        mk("a", "https://idp.example.com", json!({"uri": url})),
        mk("b", "https://idp.example.com", json!({"uri": url})),
        mk(
            "c",
            "https://idp.example.com",
            json!({"uri": url, "caBundleSecretRef": {"name": "ca", "key": "ca.pem"}}),
        ),
        mk(
            "d",
            "https://idp.example.com",
            json!({"uri": url, "caBundleSecretRef": {"name": "ca", "key": "ca.pem"}}),
        ),
        mk("e", "https://idp.example.com", json!({"discovery": true})),
        mk("f", "https://idp.example.com/", json!({"discovery": true})),
        mk("g", "https://idp.example.com", json!({"uri": disc})),
    ];
    let secrets = [ca("c", "tenant c's CA"), ca("d", "tenant d's CA")];
    let sources = remote_sources(&policies, &secrets);
    let users: Vec<Vec<String>> = sources.iter().map(|s| s.policies.clone()).collect();
    assert_eq!(sources.len(), 6, "{users:?}");
    assert!(
        users.contains(&vec!["a/default".to_string(), "b/default".to_string()]),
        "{users:?}"
    );
    for tenant in ["c", "d", "e", "f", "g"] {
        assert!(
            users.contains(&vec![format!("{tenant}/default")]),
            "{tenant} shares: {users:?}"
        );
    }
}

// === introspection ===

#[test]
fn an_active_answer_is_cached_and_scopes_are_checked_on_every_request() {
    let e = env(policy_with(introspection_issuer(false)), &[]);
    let s = &e.snapshot;
    let a = answer(json!({}));
    assert_eq!(
        opaque(s, "/orders/1", "opaque-token-1", Ok(&a)),
        (200, true)
    );
    // Cached: no second call; the scope check still runs.
    assert_eq!(
        opaque(s, "/orders/2", "opaque-token-1", Err(())),
        (200, false)
    );
    let h = "Bearer opaque-token-1";
    match s.authorize(&RequestParts::new("POST", HOST, "/orders").with_authorization(h)) {
        Decision::Deny(d) => {
            assert_eq!(d.reason, DenyReason::InsufficientScope);
            assert!(d.cache_hit);
        }
        other => panic!("{other:?}"),
    }
    // Forwarded claims come from the answer.
    match get(s, "/orders/3", h) {
        Decision::Allow(a) => assert_eq!(a.headers()[0].1, "svc"),
        other => panic!("{other:?}"),
    }
    // The verdict lives cacheTTL (60s), then the endpoint is asked again.
    e.clock.advance(61);
    assert_eq!(
        opaque(s, "/orders/1", "opaque-token-1", Ok(&a)),
        (200, true)
    );
}

#[test]
fn a_cached_verdict_never_outlives_the_tokens_exp() {
    let e = env(policy_with(introspection_issuer(false)), &[]);
    let a = answer(json!({"exp": NOW + 20}));
    assert_eq!(
        opaque(&e.snapshot, "/orders/1", "short-lived", Ok(&a)),
        (200, true)
    );
    // Just past exp: the cached verdict is gone (cacheTTL is 60s), the endpoint is asked.
    e.clock.advance(21);
    let (_, asked) = opaque(&e.snapshot, "/orders/1", "short-lived", Ok(&a));
    assert!(
        asked,
        "a verdict is never served from the cache past the token's exp"
    );
    // Past exp plus the 30s clock skew, the answer itself is refused.
    e.clock.advance(40);
    let (code, asked) = opaque(&e.snapshot, "/orders/1", "short-lived", Ok(&a));
    assert!(asked);
    assert_eq!(code, 401, "exp has passed");
}

#[test]
fn introspection_verdicts_survive_a_config_push_that_keeps_the_endpoint() {
    let mut p = policy_with(introspection_issuer(false));
    let first = env(p.clone(), &[]);
    assert_eq!(
        opaque(&first.snapshot, "/orders/1", "kept", Ok(&answer(json!({})))),
        (200, true)
    );
    // A revocation-only change: the cache is kept, even with the endpoint down.
    p.spec.revocations = vec![serde_json::from_value(json!({"jti": "other"})).unwrap()];
    let mut second = env(p.clone(), &[]);
    second.snapshot.inherit_caches(&first.snapshot);
    assert_eq!(
        opaque(&second.snapshot, "/orders/1", "kept", Err(())),
        (200, false)
    );
    // Another endpoint: verdicts of the old one are not trusted.
    let mut other = introspection_issuer(false);
    other["introspection"]["endpoint"] = json!("https://auth.example.com/other-introspect");
    let mut third = env(policy_with(other), &[]);
    third.snapshot.inherit_caches(&second.snapshot);
    let h = "Bearer kept";
    assert!(matches!(
        get(&third.snapshot, "/orders/1", h),
        Decision::Pending(_)
    ));
}

#[test]
fn inactive_and_unfit_answers_are_refused_and_negatively_cached() {
    let cases: Vec<(&str, Value)> = vec![
        ("inactive", json!({"active": false})),
        ("active missing", json!({"active": null})),
        ("active as a string", json!({"active": "true"})),
        ("another issuer", json!({"iss": "https://evil.example.com"})),
        ("another audience", json!({"aud": "someone-else"})),
        ("audience list without ours", json!({"aud": ["a", "b"]})),
        (
            "no aud, foreign client_id",
            json!({"aud": null, "client_id": "stranger"}),
        ),
        ("no aud, no client_id", json!({"aud": null})),
        ("a refresh token", json!({"token_type": "refresh_token"})),
        ("expired", json!({"exp": NOW - 100})),
        ("not yet valid", json!({"nbf": NOW + 600})),
        ("exp not a number", json!({"exp": "soon"})),
    ];
    for (name, extra) in cases {
        let e = env(policy_with(introspection_issuer(false)), &[]);
        let a = answer(extra);
        let token: String = format!("token-{name}")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        assert_eq!(
            opaque(&e.snapshot, "/orders/1", &token, Ok(&a)),
            (401, true),
            "{name}"
        );
        // Negative verdict cached for negativeCacheTTL (10s).
        let h = format!("Bearer {token}");
        assert_eq!(
            deny_reason(get(&e.snapshot, "/orders/1", &h)),
            DenyReason::InactiveToken,
            "{name}"
        );
        e.clock.advance(11);
        assert!(
            matches!(get(&e.snapshot, "/orders/1", &h), Decision::Pending(_)),
            "{name}"
        );
    }
    // `client_id` stands in for a missing `aud`; aud lists are fine when ours is in them.
    for ok in [
        json!({"aud": null, "client_id": AUDIENCE}),
        json!({"aud": ["x", AUDIENCE]}),
        json!({"token_type": null, "iss": null}),
    ] {
        let e = env(policy_with(introspection_issuer(false)), &[]);
        assert_eq!(
            opaque(
                &e.snapshot,
                "/orders/1",
                "ok-token",
                Ok(&answer(ok.clone()))
            ),
            (200, true),
            "{ok}"
        );
    }
}

#[test]
fn an_unreachable_endpoint_gives_503_and_is_not_cached() {
    let e = env(policy_with(introspection_issuer(false)), &[]);
    let h = "Bearer unjudged";
    let req = RequestParts::new("GET", HOST, "/orders/1").with_authorization(h);
    let Decision::Pending(pending) = e.snapshot.authorize(&req) else {
        panic!("expected introspection")
    };
    match e.snapshot.resume(
        &req,
        &pending.need,
        portcullis_policy::Answer::Introspection(Err(())),
    ) {
        Decision::Deny(d) => {
            assert_eq!(d.reason, DenyReason::IntrospectionUnavailable);
            assert_eq!(d.status(), 503);
            assert!(d.www_authenticate().is_none());
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        get(&e.snapshot, "/orders/1", h),
        Decision::Pending(_)
    ));
}

#[test]
fn revocations_apply_to_introspected_tokens() {
    let token = "opaque-revoked";
    let digest = token_digest(token).to_hex();
    for revocation in [
        json!({"tokenSha256": digest}),
        json!({"jti": "op-1"}),
        json!({"subject": "svc", "issuedBefore": "2030-01-01T00:00:00Z"}),
    ] {
        let mut p = policy_with(introspection_issuer(false));
        p.spec.revocations = vec![serde_json::from_value(revocation.clone()).unwrap()];
        let e = env(p, &[]);
        assert_eq!(
            opaque(&e.snapshot, "/orders/1", token, Ok(&answer(json!({})))),
            (401, true),
            "{revocation}"
        );
        assert_eq!(
            opaque(&e.snapshot, "/orders/1", token, Err(())),
            (401, false),
            "cached, still revoked: {revocation}"
        );
    }
}

#[test]
fn with_both_judges_the_token_shape_picks_one_and_a_jws_never_reaches_the_endpoint() {
    let k = keys();
    let e = env(policy_with(introspection_issuer(true)), &[]);
    let jwt = mint(&k.rsa, &claims());
    assert!(get(&e.snapshot, "/orders/1", &format!("Bearer {jwt}")).is_allow());
    // A JWS-shaped token that fails verification is refused, not introspected.
    let stranger = mint(&rsa_stranger(), &claims());
    assert_eq!(
        deny_reason(get(&e.snapshot, "/orders/1", &format!("Bearer {stranger}"))),
        DenyReason::UnknownKey
    );
    assert_eq!(
        deny_reason(get(&e.snapshot, "/orders/1", "Bearer a.b.c")),
        DenyReason::MalformedToken
    );
    // Anything else goes to the endpoint.
    assert!(matches!(
        get(&e.snapshot, "/orders/1", "Bearer opaque.two"),
        Decision::Pending(_)
    ));
    assert!(matches!(
        get(&e.snapshot, "/orders/1", "Bearer opaque"),
        Decision::Pending(_)
    ));
}

#[test]
fn introspection_config_errors_name_the_field() {
    // No credentials Secret.
    let clock = Arc::new(ManualClock::new(NOW));
    let (_, errors) = compile_with(
        &options(&clock),
        &[route()],
        &[policy_with(introspection_issuer(false))],
        &[],
    );
    assert!(
        errors.iter().any(
            |e| e.path == "spec.issuers[0].introspection.credentialsSecretRef"
                && e.reason == "SecretNotFound"
        ),
        "{errors:#?}"
    );
    // Plain http to a non-loopback host.
    let mut i = introspection_issuer(false);
    i["introspection"]["endpoint"] = json!("http://auth.example.com/introspect");
    let (_, errors) = compile(policy_with(i), &[]);
    assert!(
        errors.iter().any(|e| e.contains("introspection.endpoint")),
        "{errors:?}"
    );
    // Two introspection issuers in one policy.
    let mut p = policy_with(introspection_issuer(false));
    let mut second: portcullis_api::IssuerSpec =
        serde_json::from_value(introspection_issuer(false)).unwrap();
    second.issuer = "https://second.example.com".into();
    p.spec.issuers.push(second);
    let (_, errors) = compile(p, &[]);
    assert!(
        errors.iter().any(|e| e.contains("at most one issuer")),
        "{errors:?}"
    );
}

/// A discovery source whose first fetch is under way (its key, as `remote_sources` names
/// it, in `pending_jwks`) makes the policy wait (`KeysPending`) and its routes wait
/// (`PolicyPending`): waits, reported under ResolvedRefs, not faults. Once the document is
/// there, it compiles.
#[test]
fn a_source_pending_its_first_fetch_is_a_wait_not_a_fault() {
    let policy = discovery_policy();
    let sources = remote_sources(std::slice::from_ref(&policy), &[]);
    assert_eq!(sources.len(), 1);
    assert_eq!(sources[0].key, disc_key());

    let clock = Arc::new(ManualClock::new(NOW));
    let mut opts = options(&clock);
    opts.pending_jwks.insert(sources[0].key.clone());
    let (snapshot, errors) = compile_with(&opts, &[route()], std::slice::from_ref(&policy), &[]);
    assert_eq!(errors.len(), 2, "{errors:#?}");
    let (p, r) = (&errors[0], &errors[1]);
    assert_eq!(
        (p.kind, &*p.path, p.reason.as_str()),
        (
            "TokenPolicy",
            "spec.issuers[0].jwks.discovery",
            "KeysPending"
        )
    );
    assert!(p.message.contains(&discovery_url(ISSUER)), "{p}");
    assert!(p.message.contains("not been fetched yet"), "{p}");
    assert_eq!(
        (r.kind, &*r.path, r.reason.as_str()),
        ("ApiRoute", "spec.policyRef.name", "PolicyPending")
    );
    assert!(r.message.contains("not usable yet"), "{r}");
    for e in &errors {
        assert!(e.is_pending() && e.is_ref_error(), "{e}");
    }
    assert_eq!(snapshot.stats().policies, 0);

    // The same source with no fetch under way (failed, or nothing fetches it) is a fault.
    opts.pending_jwks.clear();
    let (_, errors) = compile_with(&opts, &[route()], std::slice::from_ref(&policy), &[]);
    let reasons: Vec<&str> = errors.iter().map(|e| e.reason.as_str()).collect();
    assert_eq!(reasons, ["KeysNotFetched", "PolicyNotReady"], "{errors:#?}");
    assert!(errors.iter().all(|e| !e.is_pending()));

    // Fetched: the pending mark no longer matters.
    opts.pending_jwks.insert(disc_key());
    opts.remote_jwks
        .insert(disc_key(), json!({"keys": [keys().rsa.jwk]}));
    let (snapshot, errors) = compile_with(&opts, &[route()], &[policy], &[]);
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(snapshot.stats().policies, 1);
}

/// A policy that waits for one source but is also wrong elsewhere is a fault: its routes
/// say `PolicyNotReady`, naming the fault rather than the wait.
#[test]
fn a_wait_beside_a_fault_is_a_fault() {
    let mut policy = discovery_policy();
    policy.spec.clock_skew = Some("soon".into());
    let clock = Arc::new(ManualClock::new(NOW));
    let mut opts = options(&clock);
    opts.pending_jwks.insert(disc_key());
    let (_, errors) = compile_with(&opts, &[route()], &[policy], &[]);
    let reasons: Vec<&str> = errors.iter().map(|e| e.reason.as_str()).collect();
    assert_eq!(
        reasons,
        ["KeysPending", "InvalidDuration", "PolicyNotReady"],
        "{errors:#?}"
    );
    let route_error = &errors[2];
    assert!(!route_error.is_pending());
    assert!(route_error.message.contains("soon"), "{route_error}");
}

#[test]
fn an_introspected_token_bound_by_cnf_needs_its_dpop_proof_rfc9449_s6_2() {
    use base64::Engine;
    use sha2::Digest;
    // RFC 9449 section 6.2: the introspection answer's `cnf.jkt` binds an opaque token.
    let e = env(policy_with(introspection_issuer(false)), &[]);
    let key = portcullis_testkit::ec("client", false);
    let jkt = portcullis_policy::key_thumbprints(&json!({"keys": [key.jwk]}).to_string()).unwrap()
        [0]
    .thumbprint
    .clone();
    let bound = answer(json!({"cnf": {"jkt": jkt}}));
    // As Bearer: refused, whatever the endpoint says.
    assert_eq!(
        opaque(&e.snapshot, "/orders/1", "opaque-bound", Ok(&bound)).0,
        401
    );
    // As DPoP with a proof of that key: allowed (the verdict is cached from above).
    let token = "opaque-bound";
    let ath = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(token.as_bytes()));
    let mut jwk = key.jwk.clone();
    jwk.as_object_mut().unwrap().remove("kid");
    let proof = key.mint_raw(
        &json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk}).to_string(),
        &json!({"jti": "p-1", "htm": "GET", "htu": format!("https://{HOST}/orders/1"),
                "iat": NOW, "ath": ath})
        .to_string(),
    );
    let h = format!("DPoP {token}");
    let mut req = RequestParts::new("GET", HOST, "/orders/1").with_authorization(&h);
    req.credentials.dpop = portcullis_policy::HeaderField::One(proof.as_bytes());
    assert!(e.snapshot.authorize(&req).is_allow());
}
