//! `compile`: errors that name the object and field, bad objects left out without harming
//! the rest, the route index's precedence rules, upstreams, remote key sets and stats.

mod support;

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use portcullis_api::validate::cel_errors;
use portcullis_api::{ApiRoute, TokenPolicy};
use portcullis_policy::{
    CompileError, CompileOptions, Decision, DenyReason, ManualClock, RequestParts, Snapshot,
    SnapshotStats, compile_with,
};
use serde_json::{Value, json};
use support::*;

// === helpers ===

fn opts(validate_cel: bool) -> CompileOptions {
    let options = CompileOptions {
        clock: Arc::new(ManualClock::new(NOW)),
        validate_cel,
        ..Default::default()
    };
    // As standalone mode honours the flag: the CRDs' CEL rules run before the compiler's.
    if validate_cel {
        options.with_spec_rules(cel_errors::<ApiRoute>, cel_errors::<TokenPolicy>)
    } else {
        options
    }
}

fn run(
    validate_cel: bool,
    routes: &[ApiRoute],
    policies: &[TokenPolicy],
    secrets: &[Secret],
) -> (Snapshot, Vec<CompileError>) {
    compile_with(&opts(validate_cel), routes, policies, secrets)
}

/// An ApiRoute `shop/{name}` using policy `default`, from JSON pieces.
fn api_route(name: &str, hosts: &[&str], rules: Value) -> ApiRoute {
    serde_json::from_value(json!({
        "apiVersion": "portcullis.dev/v1alpha1", "kind": "ApiRoute",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {
            "hosts": hosts,
            "policyRef": {"name": "default"},
            "backend": {"url": format!("http://{name}.test:80")},
            "rules": rules,
        }
    }))
    .unwrap()
}

fn created(mut r: ApiRoute, at: &str) -> ApiRoute {
    r.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        at.parse().unwrap(),
    ));
    r
}

/// Compiles public routes with the standard policy, expecting no errors.
fn public_snapshot(routes: &[ApiRoute]) -> Snapshot {
    let (s, errors) = run(true, routes, &[policy()], &[]);
    assert!(errors.is_empty(), "{errors:#?}");
    s
}

/// `(route id, rule index)` of an allowed request, or the denial reason.
fn hit(s: &Snapshot, method: &str, host: &str, path: &str) -> Result<(String, usize), DenyReason> {
    match s.authorize(&RequestParts::new(method, host, path)) {
        Decision::Allow(a) => Ok((a.route.id.to_string(), a.route.rule)),
        Decision::Deny(d) => Err(d.reason),
        Decision::Pending(_) => panic!("no introspection configured"),
    }
}

fn public(path_key: &str, path: &str) -> Value {
    json!({"match": {path_key: path}, "auth": "none"})
}

fn errors_of<'e>(errors: &'e [CompileError], kind: &str, name: &str) -> Vec<&'e CompileError> {
    errors
        .iter()
        .filter(|e| e.kind == kind && e.name == name)
        .collect()
}

// === (a) errors name the object and the field ===

#[test]
fn error_display_is_kind_namespace_name_path_message() {
    let mut r = route();
    r.spec.rules[2].auth = None;
    r.spec.rules[2].required_scopes = vec!["bad scope".into()];
    // The compiler's own checks, as without the CEL pass (objects from the API server).
    let (_, errors) = run(false, &[r.clone()], &[policy()], &[]);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let e = &errors[0];
    assert_eq!(
        (e.kind, &*e.namespace, &*e.name, &*e.path, e.reason.as_str()),
        (
            "ApiRoute",
            "shop",
            "orders",
            "spec.rules[2].requiredScopes[0]",
            "InvalidScope"
        )
    );
    let text = e.to_string();
    assert!(
        text.starts_with("ApiRoute shop/orders: spec.rules[2].requiredScopes[0]: \"bad scope\""),
        "{text}"
    );
    assert!(!e.is_ref_error());

    // With the CEL pass (standalone mode), the CRD's own rule reports it, on the list.
    let (_, errors) = run(true, &[r], &[policy()], &[]);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0]
            .to_string()
            .starts_with("ApiRoute shop/orders: spec.rules[2].requiredScopes: each scope"),
        "{}",
        errors[0]
    );
}

