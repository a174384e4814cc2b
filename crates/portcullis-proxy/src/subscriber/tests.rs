use std::sync::mpsc as std_mpsc;

use portcullis_api::push::{ObjectKey, RevocationEdit, SourceObject};
use portcullis_api::{ApiRoute, TokenPolicy};
use serde_json::json;

use std::sync::{Mutex, OnceLock};

use super::state::{lock, writers};
use super::*;

const LONG: Duration = Duration::from_secs(10);

/// States a burst hands over while a write is under way are written once: the newest.
#[test]
fn a_burst_during_a_write_is_coalesced_into_the_newest() {
    let (started_tx, started) = std_mpsc::channel::<u64>();
    let (release, release_rx) = std_mpsc::channel::<()>();
    let written = Arc::new(Mutex::new(Vec::new()));
    let seen = written.clone();
    let writer = StateWriter::spawn(
        None,
        Box::new(move |version, _sources| {
            let _ = started_tx.send(version);
            // The first write blocks until the test says so.
            if version == 1 {
                release_rx.recv_timeout(LONG).unwrap();
            }
            lock(&seen).push(version);
            Ok(())
        }),
    );
    let sources = Arc::new(SourceSet::default());
    writer.submit(1, sources.clone());
    assert_eq!(started.recv_timeout(LONG).unwrap(), 1);
    for v in 2..=4 {
        writer.submit(v, sources.clone());
    }
    release.send(()).unwrap();
    assert!(writer.flush(LONG));
    assert_eq!(*lock(&written), vec![1, 4]);
    assert_eq!(writer.written(), Some(4));
}

#[test]
fn a_withdrawn_state_is_not_written() {
    let written = Arc::new(Mutex::new(Vec::new()));
    let seen = written.clone();
    let (started_tx, started) = std_mpsc::channel::<u64>();
    let (release, release_rx) = std_mpsc::channel::<()>();
    let writer = StateWriter::spawn(
        None,
        Box::new(move |version, _| {
            let _ = started_tx.send(version);
            if version == 1 {
                release_rx.recv_timeout(LONG).unwrap();
            }
            lock(&seen).push(version);
            Ok(())
        }),
    );
    let sources = Arc::new(SourceSet::default());
    writer.submit(1, sources.clone());
    assert_eq!(started.recv_timeout(LONG).unwrap(), 1);
    writer.submit(2, sources.clone());
    assert!(writer.withdraw());
    assert!(!writer.withdraw(), "nothing left to withdraw");
    release.send(()).unwrap();
    assert!(writer.flush(LONG));
    assert_eq!(*lock(&written), vec![1]);
}

/// One writer per file: a second subscriber of the same file shares the first one's,
/// and the writer ends (leaving the registry) once no one holds it.
#[test]
fn one_writer_per_file_written_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let a = StateWriter::for_path(&path);
    let b = StateWriter::for_path(&path);
    assert!(Arc::ptr_eq(&a.shared, &b.shared));
    a.submit(7, Arc::new(sources(&[])));
    assert!(b.flush(LONG));
    let state: PersistedState = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(state.version, 7);
    assert_eq!(state.sources, sources(&[]));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    drop((a, b));
    let deadline = Instant::now() + LONG;
    while lock(writers()).contains_key(&path) {
        assert!(Instant::now() < deadline, "the writer never ended");
        std::thread::sleep(Duration::from_millis(5));
    }
    // A new one starts for the file afterwards.
    let c = StateWriter::for_path(&path);
    c.submit(8, Arc::new(sources(&[])));
    assert!(c.flush(LONG));
    assert_eq!(c.written(), Some(8));
}

/// One key for the whole test binary: the sources of two calls differ only in what
/// they are asked to.
fn key() -> &'static portcullis_testkit::TestKey {
    static KEY: OnceLock<portcullis_testkit::TestKey> = OnceLock::new();
    KEY.get_or_init(|| portcullis_testkit::rsa("k1"))
}

fn sources(revoked: &[&str]) -> SourceSet {
    let key = key();
    let policy: TokenPolicy = serde_json::from_value(json!({
        "apiVersion": "portcullis.dev/v1alpha1", "kind": "TokenPolicy",
        "metadata": {"name": "default", "namespace": "shop"},
        "spec": {
            "issuers": [{"issuer": "https://issuer.test", "audiences": ["api"], "algorithms": ["RS256"], "jwks": {"inline": {"keys": [&key.jwk]}}}],
            "revocations": revoked.iter().map(|j| json!({"jti": j})).collect::<Vec<_>>(),
        }
    }))
    .unwrap();
    let route: ApiRoute = serde_json::from_value(json!({
        "apiVersion": "portcullis.dev/v1alpha1", "kind": "ApiRoute",
        "metadata": {"name": "r", "namespace": "shop"},
        "spec": {"hosts": ["localhost"], "policyRef": {"name": "default"}, "backend": {"url": "http://127.0.0.1:9"},
                 "rules": [{"match": {"pathPrefix": "/orders"}}]}
    }))
    .unwrap();
    let mut set = SourceSet::default();
    set.upsert(SourceObject::TokenPolicy(policy));
    set.upsert(SourceObject::ApiRoute(route));
    set
}

