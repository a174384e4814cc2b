//! The ledger's invariant under any interleaving of leases, releases, checkpoints and
//! leader failovers: what proxies hold plus what they used never exceeds the allowance,
//! as long as no proxy reports more use than it leased (a provider that honours
//! `max_tokens`, text prompts). Fixed seed: the same cases on every run.

use portcullis_api::push::{LeaseAsk, QuotaShape, QuotaSlot, Release};
use portcullis_policy::ledger::{CheckpointEntry, Leased, Ledger};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngSeed};

const LIMIT: u64 = 1_000;
const END: i64 = 10_000;

#[derive(Debug, Clone)]
enum Op {
    /// Proxy `p` asks for (need, want).
    Lease(usize, u64, u64),
    /// Proxy `p` uses `n` of what it holds.
    Use(usize, u64),
    /// Proxy `p` gives back `n` of what it holds unused.
    Release(usize, u64),
    /// The leader's periodic pass: marks lowered, the ledger written.
    Tick,
    /// The leader dies; a new one restores the last checkpoint.
    Failover,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize, 1..200u64, 0..300u64).prop_map(|(p, n, w)| Op::Lease(p, n, n + w)),
        3 => (0..3usize, 0..300u64).prop_map(|(p, n)| Op::Use(p, n)),
        2 => (0..3usize, 0..300u64).prop_map(|(p, n)| Op::Release(p, n)),
        1 => Just(Op::Tick),
        1 => Just(Op::Failover),
    ]
}

fn slot() -> QuotaSlot {
    QuotaSlot {
        quota: "ns/p/b".into(),
        consumer: "c".into(),
        window: 1,
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(0x1ed9_e500),
        ..ProptestConfig::default()
    })]

    #[test]
    fn proxies_never_hold_and_use_more_than_the_allowance(ops in proptest::collection::vec(op(), 1..80)) {
        let mut ledger = Ledger::durable();
        let mut durable: Vec<CheckpointEntry> = Vec::new();
        let mut held = [0u64; 3];
        let mut used = 0u64;
        for op in ops {
            match op {
                Op::Lease(p, need, want) => {
                    let ask = LeaseAsk { slot: slot(), shape: QuotaShape::Budget { end: END }, limit: LIMIT, need, want };
                    let g = loop {
                        match ledger.lease(&ask, 100.0) {
                            Leased::Grant(g) => break g,
                            Leased::NeedsCheckpoint => {
                                ledger.raise_high_water(&ask, 100.0);
                                durable = ledger.checkpoint();
                            }
                        }
                    };
                    prop_assert!(g.granted == 0 || (need..=want).contains(&g.granted), "{g:?}");
                    held[p] += g.granted;
                }
                Op::Use(p, n) => {
                    let n = n.min(held[p]);
                    held[p] -= n;
                    used += n;
                }
                Op::Release(p, n) => {
                    let n = n.min(held[p]);
                    held[p] -= n;
                    ledger.release(&Release { slot: slot(), unused: n, over: 0, end: END, limit: LIMIT }, 100.0);
                }
                Op::Tick => {
                    ledger.tighten();
                    durable = ledger.checkpoint();
                }
                Op::Failover => {
                    // Releases the old leader took after its last checkpoint are lost
                    // with it: the new leader may withhold them, never grant them twice.
                    ledger = Ledger::durable();
                    ledger.restore(&durable, 100.0);
                }
            }
            prop_assert!(used + held.iter().sum::<u64>() <= LIMIT, "used {used} + held {held:?} > {LIMIT}");
        }
    }
}
