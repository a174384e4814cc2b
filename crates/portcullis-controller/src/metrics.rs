//! Controller metrics: one registry, every name prefixed `portcullis_controller_`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Every metric the controller exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Reconciles (compile passes), by kind of object.
    pub reconciles: IntCounterVec,
    /// Objects with errors after a compile pass, by kind and reason.
    pub reconcile_errors: IntCounterVec,
    /// Time to compile the whole config.
    pub compile_duration: Histogram,
    /// The snapshot version being published.
    pub snapshot_version: IntGauge,
    /// Proxies connected to this replica.
    pub connected_proxies: IntGauge,
    /// Snapshot created -> acknowledged by a proxy, by message kind (`full`, `delta`).
    pub push_latency: HistogramVec,
    /// Status writes, by kind and result (`ok`, `error`, `timeout`).
    pub status_writes: IntCounterVec,
    /// Stream connections refused, by reason.
    pub refused: IntCounterVec,
    /// Whether this replica holds the leader Lease.
    pub leader: IntGauge,
    /// Revocations pruned after their `expiresAt`.
    pub pruned: IntCounterVec,
    /// Quota messages, by type: `lease` and `release` from proxies, `grant` answered,
    /// `relayed` to the leader.
    pub quota_messages: IntCounterVec,
    /// Ledger checkpoints written, by result.
    pub quota_checkpoints: IntCounterVec,
    /// Slots in the leader's ledger.
    pub quota_entries: IntGauge,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("metric definition is valid");
                registry
                    .register(Box::new(m.clone()))
                    .expect("metric registered once");
                m
            }};
        }
        let fast = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ];
        Self {
            reconciles: reg!(IntCounterVec::new(
                Opts::new(
                    "portcullis_controller_reconciles_total",
                    "Compile passes, by kind of object compiled."
                ),
                &["kind"]
            )),
            reconcile_errors: reg!(IntCounterVec::new(
                Opts::new(
                    "portcullis_controller_reconcile_errors_total",
                    "Objects with errors after a compile pass, by kind and reason."
                ),
                &["kind", "reason"]
            )),
            compile_duration: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "portcullis_controller_compile_duration_seconds",
                    "Time to compile the whole config."
                )
                .buckets(fast.clone())
            )),
            snapshot_version: reg!(IntGauge::new(
                "portcullis_controller_snapshot_version",
                "The snapshot version being published."
            )),
            connected_proxies: reg!(IntGauge::new(
                "portcullis_controller_connected_proxies",
                "Proxies connected to this replica."
            )),
            push_latency: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "portcullis_controller_push_latency_seconds",
                    "Snapshot created to acknowledged by a proxy, by what carried it (full, delta, revocation)."
                )
                .buckets(fast),
                &["message"]
            )),
            status_writes: reg!(IntCounterVec::new(
                Opts::new(
                    "portcullis_controller_status_writes_total",
                    "Status writes, by kind and result."
                ),
                &["kind", "result"]
            )),
            refused: reg!(IntCounterVec::new(
                Opts::new(
                    "portcullis_controller_refused_streams_total",
                    "Stream connections refused, by reason."
                ),
                &["reason"]
            )),
            leader: reg!(IntGauge::new(
                "portcullis_controller_leader",
                "1 when this replica holds the leader Lease."
            )),
            pruned: reg!(IntCounterVec::new(
                Opts::new(
                    "portcullis_controller_pruned_revocations_total",
                    "Revocations pruned after expiresAt, by policy namespace."
                ),
                &["policy_namespace"]
            )),
            quota_messages: reg!(IntCounterVec::new(
                Opts::new(
                    "portcullis_controller_quota_messages_total",
                    "Quota messages, by type: lease and release from proxies, grant answered, relayed to the leader."
                ),
                &["type"]
            )),
            quota_checkpoints: reg!(IntCounterVec::new(
                Opts::new(
                    "portcullis_controller_quota_checkpoints_total",
                    "Quota ledger checkpoints written to the ConfigMap, by result (ok, error)."
                ),
                &["result"]
            )),
            quota_entries: reg!(IntGauge::new(
                "portcullis_controller_quota_entries",
                "Slots (quota, consumer, window) in this replica's ledger: 0 unless it leads."
            )),
            registry,
        }
    }

    /// The registry, for metrics other components add (the key fetcher's).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