/// One broken field per case: the path the compiler names (CEL off), and with the CEL pass
/// on, a path that is the same field or its parent or child.
#[test]
fn every_error_names_its_field() {
    type RouteEdit = fn(&mut ApiRoute);
    type PolicyEdit = fn(&mut TokenPolicy);
    let route_cases: &[(&str, &str, RouteEdit)] = &[
        ("spec.rules[4].anyScopes[1]", "InvalidScope", |r| {
            r.spec.rules[4].any_scopes = vec!["admin".into(), "a\"b".into()]
        }),
        ("spec.rules[0].match.methods[0]", "Invalid", |r| {
            r.spec.rules[0].matches.methods = vec!["get".into()]
        }),
        ("spec.hosts[1]", "Invalid", |r| {
            r.spec.hosts.push("API.example.com".into())
        }),
        ("spec.hosts[0]", "Invalid", |r| {
            r.spec.hosts = vec!["api.example.com:8080".into()]
        }),
        ("spec.backend", "InvalidBackend", |r| {
            r.spec.backend.url = Some("ftp://files.example.com".into())
        }),
        ("spec.timeouts.connect", "InvalidDuration", |r| {
            r.spec.timeouts = Some(portcullis_api::RouteTimeouts {
                connect: Some("soon".into()),
                request: None,
            })
        }),
        ("spec.rules[1].match", "Invalid", |r| {
            r.spec.rules[1].matches.path = Some("/orders".into())
        }),
        ("spec.rules[3].match", "Invalid", |r| {
            r.spec.rules[3].matches.path_prefix = Some("me".into())
        }),
        ("spec.rules[2].auth", "Invalid", |r| {
            r.spec.rules[2].required_scopes = vec!["orders:read".into()]
        }),
        ("spec.policyRef.name", "PolicyNotFound", |r| {
            r.spec.policy_ref.name = "nope".into()
        }),
        ("spec.rules", "Invalid", |r| r.spec.rules.clear()),
    ];
    let policy_cases: &[(&str, &str, PolicyEdit)] = &[
        ("spec.issuers[0].algorithms[1]", "InvalidAlgorithm", |p| {
            p.spec.issuers[0].algorithms = vec!["RS256".into(), "none".into()]
        }),
        ("spec.issuers[0].algorithms[0]", "InvalidAlgorithm", |p| {
            p.spec.issuers[0].algorithms = vec!["XS256".into()]
        }),
        ("spec.issuers[0].audiences", "Invalid", |p| {
            p.spec.issuers[0].audiences.clear()
        }),
        ("spec.clockSkew", "InvalidDuration", |p| {
            p.spec.clock_skew = Some("abc".into())
        }),
        ("spec.maxTokenLifetime", "InvalidDuration", |p| {
            p.spec.max_token_lifetime = Some("forever".into())
        }),
        ("spec.forwardClaims.sub", "Invalid", |p| {
            p.spec
                .forward_claims
                .insert("sub".into(), "Authorization".into());
        }),
        (
            "spec.revocations[0].tokenSha256",
            "InvalidRevocation",
            |p| {
                p.spec.revocations =
                    vec![serde_json::from_value(json!({"tokenSha256": "ABC"})).unwrap()]
            },
        ),
        (
            "spec.revocations[1].issuedBefore",
            "InvalidRevocation",
            |p| {
                p.spec.revocations = vec![
                    serde_json::from_value(json!({"jti": "x"})).unwrap(),
                    serde_json::from_value(json!({"subject": "alice"})).unwrap(),
                ]
            },
        ),
        ("spec.revocations[0]", "InvalidRevocation", |p| {
            p.spec.revocations =
                vec![serde_json::from_value(json!({"jti": "x", "keyId": "k"})).unwrap()]
        }),
        ("spec.issuers[0].jwks.secretRef", "SecretNotFound", |p| {
            p.spec.issuers[0].jwks =
                serde_json::from_value(json!({"secretRef": {"name": "gone", "key": "jwks"}}))
                    .unwrap()
        }),
        ("spec.issuers[0].jwks.inline", "InvalidKeys", |p| {
            p.spec.issuers[0].jwks =
                serde_json::from_value(json!({"inline": {"keys": [{"kty": "RSA", "e": "AQAB"}]}}))
                    .unwrap()
        }),
        ("spec.issuers[0].jwks.uri", "KeysNotFetched", |p| {
            p.spec.issuers[0].jwks =
                serde_json::from_value(json!({"uri": "https://auth.example.com/jwks"})).unwrap()
        }),
    ];

    let check = |errors: &[CompileError], kind: &str, name: &str, path: &str, cel: bool| {
        for e in errors {
            assert_eq!(
                e.to_string(),
                format!(
                    "{} {}/{}: {}: {}",
                    e.kind, e.namespace, e.name, e.path, e.message
                )
            );
            assert!(e.path.starts_with("spec"), "{e}");
            assert!(!e.message.is_empty(), "{e}");
        }
        let mine = errors_of(errors, kind, name);
        let found = mine.iter().any(|e| {
            if cel {
                e.path.starts_with(path) || path.starts_with(&e.path)
            } else {
                e.path == path
            }
        });
        assert!(found, "cel={cel}: no {kind} error at {path}: {errors:#?}");
    };

    for cel in [false, true] {
        for (path, reason, edit) in route_cases {
            let mut r = route();
            edit(&mut r);
            let (s, errors) = run(cel, &[r], &[policy()], &[]);
            check(&errors, "ApiRoute", "orders", path, cel);
            if !cel {
                assert!(
                    errors
                        .iter()
                        .any(|e| e.path == *path && e.reason == *reason),
                    "{path}: {errors:#?}"
                );
            }
            assert_eq!(s.stats().routes, 0, "{path}: the route is left out");
        }
        for (path, reason, edit) in policy_cases {
            let mut p = policy();
            edit(&mut p);
            let (s, errors) = run(cel, &[route()], &[p], &[]);
            check(&errors, "TokenPolicy", "default", path, cel);
            if !cel {
                assert!(
                    errors
                        .iter()
                        .any(|e| e.path == *path && e.reason == *reason),
                    "{path}: {errors:#?}"
                );
            }
            assert_eq!(s.stats().policies, 0, "{path}: the policy is left out");
        }
    }
}

