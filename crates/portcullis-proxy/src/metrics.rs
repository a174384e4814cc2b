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
    /// Requests being served: from the request head until the response is recorded (its
    /// body ended or was dropped, or the client went away).
    pub inflight: IntGauge,
    /// Requests or connections refused by a limit, by limit.
    pub limit_rejections: IntCounterVec,
    /// Upstream failures, by route and kind (`error`, `timeout`).
    pub upstream_errors: IntCounterVec,
    /// Config loads, by result (`applied`, `partial`, `rejected`).
    pub config_reloads: IntCounterVec,
    /// Time to compile a config.
    pub compile_duration: Histogram,
    /// Allowed requests by route, principal kind and consumer label ([`ConsumerLabels`]).
    pub consumer_requests: IntCounterVec,
    /// Allowed calls to `Deprecated` routes, by route and consumer label: who still calls.
    pub deprecated_requests: IntCounterVec,
    /// Calls answered 410 because the route is retired (or past its sunset), by route.
    pub retired_requests: IntCounterVec,
    /// The consumer label values handed out so far.
    pub consumer_labels: std::sync::Arc<ConsumerLabels>,
    /// The AI gateway's (`gen_ai`) metrics.
    pub gen_ai: crate::llm::GenAiMetrics,
    /// 1 while a controller stream is up.
    pub controller_connected: IntGauge,
    /// Seconds since the controller was last heard from.
    pub config_staleness: Gauge,
    /// Proxy-port connections the gateway closed itself, by reason (see
    /// [`CONNECTION_CLOSE_REASONS`]).
    pub connections_closed: IntCounterVec,
    /// Proxy-port connections open now (counted against `max_connections`).
    pub connections_open: IntGauge,
    /// Requests refused before the token decision because of what they are (a path, host,
    /// method, framing or header the gateway cannot pass on unambiguously), by reason:
    /// `path_*` (see `portcullis_policy::TargetError::as_str`), `host_missing`,
    /// `host_duplicate`, `host_invalid`, `host_mismatch`, `method_case`,
    /// `transfer_encoding`, `header_underscore`, `request_body`.
    pub requests_refused: IntCounterVec,
    /// Data-path errors, by source (`client`, `upstream`, `proxy`) and reason (see
    /// [`crate::pipeline::ProxyError::REASONS`]; 499 `client_closed` included).
    pub request_errors: IntCounterVec,
    /// Response body bytes sent, by route (recorded when the body ends or is dropped).
    pub response_body_bytes: HistogramVec,
    /// Identity events received (Back-Channel Logout tokens, Security Event Tokens), by
    /// kind and result (`applied`, `replay`, `rejected`, `not_accepted`, `unavailable`).
    pub identity_events: IntCounterVec,
    /// Shared Signals streams this process drives (standalone): polls and verification
    /// requests, by policy, stream and result (`ok`, `failed`, `verification_requested`).
    pub ssf_polls: IntCounterVec,
    /// When each stream last answered a verification request (seconds since the epoch).
    pub ssf_verified: prometheus::IntGaugeVec,
}

/// The `reason` labels of `portcullis_requests_refused_total`, exported at zero from the
/// start so dashboards and alerts see every one.
pub const REFUSAL_REASONS: &[&str] = &[
    "mcp_headers",
    "path_not_absolute",
    "path_control_character",
    "path_invalid_escape",
    "path_invalid_utf8",
    "path_escaped_slash",
    "path_backslash",
    "path_semicolon",
    "path_ambiguous",
    "host_missing",
    "host_duplicate",
    "host_invalid",
    "host_mismatch",
    "method_case",
    "transfer_encoding",
    "header_underscore",
    "request_body",
];

