//! The AI gateway's metrics, named after OpenTelemetry's `gen_ai.*` semantic conventions
//! (`gen_ai.client.token.usage`, `gen_ai.server.time_to_first_token`,
//! `gen_ai.client.operation.duration`), as Prometheus counters and histograms with a
//! `portcullis_` prefix. Token counts are exact counters; the consumer label is the
//! hashed, capped label of `portcullis_consumer_requests_total`.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

/// The AI gateway's metrics.
#[derive(Clone)]
pub struct GenAiMetrics {
    /// Tokens by route, model (the client's name), type (`input`/`output`) and consumer.
    pub tokens: IntCounterVec,
    /// Calls by route, model, operation and the status the client got.
    pub requests: IntCounterVec,
    /// Time from the provider call to the first content chunk of a stream.
    pub time_to_first_token: HistogramVec,
    /// Time of the whole provider exchange (to the end of the body), by operation.
    pub operation_duration: HistogramVec,
    /// Provider answers that were errors (their status) or failed calls (`connect`,
    /// `timeout`), by route and provider.
    pub provider_errors: IntCounterVec,
    /// Keys of each route's pool, by state (`available`, `cooling`).
    pub provider_keys: IntGaugeVec,
    /// Keys taken out of rotation, by route, key (`secret/key`) and reason.
    pub key_cooldowns: IntCounterVec,
    /// Streams read on after the client went away, by result (`complete`, `truncated`).
    pub stream_drains: IntCounterVec,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

impl GenAiMetrics {
    /// Creates and registers the metrics on `registry`.
    pub fn new(registry: &Registry) -> Self {
        fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
            r.register(Box::new(c.clone()))
                .expect("gen_ai metrics register once");
            c
        }
        let counter = |name: &str, help: &str, labels: &[&str]| {
            reg(
                registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            reg(
                registry,
                HistogramVec::new(
                    HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                    labels,
                )
                .expect("valid metric"),
            )
        };
        Self {
            tokens: counter(
                "portcullis_gen_ai_client_token_usage_total",
                "LLM tokens as the provider reported them (gen_ai.client.token.usage), by route, model, type (input/output) and consumer (hashed; `other` past the cap, `none` without one).",
                &["route", "model", "type", "consumer"],
            ),
            requests: counter(
                "portcullis_gen_ai_requests_total",
                "AI gateway calls, by route, model, operation (chat, embeddings, models, messages, prompt) and the status the client got.",
                &["route", "model", "operation", "status"],
            ),
            time_to_first_token: histogram(
                "portcullis_gen_ai_server_time_to_first_token_seconds",
                "Time from the provider call to the first content chunk of a stream (gen_ai.server.time_to_first_token), by route and model.",
                &["route", "model"],
            ),
            operation_duration: histogram(
                "portcullis_gen_ai_client_operation_duration_seconds",
                "Time of the provider exchange, to the end of its body (gen_ai.client.operation.duration), by route, model and operation.",
                &["route", "model", "operation"],
            ),
            provider_errors: counter(
                "portcullis_gen_ai_provider_errors_total",
                "Provider calls that failed: the provider's error status, or connect / timeout, by route and provider.",
                &["route", "provider", "status"],
            ),
            provider_keys: reg(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "portcullis_gen_ai_provider_keys",
                        "Provider keys of each LLM route's pool, by state (available, cooling).",
                    ),
                    &["route", "state"],
                )
                .expect("valid metric"),
            ),
            key_cooldowns: counter(
                "portcullis_gen_ai_key_cooldowns_total",
                "Provider keys taken out of rotation, by route, key (secret/key) and reason (unauthorized, rate_limited).",
                &["route", "key", "reason"],
            ),
            stream_drains: counter(
                "portcullis_gen_ai_stream_drains_total",
                "Streams read on after the client went away so their usage is counted, by route and result (complete, truncated).",
                &["route", "result"],
            ),
        }
    }
}