#[test]
fn ref_errors_are_told_apart_from_spec_errors() {
    let mut p = policy();
    p.spec.issuers[0].jwks =
        serde_json::from_value(json!({"secretRef": {"name": "gone", "key": "jwks"}})).unwrap();
    let (_, errors) = run(true, &[route()], &[p], &[]);
    let policy_error = errors_of(&errors, "TokenPolicy", "default")[0];
    assert_eq!(policy_error.reason, "SecretNotFound");
    assert!(policy_error.is_ref_error());
    let route_error = errors_of(&errors, "ApiRoute", "orders")[0];
    assert_eq!(
        (&*route_error.path, route_error.reason.as_str()),
        ("spec.policyRef.name", "PolicyNotReady")
    );
    assert!(route_error.is_ref_error());
    assert!(
        route_error.message.contains("Secret shop/gone not found"),
        "{route_error}"
    );
}

// === (b) a bad object is left out; the others still work ===

#[test]
fn bad_objects_are_left_out_and_the_rest_compiles() {
    let mut broken = policy();
    broken.metadata.name = Some("broken".into());
    broken.spec.issuers[0].algorithms = vec!["none".into()];
    let mut secretless = policy();
    secretless.metadata.name = Some("secretless".into());
    secretless.spec.issuers[0].jwks =
        serde_json::from_value(json!({"secretRef": {"name": "missing", "key": "jwks"}})).unwrap();

    let rules = json!([{"match": {"pathPrefix": "/"}}]);
    let mut bad = api_route("bad", &["bad.example.com"], rules.clone());
    bad.spec.rules[0].required_scopes = vec!["two words".into()];
    let mut orphan = api_route("orphan", &["orphan.example.com"], rules.clone());
    orphan.spec.policy_ref.name = "nope".into();
    let mut uses_broken = api_route("uses-broken", &["broken.example.com"], rules.clone());
    uses_broken.spec.policy_ref.name = "broken".into();
    let mut uses_secretless = api_route("uses-secretless", &["secretless.example.com"], rules);
    uses_secretless.spec.policy_ref.name = "secretless".into();

    // Bad objects first and last: order must not matter.
    let routes = [bad, orphan, route(), uses_broken, uses_secretless];
    let policies = [broken, policy(), secretless];
    let (s, errors) = compile_with(&opts(true), &routes, &policies, &[]);

    let reasons = |kind, name| -> Vec<&str> {
        errors_of(&errors, kind, name)
            .iter()
            .map(|e| e.reason.as_str())
            .collect()
    };
    assert_eq!(reasons("TokenPolicy", "broken"), ["Invalid"], "{errors:#?}");
    assert_eq!(reasons("TokenPolicy", "secretless"), ["SecretNotFound"]);
    assert_eq!(reasons("ApiRoute", "bad"), ["Invalid"]);
    assert_eq!(reasons("ApiRoute", "orphan"), ["PolicyNotFound"]);
    assert_eq!(reasons("ApiRoute", "uses-broken"), ["PolicyNotReady"]);
    assert_eq!(reasons("ApiRoute", "uses-secretless"), ["PolicyNotReady"]);
    assert!(reasons("ApiRoute", "orders").is_empty());
    assert!(reasons("TokenPolicy", "default").is_empty());
    assert_eq!(errors.len(), 6, "{errors:#?}");

    assert_eq!(s.policy_ids().collect::<Vec<_>>(), ["shop/default"]);
    assert_eq!((s.stats().routes, s.stats().policies), (1, 1));
    for host in [
        "bad.example.com",
        "orphan.example.com",
        "broken.example.com",
        "secretless.example.com",
    ] {
        assert_eq!(
            hit(&s, "GET", host, "/"),
            Err(DenyReason::NoRoute),
            "{host}"
        );
    }
    // The good route still authorizes.
    let h = format!("Bearer {}", mint(&keys().rsa, &claims()));
    let req = RequestParts::new("GET", "api.example.com", "/orders/1").with_authorization(&h);
    assert!(s.authorize(&req).is_allow());
    assert_eq!(
        hit(&s, "GET", "api.example.com", "/health"),
        Ok(("shop/orders".into(), 2))
    );
}

#[test]
fn one_bad_rule_leaves_the_whole_route_out() {
    let mut r = route();
    r.spec.rules[4].any_scopes = vec!["fine".into(), "not fine".into()];
    let (s, errors) = run(false, &[r], &[policy()], &[]);
    assert_eq!(errors.len(), 1);
    assert_eq!(
        hit(&s, "GET", "api.example.com", "/health"),
        Err(DenyReason::NoRoute)
    );
    assert_eq!(s.stats().rules, 0);
}

