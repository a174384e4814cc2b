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
            .any(|e| e.message.contains("not been fetched")),
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

// === a healthy start is quiet ===

/// Every event at INFO and above, as `(level, "field=value ...")`.
#[derive(Clone, Default)]
struct Capture(Arc<std::sync::Mutex<Vec<(tracing::Level, String)>>>);

impl Capture {
    fn lines(&self) -> Vec<(tracing::Level, String)> {
        self.0.lock().unwrap().clone()
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, meta: &tracing::Metadata<'_>) -> bool {
        *meta.level() <= tracing::Level::INFO
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        use std::fmt::Write;
        let mut text = String::new();
        event.record(&mut |f: &tracing::field::Field, v: &dyn std::fmt::Debug| {
            let _ = write!(text, "{}={v:?} ", f.name());
        });
        let level = *event.metadata().level();
        self.0.lock().unwrap().push((level, text));
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// `portcullis standalone` with a policy whose keys come from a `jwks.uri` (a real HTTP
/// server on loopback): the first load happens before the first fetch lands. That wait is
/// an INFO line ("waiting for keys"), never an ERROR; once the keys arrive the route is
/// served. On a current-thread runtime the fetch task cannot run before the first load,
/// so the wait is certain, not a race.
#[tokio::test(flavor = "current_thread")]
async fn a_healthy_start_waits_for_fetched_keys_without_errors() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());

    let key = portcullis_testkit::rsa("remote");
    let token =
        key.mint(&json!({"iss": ISSUER, "aud": "api", "sub": "a", "exp": 4_000_000_000u64}));
    let port = jwks_server(json!({"keys": [key.jwk]}).to_string()).await;
    let dir = tempfile::tempdir().unwrap();
    let uri = format!("http://127.0.0.1:{port}/keys");
    std::fs::write(
        dir.path().join("gateway.yaml"),
        manifests(&format!("{{uri: \"{uri}\"}}")),
    )
    .unwrap();

    let mut opts = portcullis_proxy::StandaloneOptions::new(dir.path().into());
    opts.listen = ([127, 0, 0, 1], 0).into();
    opts.admin = ([127, 0, 0, 1], 0).into();
    let running = portcullis_proxy::start_standalone(opts).await.unwrap();
    let served = tokio::time::timeout(Duration::from_secs(20), async {
        while !allows(&running.config.load(), &token) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    running.shutdown();
    let lines = capture.lines();
    served.unwrap_or_else(|_| panic!("the fetched keys were never applied: {lines:#?}"));

    let errors: Vec<_> = lines
        .iter()
        .filter(|(level, _)| *level == tracing::Level::ERROR)
        .collect();
    assert!(
        errors.is_empty(),
        "ERROR lines on a healthy start: {errors:#?}"
    );
    let waits: Vec<_> = lines
        .iter()
        .filter(|(_, text)| text.contains("waiting for keys"))
        .collect();
    assert!(!waits.is_empty(), "the wait was not reported: {lines:#?}");
    for (level, text) in &waits {
        assert_eq!(*level, tracing::Level::INFO, "{text}");
        assert!(text.contains("not been fetched yet"), "{text}");
    }
    assert!(
        lines
            .iter()
            .any(|(_, text)| text.contains("config applied") && text.contains("waiting=0")),
        "never applied without waits: {lines:#?}"
    );
}
