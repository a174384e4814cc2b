//! The CRDs' CEL rules, run client-side: each rejection the issue lists, with its message.

use portcullis_api::validate::{api_route, token_policy};
use portcullis_api::{ApiRoute, TokenPolicy};
use serde::Deserialize;

fn route(yaml: &str) -> ApiRoute {
    serde_yaml::from_str(yaml).expect("test manifest parses")
}

fn policy(yaml: &str) -> TokenPolicy {
    serde_yaml::from_str(yaml).expect("test manifest parses")
}

const ROUTE: &str = r#"
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {name: orders, namespace: shop}
spec:
  hosts: [api.example.com, "*.example.com"]
  policyRef: {name: default}
  backend: {service: {name: orders, port: 8080}}
  rules:
    - match: {pathPrefix: /orders, methods: [GET]}
      requiredScopes: [orders:read]
    - match: {path: /health}
      auth: none
"#;

const POLICY: &str = r#"
apiVersion: portcullis.dev/v1alpha1
kind: TokenPolicy
metadata: {name: default, namespace: shop}
spec:
  issuers:
    - issuer: https://auth.example.com
      audiences: [orders]
      algorithms: [RS256, ES256]
      jwks: {inline: {keys: [{kty: RSA, kid: k1, n: abc, e: AQAB}]}}
  clockSkew: 30s
  maxTokenLifetime: 1h
  revocations:
    - jti: abc
    - subject: alice
      issuedBefore: "2026-01-01T00:00:00Z"
    - tokenSha256: 0000000000000000000000000000000000000000000000000000000000000000
      expiresAt: "2026-01-01T00:00:00Z"
    - keyId: leaked
"#;