// === (c) the route index ===

#[test]
fn exact_host_beats_wildcard_which_matches_one_label() {
    let wild = api_route(
        "wild",
        &["*.example.com"],
        json!([public("pathPrefix", "/")]),
    );
    let exact = api_route(
        "exact",
        &["api.example.com"],
        json!([public("pathPrefix", "/")]),
    );
    // Listed wildcard first, and older: precedence is by specificity, not order.
    let wild = created(wild, "2020-01-01T00:00:00Z");
    let exact = created(exact, "2024-01-01T00:00:00Z");
    let s = public_snapshot(&[wild, exact]);
    let route_of = |host| hit(&s, "GET", host, "/x").map(|(id, _)| id);
    assert_eq!(route_of("api.example.com"), Ok("shop/exact".into()));
    assert_eq!(route_of("shop.example.com"), Ok("shop/wild".into()));
    assert_eq!(route_of("API.example.com"), Ok("shop/exact".into()));
    assert_eq!(route_of("Shop.Example.Com:8443"), Ok("shop/wild".into()));
    // Not the apex, not two labels, not a look-alike.
    assert_eq!(route_of("example.com"), Err(DenyReason::NoRoute));
    assert_eq!(route_of("a.b.example.com"), Err(DenyReason::NoRoute));
    assert_eq!(route_of("a.api.example.com"), Err(DenyReason::NoRoute));
    assert_eq!(route_of("shopexample.com"), Err(DenyReason::NoRoute));
    assert_eq!(route_of("shop.example.org"), Err(DenyReason::NoRoute));
    // `*` is one label and a label is never empty (RFC 1035 §2.3.1); found by the
    // route fuzz target as `.example.com.`.
    assert_eq!(route_of(".example.com"), Err(DenyReason::NoRoute));
    assert_eq!(route_of(".example.com."), Err(DenyReason::NoRoute));
    assert_eq!(route_of(".example.com:443"), Err(DenyReason::NoRoute));
}

#[test]
fn exact_host_falls_back_to_wildcard_when_no_rule_matches() {
    // The exact host has only /admin; other paths of api.example.com use the wildcard
    // route (each host entry is tried in turn).
    let wild = api_route(
        "wild",
        &["*.example.com"],
        json!([public("pathPrefix", "/")]),
    );
    let exact = api_route(
        "exact",
        &["api.example.com"],
        json!([public("path", "/admin")]),
    );
    let s = public_snapshot(&[wild, exact]);
    assert_eq!(
        hit(&s, "GET", "api.example.com", "/admin"),
        Ok(("shop/exact".into(), 0))
    );
    assert_eq!(
        hit(&s, "GET", "api.example.com", "/other"),
        Ok(("shop/wild".into(), 0))
    );
}

#[test]
fn exact_path_beats_prefix_and_longer_prefix_beats_shorter() {
    let r = api_route(
        "paths",
        &["api.example.com"],
        json!([
            public("pathPrefix", "/"),
            public("pathPrefix", "/orders"),
            public("pathPrefix", "/orders/archive/"),
            public("path", "/orders/export"),
            public("path", "/orders/archive"),
        ]),
    );
    let s = public_snapshot(&[r]);
    let rule = |path| hit(&s, "GET", "api.example.com", path).map(|(_, r)| r);
    assert_eq!(rule("/orders/export"), Ok(3));
    assert_eq!(rule("/orders/export/"), Ok(1), "an exact path is exact");
    assert_eq!(rule("/orders/export/x"), Ok(1));
    assert_eq!(
        rule("/orders/archive"),
        Ok(4),
        "exact beats an equal prefix"
    );
    assert_eq!(rule("/orders/archive/2024"), Ok(2));
    assert_eq!(rule("/orders/archive/2024/01"), Ok(2));
    assert_eq!(rule("/orders/archived"), Ok(1));
    assert_eq!(rule("/orders/1"), Ok(1));
    assert_eq!(rule("/orders"), Ok(1));
    assert_eq!(rule("/orders/"), Ok(1));
    assert_eq!(rule("/ordersX"), Ok(0));
    assert_eq!(rule("/"), Ok(0));
    assert_eq!(rule("/anything/else"), Ok(0));
    assert_eq!(rule(""), Ok(0));
}

#[test]
fn prefix_matches_on_segment_boundaries() {
    let r = api_route(
        "seg",
        &["api.example.com"],
        json!([public("pathPrefix", "/orders")]),
    );
    let s = public_snapshot(&[r]);
    let ok = |path| hit(&s, "GET", "api.example.com", path).is_ok();
    assert!(ok("/orders"));
    assert!(ok("/orders/"));
    assert!(ok("/orders/1"));
    assert!(ok("/orders/1/items"));
    assert!(!ok("/ordersX"));
    assert!(!ok("/orders-old"));
    assert!(!ok("/order"));
    assert!(!ok("/Orders"), "paths are case-sensitive");
    assert!(!ok("/"));
    assert!(!ok("/x/orders"));
    assert_eq!(
        hit(&s, "GET", "api.example.com", "/ordersX"),
        Err(DenyReason::NoRoute)
    );
}

