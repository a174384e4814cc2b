//! Standalone mode fetches remote key sets itself: an edit that moves a policy from inline
//! keys to a `jwks.uri` keeps the old keys in force until the new set is fetched, then
//! switches to it (a real HTTP server on loopback serves the JWKS).

use std::sync::Arc;
use std::time::Duration;

use portcullis_fetch::{FetchResult, HttpClient, KeyFetcher};
use portcullis_policy::{CompileOptions, Decision, RequestParts, Snapshot};
use portcullis_proxy::standalone::ManifestDir;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ISSUER: &str = "https://issuer.test";

async fn jwks_server(doc: String) -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let doc = doc.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{doc}",
                    doc.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    port
}

fn manifests(jwks: &str) -> String {
    format!(
        r#"apiVersion: portcullis.dev/v1alpha1
kind: TokenPolicy
metadata: {{name: p, namespace: default}}
spec:
  issuers:
    - issuer: {ISSUER}
      audiences: [api]
      algorithms: [RS256]
      jwks: {jwks}
---
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {{name: r, namespace: default}}
spec:
  hosts: [api.test]
  policyRef: {{name: p}}
  backend: {{url: "http://127.0.0.1:9"}}
  rules: [{{match: {{pathPrefix: /}}}}]
"#
    )
}

fn allows(s: &Snapshot, token: &str) -> bool {
    let h = format!("Bearer {token}");
    matches!(
        s.authorize(&RequestParts::new("GET", "api.test", "/x").with_authorization(&h)),
        Decision::Allow(_)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_a_policy_to_fetched_keys_takes_effect_once_they_arrive() {
    let inline = portcullis_testkit::rsa("inline");
    let remote = portcullis_testkit::rsa("remote");
    let claims = json!({"iss": ISSUER, "aud": "api", "sub": "a", "exp": 4_000_000_000u64});
    let (old_token, new_token) = (inline.mint(&claims), remote.mint(&claims));
    let port = jwks_server(json!({"keys": [remote.jwk]}).to_string()).await;

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.yaml");
    let inline_jwks = json!({"inline": {"keys": [inline.jwk]}}).to_string();
    std::fs::write(&file, manifests(&inline_jwks)).unwrap();
    let fetcher = KeyFetcher::new(
        Arc::new(HttpClient::default()),
        &prometheus::Registry::new(),
    );
    let mut m = ManifestDir::new(dir.path().into(), CompileOptions::default())
        .with_fetcher(fetcher.clone());
    let first = m.load();
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    assert!(allows(&first.snapshot, &old_token));

    // The edit: keys from a URL. Until they are fetched, the last good policy stays.
    let uri = format!("http://127.0.0.1:{port}/keys");
    std::fs::write(&file, manifests(&format!("{{uri: \"{uri}\"}}"))).unwrap();
    let pending = m.load();
    assert!(
        pending
            .errors
            .iter()
            .any(|e| e.contains("not been fetched")),
        "{:?}",
        pending.errors
    );
    assert!(
        allows(&pending.snapshot, &old_token),
        "last good keys in force"
    );

    // The fetch the edit started completes (the fallback compile must not stop it).
    let mut changes = fetcher.subscribe();
    tokio::time::timeout(Duration::from_secs(5), async {
        while fetcher.states().get(&uri).map(|s| s.result) != Some(FetchResult::Ok) {
            changes.changed().await.unwrap();
        }
    })
    .await
    .expect("the new source is fetched");
    let applied = m.load();
    assert!(applied.errors.is_empty(), "{:?}", applied.errors);
    assert!(allows(&applied.snapshot, &new_token));
    assert!(
        !allows(&applied.snapshot, &old_token),
        "the inline key is gone"
    );
}
