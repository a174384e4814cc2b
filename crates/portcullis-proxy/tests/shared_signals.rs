//! Shared Signals (SSF 1.0) over real sockets, in standalone mode, with a transmitter
//! stub on a real socket (its SSF configuration, keys, verification and poll endpoints):
//! SETs (RFC 8417) pushed (RFC 8935) to the proxy and polled (RFC 8936) by it, CAEP and
//! RISC events revoking the subject's tokens, and each refusal with its RFC 8935 error
//! code. The e2e tier runs the same against a transmitter process
//! (e2e/oidc/transmitter.mjs) on a real API server.

mod support;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use support::{Gateway, UpBody, send, signer, upstream};

const AUDIENCE: &str = "https://gateway.test";
const PUSH_AUTH: &str = "Bearer push-secret-1";
const SESSION_REVOKED: &str = "https://schemas.openid.net/secevent/caep/event-type/session-revoked";
const COMPROMISE: &str =
    "https://schemas.openid.net/secevent/risc/event-type/credential-compromise";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The transmitter's state: its SETs waiting to be polled, acks and errors seen, and the
/// verification states asked for.
#[derive(Default)]
struct Tx {
    queue: VecDeque<(String, String)>,
    acked: Vec<String>,
    set_errs: Vec<(String, String)>,
    verify: Vec<String>,
}

struct Transmitter {
    addr: std::net::SocketAddr,
    key: portcullis_testkit::TestKey,
    state: Arc<Mutex<Tx>>,
}

impl Transmitter {
    async fn start() -> Transmitter {
        let key = portcullis_testkit::rsa("tx-1");
        let jwk = key.jwk.clone();
        let state: Arc<Mutex<Tx>> = Arc::default();
        let addr_cell: Arc<Mutex<Option<std::net::SocketAddr>>> = Arc::default();
        let (st, cell) = (state.clone(), addr_cell.clone());
        let addr = upstream(move |req: Request<hyper::body::Incoming>| {
            let (st, cell, jwk) = (st.clone(), cell.clone(), jwk.clone());
            async move {
                let base = format!("http://{}", cell.lock().unwrap().unwrap());
                let path = req.uri().path().to_owned();
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let json_reply = |v: Value| -> Response<UpBody> {
                    Response::builder()
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(v.to_string())).boxed())
                        .unwrap()
                };
                match path.as_str() {
                    "/.well-known/ssf-configuration" => json_reply(json!({
                        "spec_version": "1_0", "issuer": base, "jwks_uri": format!("{base}/jwks"),
                        "verification_endpoint": format!("{base}/verify"),
                        "delivery_methods_supported": ["urn:ietf:rfc:8935", "urn:ietf:rfc:8936"],
                    })),
                    "/jwks" => json_reply(json!({"keys": [jwk]})),
                    "/verify" => {
                        let v: Value = serde_json::from_slice(&body).unwrap();
                        st.lock()
                            .unwrap()
                            .verify
                            .push(v["state"].as_str().unwrap().to_owned());
                        Response::builder()
                            .status(204)
                            .body(Full::new(Bytes::new()).boxed())
                            .unwrap()
                    }
                    "/poll" => {
                        let v: Value = serde_json::from_slice(&body).unwrap();
                        let mut s = st.lock().unwrap();
                        for a in v["ack"].as_array().into_iter().flatten() {
                            let jti = a.as_str().unwrap().to_owned();
                            s.queue.retain(|(j, _)| *j != jti);
                            s.acked.push(jti);
                        }
                        for (jti, e) in v["setErrs"].as_object().into_iter().flatten() {
                            s.queue.retain(|(j, _)| j != jti);
                            s.set_errs
                                .push((jti.clone(), e["err"].as_str().unwrap().to_owned()));
                        }
                        let sets: serde_json::Map<String, Value> = s
                            .queue
                            .iter()
                            .map(|(j, set)| (j.clone(), Value::String(set.clone())))
                            .collect();
                        json_reply(json!({"sets": sets, "moreAvailable": false}))
                    }
                    _ => Response::builder()
                        .status(404)
                        .body(Full::new(Bytes::new()).boxed())
                        .unwrap(),
                }
            }
        })
        .await;
        *addr_cell.lock().unwrap() = Some(addr);
        Transmitter { addr, key, state }
    }

    fn issuer(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A SET about `subject`, with `tweak` applied to the claims first.
    fn set(
        &self,
        event: &str,
        body: Value,
        subject: Value,
        tweak: impl FnOnce(&mut Value),
    ) -> (String, String) {
        let jti = format!("set-{}", rand_id());
        let mut claims = json!({
            "iss": self.issuer(), "aud": AUDIENCE, "iat": now(), "jti": jti, "txn": "t-1",
            "sub_id": subject, "events": {event: body},
        });
        tweak(&mut claims);
        let header = json!({"alg": "RS256", "kid": self.key.kid, "typ": "secevent+jwt"});
        (
            jti,
            self.key.mint_raw(&header.to_string(), &claims.to_string()),
        )
    }
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed) + u64::from(std::process::id()) * 1_000_000
}

