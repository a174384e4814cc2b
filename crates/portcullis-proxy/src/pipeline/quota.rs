//! Phase: request rate limits of the route's policy, and the headers quotas answer with.

// A phase that answers the request itself returns the response as its `Err`.
#![allow(clippy::result_large_err)]

use http::header::{HeaderName, HeaderValue};
use http::{Response, StatusCode};
use portcullis_api::push::QuotaShape;
use portcullis_policy::Allow;

use super::request_log::RequestLog;
use super::{Pipeline, ProxyBody, response};
use crate::quota::{Refusal, RefusalKind, Reserve};

/// Headers a quota adds to a response.
pub(crate) type QuotaHeaders = Vec<(HeaderName, HeaderValue)>;

/// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers): the
/// policy's quota `q` over `w` seconds, and `r` left with `t` seconds to the reset.
pub(crate) fn ratelimit_headers(
    out: &mut QuotaHeaders,
    name: &str,
    policy: HeaderValue,
    remaining: u64,
    reset: u64,
) {
    out.push((HeaderName::from_static("ratelimit-policy"), policy));
    if let Ok(v) = HeaderValue::from_str(&format!("\"{name}\";r={remaining};t={reset}")) {
        out.push((HeaderName::from_static("ratelimit"), v));
    }
}

/// A duration as OpenAI writes `x-ratelimit-reset-*`: `1s`, `6m0s`, `1h2m3s`.
pub(crate) fn openai_duration(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

/// `x-ratelimit-limit-tokens`, `-remaining-tokens` and `-reset-tokens`, as OpenAI sends
/// them.
pub(crate) fn token_headers(out: &mut QuotaHeaders, limit: u64, remaining: u64, reset: u64) {
    for (name, value) in [
        ("x-ratelimit-limit-tokens", limit.to_string()),
        ("x-ratelimit-remaining-tokens", remaining.to_string()),
        ("x-ratelimit-reset-tokens", openai_duration(reset)),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            out.push((HeaderName::from_static(name), v));
        }
    }
}

/// The refusal of a quota: 429 (spent, with `Retry-After`), 503 (the ledger cannot be
/// reached and the quota fails closed) or 403 (no identity to count the call under).
pub(crate) fn refusal_status(r: &Refusal) -> (StatusCode, &'static str) {
    match r.kind {
        RefusalKind::Exhausted => (StatusCode::TOO_MANY_REQUESTS, "quota_exhausted"),
        RefusalKind::Unreachable => (StatusCode::SERVICE_UNAVAILABLE, "quota_unavailable"),
        RefusalKind::NoIdentity => (StatusCode::FORBIDDEN, "quota_no_identity"),
    }
}

/// `Retry-After` (RFC 9110 section 10.2.3) in seconds, for a 429 or 503.
pub(crate) fn retry_after(out: &mut QuotaHeaders, r: &Refusal) {
    if r.kind != RefusalKind::NoIdentity {
        out.push((
            http::header::RETRY_AFTER,
            HeaderValue::from(r.retry_after.max(1)),
        ));
    }
}

impl Pipeline {
    /// Phase: the rate limits of the route's policy. Admitted: the `RateLimit` headers
    /// for the response. Refused: 429 with `Retry-After` (RFC 6585 section 4), or 503 /
    /// 403 as [`refusal_status`] says.
    pub(super) async fn rate_limit_phase(
        &self,
        allow: &Allow<'_>,
        log: &mut RequestLog,
    ) -> Result<QuotaHeaders, Response<ProxyBody>> {
        let mut headers = QuotaHeaders::new();
        let Some(quotas) = allow.route.quotas.as_deref() else {
            return Ok(headers);
        };
        if allow.principal.is_none() {
            // A public (`auth: none`) rule: no caller to count, and the route's owner
            // asked for no credential. Refusing it would take public endpoints (health
            // checks) down with the policy's limits.
            return Ok(headers);
        }
        for rl in &quotas.rate_limits {
            let q = &rl.common;
            let Some(consumer) = q.identity(allow.principal.as_deref()) else {
                let refusal = self.quota.no_identity(q, "rate_limit");
                log.reason = "quota_no_identity";
                return Err(refuse(
                    &refusal,
                    headers,
                    "no identity to count the request under",
                ));
            };
            let (capacity, rate) = rl.bucket_for(consumer);
            let policy = if q.limit_for(consumer) == q.limit {
                rl.policy_header.clone()
            } else {
                portcullis_policy::quota::rate_limit_policy_header(&q.name, capacity, rate)
            };
            let admitted = self
                .quota
                .reserve(Reserve {
                    quota: q,
                    kind: "rate_limit",
                    consumer,
                    labels: &self.metrics.consumer_labels,
                    window: 0,
                    shape: QuotaShape::Bucket { rate },
                    limit: capacity,
                    min: 1,
                    max: 1,
                })
                .await;
            match admitted {
                Ok(t) => ratelimit_headers(&mut headers, &q.name, policy, t.remaining, t.reset_in),
                Err(refusal) => {
                    let (_, reason) = refusal_status(&refusal);
                    log.reason = reason;
                    ratelimit_headers(
                        &mut headers,
                        &q.name,
                        policy,
                        refusal.remaining,
                        refusal.retry_after,
                    );
                    return Err(refuse(&refusal, headers, "rate limit exceeded"));
                }
            }
        }
        Ok(headers)
    }
}

fn refuse(refusal: &Refusal, mut headers: QuotaHeaders, what: &str) -> Response<ProxyBody> {
    let (status, reason) = refusal_status(refusal);
    retry_after(&mut headers, refusal);
    let text = match refusal.kind {
        RefusalKind::Exhausted => format!("{what}: retry after {}s\n", refusal.retry_after),
        RefusalKind::Unreachable => {
            "the quota service cannot be reached; retry shortly\n".to_owned()
        }
        RefusalKind::NoIdentity => format!("{what} ({reason})\n"),
    };
    let mut resp = response(status, "text/plain; charset=utf-8", text);
    resp.headers_mut().extend(headers);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_durations_are_written_as_openai_does() {
        assert_eq!(openai_duration(0), "0s");
        assert_eq!(openai_duration(59), "59s");
        assert_eq!(openai_duration(360), "6m0s");
        assert_eq!(openai_duration(3723), "1h2m3s");
    }

    #[test]
    fn ratelimit_headers_follow_the_httpapi_draft() {
        let mut h = QuotaHeaders::new();
        let policy =
            portcullis_policy::quota::rate_limit_policy_header("per-client", 100, 100.0 / 60.0);
        ratelimit_headers(&mut h, "per-client", policy, 42, 7);
        assert_eq!(h[0].0, "ratelimit-policy");
        assert_eq!(h[0].1, "\"per-client\";q=100;w=60");
        assert_eq!(h[1].1, "\"per-client\";r=42;t=7");
    }
}