#[test]
fn slash_prefix_matches_everything() {
    let r = api_route(
        "all",
        &["api.example.com"],
        json!([public("pathPrefix", "/")]),
    );
    let s = public_snapshot(&[r]);
    for path in ["/", "/a", "/a/b/c", "/orders/", "//", ""] {
        assert!(hit(&s, "GET", "api.example.com", path).is_ok(), "{path:?}");
    }
}

#[test]
fn trailing_slash_on_a_prefix_is_the_same_prefix() {
    let r = api_route(
        "slash",
        &["api.example.com"],
        json!([public("pathPrefix", "/orders/")]),
    );
    let s = public_snapshot(&[r]);
    assert!(hit(&s, "GET", "api.example.com", "/orders").is_ok());
    assert!(hit(&s, "GET", "api.example.com", "/orders/1").is_ok());
    assert!(hit(&s, "GET", "api.example.com", "/ordersX").is_err());
}

#[test]
fn method_specific_rules_beat_catch_alls() {
    let r = api_route(
        "methods",
        &["api.example.com"],
        json!([
            {"match": {"pathPrefix": "/orders"}, "auth": "none"},
            {"match": {"pathPrefix": "/orders", "methods": ["GET", "HEAD"]}, "auth": "none"},
            {"match": {"pathPrefix": "/orders/admin", "methods": ["DELETE"]}, "auth": "none"},
        ]),
    );
    let s = public_snapshot(&[r]);
    let rule = |method, path| hit(&s, method, "api.example.com", path).map(|(_, r)| r);
    assert_eq!(rule("GET", "/orders/1"), Ok(1));
    assert_eq!(rule("HEAD", "/orders/1"), Ok(1));
    assert_eq!(rule("POST", "/orders/1"), Ok(0));
    assert_eq!(
        rule("get", "/orders/1"),
        Ok(0),
        "methods are case-sensitive"
    );
    assert_eq!(rule("DELETE", "/orders/admin/1"), Ok(2));
    // The longer prefix has no rule for GET: the shorter prefix answers.
    assert_eq!(rule("GET", "/orders/admin/1"), Ok(1));
}

#[test]
fn a_method_rule_alone_answers_404_to_other_methods() {
    let r = api_route(
        "only-get",
        &["api.example.com"],
        json!([{"match": {"path": "/status", "methods": ["GET"]}, "auth": "none"}]),
    );
    let s = public_snapshot(&[r]);
    assert!(hit(&s, "GET", "api.example.com", "/status").is_ok());
    assert_eq!(
        hit(&s, "POST", "api.example.com", "/status"),
        Err(DenyReason::NoRoute)
    );
}

#[test]
fn host_matching_ignores_port_case_and_trailing_dot() {
    let r = api_route(
        "h",
        &["api.example.com"],
        json!([public("pathPrefix", "/")]),
    );
    let s = public_snapshot(&[r]);
    for host in [
        "api.example.com",
        "API.EXAMPLE.COM",
        "Api.Example.Com:443",
        "api.example.com:8080",
        "api.example.com.",
    ] {
        assert!(hit(&s, "GET", host, "/").is_ok(), "{host}");
    }
    for host in [
        "api.example.com:http",
        "api.example.co",
        "api-example.com",
        "",
    ] {
        assert_eq!(
            hit(&s, "GET", host, "/"),
            Err(DenyReason::NoRoute),
            "{host}"
        );
    }
}

#[test]
fn conflicting_rules_go_to_the_older_route() {
    let rules = json!([
        public("pathPrefix", "/orders"),
        public("path", "/only-mine"),
    ]);
    let older = created(
        api_route("zeta", &["api.example.com"], rules.clone()),
        "2023-01-01T00:00:00Z",
    );
    let newer = created(
        api_route("alpha", &["api.example.com"], rules.clone()),
        "2024-01-01T00:00:00Z",
    );
    for routes in [
        [older.clone(), newer.clone()],
        [newer.clone(), older.clone()],
    ] {
        let (s, errors) = run(true, &routes, &[policy()], &[]);
        assert_eq!(errors.len(), 2, "{errors:#?}");
        for (i, e) in errors.iter().enumerate() {
            assert_eq!(
                (e.kind, &*e.name, e.reason.as_str()),
                ("ApiRoute", "alpha", "RuleConflict")
            );
            assert_eq!(e.path, format!("spec.rules[{i}].match"));
            assert!(e.message.contains("shop/zeta"), "{e}");
            assert!(!e.is_ref_error());
        }
        assert_eq!(
            hit(&s, "GET", "api.example.com", "/orders/1"),
            Ok(("shop/zeta".into(), 0))
        );
        // The loser is still compiled: rules that do not conflict keep working.
        assert_eq!(s.stats().routes, 2);
        assert_eq!(s.stats().rules, 2);
    }

    // Same age: namespace/name decides.
    let a = created(
        api_route("alpha", &["api.example.com"], rules.clone()),
        "2024-01-01T00:00:00Z",
    );
    let z = created(
        api_route("zeta", &["api.example.com"], rules),
        "2024-01-01T00:00:00Z",
    );
    let (s, errors) = run(true, &[z, a], &[policy()], &[]);
    assert!(errors.iter().all(|e| e.name == "zeta"), "{errors:#?}");
    assert_eq!(
        hit(&s, "GET", "api.example.com", "/orders"),
        Ok(("shop/alpha".into(), 0))
    );
}

