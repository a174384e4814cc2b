//! A token with an unknown `kid` from fetched keys, over real sockets (a JWKS server on
//! loopback): a refetch that brings nothing new answers at once instead of holding the
//! request for the whole hold; a zero hold still sends the refetch, so later requests find
//! the key; refetching can be turned off on its own.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use portcullis_proxy::StandaloneOptions;
use serde_json::{Value, json};
use support::*;

/// A JWKS server: serves whatever `doc` holds, counting fetches.
struct Jwks {
    addr: SocketAddr,
    doc: Arc<Mutex<String>>,
    hits: Arc<AtomicUsize>,
}

impl Jwks {
    async fn start(keys: &[&portcullis_testkit::TestKey]) -> Self {
        let doc = Arc::new(Mutex::new(String::new()));
        let hits = Arc::new(AtomicUsize::new(0));
        let addr = {
            let (doc, hits) = (doc.clone(), hits.clone());
            upstream(move |_req| {
                hits.fetch_add(1, Ordering::SeqCst);
                let body = doc.lock().unwrap().clone();
                async move {
                    Response::builder()
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(body)).boxed())
                        .unwrap()
                }
            })
            .await
        };
        let jwks = Jwks { addr, doc, hits };
        jwks.serve(keys);
        jwks
    }

    fn serve(&self, keys: &[&portcullis_testkit::TestKey]) {
        let keys: Vec<&Value> = keys.iter().map(|k| &k.jwk).collect();
        *self.doc.lock().unwrap() = json!({ "keys": keys }).to_string();
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn second_key() -> &'static portcullis_testkit::TestKey {
    static K: std::sync::OnceLock<portcullis_testkit::TestKey> = std::sync::OnceLock::new();
    K.get_or_init(|| portcullis_testkit::rsa("k2"))
}

async fn gateway(jwks: &Jwks, tweak: impl FnOnce(&mut StandaloneOptions)) -> Gateway {
    let up = upstream(|_req| async { Response::new(Full::new(Bytes::from("ok")).boxed()) }).await;
    let policy = json!({
        "apiVersion": "portcullis.dev/v1alpha1", "kind": "TokenPolicy",
        "metadata": {"name": "default", "namespace": "default"},
        "spec": {"issuers": [{"issuer": ISSUER, "audiences": ["api"], "algorithms": ["RS256"],
                  "jwks": {"uri": format!("http://{}/keys", jwks.addr)}}]}
    });
    let gw = Gateway::start(
        &[
            ("policy.yaml", serde_yaml::to_string(&policy).unwrap()),
            ("route.yaml", route("r", &format!("http://{up}"), "")),
        ],
        tweak,
    )
    .await;
    assert_eq!(jwks.hits(), 1, "the first fetch happens at start");
    gw
}

async fn get(gw: &Gateway, token: &str) -> (StatusCode, String) {
    let resp = client()
        .request(
            Request::get(format!("http://{}/x", gw.addr()))
                .header("host", "localhost")
                .header("authorization", format!("Bearer {token}"))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn refetch_requests(gw: &Gateway) -> usize {
    gw.metrics()
        .lines()
        .filter(|l| l.starts_with("portcullis_jwks_refetch_requests_total{"))
        .count()
}

/// The refetch finds the same key set: the request is refused as soon as that is known,
/// not after the five-minute hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refetch_with_nothing_new_answers_at_once() {
    let jwks = Jwks::start(&[signer()]).await;
    let gw = gateway(&jwks, |o| o.unknown_kid_hold = Duration::from_secs(300)).await;
    assert_eq!(get(&gw, &token()).await.0, StatusCode::OK);

    let (status, body) =
        tokio::time::timeout(Duration::from_secs(60), get(&gw, &token_by(second_key())))
            .await
            .expect("answered long before the hold");
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["reason"],
        "unknown_key"
    );
    assert_eq!(jwks.hits(), 2, "one refetch");
}

/// With a zero hold the request is refused at once, but the refetch is sent: once it
/// lands, the key is known.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_hold_still_refetches_for_later_requests() {
    let jwks = Jwks::start(&[signer()]).await;
    let gw = gateway(&jwks, |o| o.unknown_kid_hold = Duration::ZERO).await;
    // The issuer rotates in a new key.
    jwks.serve(&[signer(), second_key()]);
    let t = token_by(second_key());
    assert_eq!(get(&gw, &t).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(refetch_requests(&gw), 1);
    let deadline = std::time::Instant::now() + EVENTUALLY;
    while get(&gw, &t).await.0 != StatusCode::OK {
        assert!(
            std::time::Instant::now() < deadline,
            "the new key never arrived"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(jwks.hits(), 2, "one refetch for all those requests");
}

/// Refetching turned off: no refetch is asked for, whatever the hold, and the request is
/// not held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refetching_can_be_turned_off() {
    let jwks = Jwks::start(&[signer()]).await;
    let gw = gateway(&jwks, |o| {
        o.unknown_kid_hold = Duration::from_secs(300);
        o.unknown_kid_refetch = false;
    })
    .await;
    jwks.serve(&[signer(), second_key()]);
    let (status, _) =
        tokio::time::timeout(Duration::from_secs(60), get(&gw, &token_by(second_key())))
            .await
            .expect("not held");
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(refetch_requests(&gw), 0);
    assert_eq!(jwks.hits(), 1);
}
