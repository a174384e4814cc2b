//! DPoP (RFC 9449) over real sockets, in standalone mode: a token bound to a key passes
//! with its proof, once; the proof names the URI the client used (`http` here, the
//! listener being plain); the challenge is a `DPoP` one; neither the token nor the proof
//! reaches the backend.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use support::{Gateway, client, signer, upstream};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

struct Client {
    key: portcullis_testkit::TestKey,
    jkt: String,
}

fn client_key() -> Client {
    let key = portcullis_testkit::ec("c", false);
    let jkt = portcullis_policy::key_thumbprints(&json!({"keys": [key.jwk]}).to_string()).unwrap()
        [0]
    .thumbprint
    .clone();
    Client { key, jkt }
}

fn bound_token(jkt: &str) -> String {
    let n = now();
    signer().mint(&json!({
        "iss": support::ISSUER, "aud": "api", "sub": "alice", "iat": n - 5, "exp": n + 300,
        "cnf": {"jkt": jkt},
    }))
}

fn proof(c: &Client, token: &str, htu: &str, jti: &str) -> String {
    let mut jwk = c.key.jwk.clone();
    jwk.as_object_mut().unwrap().remove("kid");
    let ath = URL_SAFE_NO_PAD.encode(<sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()));
    c.key.mint_raw(
        &json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk}).to_string(),
        &json!({"jti": jti, "htm": "GET", "htu": htu, "iat": now(), "ath": ath}).to_string(),
    )
}

async fn get(gw: &Gateway, headers: &[(&str, &str)]) -> Response<Bytes> {
    let mut req =
        Request::get(format!("http://{}/orders?x=1", gw.addr())).header("host", "localhost");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client()
        .request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    Response::from_parts(parts, body.collect().await.unwrap().to_bytes())
}

#[tokio::test]
async fn a_bound_token_passes_with_its_proof_and_neither_reaches_the_backend() {
    let seen: Arc<Mutex<Vec<http::HeaderMap>>> = Arc::default();
    let s = seen.clone();
    let up = upstream(move |req: Request<hyper::body::Incoming>| {
        let s = s.clone();
        async move {
            s.lock().unwrap().push(req.headers().clone());
            Response::new(Full::new(Bytes::from("ok")).map_err(|e| match e {}).boxed())
        }
    })
    .await;
    let gw = Gateway::start(
        &[
            ("p.yaml", support::policy()),
            ("r.yaml", support::route("api", &format!("http://{up}"), "")),
        ],
        |_| {},
    )
    .await;
    let c = client_key();
    let token = bound_token(&c.jkt);
    let auth = format!("DPoP {token}");
    // Section 4.3 step 9: htu without the query, with the scheme the client used.
    let p = proof(&c, &token, "http://localhost/orders", "j-1");
    let r = get(&gw, &[("authorization", &auth), ("dpop", &p)]).await;
    assert_eq!(r.status(), StatusCode::OK, "{:?}", r.body());
    {
        let seen = seen.lock().unwrap();
        assert!(seen[0].get("authorization").is_none());
        assert!(
            seen[0].get("dpop").is_none(),
            "the proof is the gateway's to check"
        );
    }
    // Section 11.1: the same proof again.
    let r = get(&gw, &[("authorization", &auth), ("dpop", &p)]).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let c1 = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(
        c1.starts_with("DPoP ") && c1.contains("invalid_dpop_proof"),
        "{c1}"
    );
    // A proof for https when the client came over http.
    let p = proof(&c, &token, "https://localhost/orders", "j-2");
    let r = get(&gw, &[("authorization", &auth), ("dpop", &p)]).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Section 7.1: the bound token as Bearer.
    let bearer = format!("Bearer {token}");
    let r = get(&gw, &[("authorization", &bearer)]).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: Value = serde_json::from_slice(r.body()).unwrap();
    assert_eq!(body["reason"], "dpop_bound_token");
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("DPoP ")
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "only the good request got through"
    );
}
