//! Snapshots are patched, not rebuilt: the time to produce the new snapshot for a
//! one-entry revocation delta.
//!
//! - `patch/revocation_delta/{10,10000}`: `compile_sources` given the previous compile and
//!   the delta's touched objects, with 10 and 10,000 ApiRoutes: it patches (the policy's
//!   revocations compiled anew, everything else shared). Should not depend on the routes.
//! - `patch/full_compile/{10,10000}`: `compile_sources` of the same sources with no
//!   previous compile: everything compiled. Grows with the routes.
//!
//! The policy holds 10 revocations before the delta, 11 after. Results:
//! `benches/RESULTS.md`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use portcullis_api::push::{Changes, ObjectKey, RevocationEdit, SourceObject, SourceSet};
use portcullis_api::{ApiRoute, Revocation, TokenPolicy};
use portcullis_policy::{
    CompileOptions, CompiledSources, ManualClock, PreviousCompile, SourceChanges, compile_sources,
};
use serde_json::json;

const NOW: i64 = 1_800_000_000;
const SIZES: [usize; 2] = [10, 10_000];

fn options() -> CompileOptions {
    CompileOptions {
        clock: Arc::new(ManualClock::new(NOW)),
        // The objects are well-formed; the controller's stream sets this too.
        validate_cel: false,
        ..Default::default()
    }
}

fn policy() -> TokenPolicy {
    let key = portcullis_testkit::rsa("rsa-1");
    let revocations: Vec<_> = (0..10)
        .map(|i| json!({"jti": format!("old-{i}")}))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "portcullis.dev/v1alpha1", "kind": "TokenPolicy",
        "metadata": {"name": "default", "namespace": "shop"},
        "spec": {
            "issuers": [{
                "issuer": "https://auth.example.com", "audiences": ["orders-api"],
                "algorithms": ["RS256"],
                "jwks": {"inline": {"keys": [key.jwk]}},
            }],
            "forwardClaims": {"sub": "X-User"},
            "revocations": revocations,
        }
    }))
    .unwrap()
}

fn route(i: usize) -> ApiRoute {
    serde_json::from_value(json!({
        "apiVersion": "portcullis.dev/v1alpha1", "kind": "ApiRoute",
        "metadata": {"name": format!("route-{i}"), "namespace": "shop"},
        "spec": {
            "hosts": [format!("svc{i}.example.com")],
            "policyRef": {"name": "default"},
            "backend": {"service": {"name": format!("svc-{i}"), "port": 8080}},
            "rules": [
                {"match": {"pathPrefix": format!("/r{i}/orders"), "methods": ["GET"]},
                 "requiredScopes": ["orders:read"]},
                {"match": {"pathPrefix": format!("/r{i}/orders"), "methods": ["POST"]},
                 "requiredScopes": ["orders:write"]},
                {"match": {"path": format!("/r{i}/health")}, "auth": "none"},
            ],
        }
    }))
    .unwrap()
}

/// The sources before and after a one-entry revocation delta, what the delta touched,
/// and the compile of the sources before it.
struct Fixture {
    after: SourceSet,
    touched: SourceChanges,
    previous: CompiledSources,
}

fn fixture(routes: usize) -> Fixture {
    let mut before = SourceSet::default();
    before.upsert(SourceObject::TokenPolicy(policy()));
    for i in 0..routes {
        before.upsert(SourceObject::ApiRoute(route(i)));
    }
    let previous = compile_sources(&options(), &before, None);
    assert!(previous.errors.is_empty(), "{:#?}", previous.errors);
    let added: Revocation = serde_json::from_value(json!({"jti": "leaked"})).unwrap();
    let delta = Changes {
        revocations: vec![RevocationEdit {
            policy: ObjectKey {
                kind: "TokenPolicy".into(),
                namespace: "shop".into(),
                name: "default".into(),
            },
            generation: Some(2),
            resource_version: None,
            added: vec![added],
            removed: Vec::new(),
        }],
        ..Default::default()
    };
    let mut after = before;
    let touched = SourceChanges::apply(&mut after, &delta).unwrap();
    Fixture {
        after,
        touched,
        previous,
    }
}

fn bench(c: &mut Criterion) {
    let options = options();
    let fixtures: Vec<(usize, Fixture)> = SIZES.iter().map(|&n| (n, fixture(n))).collect();

    let mut group = c.benchmark_group("patch");
    for (n, f) in &fixtures {
        let previous = PreviousCompile {
            snapshot: &f.previous.snapshot,
            errors: &f.previous.errors,
            changes: &f.touched,
        };
        let out = compile_sources(&options, &f.after, Some(previous));
        assert!(out.patched && out.snapshot.stats().revocations == 11);
        group.bench_with_input(BenchmarkId::new("revocation_delta", n), n, |b, _| {
            b.iter(|| black_box(compile_sources(&options, &f.after, Some(previous))))
        });
    }
    group.finish();

    // A full compile of 10,000 routes takes tens of milliseconds: fewer samples.
    let mut group = c.benchmark_group("patch");
    group.sample_size(10);
    for (n, f) in &fixtures {
        let out = compile_sources(&options, &f.after, None);
        assert!(!out.patched && out.snapshot.stats().routes == *n);
        group.bench_with_input(BenchmarkId::new("full_compile", n), n, |b, _| {
            b.iter(|| black_box(compile_sources(&options, &f.after, None)))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