fn iss_sub(sub: &str) -> Value {
    json!({"format": "iss_sub", "iss": support::ISSUER, "sub": sub})
}

fn token(sub: &str, email: Option<&str>) -> String {
    let n = now();
    let mut c =
        json!({"iss": support::ISSUER, "aud": "api", "sub": sub, "iat": n - 5, "exp": n + 300});
    if let Some(e) = email {
        c["email"] = json!(e);
    }
    signer().mint(&c)
}

async fn gateway(tx: &Transmitter, up: std::net::SocketAddr) -> Gateway {
    let mut doc: Value = serde_yaml::from_str(&support::policy()).unwrap();
    doc["spec"]["identityEvents"] = json!({"sharedSignals": [
        {"name": "push1", "transmitter": tx.issuer(), "audience": AUDIENCE, "streamId": "s-push",
         "push": {"authorizationSecretRef": {"name": "ssf", "key": "push"}},
         "managementSecretRef": {"name": "ssf", "key": "management"}},
        {"name": "poll1", "transmitter": tx.issuer(), "audience": AUDIENCE,
         "poll": {"endpoint": format!("{}/poll", tx.issuer()), "interval": "1s"}},
    ]});
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: ssf, namespace: default}}\nstringData: {{push: \"{PUSH_AUTH}\", management: admin-token}}\n"
    );
    Gateway::start(
        &[
            ("p.yaml", serde_yaml::to_string(&doc).unwrap()),
            ("r.yaml", support::route("api", &format!("http://{up}"), "")),
            ("s.yaml", secret),
        ],
        |_| {},
    )
    .await
}

