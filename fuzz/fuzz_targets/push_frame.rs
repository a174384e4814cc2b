//! The config stream as a proxy reads it (`portcullis_api::push`, NDJSON): split the body
//! into lines, decode each as a `ServerMessage`, apply it the way
//! `portcullis_proxy::subscriber::Subscriber::handle` does (versions only go up; a delta
//! must start at the version held; `SourceSet::apply`), and compile the result the way
//! `Subscriber::apply` does (CEL off, fetched keys from `RemoteKeys`).
//!
//! `Subscriber::handle`/`apply` and the line loop of `stream_once` are private, so this
//! target carries a copy of their logic (kept to the same lines; see the report to the
//! lead for the function to extract).
//!
//! Input: the response body bytes.
//!
//! Invariants: nothing panics; a decoded message re-encodes and decodes to itself; the
//! version in force never goes down and every ack is at least the previous one; after a
//! delta applies, every deleted key that was not re-upserted is gone, every upserted key is
//! present, and `apply` failed exactly when a revocation edit named a policy not present;
//! for a `full` message, `old.apply(old.diff(new))` gives `new` (policies: same spec, with
//! revocations compared as a set) -- the controller's delta makes the proxy's copy equal to
//! the controller's; every compile error names an object of the sources.
#![no_main]

use std::collections::BTreeSet;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use portcullis_api::push::{Changes, ObjectKey, ServerMessage, SourceObject, SourceSet};
use portcullis_policy::{CompileOptions, ManualClock};

struct Proxy {
    version: u64,
    sources: SourceSet,
    last_ack: u64,
}

enum Outcome {
    Ack(u64),
    Nothing,
    OutOfSync,
}

impl Proxy {
    /// `Subscriber::handle`, without the IO.
    fn handle(&mut self, msg: ServerMessage) -> Outcome {
        match msg {
            ServerMessage::Full { version, sources } => {
                if version < self.version || (version == self.version && self.version > 0) {
                    return Outcome::Ack(self.version);
                }
                check_diff(&self.sources, &sources);
                self.apply(version, sources);
                Outcome::Ack(version)
            }
            ServerMessage::Delta {
                from,
                version,
                changes,
            } => {
                if version <= self.version {
                    return Outcome::Ack(self.version);
                }
                if from != self.version {
                    return Outcome::OutOfSync;
                }
                let mut next = self.sources.clone();
                let result = next.apply(&changes);
                check_apply(&self.sources, &changes, &next, result.is_ok());
                if result.is_err() {
                    return Outcome::OutOfSync;
                }
                self.apply(version, next);
                Outcome::Ack(version)
            }
            ServerMessage::Heartbeat { .. } => Outcome::Nothing,
            // A quota grant changes no config; the proxy hands it to the waiting lease.
            ServerMessage::Grant { .. } | ServerMessage::Applied { .. } => Outcome::Nothing,
        }
    }

    /// `Subscriber::apply`, without the metrics and state file.
    fn apply(&mut self, version: u64, sources: SourceSet) {
        let (routes, policies, secrets) = sources.split();
        let options = CompileOptions {
            validate_cel: false,
            remote_jwks: sources.remote_jwks(),
            clock: Arc::new(ManualClock::new(1_800_000_000)),
            ..Default::default()
        };
        let (snapshot, errors) =
            portcullis_policy::compile_with(&options, &routes, &policies, &secrets);
        for e in &errors {
            let key = ObjectKey {
                kind: e.kind.to_owned(),
                namespace: e.namespace.clone(),
                name: e.name.clone(),
            };
            assert!(
                sources.objects.values().any(|o| o.key() == key),
                "compile error about {key}, which is not in the sources: {e}"
            );
            assert!(!e.path.is_empty(), "{e}");
        }
        let _ = snapshot.with_version(version).stats();
        self.version = version;
        self.sources = sources;
    }
}

/// Objects compared the way enforcement sees them: a policy's revocations as a set.
fn normalized(o: &SourceObject) -> SourceObject {
    match o {
        SourceObject::TokenPolicy(p) => {
            let mut p = p.clone();
            let set: BTreeSet<String> = p
                .spec
                .revocations
                .iter()
                .map(|r| serde_json::to_string(r).unwrap_or_default())
                .collect();
            p.spec.revocations = set
                .iter()
                .filter_map(|s| serde_json::from_str(s).ok())
                .collect();
            // A revocation edit carries only generation and resourceVersion of the metadata.
            let meta = &mut p.metadata;
            *meta = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: meta.name.take(),
                namespace: meta.namespace.take(),
                ..Default::default()
            };
            SourceObject::TokenPolicy(p)
        }
        other => other.clone(),
    }
}

