//! API lifecycle over real sockets: a Deprecated route's answers carry `Deprecation`
//! (RFC 9745), `Sunset` (RFC 8594) and the successor `Link`, and its calls are counted by
//! consumer; a Retired route answers 410 Gone naming the successor, and its backend never
//! sees the request.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::Response;
use http_body_util::{BodyExt, Full};
use support::{Gateway, send, token, upstream};

#[tokio::test]
async fn deprecated_routes_say_so_and_retired_routes_are_gone() {
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = hits.clone();
    let up = upstream(move |_req| {
        seen.fetch_add(1, Ordering::SeqCst);
        async { Response::new(Full::new(Bytes::from("ok")).map_err(|e| match e {}).boxed()) }
    })
    .await;
    let deprecated = "  lifecycle: {stage: Deprecated, deprecatedAt: \"2026-01-01T00:00:00Z\", sunsetAt: \"2099-06-30T00:00:00Z\", successor: \"https://api.test/v2\"}";
    let gw = Gateway::start(
        &[
            ("p.yaml", support::policy()),
            (
                "r.yaml",
                support::route("v1", &format!("http://{up}"), deprecated),
            ),
        ],
        |_| {},
    )
    .await;
    let t = token();
    let auth = format!("Bearer {t}");
    let r = send(
        &gw,
        "GET",
        "/orders",
        &[("authorization", &auth)],
        String::new(),
    )
    .await;
    assert_eq!(r.status(), 200);
    let h = r.headers();
    assert_eq!(h["deprecation"], "@1767225600");
    assert_eq!(h["sunset"], "Tue, 30 Jun 2099 00:00:00 GMT");
    assert_eq!(
        h["link"],
        "<https://api.test/v2>; rel=\"successor-version\""
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    // Refusals say so too (RFC 9745 section 2: any response of the resource).
    let r = send(&gw, "GET", "/orders", &[], String::new()).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["deprecation"], "@1767225600");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert_eq!(
        gw.metric("portcullis_deprecated_requests_total{consumer=\"none\",route=\"default/v1\"}"),
        1.0
    );

    // Retired: the manifest changes, and the next call is 410 without reaching the backend.
    std::fs::write(
        gw.dir.path().join("r.yaml"),
        support::route(
            "v1",
            &format!("http://{up}"),
            "  lifecycle: {stage: Retired, successor: \"https://api.test/v2\"}",
        ),
    )
    .unwrap();
    gw.eventually("the route retired", |gw| {
        gw.running
            .config
            .load()
            .catalog()
            .iter()
            .any(|e| e.lifecycle.stage == "retired")
    })
    .await;
    for headers in [vec![("authorization", auth.as_str())], vec![]] {
        let r = send(&gw, "GET", "/orders", &headers, String::new()).await;
        assert_eq!(r.status(), 410);
        assert_eq!(
            r.headers()["link"],
            "<https://api.test/v2>; rel=\"successor-version\""
        );
        assert!(r.headers().get("www-authenticate").is_none());
        let body: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(body["successor"], "https://api.test/v2");
        assert_eq!(body["reason"], "retired");
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "the backend saw a retired call"
    );
    assert_eq!(
        gw.metric("portcullis_retired_requests_total{route=\"default/v1\"}"),
        2.0
    );
}
