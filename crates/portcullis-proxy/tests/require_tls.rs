//! `requireTls` over real sockets: credentials sent over plain HTTP are refused before the
//! token is read (RFC 6750 section 5.3: a token seen in cleartext is disclosed), a public
//! rule without credentials still answers, and `X-Forwarded-Proto: https` counts only from
//! a trusted load balancer.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use support::{Gateway, client, upstream};

async fn get(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Response<Bytes> {
    let mut req = Request::get(format!("http://{}{path}", gw.addr())).header("host", "localhost");
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

async fn gateway(calls: Arc<AtomicUsize>, trusted: bool) -> Gateway {
    let up = upstream(move |_req| {
        let calls = calls.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            Response::new(Full::new(Bytes::from("ok")).map_err(|e| match e {}).boxed())
        }
    })
    .await;
    let rules =
        "  rules:\n    - match: {path: /health}\n      auth: none\n    - match: {pathPrefix: /}\n";
    let route = support::route("api", &format!("http://{up}"), "  requireTls: true")
        .replace("  rules:\n    - match: {pathPrefix: /}\n", rules);
    Gateway::start(&[("p.yaml", support::policy()), ("r.yaml", route)], |o| {
        if trusted {
            o.limits.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        }
    })
    .await
}

#[tokio::test]
async fn credentials_over_plain_http_are_refused_unread_rfc6750_s5_3() {
    let calls = Arc::new(AtomicUsize::new(0));
    let gw = gateway(calls.clone(), false).await;
    let auth = format!("Bearer {}", support::token());
    let r = get(&gw, "/orders", &[("authorization", &auth)]).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(String::from_utf8_lossy(r.body()).contains("cleartext_credentials"));
    // Not even a well-formed token is needed to be refused: nothing was read.
    let r = get(&gw, "/orders", &[("authorization", "Bearer x")]).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // An X-Forwarded-Proto from an untrusted peer changes nothing.
    let r = get(
        &gw,
        "/orders",
        &[("authorization", &auth), ("x-forwarded-proto", "https")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // A public rule without credentials answers.
    assert_eq!(get(&gw, "/health", &[]).await.status(), StatusCode::OK);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "a refused request reached the backend"
    );
    assert_eq!(
        gw.metric("portcullis_auth_decisions_total{decision=\"deny\",reason=\"cleartext_credentials\",route=\"default/api\"}"),
        3.0
    );
}

#[tokio::test]
async fn a_trusted_load_balancer_terminating_tls_is_believed() {
    let calls = Arc::new(AtomicUsize::new(0));
    let gw = gateway(calls.clone(), true).await;
    let auth = format!("Bearer {}", support::token());
    let r = get(
        &gw,
        "/orders",
        &[("authorization", &auth), ("x-forwarded-proto", "https")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = get(&gw, "/orders", &[("authorization", &auth)]).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

/// A request over real TLS: credentials are accepted on a `requireTls` route, and the
/// answer carries `Strict-Transport-Security` (RFC 6797 section 7.1).
#[tokio::test]
async fn over_tls_credentials_pass_and_hsts_is_sent_rfc6797_s7_1() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.path().join("tls.key"), cert.signing_key.serialize_pem()).unwrap();
    std::fs::write(dir.path().join("tls.crt"), cert.cert.pem()).unwrap();
    let up = upstream(|_req| async {
        Response::new(Full::new(Bytes::from("ok")).map_err(|e| match e {}).boxed())
    })
    .await;
    let route = support::route("api", &format!("http://{up}"), "  requireTls: true");
    let (crt, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let gw = Gateway::start(&[("p.yaml", support::policy()), ("r.yaml", route)], |o| {
        o.tls = Some((crt, key));
        o.limits.hsts = Some(http::HeaderValue::from_static("max-age=31536000"));
    })
    .await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let auth = format!("Bearer {}", support::token());
    let req = Request::get("/orders")
        .header("host", "localhost")
        .header("authorization", auth)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["strict-transport-security"],
        "max-age=31536000"
    );
}

#[tokio::test]
async fn a_cookie_counts_as_a_credential_and_a_doubled_forwarded_proto_as_none() {
    let calls = Arc::new(AtomicUsize::new(0));
    let gw = gateway(calls.clone(), true).await;
    // A session cookie over plain HTTP is as disclosed as a token.
    let r = get(&gw, "/health", &[("cookie", "session=abc")]).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Two X-Forwarded-Proto lines (a balancer appending after the client's): no reading.
    let auth = format!("Bearer {}", support::token());
    let r = get(
        &gw,
        "/orders",
        &[
            ("authorization", &auth),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-proto", "http"),
        ],
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}
