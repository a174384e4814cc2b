//! Snapshots are patched, not rebuilt: a revocation-only change to the sources patches the
//! previous snapshot (`Snapshot::with_revocations`, through `compile_sources`), and the
//! patched snapshot decides exactly as a full compile of the same sources would.

mod support;

use std::sync::{Arc, OnceLock};

use portcullis_api::push::{Changes, RevocationEdit, SourceObject, SourceSet};
use portcullis_api::validate::FieldViolation;
use portcullis_api::{ApiRoute, CompileReason, Revocation, TokenPolicy};
use portcullis_policy::{
    CompileOptions, CompiledSources, Decision, DenyReason, ManualClock, PreviousCompile,
    RequestParts, Snapshot, SourceChanges, compile_sources, token_digest,
};
use proptest::prelude::*;
use serde_json::{Value, json};

use support::{NOW, claims, keys, mint, policy, route};

const HOST: &str = "api.example.com";
const POLICY_ID: &str = "shop/default";

// === fixtures ===

fn options() -> CompileOptions {
    CompileOptions {
        clock: Arc::new(ManualClock::new(NOW)),
        ..Default::default()
    }
}

fn extra_route(i: usize) -> ApiRoute {
    serde_json::from_value(json!({
        "apiVersion": "portcullis.dev/v1alpha1", "kind": "ApiRoute",
        "metadata": {"name": format!("extra-{i}"), "namespace": "shop"},
        "spec": {
            "hosts": [format!("h{i}.example.com")],
            "policyRef": {"name": "default"},
            "backend": {"url": "http://127.0.0.1:9000"},
            "rules": [{"match": {"pathPrefix": "/orders"}, "requiredScopes": ["orders:read"]}],
        }
    }))
    .unwrap()
}

/// The standard policy and route, a few more routes, and the policy's `revocations`.
fn sources_with(revocations: &[Value]) -> SourceSet {
    let mut set = SourceSet::default();
    let mut p = policy();
    p.spec.revocations = revocations
        .iter()
        .map(|r| serde_json::from_value(r.clone()).unwrap())
        .collect();
    set.upsert(SourceObject::TokenPolicy(p));
    set.upsert(SourceObject::ApiRoute(route()));
    for i in 0..5 {
        set.upsert(SourceObject::ApiRoute(extra_route(i)));
    }
    set
}

fn revocation(v: Value) -> Revocation {
    serde_json::from_value(v).unwrap()
}

fn policy_key() -> portcullis_api::push::ObjectKey {
    portcullis_api::push::ObjectKey {
        kind: "TokenPolicy".into(),
        namespace: "shop".into(),
        name: "default".into(),
    }
}

/// A delta adding and removing revocation entries of `shop/default`, as the controller
/// sends it.
fn revocation_delta(added: &[Value], removed: &[Value]) -> Changes {
    Changes {
        revocations: vec![RevocationEdit {
            policy: policy_key(),
            generation: Some(2),
            resource_version: Some("2".into()),
            added: added.iter().cloned().map(revocation).collect(),
            removed: removed.iter().cloned().map(revocation).collect(),
        }],
        ..Default::default()
    }
}

/// What the subscriber holds: the sources, and what was compiled from them.
struct Held {
    sources: SourceSet,
    compiled: CompiledSources,
}

impl Held {
    fn new(sources: SourceSet) -> Self {
        let compiled = compile_sources(&options(), &sources, None);
        Held { sources, compiled }
    }

    /// Applies `changes` in place and compiles, patching when it can.
    fn apply(&mut self, options: &CompileOptions, changes: &Changes) -> &CompiledSources {
        let touched = SourceChanges::apply(&mut self.sources, changes).unwrap();
        let next = compile_sources(
            options,
            &self.sources,
            Some(PreviousCompile {
                snapshot: &self.compiled.snapshot,
                errors: &self.compiled.errors,
                changes: &touched,
            }),
        );
        self.compiled = next;
        &self.compiled
    }

    /// A full compile of the same sources, from nothing.
    fn full(&self, options: &CompileOptions) -> CompiledSources {
        compile_sources(options, &self.sources, None)
    }
}

fn token(jti: &str) -> String {
    let mut c = claims();
    c["jti"] = json!(jti);
    mint(&keys().rsa, &c)
}

/// `Ok(cache_hit)` or the denial's reason and status.
fn decide(s: &Snapshot, token: &str) -> Result<bool, (DenyReason, u16)> {
    let header = format!("Bearer {token}");
    let req = RequestParts::new("GET", HOST, "/orders/1").with_authorization(&header);
    match s.authorize(&req) {
        Decision::Allow(a) => Ok(a.cache_hit),
        Decision::Deny(d) => Err((d.reason, d.status())),
        Decision::Pending(_) => panic!("no IO in these policies"),
    }
}

