//! Back-Channel Logout tokens (OpenID Back-Channel Logout 1.0): validation per section
//! 2.6, each refusal its own case, and the revocations a valid token becomes, enforced
//! on the user's access tokens (RFC 8417 events member, RFC 8725 section 3.11 typing).

mod support;

use portcullis_api::TokenPolicy;
use portcullis_policy::events::{BACKCHANNEL_LOGOUT_EVENT, EventError};
use portcullis_policy::{Decision, DenyReason, RequestParts};
use serde_json::{Value, json};
use support::*;

const CLIENT: &str = "portcullis-gateway";

fn policy_with(logout: Value) -> TokenPolicy {
    let mut p = serde_json::to_value(policy()).unwrap();
    p["spec"]["identityEvents"] = json!({"backChannelLogout": logout, "retention": "1h"});
    serde_json::from_value(p).unwrap()
}

fn logout_claims() -> Value {
    json!({
        "iss": ISSUER, "aud": CLIENT, "iat": NOW - 5, "exp": NOW + 115, "jti": "logout-1",
        "sub": "alice", "sid": "session-1",
        "events": {BACKCHANNEL_LOGOUT_EVENT: {}},
    })
}

fn logout_token(claims: &Value) -> String {
    let k = &keys().rsa;
    k.mint_raw(
        &json!({"alg": "RS256", "kid": k.kid, "typ": "logout+jwt"}).to_string(),
        &claims.to_string(),
    )
}

fn fixture(logout: Value) -> Fixture {
    build(&[route()], &[policy_with(logout)], &[])
}

#[test]
fn a_valid_logout_token_revokes_the_subject_and_the_session_bcl_s2_6() {
    let f = fixture(json!({"audiences": [CLIENT]}));
    let ev = f
        .snapshot
        .logout_token("shop/default", &logout_token(&logout_claims()), NOW)
        .unwrap();
    assert_eq!(&*ev.id.jti, "logout-1");
    assert_eq!(&*ev.id.issuer, ISSUER);
    assert_eq!(ev.revocations.len(), 2);
    let sub = &ev.revocations[0];
    assert_eq!(sub.subject.as_deref(), Some("alice"));
    assert_eq!(sub.issuer.as_deref(), Some(ISSUER));
    assert!(sub.issued_before.is_some() && sub.expires_at.is_some());
    assert_eq!(sub.source.as_ref().unwrap().jti, "logout-1");
    assert_eq!(ev.revocations[1].session_id.as_deref(), Some("session-1"));
}

#[test]
fn session_scope_revokes_only_the_session_when_sid_is_present() {
    let f = fixture(json!({"audiences": [CLIENT], "revoke": "Session"}));
    let ev = f
        .snapshot
        .logout_token("shop/default", &logout_token(&logout_claims()), NOW)
        .unwrap();
    assert_eq!(ev.revocations.len(), 1);
    assert_eq!(ev.revocations[0].session_id.as_deref(), Some("session-1"));
    // Without sid, the subject it is.
    let mut c = logout_claims();
    c.as_object_mut().unwrap().remove("sid");
    let ev = f
        .snapshot
        .logout_token("shop/default", &logout_token(&c), NOW)
        .unwrap();
    assert_eq!(ev.revocations[0].subject.as_deref(), Some("alice"));
}

#[test]
fn each_rule_of_section_2_6_refuses_its_token() {
    let f = fixture(json!({"audiences": [CLIENT], "maxAge": "2m"}));
    let refused = |claims: Value, why: &str| {
        let r = f
            .snapshot
            .logout_token("shop/default", &logout_token(&claims), NOW);
        assert!(
            matches!(r, Err(EventError::Invalid(_))),
            "{why}: {r:?} should be refused"
        );
    };
    let with = |k: &str, v: Value| {
        let mut c = logout_claims();
        c[k] = v;
        c
    };
    let without = |k: &str| {
        let mut c = logout_claims();
        c.as_object_mut().unwrap().remove(k);
        c
    };
    refused(with("aud", json!("someone-else")), "aud (step 3)");
    refused(with("iss", json!("https://evil.example")), "iss (step 3)");
    refused(without("iat"), "iat missing (step 3)");
    refused(with("iat", json!(NOW - 600)), "iat too old (step 3)");
    refused(with("iat", json!(NOW + 600)), "iat in the future");
    refused(with("exp", json!(NOW - 60)), "expired (step 3)");
    refused(without("events"), "no events (step 4)");
    refused(
        with("events", json!({BACKCHANNEL_LOGOUT_EVENT: "x"})),
        "event not an object (step 4)",
    );
    refused(
        with(
            "events",
            json!({"http://schemas.openid.net/event/other": {}}),
        ),
        "another event (step 4)",
    );
    refused(
        {
            let mut c = without("sub");
            c.as_object_mut().unwrap().remove("sid");
            c
        },
        "neither sub nor sid (step 5)",
    );
    refused(with("nonce", json!("n")), "nonce (step 7)");
    refused(without("jti"), "jti missing");
    // Section 2.4 / RFC 8725 section 3.11: an access token is not a logout token.
    let k = &keys().rsa;
    let typed = k.mint_raw(
        &json!({"alg": "RS256", "kid": k.kid, "typ": "at+jwt"}).to_string(),
        &logout_claims().to_string(),
    );
    assert!(
        f.snapshot
            .logout_token("shop/default", &typed, NOW)
            .is_err()
    );
    // Signed by a key the issuer does not have (step 2).
    let stranger = portcullis_testkit::rsa(&k.kid);
    let forged = stranger.mint_raw(
        &json!({"alg": "RS256", "kid": k.kid, "typ": "logout+jwt"}).to_string(),
        &logout_claims().to_string(),
    );
    assert!(
        f.snapshot
            .logout_token("shop/default", &forged, NOW)
            .is_err()
    );
    // alg none (step 2: never accepted).
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"logout+jwt"}"#),
        b64(logout_claims().to_string().as_bytes())
    );
    assert!(f.snapshot.logout_token("shop/default", &none, NOW).is_err());
}