#[test]
fn a_route_keeps_its_non_conflicting_rules() {
    let first = created(
        api_route(
            "first",
            &["api.example.com"],
            json!([public("pathPrefix", "/a")]),
        ),
        "2023-01-01T00:00:00Z",
    );
    let second = created(
        api_route(
            "second",
            &["api.example.com", "other.example.com"],
            json!([public("pathPrefix", "/a"), public("pathPrefix", "/b")]),
        ),
        "2024-01-01T00:00:00Z",
    );
    let (s, errors) = run(true, &[second, first], &[policy()], &[]);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(
        (&*errors[0].name, &*errors[0].path),
        ("second", "spec.rules[0].match")
    );
    assert_eq!(
        hit(&s, "GET", "api.example.com", "/b"),
        Ok(("shop/second".into(), 1))
    );
    assert_eq!(
        hit(&s, "GET", "api.example.com", "/a"),
        Ok(("shop/first".into(), 0))
    );
    // The conflicting rule is dropped for all of the route's hosts.
    assert_eq!(
        hit(&s, "GET", "other.example.com", "/a"),
        Err(DenyReason::NoRoute)
    );
}

#[test]
fn same_path_with_different_methods_is_no_conflict() {
    let get = api_route(
        "get",
        &["api.example.com"],
        json!([{"match": {"pathPrefix": "/x", "methods": ["GET"]}, "auth": "none"}]),
    );
    let post = api_route(
        "post",
        &["api.example.com"],
        json!([{"match": {"pathPrefix": "/x", "methods": ["POST"]}, "auth": "none"}]),
    );
    let s = public_snapshot(&[get, post]);
    assert_eq!(
        hit(&s, "GET", "api.example.com", "/x"),
        Ok(("shop/get".into(), 0))
    );
    assert_eq!(
        hit(&s, "POST", "api.example.com", "/x"),
        Ok(("shop/post".into(), 0))
    );
}

#[test]
fn no_match_is_404_without_a_challenge() {
    let f = standard();
    for (method, host, path) in [
        ("GET", "api.example.com", "/nothing"),
        ("GET", "other.example.com", "/orders"),
        ("PUT", "api.example.com", "/orders"),
    ] {
        let Decision::Deny(d) = f.snapshot.authorize(&RequestParts::new(method, host, path)) else {
            panic!("{method} {host}{path} allowed")
        };
        assert_eq!(d.reason, DenyReason::NoRoute);
        assert_eq!(d.status(), 404);
        assert!(d.route.is_none());
        assert!(d.www_authenticate().is_none());
    }
    // An empty snapshot answers 404 to everything.
    let empty = Snapshot::empty();
    assert_eq!(
        hit(&empty, "GET", "api.example.com", "/"),
        Err(DenyReason::NoRoute)
    );
}

// === (d) upstreams ===

#[test]
fn service_backend_becomes_cluster_dns_authority() {
    let mut r = route();
    r.spec.backend =
        serde_json::from_value(json!({"service": {"name": "orders", "port": 8080}})).unwrap();
    let f = build(&[r], &[policy()], &[]);
    let Decision::Allow(a) =
        f.snapshot
            .authorize(&RequestParts::new("GET", "api.example.com", "/health"))
    else {
        panic!()
    };
    let up = a.upstream();
    assert_eq!(up.scheme, http::uri::Scheme::HTTP);
    assert_eq!(up.authority.as_str(), "orders.shop.svc:8080");
    assert_eq!(up.base_path, "");
}

#[test]
fn url_backend_keeps_scheme_authority_and_base_path() {
    let mut r = route();
    r.spec.backend.url = Some("https://backend.internal:8443/api/v1/".into());
    let f = build(&[r], &[policy()], &[]);
    let Decision::Allow(a) =
        f.snapshot
            .authorize(&RequestParts::new("GET", "api.example.com", "/health"))
    else {
        panic!()
    };
    let up = a.upstream();
    assert_eq!(up.scheme, http::uri::Scheme::HTTPS);
    assert_eq!(up.authority.as_str(), "backend.internal:8443");
    assert_eq!(up.base_path, "/api/v1");
}