fn subscriber(state_file: Option<PathBuf>) -> (Subscriber, Arc<LiveConfig>) {
    let metrics = Metrics::new();
    let config = Arc::new(LiveConfig::new(metrics.clone()));
    let opts = SubscriberOptions {
        controller: "http://127.0.0.1:1".parse().unwrap(),
        token_file: None,
        name: "test".into(),
        state_file,
        compile: CompileOptions::default(),
        ca_file: None,
        client_cert: None,
        server_name: None,
    };
    (Subscriber::new(opts, config.clone(), metrics), config)
}

fn revoke(version: u64, jti: &str) -> ServerMessage {
    ServerMessage::Delta {
        from: version - 1,
        version,
        changes: Changes {
            revocations: vec![RevocationEdit {
                policy: ObjectKey {
                    kind: "TokenPolicy".into(),
                    namespace: "shop".into(),
                    name: "default".into(),
                },
                generation: None,
                resource_version: None,
                added: vec![serde_json::from_value(json!({"jti": jti})).unwrap()],
                removed: Vec::new(),
            }],
            ..Default::default()
        },
    }
}

/// A revocation delta patches the snapshot in force (the route index is shared) and
/// changes the sources in place (no copy of the set); a route delta compiles anew.
#[test]
fn a_revocation_delta_patches_in_place() {
    let (mut s, config) = subscriber(None);
    let full = ServerMessage::Full {
        version: 1,
        sources: sources(&[]),
    };
    assert_eq!(s.handle(full).unwrap(), Some(1));
    let first = config.load();
    let set_before = Arc::as_ptr(&s.sources);
    assert_eq!(s.handle(revoke(2, "victim")).unwrap(), Some(2));
    let second = config.load();
    assert_eq!(second.version(), 2);
    assert!(
        second.shares_route_index_with(&first),
        "patched, not rebuilt"
    );
    assert_eq!(second.stats().revocations, 1);
    assert_eq!(Arc::as_ptr(&s.sources), set_before, "changed in place");
    assert_eq!(*s.sources, sources(&["victim"]));

    // A delta that does not apply leaves everything as it was.
    let mut bad = revoke(3, "x");
    if let ServerMessage::Delta { changes, .. } = &mut bad {
        changes.revocations[0].policy.name = "missing".into();
    }
    assert!(matches!(s.handle(bad), Err(StreamError::OutOfSync(_))));
    assert_eq!(s.version(), 2);
    assert_eq!(*s.sources, sources(&["victim"]));

    // A full resend whose only news is a revocation patches too.
    let resend = ServerMessage::Full {
        version: 3,
        sources: sources(&["victim", "other"]),
    };
    assert_eq!(s.handle(resend).unwrap(), Some(3));
    let third = config.load();
    assert!(third.shares_route_index_with(&first));
    assert_eq!(third.stats().revocations, 2);

    // A route change compiles everything.
    let mut changed = sources(&["victim", "other"]);
    if let Some(SourceObject::ApiRoute(r)) = changed.objects.get_mut("ApiRoute/shop/r") {
        r.spec.hosts = vec!["example.com".into()];
    }
    let delta = ServerMessage::Delta {
        from: 3,
        version: 4,
        changes: s.sources.diff(&changed),
    };
    assert_eq!(s.handle(delta).unwrap(), Some(4));
    assert!(!config.load().shares_route_index_with(&first));
}

/// The state file follows the deltas (written by the writer, not the read loop), and a
/// new subscriber of the file serves the newest.
#[test]
fn the_state_file_holds_the_newest_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let (mut s, _config) = subscriber(Some(path.clone()));
    let full = ServerMessage::Full {
        version: 1,
        sources: sources(&[]),
    };
    s.handle(full).unwrap();
    for v in 2..=6 {
        s.handle(revoke(v, &format!("jti-{v}"))).unwrap();
    }
    // A new subscriber waits for the writes under way, then reads the file.
    let (again, config) = subscriber(Some(path.clone()));
    assert_eq!(again.version(), 6);
    assert_eq!(config.load().stats().revocations, 5);
    assert_eq!(*again.sources, *s.sources);
}
