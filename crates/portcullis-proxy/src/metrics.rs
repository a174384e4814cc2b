//! The proxy's Prometheus metrics: one registry, every name prefixed `portcullis_`.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry, TextEncoder,
};

/// Every metric the data plane exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Requests answered, by route, method and status code.
    pub requests: IntCounterVec,
    /// Authorization decisions, by route, decision (`allow`/`deny`) and reason.
    pub auth_decisions: IntCounterVec,
    /// Time from request received to response headers sent, by route.
    pub request_duration: HistogramVec,
    /// Time the upstream took to send response headers, by route.
    pub upstream_duration: HistogramVec,
    /// Verified-token cache hits.
    pub token_cache_hits: IntCounter,
    /// Verified-token cache misses (full verification).
    pub token_cache_misses: IntCounter,
    /// Version of the config snapshot in force.
    pub config_version: IntGauge,
    /// When the snapshot in force was applied (Unix seconds).
    pub config_applied: IntGauge,
    /// Revocation entries in force.
    pub revocations: IntGauge,
    /// Requests being served.
    pub inflight: IntGauge,
    /// Requests or connections refused by a limit, by limit.
    pub limit_rejections: IntCounterVec,
    /// Upstream failures, by route and kind (`error`, `timeout`).
    pub upstream_errors: IntCounterVec,
    /// Config loads, by result (`applied`, `partial`, `rejected`).
    pub config_reloads: IntCounterVec,
    /// Time to compile a config.
    pub compile_duration: Histogram,
    /// 1 while a controller stream is up.
    pub controller_connected: IntGauge,
    /// Seconds since the controller was last heard from.
    pub config_staleness: Gauge,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let latency = vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5, 5.0, 10.0,
        ];
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("metric definition is valid");
                registry
                    .register(Box::new(m.clone()))
                    .expect("metric registered once");
                m
            }};
        }
        Self {
            requests: reg!(IntCounterVec::new(
                Opts::new(
                    "portcullis_requests_total",
                    "Requests answered, by route, method and status code."
                ),
                &["route", "method", "code"]
            )),
            auth_decisions: reg!(IntCounterVec::new(
                Opts::new(
                    "portcullis_auth_decisions_total",
                    "Authorization decisions, by route, decision and reason."
                ),
                &["route", "decision", "reason"]
            )),
            request_duration: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "portcullis_request_duration_seconds",
                    "Time from request to response headers, by route."
                )
                .buckets(latency.clone()),
                &["route"]
            )),
            upstream_duration: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "portcullis_upstream_duration_seconds",
                    "Time the upstream took to send response headers, by route."
                )
                .buckets(latency.clone()),
                &["route"]
            )),
            token_cache_hits: reg!(IntCounter::new(
                "portcullis_token_cache_hits_total",
                "Verified-token cache hits."
            )),
            token_cache_misses: reg!(IntCounter::new(
                "portcullis_token_cache_misses_total",
                "Verified-token cache misses (full verification)."
            )),
            config_version: reg!(IntGauge::new(
                "portcullis_config_version",
                "Version of the config snapshot in force."
            )),
            config_applied: reg!(IntGauge::new(
                "portcullis_config_applied_timestamp_seconds",
                "When the config snapshot in force was applied, Unix seconds."
            )),
            revocations: reg!(IntGauge::new(
                "portcullis_revocations",
                "Revocation entries in force."
            )),
            inflight: reg!(IntGauge::new(
                "portcullis_inflight_requests",
                "Requests being served."
            )),
            limit_rejections: reg!(IntCounterVec::new(
                Opts::new(
                    "portcullis_limit_rejections_total",
                    "Requests or connections refused by a limit, by limit."
                ),
                &["limit"]
            )),
            upstream_errors: reg!(IntCounterVec::new(
                Opts::new(
                    "portcullis_upstream_errors_total",
                    "Upstream failures, by route and kind."
                ),
                &["route", "kind"]
            )),
            config_reloads: reg!(IntCounterVec::new(
                Opts::new(
                    "portcullis_config_reloads_total",
                    "Config loads, by result."
                ),
                &["result"]
            )),
            compile_duration: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "portcullis_compile_duration_seconds",
                    "Time to compile a config."
                )
                .buckets(latency)
            )),
            controller_connected: reg!(IntGauge::new(
                "portcullis_controller_connected",
                "1 while the proxy has a live config stream from the controller."
            )),
            config_staleness: reg!(Gauge::new(
                "portcullis_config_staleness_seconds",
                "Seconds since the controller was last heard from."
            )),
            registry,
        }
    }

    /// The registry, for subsystems that add their own metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A bounded method label: the standard methods, or `OTHER`.
pub fn method_label(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::CONNECT => "CONNECT",
        http::Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}