#[test]
fn timeouts_and_pass_authorization_are_carried() {
    let mut r = route();
    r.spec.pass_authorization = true;
    r.spec.timeouts = Some(portcullis_api::RouteTimeouts {
        connect: Some("250ms".into()),
        request: Some("2m".into()),
    });
    let f = build(&[r], &[policy()], &[]);
    let d = f
        .snapshot
        .authorize(&RequestParts::new("GET", "api.example.com", "/health"));
    let info = d.route().unwrap();
    assert!(info.pass_authorization);
    assert_eq!(info.connect_timeout, std::time::Duration::from_millis(250));
    assert_eq!(info.request_timeout, std::time::Duration::from_secs(120));
    // Defaults, and the forwarded header names of the policy.
    let f = standard();
    let d = f
        .snapshot
        .authorize(&RequestParts::new("GET", "api.example.com", "/health"));
    let info = d.route().unwrap();
    assert!(!info.pass_authorization);
    assert_eq!(info.connect_timeout, std::time::Duration::from_secs(5));
    assert_eq!(info.request_timeout, std::time::Duration::from_secs(30));
    let mut names: Vec<&str> = info
        .forwarded_header_names
        .iter()
        .map(|h| h.as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["x-email", "x-user"]);
}

// === (e) remote key sets ===

#[test]
fn jwks_uri_needs_fetched_keys() {
    const URI: &str = "https://auth.example.com/.well-known/jwks.json";
    let mut p = policy();
    p.spec.issuers[0].jwks = serde_json::from_value(json!({"uri": URI})).unwrap();

    let (s, errors) = run(true, &[route()], &[p.clone()], &[]);
    let e = errors_of(&errors, "TokenPolicy", "default");
    assert_eq!(e.len(), 1, "{errors:#?}");
    assert_eq!(
        (&*e[0].path, e[0].reason.as_str()),
        ("spec.issuers[0].jwks.uri", "KeysNotFetched")
    );
    assert!(e[0].is_ref_error());
    assert!(e[0].message.contains(URI), "{}", e[0]);
    assert_eq!(
        errors_of(&errors, "ApiRoute", "orders")[0].reason,
        "PolicyNotReady"
    );
    assert_eq!(s.stats().policies, 0);

    // Fetched: it compiles and verifies.
    let k = keys();
    let mut options = opts(true);
    options.remote_jwks.insert(
        URI.into(),
        json!({"keys": [k.rsa.jwk, k.ec256.jwk, k.ed.jwk]}),
    );
    let (s, errors) = compile_with(&options, &[route()], &[p.clone()], &[]);
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(s.stats().keys, 3);
    let h = format!("Bearer {}", mint(&k.ec256, &claims()));
    let req = RequestParts::new("GET", "api.example.com", "/orders").with_authorization(&h);
    assert!(s.authorize(&req).is_allow());
    // A key not in the fetched set is unknown.
    let h = format!("Bearer {}", mint(&k.rsa2, &claims()));
    let req = RequestParts::new("GET", "api.example.com", "/orders").with_authorization(&h);
    // The keys are fetched: the decision waits for a refetch, and with nothing new the
    // key stays unknown.
    let d = match s.authorize(&req) {
        Decision::Pending(p) => s.resume(&req, &p.need, portcullis_policy::Answer::KeysUnchanged),
        d => d,
    };
    let Decision::Deny(d) = d else { panic!() };
    assert_eq!(d.reason, DenyReason::UnknownKey);

    // A fetched document that is not a key set is an InvalidKeys error on the uri.
    let mut options = opts(true);
    options
        .remote_jwks
        .insert(URI.into(), json!({"error": "not found"}));
    let (_, errors) = compile_with(&options, &[route()], &[p], &[]);
    let e = errors_of(&errors, "TokenPolicy", "default");
    assert_eq!(
        (&*e[0].path, e[0].reason.as_str()),
        ("spec.issuers[0].jwks.uri", "InvalidKeys")
    );
    assert!(!e[0].is_ref_error());
}

// === (f) stats ===

#[test]
fn stats_count_what_was_compiled() {
    assert_eq!(
        standard().snapshot.stats(),
        SnapshotStats {
            routes: 1,
            rules: 5,
            hosts: 1,
            policies: 1,
            issuers: 1,
            keys: 5,
            revocations: 0,
        }
    );
    assert_eq!(Snapshot::empty().stats(), SnapshotStats::default());

    // Two issuers, revocations, a second policy, several hosts (one wildcard), a conflict.
    let mut p = policy();
    let k = keys();
    p.spec.issuers.push(
        serde_json::from_value(json!({
            "issuer": "https://other.example.com", "audiences": ["x"], "algorithms": ["ES256"],
            "jwks": {"inline": {"keys": [k.ec256.jwk]}},
        }))
        .unwrap(),
    );
    p.spec.revocations = vec![
        serde_json::from_value(json!({"jti": "a"})).unwrap(),
        serde_json::from_value(json!({"jti": "b"})).unwrap(),
        serde_json::from_value(json!({"keyId": "rsa-2"})).unwrap(),
        serde_json::from_value(json!({"subject": "bob", "issuedBefore": "2026-01-01T00:00:00Z"}))
            .unwrap(),
    ];
    let mut hs = policy();
    hs.metadata.name = Some("hs".into());
    hs.spec.issuers[0].algorithms = vec!["HS256".into()];
    hs.spec.issuers[0].jwks =
        serde_json::from_value(json!({"secretRef": {"name": "hmac", "key": "key"}})).unwrap();
    let mut second = api_route(
        "second",
        &["api.example.com", "*.example.com", "shop.example.net"],
        json!([public("pathPrefix", "/health"), public("path", "/health")]),
    );
    second.spec.policy_ref.name = "hs".into();
    let (s, errors) = run(true, &[route(), second], &[p, hs], &[hmac_secret()]);
    // `/health` (exact) is claimed by shop/orders on api.example.com.
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].reason, "RuleConflict");
    assert_eq!(
        s.stats(),
        SnapshotStats {
            routes: 2,
            rules: 6,
            hosts: 3,
            policies: 2,
            issuers: 3,
            keys: 5 + 1 + 1,
            revocations: 4,
        }
    );
}