/// The decision without the cache flag: what must agree between patched and full.
fn verdict(s: &Snapshot, token: &str) -> Result<(), (DenyReason, u16)> {
    decide(s, token).map(|_| ())
}

// === (a) patched = full ===

#[test]
fn a_patched_snapshot_decides_like_a_full_compile() {
    let opts = options();
    let mut held = Held::new(sources_with(&[]));
    assert!(
        held.compiled.errors.is_empty(),
        "{:#?}",
        held.compiled.errors
    );
    let (victim, bystander) = (token("victim"), token("bystander"));
    // Both verified once: cached from now on.
    assert_eq!(decide(&held.compiled.snapshot, &victim), Ok(false));
    assert_eq!(decide(&held.compiled.snapshot, &bystander), Ok(false));
    assert_eq!(decide(&held.compiled.snapshot, &victim), Ok(true));

    // Revoke the victim.
    let revoke = json!({"jti": "victim"});
    let patched = {
        let touched = SourceChanges::apply(
            &mut held.sources,
            &revocation_delta(std::slice::from_ref(&revoke), &[]),
        )
        .unwrap();
        compile_sources(
            &opts,
            &held.sources,
            Some(PreviousCompile {
                snapshot: &held.compiled.snapshot,
                errors: &held.compiled.errors,
                changes: &touched,
            }),
        )
    };
    assert!(patched.patched, "a revocation-only delta takes the patch");
    assert!(
        patched
            .snapshot
            .shares_route_index_with(&held.compiled.snapshot),
        "the patched snapshot shares the route index"
    );
    assert!(patched.errors.is_empty());
    let full = held.full(&opts);
    assert!(!full.patched);
    assert!(
        !full
            .snapshot
            .shares_route_index_with(&held.compiled.snapshot)
    );

    // The newly revoked token is refused, for the same reason as by a full compile, and
    // the cache still answered (it stays a hit: only revocations changed).
    assert_eq!(
        decide(&patched.snapshot, &victim),
        Err((DenyReason::RevokedJti, 401))
    );
    assert_eq!(
        verdict(&patched.snapshot, &victim),
        verdict(&full.snapshot, &victim)
    );
    // The bystander stays a cache hit across the patch.
    assert_eq!(decide(&patched.snapshot, &bystander), Ok(true));
    assert_eq!(verdict(&full.snapshot, &bystander), Ok(()));
    assert_eq!(patched.snapshot.stats(), full.snapshot.stats());
    held.compiled = patched;

    // Un-revoke: allowed again, from the cache.
    let unrevoked = held.apply(&opts, &revocation_delta(&[], &[revoke]));
    assert!(unrevoked.patched);
    assert_eq!(decide(&unrevoked.snapshot, &victim), Ok(true));
    let full = held.full(&opts);
    assert_eq!(verdict(&full.snapshot, &victim), Ok(()));
    assert_eq!(held.compiled.snapshot.stats().revocations, 0);
}

#[test]
fn every_kind_of_revocation_patches_like_a_full_compile() {
    let opts = options();
    let k = keys();
    let mut c = claims();
    c["jti"] = json!("by-digest");
    let by_digest = mint(&k.rsa, &c);
    c["jti"] = json!("by-key");
    let by_key = mint(&k.rsa2, &c);
    c["jti"] = json!("by-subject");
    c["sub"] = json!("mallory");
    let by_subject = mint(&k.rsa, &c);
    let by_jti = token("by-jti");
    let fine = token("fine");
    let tokens = [&by_digest, &by_key, &by_subject, &by_jti, &fine];

    let mut held = Held::new(sources_with(&[]));
    for t in tokens {
        assert_eq!(decide(&held.compiled.snapshot, t), Ok(false));
    }
    let issued_before = k8s_openapi::jiff::Timestamp::from_second(NOW)
        .unwrap()
        .to_string();
    let added = [
        json!({"tokenSha256": token_digest(&by_digest).to_hex()}),
        json!({"keyId": "rsa-2"}),
        json!({"subject": "mallory", "issuedBefore": issued_before}),
        json!({"jti": "by-jti"}),
    ];
    let patched = held.apply(&opts, &revocation_delta(&added, &[]));
    assert!(patched.patched);
    let full = held.full(&opts);
    let expected = [
        Err((DenyReason::RevokedToken, 401)),
        Err((DenyReason::RevokedKey, 401)),
        Err((DenyReason::RevokedSubject, 401)),
        Err((DenyReason::RevokedJti, 401)),
        Ok(()),
    ];
    for (t, want) in tokens.iter().zip(expected) {
        assert_eq!(verdict(&held.compiled.snapshot, t), want);
        assert_eq!(verdict(&full.snapshot, t), want);
    }
    assert_eq!(
        decide(&held.compiled.snapshot, &fine),
        Ok(true),
        "still cached"
    );
}