#[test]
fn a_policy_without_back_channel_logout_does_not_accept_tokens() {
    let f = standard();
    assert_eq!(
        f.snapshot
            .logout_token("shop/default", &logout_token(&logout_claims()), NOW)
            .unwrap_err(),
        EventError::NotAccepted
    );
    let f = fixture(json!({"audiences": [CLIENT]}));
    assert_eq!(
        f.snapshot
            .logout_token("shop/other", &logout_token(&logout_claims()), NOW)
            .unwrap_err(),
        EventError::NotAccepted
    );
}

fn access_token(sub: &str, sid: Option<&str>, iss_offset: i64) -> String {
    let mut c = claims();
    c["sub"] = json!(sub);
    c["iat"] = json!(NOW + iss_offset);
    if let Some(s) = sid {
        c["sid"] = json!(s);
    }
    mint(&keys().rsa, &c)
}

fn decide(f: &Fixture, token: &str) -> Result<(), DenyReason> {
    let auth = format!("Bearer {token}");
    let req = RequestParts::new("GET", "api.example.com", "/orders").with_authorization(&auth);
    match f.snapshot.authorize(&req) {
        Decision::Allow(_) => Ok(()),
        Decision::Deny(d) => Err(d.reason),
        Decision::Pending(_) => panic!("pending"),
    }
}

#[test]
fn the_revocations_refuse_the_sessions_tokens_and_spare_later_logins() {
    // The event's entries, compiled into the policy as the controller writes them.
    let f0 = fixture(json!({"audiences": [CLIENT], "revoke": "Session"}));
    let ev = f0
        .snapshot
        .logout_token("shop/default", &logout_token(&logout_claims()), NOW)
        .unwrap();
    let mut p = serde_json::to_value(policy_with(
        json!({"audiences": [CLIENT], "revoke": "Session"}),
    ))
    .unwrap();
    p["spec"]["revocations"] = serde_json::to_value(&ev.revocations).unwrap();
    let f = build(&[route()], &[serde_json::from_value(p).unwrap()], &[]);
    assert_eq!(
        decide(&f, &access_token("alice", Some("session-1"), -30)),
        Err(DenyReason::RevokedSession)
    );
    // Another session of the same user lives on (revoke: Session).
    assert_eq!(
        decide(&f, &access_token("alice", Some("session-2"), -30)),
        Ok(())
    );

    // revoke: Subject (default): every token of alice issued before the logout.
    let mut p = serde_json::to_value(policy_with(json!({"audiences": [CLIENT]}))).unwrap();
    let f1 = fixture(json!({"audiences": [CLIENT]}));
    let ev_subject = f1
        .snapshot
        .logout_token("shop/default", &logout_token(&logout_claims()), NOW)
        .unwrap();
    p["spec"]["revocations"] = serde_json::to_value(&ev_subject.revocations).unwrap();
    let f = build(&[route()], &[serde_json::from_value(p).unwrap()], &[]);
    assert_eq!(
        decide(&f, &access_token("alice", None, -30)),
        Err(DenyReason::RevokedSubject)
    );
    // A login after the logout is not touched.
    assert_eq!(decide(&f, &access_token("alice", None, 1)), Ok(()));
    assert_eq!(decide(&f, &access_token("bob", None, -30)), Ok(()));
}

#[test]
fn an_issuer_scoped_subject_revocation_spares_another_issuers_user() {
    // `sub` is unique only within its issuer (OpenID Connect Core section 2): the entry
    // names the issuer, and tokens of another issuer with the same `sub` live on.
    let mut p = serde_json::to_value(policy()).unwrap();
    p["spec"]["revocations"] = json!([{
        "subject": "alice", "issuedBefore": "2030-01-01T00:00:00Z",
        "issuer": "https://other-idp.example.com",
    }]);
    let f = build(&[route()], &[serde_json::from_value(p).unwrap()], &[]);
    assert_eq!(decide(&f, &access_token("alice", None, -30)), Ok(()));
    let mut p = serde_json::to_value(policy()).unwrap();
    p["spec"]["revocations"] = json!([{
        "subject": "alice", "issuedBefore": "2030-01-01T00:00:00Z", "issuer": ISSUER,
    }]);
    let f = build(&[route()], &[serde_json::from_value(p).unwrap()], &[]);
    assert_eq!(
        decide(&f, &access_token("alice", None, -30)),
        Err(DenyReason::RevokedSubject)
    );
}
