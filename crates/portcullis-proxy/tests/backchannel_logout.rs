//! OpenID Back-Channel Logout 1.0 over real sockets, in standalone mode: an identity
//! provider POSTs a logout token (section 2.5: form-encoded `logout_token`) to
//! `/.portcullis/backchannel-logout/<namespace>/<policy>`; the user's access tokens stop
//! working; the answer is 200, or 400 with a JSON error (section 2.8).

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use support::{Gateway, send, signer, upstream};

const CLIENT: &str = "gateway-client";
const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn access_token(sub: &str) -> String {
    let now = now();
    signer().mint(&json!({
        "iss": support::ISSUER, "aud": "api", "sub": sub, "iat": now - 5, "exp": now + 300,
    }))
}

fn logout_token(sub: &str, jti: &str) -> String {
    let now = now();
    let k = signer();
    k.mint_raw(
        &json!({"alg": "RS256", "kid": k.kid, "typ": "logout+jwt"}).to_string(),
        &json!({
            "iss": support::ISSUER, "aud": CLIENT, "iat": now - 1, "exp": now + 120,
            "jti": jti, "sub": sub, "events": {EVENT: {}},
        })
        .to_string(),
    )
}

fn policy() -> String {
    let mut doc: Value = serde_yaml::from_str(&support::policy()).unwrap();
    doc["spec"]["identityEvents"] = json!({"backChannelLogout": {"audiences": [CLIENT]}});
    serde_yaml::to_string(&doc).unwrap()
}

async fn call(gw: &Gateway, token: &str) -> StatusCode {
    let auth = format!("Bearer {token}");
    send(
        gw,
        "GET",
        "/orders",
        &[("authorization", &auth)],
        String::new(),
    )
    .await
    .status()
}

const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");
const ENDPOINT: &str = "/.portcullis/backchannel-logout/default/default";

async fn logout(gw: &Gateway, token: &str) -> Response<Bytes> {
    send(
        gw,
        "POST",
        ENDPOINT,
        &[FORM],
        format!("logout_token={token}"),
    )
    .await
}

async fn gateway(events_file: Option<std::path::PathBuf>) -> Gateway {
    let up = upstream(|_req| async {
        Response::new(Full::new(Bytes::from("ok")).map_err(|e| match e {}).boxed())
    })
    .await;
    Gateway::start(
        &[
            ("p.yaml", policy()),
            ("r.yaml", support::route("api", &format!("http://{up}"), "")),
        ],
        |o| o.events_file = events_file,
    )
    .await
}

#[tokio::test]
async fn a_logout_token_ends_the_users_tokens_and_no_one_elses() {
    let gw = gateway(None).await;
    let alice = access_token("alice");
    let bob = access_token("bob");
    assert_eq!(call(&gw, &alice).await, StatusCode::OK);
    let r = logout(&gw, &logout_token("alice", "l-1")).await;
    assert_eq!(r.status(), StatusCode::OK, "{:?}", r.body());
    // Section 2.8: the response is not cached.
    assert_eq!(r.headers()["cache-control"], "no-store");
    let deadline = std::time::Instant::now() + support::EVENTUALLY;
    while call(&gw, &alice).await == StatusCode::OK {
        assert!(std::time::Instant::now() < deadline, "still accepted");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(call(&gw, &alice).await, StatusCode::UNAUTHORIZED);
    assert_eq!(call(&gw, &bob).await, StatusCode::OK);
    // A new login after the logout works: its iat is not before the cut-off.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let later = {
        let n = now();
        signer().mint(&json!({
            "iss": support::ISSUER, "aud": "api", "sub": "alice", "iat": n, "exp": n + 300,
        }))
    };
    assert_eq!(call(&gw, &later).await, StatusCode::OK);
    assert_eq!(
        gw.metric(
            "portcullis_identity_events_total{kind=\"backchannel_logout\",result=\"applied\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn a_replayed_logout_token_is_answered_200_and_not_applied_again() {
    // Sent again (a retry, or a captured token), it must not move alice's cut-off forward
    // and so end the session she opened since.
    let gw = gateway(None).await;
    let token = logout_token("alice", "l-replay");
    assert_eq!(logout(&gw, &token).await.status(), StatusCode::OK);
    assert_eq!(logout(&gw, &token).await.status(), StatusCode::OK);
    assert_eq!(
        gw.metric(
            "portcullis_identity_events_total{kind=\"backchannel_logout\",result=\"replay\"}"
        ),
        1.0
    );
    assert_eq!(
        gw.metric(
            "portcullis_identity_events_total{kind=\"backchannel_logout\",result=\"applied\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn bad_requests_get_400_with_a_json_error_bcl_s2_8() {
    let gw = gateway(None).await;
    let alice = access_token("alice");
    // An access token is not a logout token (no events member, wrong audience).
    let r = logout(&gw, &alice).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = serde_json::from_slice(r.body()).unwrap();
    assert_eq!(body["error"], "invalid_request");
    assert!(!String::from_utf8_lossy(r.body()).contains(&alice));
    // Not form-encoded.
    let r = send(
        &gw,
        "POST",
        ENDPOINT,
        &[("content-type", "application/json")],
        format!("{{\"logout_token\":\"{}\"}}", logout_token("alice", "l-2")),
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Two logout_token parameters.
    let r = send(
        &gw,
        "POST",
        ENDPOINT,
        &[FORM],
        format!(
            "logout_token={}&logout_token={}",
            logout_token("alice", "l-3"),
            logout_token("bob", "l-4")
        ),
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // GET, and a policy that takes no logout tokens.
    let r = send(&gw, "GET", ENDPOINT, &[], String::new()).await;
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    let r = send(
        &gw,
        "POST",
        "/.portcullis/backchannel-logout/default/nope",
        &[FORM],
        format!("logout_token={}", logout_token("alice", "l-5")),
    )
    .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // Nothing was revoked.
    assert_eq!(call(&gw, &alice).await, StatusCode::OK);
}

#[tokio::test]
async fn revocations_survive_a_restart_through_the_events_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.json");
    let alice = access_token("alice");
    {
        let gw = gateway(Some(file.clone())).await;
        assert_eq!(
            logout(&gw, &logout_token("alice", "l-file")).await.status(),
            StatusCode::OK
        );
        gw.running.shutdown();
    }
    let gw = gateway(Some(file.clone())).await;
    assert_eq!(call(&gw, &alice).await, StatusCode::UNAUTHORIZED);
    // A garbled file is refused at start rather than ignored.
    std::fs::write(&file, "not json").unwrap();
    let mut opts = portcullis_proxy::StandaloneOptions::new(dir.path().to_owned());
    opts.listen = "127.0.0.1:0".parse().unwrap();
    opts.admin = "127.0.0.1:0".parse().unwrap();
    opts.events_file = Some(file);
    assert!(portcullis_proxy::start_standalone(opts).await.is_err());
}
