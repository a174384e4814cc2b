//! What quota admission costs a call, without sockets: `QuotaClient::reserve` and
//! `settle` against slices leased from an in-process ledger (standalone mode's backend;
//! a cluster proxy takes the same path while its slice lasts, and leases over the
//! config stream now and then).
//!
//! - `quota/budget_reserve_settle`: an LLM call's worst-case reservation in one budget and
//!   its settlement with the real usage (the refund goes back into the slice);
//! - `quota/rate_limit_take`: one request taken from a rate limit's slice;
//! - `quota/budget_reserve_settle_1000_consumers`: the same, cycling through 1,000
//!   consumers (1,000 slots in the slice table).
//!
//! Results: `benches/RESULTS.md`.
#![allow(missing_docs)]

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis_api::QuotaKey;
use portcullis_api::push::QuotaShape;
use portcullis_policy::quota::{FailMode, QuotaCommon};
use portcullis_proxy::metrics::ConsumerLabels;
use portcullis_proxy::quota::{LocalLedger, QuotaClient, Reserve};

fn common(limit: u64) -> QuotaCommon {
    QuotaCommon {
        id: "ns/p/q".into(),
        policy: "ns/p".into(),
        name: "q".into(),
        key: QuotaKey::Consumer,
        limit,
        overrides: HashMap::new(),
        fail: FailMode::Closed,
    }
}

fn quota(c: &mut Criterion) {
    let mut group = c.benchmark_group("quota");
    let registry = prometheus::Registry::new();
    let client = QuotaClient::new(Arc::new(LocalLedger::default()), &registry);
    let labels = ConsumerLabels::new(10_000);
    let budget = common(u64::MAX / 4);
    let end = i64::MAX;
    fn reserve<'a>(
        budget: &'a QuotaCommon,
        consumer: &'a str,
        labels: &'a ConsumerLabels,
        end: i64,
    ) -> Reserve<'a> {
        Reserve {
            quota: budget,
            kind: "budget",
            consumer,
            labels,
            window: 1,
            shape: QuotaShape::Budget { end },
            limit: u64::MAX / 4,
            min: 1_200,
            max: 1_200,
        }
    }
    group.bench_function("budget_reserve_settle", |b| {
        b.iter(|| {
            let t = futures::executor::block_on(
                client.reserve(reserve(&budget, "alice", &labels, end)),
            )
            .unwrap();
            client.settle(black_box(t), 180, "ns/p", "q");
        })
    });
    let consumers: Vec<String> = (0..1000).map(|i| format!("consumer-{i}")).collect();
    let mut i = 0;
    group.bench_function("budget_reserve_settle_1000_consumers", |b| {
        b.iter(|| {
            i = (i + 1) % consumers.len();
            let t = futures::executor::block_on(client.reserve(reserve(
                &budget,
                &consumers[i],
                &labels,
                end,
            )))
            .unwrap();
            client.settle(black_box(t), 180, "ns/p", "q");
        })
    });
    let rate = common(1_000_000_000);
    group.bench_function("rate_limit_take", |b| {
        b.iter(|| {
            let t = futures::executor::block_on(client.reserve(Reserve {
                quota: &rate,
                kind: "rate_limit",
                consumer: "alice",
                labels: &labels,
                window: 0,
                shape: QuotaShape::Bucket { rate: 1e9 },
                limit: 1_000_000_000,
                min: 1,
                max: 1,
            }))
            .unwrap();
            black_box(t);
        })
    });
    group.finish();
}

criterion_group!(benches, quota);
criterion_main!(benches);
