//! API lifecycle (`spec.lifecycle`): a Draft answers only preview tokens, a Deprecated
//! route carries `Deprecation` (RFC 9745), `Sunset` (RFC 8594) and a successor `Link`, and
//! a Retired route, or any route past its `sunsetAt`, is gone (410) before any credential
//! is read.

mod support;

use portcullis_policy::{Decision, DenyReason, RequestParts};
use serde_json::json;
use support::*;

fn with_lifecycle(lifecycle: serde_json::Value) -> portcullis_api::ApiRoute {
    let mut r = serde_json::to_value(route()).unwrap();
    r["spec"]["lifecycle"] = lifecycle;
    serde_json::from_value(r).unwrap()
}

/// A Draft: the standard route without its public rule.
fn draft(lifecycle: serde_json::Value) -> portcullis_api::ApiRoute {
    let mut r = serde_json::to_value(with_lifecycle(lifecycle)).unwrap();
    r["spec"]["rules"]
        .as_array_mut()
        .unwrap()
        .retain(|rule| rule.get("auth") != Some(&json!("none")));
    serde_json::from_value(r).unwrap()
}

fn decide(f: &Fixture, token: Option<&str>) -> Result<Vec<(String, String)>, DenyReason> {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut req = RequestParts::new("GET", "api.example.com", "/orders/1");
    if let Some(a) = &auth {
        req = req.with_authorization(a);
    }
    match f.snapshot.authorize(&req) {
        Decision::Allow(a) => Ok(a
            .route
            .lifecycle
            .as_ref()
            .map(|l| {
                l.headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
                    .collect()
            })
            .unwrap_or_default()),
        Decision::Deny(d) => Err(d.reason),
        Decision::Pending(_) => panic!("pending"),
    }
}

#[test]
fn deprecated_routes_answer_with_rfc9745_deprecation_rfc8594_sunset_and_a_successor_link() {
    let f = build(
        &[with_lifecycle(json!({
            "stage": "Deprecated", "deprecatedAt": "2026-01-01T00:00:00Z",
            "sunsetAt": "2030-06-30T12:00:00Z", "successor": "https://api.example.com/v2",
        }))],
        &[policy()],
        &[],
    );
    let headers = decide(&f, Some(&mint(&keys().rsa, &claims()))).unwrap();
    assert_eq!(
        headers,
        vec![
            // RFC 9745 section 2.1: a Structured Field Date.
            ("deprecation".to_owned(), "@1767225600".to_owned()),
            (
                "link".to_owned(),
                "<https://api.example.com/v2>; rel=\"successor-version\"".to_owned()
            ),
            // RFC 8594 section 3: an HTTP-date (RFC 9110 section 5.6.7).
            (
                "sunset".to_owned(),
                "Sun, 30 Jun 2030 12:00:00 GMT".to_owned()
            ),
        ]
    );
    // Still a token route: no token, no answer.
    assert_eq!(decide(&f, None), Err(DenyReason::MissingToken));
}

#[test]
fn retired_routes_and_routes_past_their_sunset_are_gone_rfc8594() {
    let token = mint(&keys().rsa, &claims());
    let f = build(
        &[with_lifecycle(json!({"stage": "Retired"}))],
        &[policy()],
        &[],
    );
    // 410 before any credential is read: with a token, without one, with garbage.
    assert_eq!(decide(&f, Some(&token)), Err(DenyReason::Retired));
    assert_eq!(decide(&f, None), Err(DenyReason::Retired));
    assert_eq!(decide(&f, Some("garbage")), Err(DenyReason::Retired));
    // A Deprecated route is served until its sunset, then gone.
    let sunset = NOW + 100;
    let at = portcullis_api::ApiRoute::clone(&with_lifecycle(json!({
        "stage": "Deprecated", "deprecatedAt": "2020-01-01T00:00:00Z",
        "sunsetAt": jiff::Timestamp::from_second(sunset).unwrap().to_string(),
    })));
    let f = build(&[at], &[policy()], &[]);
    assert!(decide(&f, Some(&token)).is_ok());
    f.clock.set(sunset - 1);
    assert!(decide(&f, Some(&token)).is_ok());
    f.clock.set(sunset);
    assert_eq!(decide(&f, Some(&token)), Err(DenyReason::Retired));
    // So is a Published route given a sunset.
    let f = build(
        &[with_lifecycle(json!({
            "sunsetAt": jiff::Timestamp::from_second(NOW - 1).unwrap().to_string()
        }))],
        &[policy()],
        &[],
    );
    assert_eq!(decide(&f, Some(&token)), Err(DenyReason::Retired));
}

#[test]
fn drafts_answer_only_tokens_with_the_preview_scope() {
    let f = build(&[draft(json!({"stage": "Draft"}))], &[policy()], &[]);
    let plain = mint(&keys().rsa, &claims());
    assert_eq!(decide(&f, Some(&plain)), Err(DenyReason::InsufficientScope));
    let mut c = claims();
    c["scope"] = json!("orders:read preview");
    assert!(decide(&f, Some(&mint(&keys().rsa, &c))).is_ok());
    // The preview scope is the route's to name; the rule's scopes still apply.
    let f = build(
        &[draft(json!({"stage": "Draft", "previewScope": "beta"}))],
        &[policy()],
        &[],
    );
    assert_eq!(
        decide(&f, Some(&mint(&keys().rsa, &c))),
        Err(DenyReason::InsufficientScope)
    );
    c["scope"] = json!("beta");
    assert_eq!(
        decide(&f, Some(&mint(&keys().rsa, &c))),
        Err(DenyReason::InsufficientScope),
        "beta without orders:read"
    );
    c["scope"] = json!("beta orders:read");
    assert!(decide(&f, Some(&mint(&keys().rsa, &c))).is_ok());
}

#[test]
fn bad_lifecycles_are_compile_errors_naming_the_field() {
    let cases = [
        (
            json!({"stage": "Deprecated"}),
            "spec.lifecycle.deprecatedAt",
        ),
        (
            json!({"stage": "Deprecated", "deprecatedAt": "yesterday"}),
            "spec.lifecycle.deprecatedAt",
        ),
        (
            json!({"deprecatedAt": "2026-02-01T00:00:00Z", "sunsetAt": "2026-01-01T00:00:00Z"}),
            "spec.lifecycle.sunsetAt",
        ),
        (
            json!({"successor": "javascript:alert(1)"}),
            "spec.lifecycle.successor",
        ),
        (
            json!({"successor": "https://x.test/\"><script>"}),
            "spec.lifecycle.successor",
        ),
    ];
    for (lifecycle, field) in cases {
        let clock = std::sync::Arc::new(portcullis_policy::ManualClock::new(NOW));
        let (_, errors) = portcullis_policy::compile_with(
            &options(&clock),
            &[with_lifecycle(lifecycle.clone())],
            &[policy()],
            &[],
        );
        assert!(
            errors.iter().any(|e| e.path == field),
            "{lifecycle}: {errors:#?}"
        );
    }
    // A draft cannot keep a public rule: it would answer anyone.
    let clock = std::sync::Arc::new(portcullis_policy::ManualClock::new(NOW));
    let (_, errors) = portcullis_policy::compile_with(
        &options(&clock),
        &[with_lifecycle(json!({"stage": "Draft"}))],
        &[policy()],
        &[],
    );
    assert!(
        errors.iter().any(|e| e.path.ends_with(".auth")),
        "{errors:#?}"
    );
}