async fn echo() -> std::net::SocketAddr {
    upstream(|_req| async { Response::new(Full::new(Bytes::from("ok")).boxed()) }).await
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

const PUSH: &str = "/.portcullis/ssf/default/default/push1";
const SECEVENT: (&str, &str) = ("content-type", "application/secevent+jwt");

async fn push(gw: &Gateway, set: &str) -> Response<Bytes> {
    send(
        gw,
        "POST",
        PUSH,
        &[SECEVENT, ("authorization", PUSH_AUTH)],
        set.to_owned(),
    )
    .await
}

async fn until_refused(gw: &Gateway, token: &str) {
    let deadline = Instant::now() + support::EVENTUALLY;
    while call(gw, token).await != StatusCode::UNAUTHORIZED {
        assert!(Instant::now() < deadline, "the token is still accepted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The gateway, once the transmitter's keys are fetched (its SSF configuration read).
async fn ready(tx: &Transmitter) -> Gateway {
    let gw = gateway(tx, echo().await).await;
    let (_, probe) = tx.set(
        "https://example.com/unknown-event",
        json!({}),
        iss_sub("nobody"),
        |_| {},
    );
    let deadline = Instant::now() + support::EVENTUALLY;
    while push(&gw, &probe).await.status() == StatusCode::SERVICE_UNAVAILABLE {
        assert!(
            Instant::now() < deadline,
            "the transmitter's keys never came"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw
}

#[tokio::test]
async fn a_pushed_session_revoked_ends_the_subjects_tokens_rfc8935() {
    let tx = Transmitter::start().await;
    let gw = ready(&tx).await;
    let (alice, bob) = (token("alice", None), token("bob", None));
    assert_eq!(call(&gw, &alice).await, StatusCode::OK);
    let (_, set) = tx.set(
        SESSION_REVOKED,
        json!({"event_timestamp": now()}),
        iss_sub("alice"),
        |_| {},
    );
    let r = push(&gw, &set).await;
    // RFC 8935 section 2.2: accepted is 202.
    assert_eq!(r.status(), StatusCode::ACCEPTED, "{:?}", r.body());
    until_refused(&gw, &alice).await;
    assert_eq!(call(&gw, &bob).await, StatusCode::OK);
    // The same SET again: accepted, not applied twice.
    assert_eq!(push(&gw, &set).await.status(), StatusCode::ACCEPTED);
    assert_eq!(
        gw.metric("portcullis_identity_events_total{kind=\"shared_signals\",result=\"applied\"}"),
        1.0
    );
}

#[tokio::test]
async fn an_email_subject_revokes_tokens_with_that_email_rfc9493() {
    let tx = Transmitter::start().await;
    let gw = ready(&tx).await;
    let carol = token("carol", Some("carol@example.com"));
    let dave = token("dave", Some("dave@example.com"));
    let (_, set) = tx.set(
        "https://schemas.openid.net/secevent/risc/event-type/account-disabled",
        json!({}),
        json!({"format": "email", "email": "carol@example.com"}),
        |_| {},
    );
    assert_eq!(push(&gw, &set).await.status(), StatusCode::ACCEPTED);
    until_refused(&gw, &carol).await;
    assert_eq!(call(&gw, &dave).await, StatusCode::OK);
}

#[tokio::test]
async fn refused_sets_get_their_rfc8935_error_codes_and_revoke_nothing() {
    let tx = Transmitter::start().await;
    let gw = ready(&tx).await;
    let erin = token("erin", None);
    let code = |r: &Response<Bytes>| -> String {
        serde_json::from_slice::<Value>(r.body()).unwrap()["err"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let ev = |tweak: fn(&mut Value)| tx.set(SESSION_REVOKED, json!({}), iss_sub("erin"), tweak).1;
    let cases: Vec<(String, &str)> = vec![
        (
            ev(|c| c["aud"] = json!("https://someone-else")),
            "invalid_audience",
        ),
        (
            ev(|c| c["iss"] = json!("https://evil.example")),
            "invalid_issuer",
        ),
        // SSF 1.0 section 4.1.8/4.1.9: a SET holds neither `sub` nor `exp`.
        (ev(|c| c["exp"] = json!(now() + 60)), "invalid_request"),
        (ev(|c| c["sub"] = json!("erin")), "invalid_request"),
        (
            ev(|c| {
                c.as_object_mut()
                    .unwrap()
                    .remove("jti")
                    .map(|_| ())
                    .unwrap()
            }),
            "invalid_request",
        ),
        (ev(|c| c["iat"] = json!(now() + 3600)), "invalid_request"),
    ];
    for (set, want) in &cases {
        let r = push(&gw, set).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{want}");
        assert_eq!(code(&r), *want);
    }
    // Signed by another key under the transmitter's kid.
    let stranger = portcullis_testkit::rsa(&tx.key.kid);
    let (_, good) = tx.set(SESSION_REVOKED, json!({}), iss_sub("erin"), |_| {});
    let forged = stranger.mint_raw(
        &json!({"alg": "RS256", "kid": tx.key.kid, "typ": "secevent+jwt"}).to_string(),
        &json!({
            "iss": tx.issuer(), "aud": AUDIENCE, "iat": now(), "jti": "forged",
            "sub_id": iss_sub("erin"), "events": {SESSION_REVOKED: {}},
        })
        .to_string(),
    );
    let r = push(&gw, &forged).await;
    assert_eq!(code(&r), "invalid_key");
    // An access token is not a SET (RFC 8725 section 3.11: typ).
    let r = push(&gw, &erin).await;
    assert_eq!(code(&r), "invalid_request");
    // The stream's Authorization value is required (RFC 8935 section 2.4: 401).
    let r = send(
        &gw,
        "POST",
        PUSH,
        &[SECEVENT, ("authorization", "Bearer wrong")],
        good.clone(),
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(code(&r), "authentication_failed");
    let r = send(&gw, "POST", PUSH, &[SECEVENT], good.clone()).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Not application/secevent+jwt.
    let r = send(
        &gw,
        "POST",
        PUSH,
        &[
            ("content-type", "application/json"),
            ("authorization", PUSH_AUTH),
        ],
        good,
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        call(&gw, &erin).await,
        StatusCode::OK,
        "a refused SET revoked"
    );
}

#[tokio::test]
async fn a_polled_credential_compromise_is_applied_and_acknowledged_rfc8936() {
    let tx = Transmitter::start().await;
    let gw = ready(&tx).await;
    let frank = token("frank", None);
    assert_eq!(call(&gw, &frank).await, StatusCode::OK);
    let (jti, set) = tx.set(
        COMPROMISE,
        json!({"credential_type": "password"}),
        iss_sub("frank"),
        |_| {},
    );
    let (bad_jti, bad) = tx.set(COMPROMISE, json!({}), iss_sub("frank"), |c| {
        c["aud"] = json!("x")
    });
    {
        let mut s = tx.state.lock().unwrap();
        s.queue.push_back((jti.clone(), set));
        s.queue.push_back((bad_jti.clone(), bad));
    }
    until_refused(&gw, &frank).await;
    // RFC 8936 section 2.4: the applied SET is acknowledged, the refused one reported.
    let deadline = Instant::now() + support::EVENTUALLY;
    loop {
        {
            let s = tx.state.lock().unwrap();
            if s.acked.contains(&jti)
                && s.set_errs
                    .iter()
                    .any(|(j, e)| *j == bad_jti && e == "invalid_audience")
            {
                break;
            }
        }
        assert!(Instant::now() < deadline, "no ack / setErrs");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_stream_is_verified_with_the_state_it_asked_for_ssf_8_1_4() {
    let tx = Transmitter::start().await;
    let gw = ready(&tx).await;
    // The receiver asked for verification (the push stream has a management token).
    let deadline = Instant::now() + support::EVENTUALLY;
    let state = loop {
        if let Some(s) = tx.state.lock().unwrap().verify.first().cloned() {
            break s;
        }
        assert!(Instant::now() < deadline, "no verification request");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    const VERIFY: &str = "https://schemas.openid.net/secevent/ssf/event-type/verification";
    let stream = json!({"format": "opaque", "id": "s-push"});
    // A state it did not ask for is refused; the right one verifies the stream.
    let (_, wrong) = tx.set(VERIFY, json!({"state": "guess"}), stream.clone(), |_| {});
    let r = push(&gw, &wrong).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(r.body()).contains("invalid_state"));
    let (_, right) = tx.set(VERIFY, json!({"state": state}), stream, |_| {});
    assert_eq!(push(&gw, &right).await.status(), StatusCode::ACCEPTED);
    assert!(
        gw.metric("portcullis_ssf_stream_verified_timestamp_seconds{policy=\"default/default\",stream=\"push1\"}")
            > 0.0
    );
}