#[test]
fn with_revocations_shares_everything_but_the_changed_revocations() {
    let held = Held::new(sources_with(&[json!({"jti": "old"})]));
    let s = held.compiled.snapshot.with_version(7);
    let list = [revocation(json!({"jti": "new"}))];
    let patched = s.with_revocations([(POLICY_ID, &list[..])]).unwrap();
    assert!(patched.shares_route_index_with(&s));
    assert_eq!(patched.version(), 7, "the version is the caller's to set");
    assert_eq!(verdict(&patched, &token("old")), Ok(()));
    assert_eq!(
        verdict(&patched, &token("new")),
        Err((DenyReason::RevokedJti, 401))
    );
    // `s` itself is untouched.
    assert_eq!(
        verdict(&s, &token("old")),
        Err((DenyReason::RevokedJti, 401))
    );
    assert_eq!(verdict(&s, &token("new")), Ok(()));
}

#[test]
fn a_malformed_revocation_is_reported_as_compile_reports_it() {
    let opts = options();
    let held = Held::new(sources_with(&[]));
    let list = [
        revocation(json!({"jti": "fine"})),
        revocation(json!({"tokenSha256": "NOT-HEX"})),
    ];
    let errs = held
        .compiled
        .snapshot
        .with_revocations([(POLICY_ID, &list[..])])
        .unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:#?}");
    let e = &errs[0];
    assert_eq!(
        (
            e.kind,
            e.namespace.as_str(),
            e.name.as_str(),
            e.path.as_str()
        ),
        (
            "TokenPolicy",
            "shop",
            "default",
            "spec.revocations[1].tokenSha256"
        )
    );
    assert_eq!(e.reason, CompileReason::InvalidRevocation);

    // Through compile_sources: the full path, which leaves the policy (and its routes)
    // out, with the same errors as a compile from nothing.
    let mut held = held;
    let out = held.apply(
        &opts,
        &revocation_delta(&[json!({"tokenSha256": "NOT-HEX"})], &[]),
    );
    assert!(!out.patched);
    let at_zero = portcullis_policy::CompileError {
        path: "spec.revocations[0].tokenSha256".into(),
        ..e.clone()
    };
    assert!(out.errors.contains(&at_zero), "{:#?}", out.errors);
    let full = held.full(&opts);
    assert_eq!(held.compiled.errors, full.errors);
    assert_eq!(
        verdict(&held.compiled.snapshot, &token("any")),
        verdict(&full.snapshot, &token("any"))
    );

    // An unknown policy id.
    let errs = held
        .compiled
        .snapshot
        .with_revocations([("shop/nope", &list[..1])])
        .unwrap_err();
    assert_eq!(errs[0].reason, CompileReason::PolicyNotFound);
    assert_eq!(
        (errs[0].namespace.as_str(), errs[0].name.as_str()),
        ("shop", "nope")
    );
}

