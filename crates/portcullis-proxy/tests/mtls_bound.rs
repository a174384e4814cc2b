//! Certificate-bound tokens (RFC 8705) over real TLS: the proxy asks clients for a
//! certificate issued by `--tls-client-ca` (optional), and a token whose `cnf.x5t#S256`
//! names a certificate is accepted only on a connection that presented that certificate
//! (section 3); without one, or with another, it is refused. With
//! `--tls-client-any-certificate`, a self-signed client certificate (section 2.2,
//! `self_signed_tls_client_auth`) binds tokens the same way.

mod support;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::json;
use sha2::{Digest, Sha256};
use support::{Gateway, signer, upstream};

struct Pki {
    ca_pem: String,
    server: (String, String),
    clients: Vec<(rustls::pki_types::CertificateDer<'static>, String)>,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (cert, key)
    };
    let (server, server_key) = leaf("localhost");
    let mut clients: Vec<_> = ["client-a", "client-b"]
        .iter()
        .map(|n| {
            let (c, k) = leaf(n);
            (c.der().clone(), k.serialize_pem())
        })
        .collect();
    // clients[2]: self-signed, as RFC 8705 section 2.2 clients register theirs.
    let key = KeyPair::generate().unwrap();
    let own = CertificateParams::new(vec!["client-self".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    clients.push((own.der().clone(), key.serialize_pem()));
    Pki {
        ca_pem: ca.pem(),
        server: (server.pem(), server_key.serialize_pem()),
        clients,
    }
}

fn bound_token(cert: &[u8]) -> String {
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let x5t = URL_SAFE_NO_PAD.encode(Sha256::digest(cert));
    signer().mint(&json!({
        "iss": support::ISSUER, "aud": "api", "sub": "svc", "iat": n - 5, "exp": n + 300,
        "cnf": {"x5t#S256": x5t},
    }))
}

async fn call(gw: &Gateway, pki: &Pki, client: Option<usize>, token: &str) -> StatusCode {
    try_call(gw, pki, client, token)
        .await
        .expect("the TLS connection or the request failed")
}

/// The answer, or `None` when the handshake or the request failed (a client certificate
/// refused in TLS 1.3 shows on the first read).
async fn try_call(
    gw: &Gateway,
    pki: &Pki,
    client: Option<usize>,
    token: &str,
) -> Option<StatusCode> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut pki.ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let cfg = match client {
        None => builder.with_no_client_auth(),
        Some(i) => {
            let (cert, key) = &pki.clients[i];
            let key = rustls_pemfile::private_key(&mut key.as_bytes())
                .unwrap()
                .unwrap();
            builder
                .with_client_auth_cert(vec![cert.clone()], key)
                .unwrap()
        }
    };
    let tcp = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .ok()?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .ok()?;
    tokio::spawn(conn);
    let req = Request::get("/orders")
        .header("host", "localhost")
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    Some(send.send_request(req).await.ok()?.status())
}

/// The PKI, a directory holding `ca.pem`, `tls.crt` and `tls.key`, and the manifests of
/// a route `api` to an upstream answering `ok`.
async fn setup() -> (Pki, tempfile::TempDir, [(&'static str, String); 2]) {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n);
    std::fs::write(path("ca.pem"), &pki.ca_pem).unwrap();
    std::fs::write(path("tls.crt"), &pki.server.0).unwrap();
    std::fs::write(path("tls.key"), &pki.server.1).unwrap();
    let up = upstream(|_req| async {
        Response::new(Full::new(Bytes::from("ok")).map_err(|e| match e {}).boxed())
    })
    .await;
    let files = [
        ("p.yaml", support::policy()),
        ("r.yaml", support::route("api", &format!("http://{up}"), "")),
    ];
    (pki, dir, files)
}

#[tokio::test]
async fn a_certificate_bound_token_needs_its_certificate_rfc8705_s3() {
    let (pki, dir, files) = setup().await;
    let path = |n: &str| dir.path().join(n);
    let gw = Gateway::start(&files, |o| {
        o.tls = Some((path("tls.crt"), path("tls.key")));
        o.tls_client_ca = Some(path("ca.pem"));
    })
    .await;
    let token = bound_token(pki.clients[0].0.as_ref());
    assert_eq!(call(&gw, &pki, Some(0), &token).await, StatusCode::OK);
    // Another client's certificate, or none: the token is not theirs to use.
    assert_eq!(
        call(&gw, &pki, Some(1), &token).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&gw, &pki, None, &token).await,
        StatusCode::UNAUTHORIZED
    );
    // An unbound token still works without a certificate (certificateBound: Optional).
    assert_eq!(
        call(&gw, &pki, None, &support::token()).await,
        StatusCode::OK
    );
    assert!(
        gw.metric("portcullis_auth_decisions_total{decision=\"deny\",reason=\"certificate_bound_token\",route=\"default/api\"}")
            >= 2.0
    );
}

#[tokio::test]
async fn a_token_bound_to_a_self_signed_certificate_rfc8705_s2_2() {
    let (pki, dir, files) = setup().await;
    let path = |n: &str| dir.path().join(n);
    let token = bound_token(pki.clients[2].0.as_ref());
    // Only CA-issued client certificates: the self-signed one is refused in the handshake.
    let strict = Gateway::start(&files, |o| {
        o.tls = Some((path("tls.crt"), path("tls.key")));
        o.tls_client_ca = Some(path("ca.pem"));
    })
    .await;
    assert_eq!(try_call(&strict, &pki, Some(2), &token).await, None);
    // With any client certificate: the token passes with its own certificate, and only
    // with it; CA-issued certificates still work.
    for ca in [None, Some(path("ca.pem"))] {
        let gw = Gateway::start(&files, |o| {
            o.tls = Some((path("tls.crt"), path("tls.key")));
            o.tls_client_ca = ca.clone();
            o.tls_client_any_certificate = true;
        })
        .await;
        assert_eq!(call(&gw, &pki, Some(2), &token).await, StatusCode::OK);
        assert_eq!(
            call(&gw, &pki, Some(0), &token).await,
            StatusCode::UNAUTHORIZED,
            "another certificate"
        );
        assert_eq!(
            call(&gw, &pki, None, &token).await,
            StatusCode::UNAUTHORIZED,
            "no certificate"
        );
        let a = bound_token(pki.clients[0].0.as_ref());
        assert_eq!(call(&gw, &pki, Some(0), &a).await, StatusCode::OK);
    }
}
