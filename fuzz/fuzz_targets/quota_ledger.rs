//! The quota ledger as the controller's leader runs it, fed the proxy -> controller half of
//! the config stream (`portcullis_api::push`, NDJSON): each line decoded as a
//! `ProxyMessage`; `lease` asks answered by a durable `Ledger` (raising its high-water mark
//! and "writing" the checkpoint when asked to, as `QuotaService::lease_here` does),
//! `release`s taken back; a periodic pass (`tighten`, `prune`) every few lines; a failover
//! (a new ledger restored from the last checkpoint) now and then.
//!
//! Input: the request body bytes a proxy sends (proxies are authenticated, but a bug or a
//! compromised pod must not take the leader down with it).
//!
//! Invariants: nothing panics (no overflow, whatever the numbers, NaN rates included); a
//! decoded message re-encodes and decodes to itself; a grant is 0 or between `need` and
//! `max(want, need)`; for every budget slot, what was granted and not given back never
//! exceeds the allowance it was asked under, across failovers, while no `over` is reported.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use portcullis_api::push::{ProxyMessage, QuotaShape, QuotaSlot};
use portcullis_policy::ledger::{CheckpointEntry, Leased, Ledger};

fuzz_target!(|data: &[u8]| {
    let mut ledger = Ledger::durable();
    let mut durable: Vec<CheckpointEntry> = Vec::new();
    // Budget slots: (held by proxies, the allowance last asked under), while no overuse
    // was reported and the allowance never changed.
    let mut held: HashMap<QuotaSlot, (u64, u64)> = HashMap::new();
    let mut tainted: std::collections::HashSet<QuotaSlot> = Default::default();
    let now = 1_800_000_000.0;
    for (i, line) in data.split(|b| *b == b'\n').enumerate() {
        let Ok(msg) = serde_json::from_slice::<ProxyMessage>(line) else {
            continue;
        };
        let again = serde_json::to_vec(&msg).expect("a decoded message encodes");
        let back: ProxyMessage = serde_json::from_slice(&again).expect("and decodes");
        // f64 NaN rates do not compare equal to themselves; compare the encodings.
        assert_eq!(serde_json::to_vec(&back).unwrap(), again);
        match msg {
            ProxyMessage::Lease { ask, .. } => {
                let mut answer = None;
                for _ in 0..2 {
                    match ledger.lease(&ask, now) {
                        Leased::Grant(g) => {
                            answer = Some(g);
                            break;
                        }
                        Leased::NeedsCheckpoint => {
                            ledger.raise_high_water(&ask, now);
                            durable = ledger.checkpoint();
                        }
                    }
                }
                let Some(g) = answer else { continue };
                assert!(
                    g.granted == 0 || (ask.need..=ask.want.max(ask.need)).contains(&g.granted),
                    "grant {g:?} for {ask:?}"
                );
                if let QuotaShape::Budget { .. } = ask.shape {
                    let e = held.entry(ask.slot.clone()).or_insert((0, ask.limit));
                    if e.1 != ask.limit {
                        tainted.insert(ask.slot.clone());
                    }
                    e.0 = e.0.saturating_add(g.granted);
                    e.1 = ask.limit;
                    if !tainted.contains(&ask.slot) {
                        assert!(e.0 <= e.1, "held {} of an allowance of {}", e.0, e.1);
                    }
                }
            }
            ProxyMessage::Release(r) => {
                if r.over > 0 {
                    tainted.insert(r.slot.clone());
                }
                if let Some(e) = held.get_mut(&r.slot) {
                    // Giving back more than was held is a lying proxy: no longer modelled.
                    if r.unused > e.0 {
                        tainted.insert(r.slot.clone());
                    }
                    e.0 = e.0.saturating_sub(r.unused);
                }
                ledger.release(&r, now);
            }
            ProxyMessage::Ack { .. }
            | ProxyMessage::Refetch { .. }
            | ProxyMessage::Event { .. } => {}
        }
        if i % 4 == 3 {
            ledger.tighten();
            ledger.prune(now);
            durable = ledger.checkpoint();
        }
        if i % 7 == 6 {
            ledger = Ledger::durable();
            ledger.restore(&durable, now);
        }
        let _ = ledger.usage();
    }
});