#[test]
fn a_delta_touching_a_route_or_a_secret_takes_the_full_path() {
    let opts = options();
    let mut held = Held::new(sources_with(&[]));
    let cached = token("cached");
    assert_eq!(decide(&held.compiled.snapshot, &cached), Ok(false));

    // A route changed.
    let mut r = extra_route(3);
    r.spec.hosts = vec!["other.example.com".into()];
    // Holds on to the old route index (a patch with no changes shares it).
    let before = held.compiled.snapshot.with_revocations([]).unwrap();
    let out = held.apply(
        &opts,
        &Changes {
            upserts: vec![SourceObject::ApiRoute(r)],
            ..Default::default()
        },
    );
    assert!(!out.patched, "a route change recompiles");
    assert!(!out.snapshot.shares_route_index_with(&before));
    // The full path keeps the caches (inherit_caches): still a hit.
    assert_eq!(decide(&held.compiled.snapshot, &cached), Ok(true));

    // A Secret added.
    let out = held.apply(
        &opts,
        &Changes {
            upserts: vec![SourceObject::Secret(support::hmac_secret())],
            ..Default::default()
        },
    );
    assert!(!out.patched, "a Secret recompiles");

    // Revocations and another field of the same policy.
    let Some(SourceObject::TokenPolicy(p)) = held
        .sources
        .objects
        .get(&SourceSet::map_key(&policy_key()))
        .cloned()
    else {
        panic!("policy missing")
    };
    let mut p2: TokenPolicy = p.clone();
    p2.spec.revocations.push(revocation(json!({"jti": "x"})));
    p2.spec.clock_skew = Some("10s".into());
    let out = held.apply(
        &opts,
        &Changes {
            upserts: vec![SourceObject::TokenPolicy(p2)],
            ..Default::default()
        },
    );
    assert!(!out.patched, "a policy field beside revocations recompiles");

    // A whole policy sent as an upsert whose only change is its revocations: patched.
    let Some(SourceObject::TokenPolicy(mut p3)) = held
        .sources
        .objects
        .get(&SourceSet::map_key(&policy_key()))
        .cloned()
    else {
        panic!("policy missing")
    };
    p3.spec.revocations.push(revocation(json!({"jti": "y"})));
    p3.metadata.resource_version = Some("9".into());
    let out = held.apply(
        &opts,
        &Changes {
            upserts: vec![SourceObject::TokenPolicy(p3)],
            ..Default::default()
        },
    );
    assert!(
        out.patched,
        "compared by key: a revocation-only upsert patches"
    );

    // A revocation edit together with a route delete: full.
    let out = held.apply(
        &opts,
        &Changes {
            deletes: vec![SourceObject::ApiRoute(extra_route(1)).key()],
            ..revocation_delta(&[json!({"jti": "z"})], &[])
        },
    );
    assert!(!out.patched);
    let full = held.full(&opts);
    assert_eq!(held.compiled.snapshot.stats(), full.snapshot.stats());
}

#[test]
fn a_policy_that_did_not_compile_is_compiled_in_full() {
    let opts = options();
    let mut set = sources_with(&[]);
    let mut p = policy();
    p.spec.clock_skew = Some("soon".into());
    set.upsert(SourceObject::TokenPolicy(p));
    let mut held = Held::new(set);
    assert!(!held.compiled.errors.is_empty());
    let out = held.apply(&opts, &revocation_delta(&[json!({"jti": "a"})], &[]));
    assert!(
        !out.patched,
        "nothing to patch: the policy is not in the snapshot"
    );
    assert_eq!(held.compiled.errors, held.full(&opts).errors);
}

#[test]
fn errors_of_the_previous_compile_are_reported_again_when_patched() {
    let opts = options();
    let mut set = sources_with(&[]);
    let mut orphan = extra_route(9);
    orphan.spec.policy_ref.name = "missing".into();
    set.upsert(SourceObject::ApiRoute(orphan));
    let mut held = Held::new(set);
    assert_eq!(held.compiled.errors.len(), 1, "{:#?}", held.compiled.errors);
    let out = held.apply(&opts, &revocation_delta(&[json!({"jti": "a"})], &[]));
    assert!(out.patched);
    assert_eq!(held.compiled.errors, held.full(&opts).errors);
}

fn forbid_jti_forbidden(p: &TokenPolicy) -> Vec<FieldViolation> {
    p.spec
        .revocations
        .iter()
        .enumerate()
        .filter(|(_, r)| r.jti.as_deref() == Some("forbidden"))
        .map(|(i, _)| FieldViolation {
            path: format!("spec.revocations[{i}].jti"),
            message: "not this one".into(),
        })
        .collect()
}

#[test]
fn spec_rules_still_apply_to_a_patched_policy() {
    let opts = options().with_spec_rules(|_| Vec::new(), forbid_jti_forbidden);
    let mut held = Held {
        compiled: compile_sources(&opts, &sources_with(&[]), None),
        sources: sources_with(&[]),
    };
    let out = held.apply(&opts, &revocation_delta(&[json!({"jti": "fine"})], &[]));
    assert!(out.patched);
    let out = held.apply(
        &opts,
        &revocation_delta(&[json!({"jti": "forbidden"})], &[]),
    );
    assert!(
        !out.patched,
        "the rule leaves the policy out: a full compile says so"
    );
    assert_eq!(held.compiled.errors, held.full(&opts).errors);
    assert!(
        held.compiled
            .errors
            .iter()
            .any(|e| e.path == "spec.revocations[1].jti")
    );
}

#[test]
fn a_delta_that_does_not_apply_leaves_the_sources_alone() {
    let mut set = sources_with(&[json!({"jti": "a"})]);
    let copy = set.clone();
    let mut bad = revocation_delta(&[json!({"jti": "b"})], &[]);
    bad.revocations[0].policy.name = "missing".into();
    bad.deletes
        .push(SourceObject::ApiRoute(extra_route(2)).key());
    bad.upserts.push(SourceObject::ApiRoute(extra_route(42)));
    assert!(SourceChanges::apply(&mut set, &bad).is_err());
    assert_eq!(set, copy);
    assert_eq!(SourceChanges::between(&copy, &set).len(), 0);
}