#[test]
fn keys_unfit_for_the_algorithms_are_not_counted() {
    // Only ES256 allowed: of the five inline keys, only the P-256 one is kept.
    let mut p = policy();
    p.spec.issuers[0].algorithms = vec!["ES256".into()];
    let f = build(&[route()], &[p], &[]);
    assert_eq!(f.snapshot.stats().keys, 1);
}

// === (g) checks the caller supplies ===

/// The compiler holds no CEL evaluator: the CRDs' rules run only when the caller passes
/// them (standalone mode does). What they reject is reported with the rule's field and
/// message and left out, and a route using a rejected policy says `PolicyNotReady`.
#[test]
fn spec_rules_run_only_when_the_caller_passes_them() {
    // Each passes the compiler's own checks and breaks a CRD rule: `BREW` is upper case
    // but not an HTTP method; `X_User` is a header name but not one the CRD allows.
    let mut r = route();
    r.spec.rules[0].matches.methods = vec!["BREW".into()];
    let mut p = policy();
    p.spec.forward_claims = [("sub".to_owned(), "X_User".to_owned())].into();

    // `validate_cel` alone runs nothing: it tells the caller what to pass.
    let plain = CompileOptions {
        validate_cel: true,
        ..opts(false)
    };
    assert!(plain.spec_rules.is_none());
    let (_, errors) = compile_with(&plain, &[r], &[p.clone()], &[]);
    assert!(errors.is_empty(), "{errors:#?}");

    let (s, errors) = run(true, &[route()], &[p], &[]);
    assert_eq!(errors.len(), 2, "{errors:#?}");
    let e = errors_of(&errors, "TokenPolicy", "default");
    assert_eq!(
        (&*e[0].path, e[0].reason.as_str()),
        ("spec.forwardClaims", "Invalid")
    );
    assert!(
        e[0].message
            .starts_with("forwardClaims values must be HTTP header names"),
        "{}",
        e[0]
    );
    let e = errors_of(&errors, "ApiRoute", "orders");
    assert_eq!(
        (&*e[0].path, e[0].reason.as_str()),
        ("spec.policyRef.name", "PolicyNotReady")
    );
    assert!(e[0].message.contains("forwardClaims values"), "{}", e[0]);
    assert_eq!(s.stats().routes + s.stats().policies, 0);

    // The route's own rule, with a policy that passes.
    let mut r = route();
    r.spec.rules[0].matches.methods = vec!["BREW".into()];
    let (_, errors) = run(true, &[r], &[policy()], &[]);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(
        (&*errors[0].path, errors[0].reason.as_str()),
        ("spec.rules[0].match.methods", "Invalid")
    );
    assert!(
        errors[0]
            .message
            .starts_with("methods must be upper-case HTTP methods"),
        "{}",
        errors[0]
    );
}

/// Any caller-supplied check takes part the same way: here one that refuses a name.
#[test]
fn spec_rules_are_any_checks_the_caller_supplies() {
    fn no_legacy_routes(r: &ApiRoute) -> Vec<portcullis_api::validate::FieldViolation> {
        match r.metadata.name.as_deref() {
            Some("legacy") => vec![portcullis_api::validate::FieldViolation {
                path: "metadata.name".into(),
                message: "legacy routes are retired".into(),
            }],
            _ => Vec::new(),
        }
    }
    fn anything_goes(_: &TokenPolicy) -> Vec<portcullis_api::validate::FieldViolation> {
        Vec::new()
    }
    let options = opts(false).with_spec_rules(no_legacy_routes, anything_goes);
    let legacy = api_route("legacy", &["old.example.com"], json!([public("path", "/")]));
    let (s, errors) = compile_with(&options, &[route(), legacy], &[policy()], &[]);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(
        errors[0].to_string(),
        "ApiRoute shop/legacy: metadata.name: legacy routes are retired"
    );
    assert_eq!(errors[0].reason, "Invalid");
    assert_eq!(s.stats().routes, 1);
}
