//! Request rate limits over real sockets: the standalone gateway (its in-process ledger)
//! in front of a real upstream. A rate limit is a token bucket per subject on every route
//! of its policy; over it the answer is 429 (RFC 6585 section 4) with Retry-After (RFC 9110
//! section 10.2.3) and the RateLimit / RateLimit-Policy fields of
//! draft-ietf-httpapi-ratelimit-headers, and the upstream is never called.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::json;
use support::{Gateway, client, route, signer, upstream};

fn token_for(sub: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    signer().mint(&json!({
        "iss": support::ISSUER, "aud": "api", "sub": sub, "iat": now - 5, "exp": now + 300,
    }))
}

fn limited_policy() -> String {
    let mut doc: serde_json::Value = serde_yaml::from_str(&support::policy()).unwrap();
    doc["spec"]["rateLimits"] = json!([
        {"name": "per-subject", "key": "subject", "requests": 3, "period": "minute", "burst": 3}
    ]);
    serde_yaml::to_string(&doc).unwrap()
}

async fn get(gw: &Gateway, path: &str, token: Option<&str>) -> Response<Bytes> {
    let mut req = Request::get(format!("http://{}{path}", gw.addr())).header("host", "localhost");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = client()
        .request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    Response::from_parts(parts, body.collect().await.unwrap().to_bytes())
}

async fn gateway(calls: Arc<AtomicUsize>) -> Gateway {
    let up = upstream(move |_req| {
        let calls = calls.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            // A backend with rate-limit fields of its own: the gateway's replace them.
            Response::builder()
                .header("ratelimit", "\"backend\";r=999;t=1")
                .body(Full::new(Bytes::from("ok")).map_err(|e| match e {}).boxed())
                .unwrap()
        }
    })
    .await;
    let rules =
        "  rules:\n    - match: {path: /health}\n      auth: none\n    - match: {pathPrefix: /}\n";
    let route = route("api", &format!("http://{up}"), "")
        .replace("  rules:\n    - match: {pathPrefix: /}\n", rules);
    Gateway::start(&[("p.yaml", limited_policy()), ("r.yaml", route)], |_| {}).await
}

#[tokio::test]
async fn over_the_limit_is_429_with_retry_after_and_ratelimit_fields_rfc6585_s4() {
    let calls = Arc::new(AtomicUsize::new(0));
    let gw = gateway(calls.clone()).await;
    let alice = token_for("alice");
    for left in [2, 1, 0] {
        let r = get(&gw, "/orders", Some(&alice)).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["ratelimit-policy"], "\"per-subject\";q=3;w=60");
        let rl = r.headers().get_all("ratelimit").iter().collect::<Vec<_>>();
        assert_eq!(rl.len(), 1, "the backend's field is replaced, not added to");
        assert!(
            rl[0]
                .to_str()
                .unwrap()
                .starts_with(&format!("\"per-subject\";r={left};t=")),
            "{rl:?}"
        );
    }
    let r = get(&gw, "/orders", Some(&alice)).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // One request refills in 20 s (3 a minute).
    assert!((1..=20).contains(&retry), "{retry}");
    assert!(r.headers()["ratelimit"].to_str().unwrap().contains(";r=0;"));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "the refused call reached the upstream"
    );
    // Another subject has a bucket of its own.
    assert_eq!(
        get(&gw, "/orders", Some(&token_for("bob"))).await.status(),
        StatusCode::OK
    );
    assert!(
        gw.metric(
            "portcullis_quota_requests_total{kind=\"rate_limit\",policy=\"default/default\",quota=\"per-subject\",result=\"exhausted\"}"
        ) >= 1.0
    );
}

#[tokio::test]
async fn a_public_rule_is_not_counted_nor_refused() {
    let calls = Arc::new(AtomicUsize::new(0));
    let gw = gateway(calls.clone()).await;
    for _ in 0..10 {
        let r = get(&gw, "/health", None).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.headers().get("ratelimit-policy").is_none());
    }
    // Requests without a token on a protected rule are still 401, not counted.
    assert_eq!(
        get(&gw, "/orders", None).await.status(),
        StatusCode::UNAUTHORIZED
    );
}