fn messages(v: Vec<portcullis_api::validate::FieldViolation>) -> String {
    v.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn valid_manifests_pass() {
    assert_eq!(messages(api_route(&route(ROUTE))), "");
    assert_eq!(messages(token_policy(&policy(POLICY))), "");
}

#[test]
fn empty_hosts_rejected() {
    let mut r = route(ROUTE);
    r.spec.hosts.clear();
    assert!(messages(api_route(&r)).contains("spec.hosts must list at least one host"));
}

#[test]
fn host_with_port_or_upper_case_rejected() {
    for h in ["api.example.com:8080", "API.example.com", "*", "a.*.com"] {
        let mut r = route(ROUTE);
        r.spec.hosts = vec![h.into()];
        assert!(
            messages(api_route(&r)).contains("lowercase DNS name"),
            "{h} accepted"
        );
    }
}

#[test]
fn scopes_with_auth_none_rejected() {
    let mut r = route(ROUTE);
    r.spec.rules[1].required_scopes = vec!["x".into()];
    assert!(messages(api_route(&r)).contains("auth: none is public"));
    let mut r = route(ROUTE);
    r.spec.rules[1].any_scopes = vec!["x".into()];
    assert!(messages(api_route(&r)).contains("auth: none is public"));
}

#[test]
fn match_needs_exactly_one_of_path_and_prefix() {
    let mut r = route(ROUTE);
    r.spec.rules[0].matches.path = Some("/x".into());
    assert!(messages(api_route(&r)).contains("exactly one of path or pathPrefix"));
    let mut r = route(ROUTE);
    r.spec.rules[0].matches.path_prefix = None;
    assert!(messages(api_route(&r)).contains("exactly one of path or pathPrefix"));
}

#[test]
fn bad_methods_paths_scopes_and_backends_rejected() {
    let mut r = route(ROUTE);
    r.spec.rules[0].matches.methods = vec!["get".into()];
    assert!(messages(api_route(&r)).contains("upper-case HTTP methods"));
    let mut r = route(ROUTE);
    r.spec.rules[0].matches.path_prefix = Some("orders".into());
    assert!(messages(api_route(&r)).contains("pathPrefix must start with /"));
    let mut r = route(ROUTE);
    r.spec.rules[0].required_scopes = vec!["orders read".into()];
    assert!(messages(api_route(&r)).contains("each scope must be one word"));
    let mut r = route(ROUTE);
    r.spec.backend.url = Some("http://x".into());
    assert!(messages(api_route(&r)).contains("exactly one of service, url or llm"));
    let mut r = route(ROUTE);
    r.spec.backend.service = None;
    r.spec.backend.url = Some("ftp://x".into());
    assert!(messages(api_route(&r)).contains("must start with http:// or https://"));
}

fn llm_backend() -> portcullis_api::LlmBackend {
    serde_yaml::from_str(
        "provider: openaiCompatible\nurl: http://vllm:8000/v1\ncredentials: [{secretRef: {name: k, key: a}}]\nmodels: [{name: m}]\n",
    )
    .unwrap()
}

#[test]
fn llm_backends_are_checked_by_the_api_server_rules() {
    // An LLM backend alone is fine.
    let mut r = route(ROUTE);
    r.spec.backend.service = None;
    r.spec.backend.llm = Some(llm_backend());
    assert_eq!(messages(api_route(&r)), "");
    // ... but not beside a service.
    let mut r = route(ROUTE);
    r.spec.backend.llm = Some(llm_backend());
    assert!(messages(api_route(&r)).contains("exactly one of service, url or llm"));
    let mut r = route(ROUTE);
    r.spec.backend.service = None;
    let mut l = llm_backend();
    l.url = Some("ftp://x".into());
    l.models[0].scope = Some("model gpt".into());
    l.cooldown = Some("soon".into());
    r.spec.backend.llm = Some(l);
    let m = messages(api_route(&r));
    assert!(m.contains("backend.llm.url must start with http://"), "{m}");
    assert!(m.contains("scope must be one word"), "{m}");
    assert!(m.contains("cooldown must be a positive duration"), "{m}");
}

#[test]
fn algorithm_none_rejected() {
    for alg in ["none", "None", "NONE"] {
        let mut p = policy(POLICY);
        p.spec.issuers[0].algorithms = vec![alg.into()];
        assert!(
            messages(token_policy(&p)).contains("algorithm none is never allowed"),
            "{alg}"
        );
    }
}

#[test]
fn unknown_algorithm_rejected() {
    let mut p = policy(POLICY);
    p.spec.issuers[0].algorithms = vec!["RS1".into()];
    assert!(messages(token_policy(&p)).contains("unknown algorithm"));
    let mut p = policy(POLICY);
    p.spec.issuers[0].algorithms.clear();
    assert!(messages(token_policy(&p)).contains("at least one signature algorithm"));
}

#[test]
fn hmac_needs_a_secret() {
    let mut p = policy(POLICY);
    p.spec.issuers[0].algorithms = vec!["HS256".into()];
    assert!(messages(token_policy(&p)).contains("set jwks.secretRef"));
}

#[test]
fn jwks_needs_exactly_one_source() {
    let mut p = policy(POLICY);
    p.spec.issuers[0].jwks.as_mut().unwrap().uri = Some("https://auth.example.com/jwks".into());
    assert!(
        messages(token_policy(&p))
            .contains("exactly one of inline, secretRef, uri or discovery: true")
    );
    let mut p = policy(POLICY);
    p.spec.issuers[0].jwks.as_mut().unwrap().inline = None;
    assert!(
        messages(token_policy(&p))
            .contains("exactly one of inline, secretRef, uri or discovery: true")
    );
}

#[test]
fn revocation_needs_exactly_one_selector() {
    let mut p = policy(POLICY);
    p.spec.revocations = vec![Default::default()];
    assert!(messages(token_policy(&p)).contains("exactly one of jti, tokenSha256"));
    let mut p = policy(POLICY);
    p.spec.revocations[0].key_id = Some("k".into());
    assert!(messages(token_policy(&p)).contains("exactly one of jti, tokenSha256"));
    let mut p = policy(POLICY);
    p.spec.revocations[1].issued_before = None;
    assert!(messages(token_policy(&p)).contains("and issuedBefore go together"));
}

#[test]
fn negative_or_unparseable_durations_rejected() {
    for d in ["-5s", "5", "five minutes", "5d", ""] {
        let mut p = policy(POLICY);
        p.spec.clock_skew = Some(d.into());
        assert!(
            messages(token_policy(&p)).contains("clockSkew must be a positive duration"),
            "{d:?}"
        );
        let mut p = policy(POLICY);
        p.spec.max_token_lifetime = Some(d.into());
        assert!(
            messages(token_policy(&p)).contains("maxTokenLifetime must be a positive duration"),
            "{d:?}"
        );
    }
    for d in ["30s", "1h30m", "500ms", "1.5h"] {
        let mut p = policy(POLICY);
        p.spec.clock_skew = Some(d.into());
        assert_eq!(messages(token_policy(&p)), "", "{d}");
    }
}

#[test]
fn forward_claims_must_name_headers() {
    let mut p = policy(POLICY);
    p.spec.forward_claims.insert("sub".into(), "X User".into());
    assert!(messages(token_policy(&p)).contains("must be HTTP header names"));
}

#[test]
fn private_and_secret_keys_cannot_be_inline() {
    let mut p = policy(POLICY);
    p.spec.issuers[0]
        .jwks
        .as_mut()
        .unwrap()
        .inline
        .as_mut()
        .unwrap()
        .keys[0]
        .kty = "oct".into();
    assert!(messages(token_policy(&p)).contains("shared secrets (oct) belong in a Secret"));
}

#[test]
fn revocation_hashes_and_times_are_checked_by_the_schema() {
    // Checked by schema pattern/format rather than CEL: a regex per entry of a 5,000-entry
    // list exceeds the API server's CEL cost budget.
    let yaml = portcullis_api::crds_yaml().unwrap();
    assert!(yaml.contains("pattern: ^[0-9a-f]{64}$"));
    assert_eq!(yaml.matches("format: date-time").count(), 2);
}

const REMOTE: &str = r#"
apiVersion: portcullis.dev/v1alpha1
kind: TokenPolicy
metadata: {name: idp, namespace: shop}
spec:
  issuers:
    - issuer: https://auth.example.com
      audiences: [orders]
      algorithms: [RS256]
      jwks: {discovery: true, minRefreshInterval: 30s, maxRefreshInterval: 1h, caBundleSecretRef: {name: ca, key: ca.pem}}
      introspection:
        endpoint: https://auth.example.com/introspect
        credentialsSecretRef: {name: idp}
        cacheTTL: 60s
        negativeCacheTTL: 10s
"#;

#[test]
fn discovery_and_introspection_manifests_pass() {
    assert_eq!(messages(token_policy(&policy(REMOTE))), "");
    // Introspection alone needs no algorithms.
    let mut p = policy(REMOTE);
    p.spec.issuers[0].jwks = None;
    p.spec.issuers[0].algorithms.clear();
    assert_eq!(messages(token_policy(&p)), "");
}

#[test]
fn remote_keys_and_introspection_are_checked_at_apply_time() {
    let check = |edit: &dyn Fn(&mut TokenPolicy), want: &str| {
        let mut p = policy(REMOTE);
        edit(&mut p);
        let m = messages(token_policy(&p));
        assert!(m.contains(want), "want {want:?} in:\n{m}");
    };
    check(
        &|p| p.spec.issuers[0].issuer = "http://auth.example.com".into(),
        "the issuer must be an https:// URL",
    );
    check(
        &|p| {
            p.spec.issuers[0].jwks = None;
            p.spec.issuers[0].introspection = None;
        },
        "an issuer needs jwks (signed JWTs), introspection (opaque tokens), or both",
    );
    check(
        &|p| p.spec.issuers[0].algorithms.clear(),
        "algorithms must list at least one signature algorithm",
    );
    check(
        &|p| {
            p.spec.issuers[0].introspection.as_mut().unwrap().endpoint =
                "http://auth.example.com/introspect".into()
        },
        "introspection.endpoint must use https://",
    );
    check(
        &|p| p.spec.issuers[0].introspection.as_mut().unwrap().cache_ttl = Some("-5s".into()),
        "cacheTTL must be a positive duration",
    );
    check(
        &|p| {
            let j = p.spec.issuers[0].jwks.as_mut().unwrap();
            j.discovery = None;
            j.inline = Some(Default::default());
        },
        "caBundleSecretRef only applies to keys fetched over HTTPS",
    );
    check(
        &|p| {
            p.spec.issuers[0]
                .jwks
                .as_mut()
                .unwrap()
                .min_refresh_interval = Some("soon".into())
        },
        "minRefreshInterval must be a positive duration",
    );
    check(
        &|p| {
            let mut second = p.spec.issuers[0].clone();
            second.issuer = "https://second.example.com".into();
            p.spec.issuers.push(second);
        },
        "at most one issuer per policy may use introspection",
    );
}

#[test]
fn the_identity_provider_example_is_valid() {
    let text = include_str!("../../../examples/identity-provider/policy.yaml");
    let mut policies = 0;
    for doc in serde_yaml::Deserializer::from_str(text) {
        let v = serde_yaml::Value::deserialize(doc).unwrap();
        if v["kind"] == "TokenPolicy" {
            let p: TokenPolicy = serde_yaml::from_value(v).unwrap();
            assert_eq!(messages(token_policy(&p)), "");
            policies += 1;
        }
    }
    assert_eq!(policies, 1);
}

#[test]
fn jwk_thumbprint_is_a_revocation_selector() {
    // RFC 7638: a key named by its thumbprint, alone.
    let mut p = policy(POLICY);
    p.spec.revocations.push(portcullis_api::Revocation {
        jwk_thumbprint: Some("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs".into()),
        ..Default::default()
    });
    assert_eq!(messages(token_policy(&p)), "");
    // With another selector it is refused.
    let mut p = policy(POLICY);
    p.spec.revocations[3].jwk_thumbprint =
        Some("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs".into());
    assert!(messages(token_policy(&p)).contains(
        "exactly one of jti, tokenSha256, subject (with issuedBefore), email (with issuedBefore), sessionId, keyId, jwkThumbprint or apiKeyId"
    ));
    // Its shape is checked by the schema (a pattern, as for tokenSha256: cheaper than CEL
    // over 5,000 entries).
    let yaml = portcullis_api::crds_yaml().unwrap();
    assert!(yaml.contains("pattern: ^[A-Za-z0-9_-]{43}$"));
}

#[test]
fn never_accepted_token_types_are_refused_in_accepted_types() {
    // RFC 8725 section 3.11: logout tokens, security event tokens and DPoP proofs are never
    // access tokens, however the type is spelled.
    for typ in [
        "logout+jwt",
        "secevent+jwt",
        "dpop+jwt",
        "application/logout+jwt",
        "DPoP+JWT",
        "Application/SecEvent+JWT",
    ] {
        let mut p = policy(POLICY);
        p.spec.issuers[0].accepted_types = Some(vec!["at+jwt".into(), typ.into()]);
        assert!(
            messages(token_policy(&p)).contains("acceptedTypes cannot list logout+jwt"),
            "{typ} accepted"
        );
    }
    for ok in [
        vec!["at+jwt"],
        vec!["JWT", "at+jwt"],
        vec!["application/at+jwt"],
        vec!["logout+jwt-ish"],
    ] {
        let mut p = policy(POLICY);
        p.spec.issuers[0].accepted_types = Some(ok.iter().map(|s| s.to_string()).collect());
        p.spec.issuers[0].require_type = Some(true);
        assert_eq!(messages(token_policy(&p)), "", "{ok:?}");
    }
}

#[test]
fn require_type_needs_an_accepted_type() {
    let mut p = policy(POLICY);
    p.spec.issuers[0].accepted_types = Some(vec![]);
    assert_eq!(messages(token_policy(&p)), "");
    p.spec.issuers[0].require_type = Some(true);
    assert!(messages(token_policy(&p)).contains("requireType with an empty acceptedTypes"));
}

#[test]
fn api_key_id_is_a_revocation_selector_and_api_keys_may_replace_issuers() {
    // An API key named by its id, alone.
    let mut p = policy(POLICY);
    p.spec.revocations.push(portcullis_api::Revocation {
        api_key_id: Some("3fZk9QxW2bLm".into()),
        ..Default::default()
    });
    assert_eq!(messages(token_policy(&p)), "");
    let mut p = policy(POLICY);
    p.spec.revocations[3].api_key_id = Some("3fZk9QxW2bLm".into());
    assert!(messages(token_policy(&p)).contains("or apiKeyId"));
    let yaml = portcullis_api::crds_yaml().unwrap();
    assert!(yaml.contains("pattern: ^[0-9A-Za-z]{12}$"));
    // No issuers: refused, unless the policy takes API keys.
    let mut p = policy(POLICY);
    p.spec.issuers.clear();
    assert!(messages(token_policy(&p)).contains("at least one trusted issuer"));
    p.spec.api_keys = Some(portcullis_api::ApiKeysSpec::default());
    assert_eq!(messages(token_policy(&p)), "");
}

#[test]
fn api_key_header_cannot_be_a_header_that_means_something_else() {
    for (header, refused) in [
        ("x-api-key", false),
        ("X-Shop-Key", false),
        ("Authorization", true),
        ("cookie", true),
        ("DPoP", true),
    ] {
        let mut p = policy(POLICY);
        p.spec.api_keys = Some(portcullis_api::ApiKeysSpec {
            header: Some(header.into()),
            ..Default::default()
        });
        let m = messages(token_policy(&p));
        assert_eq!(
            m.contains("apiKeys.header cannot be"),
            refused,
            "{header}: {m}"
        );
    }
}

#[test]
fn session_and_email_revocations_and_the_issuer_qualifier() {
    // sessionId alone; email with issuedBefore; issuer only beside subject/email/sessionId.
    let mut p = policy(POLICY);
    p.spec.revocations.push(portcullis_api::Revocation {
        session_id: Some("s-1".into()),
        issuer: Some("https://idp.example.com".into()),
        ..Default::default()
    });
    p.spec.revocations.push(portcullis_api::Revocation {
        email: Some("a@example.com".into()),
        issued_before: Some("2026-01-01T00:00:00Z".into()),
        ..Default::default()
    });
    assert_eq!(messages(token_policy(&p)), "");
    let mut p = policy(POLICY);
    p.spec.revocations.push(portcullis_api::Revocation {
        jti: Some("j".into()),
        issuer: Some("https://idp.example.com".into()),
        ..Default::default()
    });
    assert!(messages(token_policy(&p)).contains("issuer narrows"));
    let mut p = policy(POLICY);
    p.spec.revocations.push(portcullis_api::Revocation {
        email: Some("a@example.com".into()),
        ..Default::default()
    });
    assert!(messages(token_policy(&p)).contains("and issuedBefore go together"));
}