/// The set as `upsert` would have built it. A decoded `SourceSet` keeps the map keys it was
/// sent, whether or not they match their objects (`SourceSet` has no validating
/// `Deserialize`), and `apply` then deletes and upserts by computed keys: reported to the
/// lead; the diff/apply check runs on re-keyed sets so fuzzing can go on past it.
fn rekeyed(s: &SourceSet) -> SourceSet {
    let mut out = SourceSet::default();
    for o in s.objects.values() {
        out.upsert(o.clone());
    }
    out
}

fn check_diff(old: &SourceSet, new: &SourceSet) {
    let (old, new) = (&rekeyed(old), &rekeyed(new));
    let changes = old.diff(new);
    let mut patched = old.clone();
    patched
        .apply(&changes)
        .unwrap_or_else(|e| panic!("the controller's own delta does not apply: {e}"));
    let keys = |s: &SourceSet| s.objects.keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&patched), keys(new), "diff/apply: different objects");
    for (k, want) in &new.objects {
        let got = &patched.objects[k];
        assert!(
            normalized(got) == normalized(want),
            "diff/apply: {k} differs after the delta:\n got {got:?}\nwant {want:?}"
        );
    }
}

fn check_apply(before: &SourceSet, changes: &Changes, after: &SourceSet, ok: bool) {
    let upserted: BTreeSet<String> = changes
        .upserts
        .iter()
        .map(|o| SourceSet::map_key(&o.key()))
        .collect();
    // Which keys exist once deletes and upserts are done: revocation edits need theirs.
    let mut present: BTreeSet<String> = before.objects.keys().cloned().collect();
    for k in &changes.deletes {
        present.remove(&SourceSet::map_key(k));
    }
    present.extend(upserted.iter().cloned());
    let mut expect_ok = true;
    for edit in &changes.revocations {
        let k = SourceSet::map_key(&edit.policy);
        let is_policy = changes
            .upserts
            .iter()
            .rev()
            .find(|o| SourceSet::map_key(&o.key()) == k)
            .or_else(|| {
                (!changes.deletes.iter().any(|d| SourceSet::map_key(d) == k))
                    .then(|| before.objects.get(&k))
                    .flatten()
            })
            .is_some_and(|o| matches!(o, SourceObject::TokenPolicy(_)));
        if !(present.contains(&k) && is_policy) {
            expect_ok = false;
        }
    }
    assert_eq!(ok, expect_ok, "apply's verdict: got ok={ok}");
    if !ok {
        return;
    }
    for k in &upserted {
        assert!(after.objects.contains_key(k), "upserted {k} missing");
    }
    for d in &changes.deletes {
        let k = SourceSet::map_key(d);
        if !upserted.contains(&k) {
            assert!(!after.objects.contains_key(&k), "deleted {k} still present");
        }
    }
    for edit in &changes.revocations {
        let k = SourceSet::map_key(&edit.policy);
        let Some(SourceObject::TokenPolicy(p)) = after.objects.get(&k) else {
            panic!("edited policy {k} gone");
        };
        for r in &edit.added {
            // Added wins over removed within one edit (removals run first).
            assert!(
                p.spec.revocations.contains(r),
                "added revocation missing in {k}"
            );
        }
        for r in &edit.removed {
            if !edit.added.contains(r) {
                assert!(
                    !p.spec.revocations.contains(r),
                    "removed revocation still in {k}"
                );
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut proxy = Proxy {
        version: 0,
        sources: SourceSet::default(),
        last_ack: 0,
    };
    let mut buf = data;
    // The body arrives in frames; only complete lines are messages (stream_once).
    while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
        let (line, rest) = buf.split_at(pos + 1);
        buf = rest;
        let Ok(msg) = serde_json::from_slice::<ServerMessage>(line) else {
            return; // StreamError::Broken: the stream ends.
        };
        let again: ServerMessage = serde_json::to_vec(&msg)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_else(|| panic!("a decoded message does not re-encode: {msg:?}"));
        assert!(
            again == msg,
            "re-encoding changed the message:\n{msg:?}\n{again:?}"
        );
        let before = proxy.version;
        match proxy.handle(msg) {
            Outcome::Ack(v) => {
                assert!(
                    v >= proxy.last_ack,
                    "ack went down: {v} < {}",
                    proxy.last_ack
                );
                assert_eq!(v, proxy.version, "acked a version not in force");
                proxy.last_ack = v;
            }
            Outcome::Nothing => {}
            Outcome::OutOfSync => return, // resubscribe
        }
        assert!(proxy.version >= before, "version went down");
    }
});