/// The `reason` labels of `portcullis_connections_closed_total`:
/// - `first_request_timeout`: no complete first request within the first-request timeout;
/// - `idle_timeout`: no request in flight for the idle timeout (keep-alive idle);
/// - `header_read_timeout`: a request head started but was not finished in time (HTTP/1);
/// - `tls_handshake_timeout`: the TLS handshake did not finish within 10s;
/// - `limit`: refused because `max_connections` were already open.
pub const CONNECTION_CLOSE_REASONS: &[&str] = &[
    "first_request_timeout",
    "idle_timeout",
    "header_read_timeout",
    "tls_handshake_timeout",
    "limit",
];

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
        let metrics = Self {
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
            connections_closed: reg!(IntCounterVec::new(
                Opts::new(
                    "portcullis_connections_closed_total",
                    "Proxy connections the gateway closed itself, by reason."
                ),
                &["reason"]
            )),
            connections_open: reg!(IntGauge::new(
                "portcullis_connections_open",
                "Proxy connections open now."
            )),
            requests_refused: reg!(IntCounterVec::new(
                Opts::new(
                    "portcullis_requests_refused_total",
                    "Requests refused as malformed or ambiguous before any token decision, by reason."
                ),
                &["reason"]
            )),
            request_errors: reg!(IntCounterVec::new(
                Opts::new(
                    "portcullis_request_errors_total",
                    "Data-path errors, by source (client, upstream, proxy) and reason."
                ),
                &["source", "reason"]
            )),
            identity_events: reg!(IntCounterVec::new(
                Opts::new(
                    "portcullis_identity_events_total",
                    "Identity events received (back-channel logout tokens, security event tokens), by kind and result."
                ),
                &["kind", "result"]
            )),
            ssf_polls: reg!(IntCounterVec::new(
                Opts::new(
                    "portcullis_ssf_stream_requests_total",
                    "Requests to Shared Signals transmitters (polls, verification requests), by policy, stream and result."
                ),
                &["policy", "stream", "result"]
            )),
            ssf_verified: reg!(prometheus::IntGaugeVec::new(
                Opts::new(
                    "portcullis_ssf_stream_verified_timestamp_seconds",
                    "When each Shared Signals stream last answered a verification request with the state asked for."
                ),
                &["policy", "stream"]
            )),
            response_body_bytes: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "portcullis_response_body_bytes",
                    "Response body bytes sent, by route."
                )
                .buckets(vec![
                    64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
                    16777216.0, 67108864.0,
                ]),
                &["route"]
            )),
            consumer_requests: reg!(IntCounterVec::new(
                Opts::new(
                    "portcullis_consumer_requests_total",
                    "Allowed requests, by route, principal kind (jwt, introspected, api_key) and consumer (the first 12 hex digits of the SHA-256 of its name; `other` past the cap)."
                ),
                &["route", "kind", "consumer"]
            )),
            deprecated_requests: reg!(IntCounterVec::new(
                Opts::new(
                    "portcullis_deprecated_requests_total",
                    "Allowed calls to Deprecated routes, by route and consumer (as in portcullis_consumer_requests_total; `none` without one): who still has to move to the successor."
                ),
                &["route", "consumer"]
            )),
            retired_requests: reg!(IntCounterVec::new(
                Opts::new(
                    "portcullis_retired_requests_total",
                    "Calls answered 410 Gone because their route is Retired or past its sunsetAt, by route."
                ),
                &["route"]
            )),
            consumer_labels: std::sync::Arc::new(ConsumerLabels::new(MAX_CONSUMER_LABELS)),
            gen_ai: crate::llm::GenAiMetrics::new(&registry),
            registry,
        };
        // Every reason is exported from the start, at zero, so rates and alerts see it.
        for reason in CONNECTION_CLOSE_REASONS {
            metrics.connections_closed.with_label_values(&[reason]);
        }
        for kind in ["backchannel_logout", "shared_signals"] {
            for result in [
                "applied",
                "replay",
                "rejected",
                "not_accepted",
                "unavailable",
                "ignored",
                "verification",
            ] {
                metrics.identity_events.with_label_values(&[kind, result]);
            }
        }
        for reason in REFUSAL_REASONS {
            metrics.requests_refused.with_label_values(&[reason]);
        }
        for (source, reason) in crate::pipeline::ProxyError::REASONS {
            metrics.request_errors.with_label_values(&[source, reason]);
        }
        metrics
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

/// Distinct consumer label values a proxy hands out before it counts the rest as `other`.
pub const MAX_CONSUMER_LABELS: usize = 500;

/// The `consumer` label of a consumer name: the first 12 hex digits of its SHA-256, so
/// customer names stay out of the monitoring system and every value has one short shape
/// (`printf %s alice | sha256sum | cut -c1-12` finds a consumer's), and at most `cap`
/// distinct values per process (a label per consumer must not become unbounded
/// cardinality); later consumers count as `other`.
pub struct ConsumerLabels {
    cap: usize,
    labels: std::sync::RwLock<std::collections::HashMap<Box<str>, std::sync::Arc<str>>>,
}

impl ConsumerLabels {
    /// At most `cap` distinct labels.
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            labels: std::sync::RwLock::default(),
        }
    }

    /// The label of `consumer`.
    pub fn label(&self, consumer: &str) -> std::sync::Arc<str> {
        if let Some(l) = self
            .labels
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(consumer)
        {
            return l.clone();
        }
        let mut labels = self
            .labels
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if labels.len() >= self.cap {
            return std::sync::Arc::from("other");
        }
        let digest = portcullis_policy::token_digest(consumer).to_hex();
        let label: std::sync::Arc<str> = std::sync::Arc::from(&digest[..12]);
        labels.insert(consumer.into(), label.clone());
        label
    }
}

#[cfg(test)]
mod consumer_tests {
    use super::*;

    #[test]
    fn consumer_labels_are_hashed_and_capped() {
        let l = ConsumerLabels::new(2);
        // SHA-256("alice") = 2bd806c97f0e00af1a1fc3328fa763a9269723c8db8fac4f93af71db186d6e90
        assert_eq!(&*l.label("alice"), "2bd806c97f0e");
        assert_eq!(&*l.label("alice"), "2bd806c97f0e");
        assert_ne!(&*l.label("bob"), "other");
        assert_eq!(&*l.label("carol"), "other");
        assert_eq!(&*l.label("bob"), &*l.label("bob"));
    }
}
