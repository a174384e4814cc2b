//! Manifests to snapshot, the standalone flow without the disk: YAML text ->
//! `portcullis_proxy::standalone::parse_file` -> objects (first copy of a key wins, as in
//! `ManifestDir::load`) -> `compile_with` (CEL rules on, as standalone runs them) -> a few
//! requests against the snapshot.
//!
//! Input: the text of one manifest file (UTF-8; other bytes are not a file standalone can
//! read).
//!
//! Invariants: nothing panics; every parse problem names the file and the document
//! (`fuzz/manifest.yaml: document N...`); every compile error names an object of the
//! input (kind, namespace, name) and a field path, and prints as
//! `Kind ns/name: path: message`; a snapshot compiled without errors holds every route.
#![no_main]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use portcullis_policy::{CompileOptions, ManualClock, RequestParts};
use portcullis_proxy::standalone::{Object, parse_file};

const FILE: &str = "fuzz/manifest.yaml";

fn meta_key(
    kind: &'static str,
    m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> (&'static str, String, String) {
    (
        kind,
        m.namespace.clone().unwrap_or_default(),
        m.name.clone().unwrap_or_default(),
    )
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let contents = parse_file(Path::new(FILE), text);
    for e in &contents.errors {
        assert!(
            e.starts_with(&format!("{FILE}: document ")),
            "a parse error that names no file and document: {e}"
        );
    }
    if contents.unreadable {
        return;
    }
    // Key -> object, first copy wins (ManifestDir::load reports later copies).
    let mut objects = BTreeMap::new();
    for obj in contents.objects {
        let key = match &obj {
            Object::Route(r) => meta_key("ApiRoute", &r.metadata),
            Object::Policy(p) => meta_key("TokenPolicy", &p.metadata),
            Object::Secret(s) => meta_key("Secret", &s.metadata),
        };
        objects.entry(key).or_insert(obj);
    }
    let (mut routes, mut policies, mut secrets) = (Vec::new(), Vec::new(), Vec::new());
    for obj in objects.values() {
        match obj {
            Object::Route(r) => routes.push(r.clone()),
            Object::Policy(p) => policies.push(p.clone()),
            Object::Secret(s) => secrets.push(s.clone()),
        }
    }
    let options = CompileOptions {
        clock: Arc::new(ManualClock::new(1_800_000_000)),
        ..Default::default()
    }
    .with_spec_rules(
        portcullis_api::validate::cel_errors::<portcullis_api::ApiRoute>,
        portcullis_api::validate::cel_errors::<portcullis_api::TokenPolicy>,
    );
    let (snapshot, errors) =
        portcullis_policy::compile_with(&options, &routes, &policies, &secrets);
    for e in &errors {
        assert!(
            objects.contains_key(&(e.kind, e.namespace.clone(), e.name.clone())),
            "compile error about an object not in the input: {e}"
        );
        assert!(!e.path.is_empty(), "compile error names no field: {e}");
        assert!(
            !e.message.is_empty(),
            "compile error without a message: {e:?}"
        );
        let shown = e.to_string();
        assert!(
            shown.starts_with(&format!(
                "{} {}/{}: {}: ",
                e.kind, e.namespace, e.name, e.path
            )),
            "{shown}"
        );
    }
    let stats = snapshot.stats();
    if errors.is_empty() {
        assert_eq!(
            stats.routes,
            routes.len(),
            "a route left out without an error"
        );
        assert_eq!(
            stats.policies,
            policies.len(),
            "a policy left out without an error"
        );
    }
    // Use the snapshot: every host of every route, a few paths.
    for r in routes.iter().take(4) {
        for host in r.spec.hosts.iter().take(2) {
            let host = host.replace("*.", "x.");
            for path in ["/", "/orders/1", "/health", "/a/../b"] {
                let Ok(p) = snapshot.canonical_target(&host, "GET", path) else {
                    continue;
                };
                let req = RequestParts::new("GET", &host, &p).with_authorization("Bearer a.b.c");
                let _ = snapshot.authorize(&req);
            }
        }
    }
});
