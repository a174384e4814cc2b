//! The proxy's whole per-request path without sockets: `Pipeline::prepare` takes a parsed
//! request head through limits, the canonical target, the decision and the upstream
//! request head, and records it (metrics, access-log event) as `handle` does. What is left
//! out is what the sockets cost: reading and writing HTTP/1, and the upstream call.
//!
//! The bench snapshot is `bench/run.sh`'s: an RS256 issuer, a route needing
//! `orders:read`, 100 revoked `jti`s, a `forwardClaims` header.
//!
//! - `request_path/allow_cached`: a valid token found in the verified-token cache (the
//!   steady state of a client reusing its token);
//! - `request_path/allow_uncached`: distinct valid tokens cycled through a one-entry cache:
//!   every request verifies an RS256 signature;
//! - `request_path/deny_no_token`: no credentials (401);
//! - `request_path/public`: an `auth: none` rule (no credential step at all);
//! - `request_path/allow_cached_rate_limited`: `allow_cached` under a per-subject rate
//!   limit it never reaches: the difference is what quota admission adds.
//!
//! Results: `benches/RESULTS.md`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use http::Request;
use portcullis_policy::{CompileOptions, ManualClock};
use portcullis_proxy::{Limits, LiveConfig, Metrics, Peer, Pipeline};
use portcullis_testkit::fixtures::{PolicyBuilder, RouteBuilder};
use serde_json::json;

const NOW: i64 = 1_800_000_000;
const ISSUER: &str = "https://issuer.example.com";
const AUDIENCE: &str = "orders-api";
const HOST: &str = "api.example.com";
/// Distinct tokens for the uncached case.
const DISTINCT: usize = 512;

struct Bench {
    pipeline: Pipeline,
    key: portcullis_testkit::TestKey,
}

fn setup(cache_capacity: usize) -> Bench {
    setup_with(cache_capacity, None)
}

fn setup_with(cache_capacity: usize, rate_limits: Option<serde_json::Value>) -> Bench {
    let key = portcullis_testkit::rsa("bench-1");
    let mut policy = PolicyBuilder::new("default", "bench")
        .issuer(
            ISSUER,
            AUDIENCE,
            &["RS256"],
            json!({"keys": [key.jwk.clone()]}),
        )
        .forward("sub", "x-user-id");
    for i in 0..100 {
        policy = policy.revoke(json!({"jti": format!("revoked-{i:03}")}));
    }
    if let Some(limits) = rate_limits {
        policy = policy.spec("rateLimits", limits);
    }
    let route = RouteBuilder::new("default", "orders")
        .host(HOST)
        .policy("bench")
        .backend_url("http://127.0.0.1:9")
        .prefix("/orders", &["GET"], &["orders:read"])
        .public("/health")
        .build();
    let options = CompileOptions {
        clock: Arc::new(ManualClock::new(NOW)),
        cache_capacity,
        validate_cel: false,
        ..Default::default()
    };
    let (snapshot, errors) =
        portcullis_policy::compile_with(&options, &[route], &[policy.build()], &[]);
    assert!(errors.is_empty(), "{errors:#?}");
    let metrics = Metrics::new();
    let config = Arc::new(LiveConfig::new(metrics.clone()));
    config.apply(snapshot, vec!["bench".into()], vec![]);
    Bench {
        pipeline: Pipeline::new(config, metrics, Limits::default()),
        key,
    }
}

fn token(key: &portcullis_testkit::TestKey, i: usize) -> String {
    key.mint(&json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": format!("user-{i}"), "jti": format!("t-{i}"),
        "scope": "orders:read", "iat": NOW - 60, "exp": NOW + 3600,
    }))
}

/// A request head as a client sends it (what hyper hands the pipeline).
fn request(path: &str, authorization: Option<&str>) -> Request<()> {
    let mut b = Request::get(path)
        .header("host", HOST)
        .header("user-agent", "bench/1.0")
        .header("accept", "*/*");
    if let Some(a) = authorization {
        b = b.header("authorization", a);
    }
    b.body(()).unwrap()
}

fn run(pipeline: &Pipeline, peer: &Peer, req: Request<()>, want_ok: bool) {
    let out = futures::executor::block_on(pipeline.prepare(req, peer, false));
    assert_eq!(out.is_ok(), want_ok, "unexpected outcome");
    black_box(out.ok());
}

fn request_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("request_path");
    // Made once per connection by the server.
    let peer = Peer::new(SocketAddr::from(([10, 0, 0, 7], 40000)));

    let cached = setup(10_000);
    let bearer = format!("Bearer {}", token(&cached.key, 0));
    run(
        &cached.pipeline,
        &peer,
        request("/orders/42", Some(&bearer)),
        true,
    );
    group.bench_function("allow_cached", |b| {
        b.iter(|| {
            run(
                &cached.pipeline,
                &peer,
                request("/orders/42", Some(&bearer)),
                true,
            )
        })
    });
    group.bench_function("deny_no_token", |b| {
        b.iter(|| run(&cached.pipeline, &peer, request("/orders/42", None), false))
    });
    group.bench_function("public", |b| {
        b.iter(|| run(&cached.pipeline, &peer, request("/health", None), true))
    });

    // The same, under a per-subject rate limit it never reaches: the admission's cost
    // (a slot lookup and a reservation from the slice leased from the in-process ledger;
    // a lease now and then).
    let limited = setup_with(
        10_000,
        Some(
            json!([{"name": "per-subject", "key": "subject", "requests": 1_000_000_000u64, "period": "second"}]),
        ),
    );
    let limited_bearer = format!("Bearer {}", token(&limited.key, 0));
    group.bench_function("allow_cached_rate_limited", |b| {
        b.iter(|| {
            run(
                &limited.pipeline,
                &peer,
                request("/orders/42", Some(&limited_bearer)),
                true,
            )
        })
    });

    let uncached = setup(1);
    let bearers: Vec<String> = (0..DISTINCT)
        .map(|i| format!("Bearer {}", token(&uncached.key, i)))
        .collect();
    let mut next = 0;
    group.bench_function("allow_uncached", |b| {
        b.iter(|| {
            next = (next + 1) % DISTINCT;
            run(
                &uncached.pipeline,
                &peer,
                request("/orders/42", Some(&bearers[next])),
                true,
            )
        })
    });
    group.finish();
}

criterion_group!(benches, request_path);
criterion_main!(benches);