// === (b) random sequences of revocation edits ===

/// A fixed seed: the same cases on every run and every machine, so a clean clone's test
/// command cannot fail at random (failures found while developing are kept in the
/// committed `proptest-regressions/` files and replayed first).
fn fixed(cases: u32) -> ProptestConfig {
    ProptestConfig {
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x5eed_9023),
        ..ProptestConfig::with_cases(cases)
    }
}

/// Tokens differing in what revocations match on: jti, subject, `iat`, signing key.
fn token_pool() -> &'static [String] {
    static POOL: OnceLock<Vec<String>> = OnceLock::new();
    POOL.get_or_init(|| {
        let k = keys();
        let mut out = Vec::new();
        for (i, (jti, sub, iat)) in [
            ("a", "alice", NOW - 60),
            ("b", "alice", NOW - 3600),
            ("c", "bob", NOW - 60),
            ("a", "bob", NOW - 10),
        ]
        .into_iter()
        .enumerate()
        {
            let mut c = claims();
            c["jti"] = json!(jti);
            c["sub"] = json!(sub);
            c["iat"] = json!(iat);
            let key = if i % 2 == 0 { &k.rsa } else { &k.ec256 };
            out.push(mint(key, &c));
            out.push(mint(&k.rsa2, &c));
        }
        out
    })
}

fn time(t: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_second(t)
        .unwrap()
        .to_string()
}

/// A revocation entry: of every kind, live, expired or expiring later, now and then
/// malformed.
fn entry() -> impl Strategy<Value = Value> {
    let selector = prop_oneof![
        prop::sample::select(vec!["a", "b", "c", "d"]).prop_map(|j| json!({"jti": j})),
        (0..token_pool().len())
            .prop_map(|i| json!({"tokenSha256": token_digest(&token_pool()[i]).to_hex()})),
        (
            prop::sample::select(vec!["alice", "bob"]),
            prop::sample::select(vec![NOW - 120, NOW - 30, NOW + 60]),
        )
            .prop_map(|(s, t)| json!({"subject": s, "issuedBefore": time(t)})),
        prop::sample::select(vec!["rsa-1", "rsa-2", "ec-1"]).prop_map(|k| json!({"keyId": k})),
        Just(json!({"tokenSha256": "BAD"})),
        Just(json!({"subject": "alice"})),
    ];
    let expiry = prop::sample::select(vec![None, Some(NOW - 5), Some(NOW + 500)]);
    (selector, expiry).prop_map(|(mut s, e)| {
        if let Some(e) = e {
            s["expiresAt"] = json!(time(e));
        }
        s
    })
}

#[derive(Debug, Clone)]
enum Edit {
    Add(Value),
    /// Removes the entry at this index (modulo the length), if any.
    Remove(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => entry().prop_map(Edit::Add),
        2 => any::<usize>().prop_map(Edit::Remove),
    ]
}

proptest! {
    #![proptest_config(fixed(48))]

    #[test]
    fn patched_and_full_compiles_agree(
        edits in prop::collection::vec(edit(), 1..8),
        probes in prop::collection::vec(0..token_pool().len(), 3),
    ) {
        let opts = options();
        let mut held = Held::new(sources_with(&[]));
        for t in token_pool() {
            prop_assert_eq!(verdict(&held.compiled.snapshot, t), Ok(()));
        }
        let mut list: Vec<Value> = Vec::new();
        for e in edits {
            let (added, removed) = match e {
                Edit::Add(v) => {
                    list.push(v.clone());
                    (vec![v], vec![])
                }
                Edit::Remove(_) if list.is_empty() => continue,
                Edit::Remove(i) => {
                    let v = list.remove(i % list.len());
                    // `removed` drops every equal entry, as the controller's diff does.
                    list.retain(|x| *x != v);
                    (vec![], vec![v])
                }
            };
            held.apply(&opts, &revocation_delta(&added, &removed));
            let full = held.full(&opts);
            prop_assert_eq!(&held.compiled.errors, &full.errors);
            prop_assert_eq!(held.compiled.snapshot.stats(), full.snapshot.stats());
            for &i in &probes {
                let t = &token_pool()[i];
                prop_assert_eq!(
                    verdict(&held.compiled.snapshot, t),
                    verdict(&full.snapshot, t),
                    "token {} after {:?}", i, list
                );
            }
        }
    }
}
