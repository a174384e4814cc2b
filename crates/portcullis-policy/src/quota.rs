//! Compiled quotas of a TokenPolicy: LLM token budgets and request rate limits, with the
//! calendar windows budgets renew in. Pure: the proxy reserves and settles against slices
//! it leases ([`crate::ledger`]), the controller's leader holds the ledger.

use std::collections::HashMap;
use std::sync::Arc;

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use portcullis_api::{
    BudgetCount, BudgetWindow, LlmBudgetSpec, QuotaKey, RateLimitSpec, RatePeriod, WhenUnreachable,
};

use crate::principal::Principal;

/// The `max_tokens` a budgeted call without one gets, unless the budget says otherwise.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// What a proxy does when the controller cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailMode {
    /// Refuse what leased slices cannot cover.
    Closed,
    /// Admit up to `allowance` per consumer and window on this proxy alone.
    Open {
        /// Per consumer and window, on each proxy.
        allowance: u64,
    },
}

/// What budgets and rate limits share.
#[derive(Debug, Clone)]
pub struct QuotaCommon {
    /// `namespace/policy/name`: the ledger's key and the metric label.
    pub id: Arc<str>,
    /// `namespace/policy`.
    pub policy: Arc<str>,
    /// The quota's name in the policy.
    pub name: Arc<str>,
    /// Whose calls share an allowance.
    pub key: QuotaKey,
    /// The allowance of a consumer without an override.
    pub limit: u64,
    /// Allowances by consumer.
    pub overrides: HashMap<Box<str>, u64>,
    /// Without the controller.
    pub fail: FailMode,
}

impl QuotaCommon {
    /// The allowance of `consumer`.
    pub fn limit_for(&self, consumer: &str) -> u64 {
        if self.overrides.is_empty() {
            return self.limit;
        }
        self.overrides.get(consumer).copied().unwrap_or(self.limit)
    }

    /// The identity the quota counts `principal` under; `None` when it has none (the call
    /// cannot be accounted, so it is refused).
    pub fn identity<'p>(&self, principal: Option<&'p Principal>) -> Option<&'p str> {
        let p = principal?;
        match self.key {
            QuotaKey::Subject => p.subject.as_deref(),
            QuotaKey::Consumer => p.consumer.as_deref(),
        }
        .filter(|s| !s.is_empty())
    }
}

/// A budget's renewal window.
#[derive(Debug, Clone)]
pub struct Window {
    /// The unit.
    pub unit: BudgetWindow,
    /// The zone calendar units follow.
    pub zone: TimeZone,
}

impl Window {
    /// `[start, end)` of the window holding `now`, in seconds since the epoch.
    ///
    /// Minutes and hours are fixed lengths of absolute time (UTC clock minutes and hours).
    /// Days and months are calendar units of the zone: a day starts at local midnight and
    /// lasts 23 or 25 hours across a daylight-saving change; a month starts on the 1st. A
    /// local midnight that does not exist (a zone that skips it) starts at the first
    /// instant after the gap.
    pub fn bounds(&self, now: i64) -> (i64, i64) {
        match self.unit {
            BudgetWindow::Minute => (now.div_euclid(60) * 60, now.div_euclid(60) * 60 + 60),
            BudgetWindow::Hour => (
                now.div_euclid(3600) * 3600,
                now.div_euclid(3600) * 3600 + 3600,
            ),
            BudgetWindow::Day | BudgetWindow::Month => {
                let Ok(ts) = Timestamp::from_second(now) else {
                    return (now, now + 86_400);
                };
                let date = ts.to_zoned(self.zone.clone()).date();
                let (start, next) = match self.unit {
                    BudgetWindow::Day => (date, date.tomorrow().unwrap_or(date)),
                    _ => {
                        let first = date.first_of_month();
                        (first, first.checked_add(1.month()).unwrap_or(first))
                    }
                };
                let at = |d: Date| -> i64 {
                    self.zone
                        .to_ambiguous_timestamp(DateTime::from_parts(d, Time::midnight()))
                        .later()
                        .map_or(now, |t| t.as_second())
                };
                (at(start), at(next))
            }
        }
    }
}

/// An LLM token budget.
#[derive(Debug, Clone)]
pub struct Budget {
    /// Identity, allowance, overrides, fail mode.
    pub common: QuotaCommon,
    /// What counts.
    pub count: BudgetCount,
    /// The window.
    pub window: Window,
    /// Public model names it applies to; empty: all.
    pub models: Box<[Box<str>]>,
    /// `max_tokens` for a call that names none.
    pub default_max_tokens: u64,
}

impl Budget {
    /// Whether the budget applies to calls of `model`.
    pub fn applies_to(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|m| &**m == model)
    }

    /// What a call counts against this budget, from its input and output tokens.
    pub fn charge(&self, input: u64, output: u64) -> u64 {
        match self.count {
            BudgetCount::Total => input.saturating_add(output),
            BudgetCount::Input => input,
            BudgetCount::Output => output,
        }
    }
}

/// A request rate limit: a token bucket of `burst` that refills at `limit` per `period`.
#[derive(Debug, Clone)]
pub struct RateLimit {
    /// Identity, rate (requests per period), overrides, fail mode.
    pub common: QuotaCommon,
    /// The period in seconds.
    pub period_secs: u64,
    /// The bucket's size, for a consumer without an override (an override scales it).
    pub burst: u64,
    /// `RateLimit-Policy` for a consumer without an override, made once.
    pub policy_header: http::HeaderValue,
}

impl RateLimit {
    /// The bucket of `consumer`: (capacity, refill per second).
    pub fn bucket_for(&self, consumer: &str) -> (u64, f64) {
        let rate = self.common.limit_for(consumer);
        let capacity = if rate == self.common.limit {
            self.burst
        } else {
            // An override keeps the policy's burst-to-rate proportion.
            ((self.burst as f64) * (rate as f64) / (self.common.limit.max(1) as f64)).ceil() as u64
        };
        (capacity.max(1), rate as f64 / self.period_secs as f64)
    }
}

/// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers) of a bucket: its size as the
/// quota `q` and the seconds it takes to refill as the window `w`.
pub fn rate_limit_policy_header(name: &str, capacity: u64, rate: f64) -> http::HeaderValue {
    let window = if rate > 0.0 {
        ((capacity as f64 / rate).ceil() as u64).max(1)
    } else {
        1
    };
    http::HeaderValue::from_str(&format!("\"{name}\";q={capacity};w={window}"))
        .unwrap_or_else(|_| http::HeaderValue::from_static("\"quota\""))
}

/// Every quota of a policy.
#[derive(Debug, Clone, Default)]
pub struct Quotas {
    /// LLM token budgets.
    pub budgets: Vec<Budget>,
    /// Request rate limits.
    pub rate_limits: Vec<RateLimit>,
}

impl Quotas {
    /// No quota at all.
    pub fn is_empty(&self) -> bool {
        self.budgets.is_empty() && self.rate_limits.is_empty()
    }
}

/// A quota field that does not compile: `(path, message)`.
pub type QuotaError = (String, String);

fn fail_mode(
    mode: WhenUnreachable,
    allowance: Option<u64>,
    at: &str,
    errs: &mut Vec<QuotaError>,
) -> FailMode {
    match (mode, allowance) {
        (WhenUnreachable::FailClosed, None) => FailMode::Closed,
        (WhenUnreachable::FailClosed, Some(_)) => {
            errs.push((
                format!("{at}.localAllowance"),
                "localAllowance applies only with whenUnreachable: failOpen".into(),
            ));
            FailMode::Closed
        }
        (WhenUnreachable::FailOpen, a) => FailMode::Open {
            allowance: a.unwrap_or(0),
        },
    }
}

fn overrides(
    list: &[portcullis_api::QuotaOverride],
    at: &str,
    errs: &mut Vec<QuotaError>,
) -> HashMap<Box<str>, u64> {
    let mut map = HashMap::new();
    for (i, o) in list.iter().enumerate() {
        if map.insert(o.consumer.as_str().into(), o.limit).is_some() {
            errs.push((
                format!("{at}.overrides[{i}].consumer"),
                format!("the consumer {:?} has two overrides", o.consumer),
            ));
        }
    }
    map
}

/// Compiles `spec.llmBudgets` and `spec.rateLimits` of the policy `policy`
/// (`namespace/name`).
pub fn compile_quotas(
    policy: &str,
    budgets: &[LlmBudgetSpec],
    rate_limits: &[RateLimitSpec],
) -> Result<Quotas, Vec<QuotaError>> {
    let mut errs = Vec::new();
    let mut names = std::collections::HashSet::new();
    let policy_id: Arc<str> = policy.into();
    let mut out = Quotas::default();
    for (i, b) in budgets.iter().enumerate() {
        let at = format!("spec.llmBudgets[{i}]");
        if !names.insert(b.name.as_str()) {
            errs.push((
                format!("{at}.name"),
                format!(
                    "the name {:?} is used by another quota of this policy",
                    b.name
                ),
            ));
        }
        if b.tokens == 0 {
            errs.push((format!("{at}.tokens"), "tokens must be at least 1".into()));
        }
        let zone = match b.time_zone.as_deref() {
            None | Some("UTC") => TimeZone::UTC,
            Some(name) => match jiff::tz::db().get(name) {
                Ok(z) => z,
                Err(_) => {
                    errs.push((
                        format!("{at}.timeZone"),
                        format!("{name:?} is not an IANA time zone (e.g. Europe/Paris)"),
                    ));
                    TimeZone::UTC
                }
            },
        };
        if b.default_max_tokens == Some(0) {
            errs.push((
                format!("{at}.defaultMaxTokens"),
                "defaultMaxTokens must be at least 1".into(),
            ));
        }
        out.budgets.push(Budget {
            common: QuotaCommon {
                id: format!("{policy}/{}", b.name).into(),
                policy: policy_id.clone(),
                name: b.name.as_str().into(),
                key: b.key,
                limit: b.tokens,
                overrides: overrides(&b.overrides, &at, &mut errs),
                fail: fail_mode(b.when_unreachable, b.local_allowance, &at, &mut errs),
            },
            count: b.count,
            window: Window {
                unit: b.window,
                zone,
            },
            models: b.models.iter().map(|m| m.as_str().into()).collect(),
            default_max_tokens: b.default_max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        });
    }
    for (i, r) in rate_limits.iter().enumerate() {
        let at = format!("spec.rateLimits[{i}]");
        if !names.insert(r.name.as_str()) {
            errs.push((
                format!("{at}.name"),
                format!(
                    "the name {:?} is used by another quota of this policy",
                    r.name
                ),
            ));
        }
        if r.requests == 0 {
            errs.push((
                format!("{at}.requests"),
                "requests must be at least 1".into(),
            ));
        }
        if r.burst == Some(0) {
            errs.push((format!("{at}.burst"), "burst must be at least 1".into()));
        }
        out.rate_limits.push(RateLimit {
            common: QuotaCommon {
                id: format!("{policy}/{}", r.name).into(),
                policy: policy_id.clone(),
                name: r.name.as_str().into(),
                key: r.key,
                limit: r.requests,
                overrides: overrides(&r.overrides, &at, &mut errs),
                fail: fail_mode(r.when_unreachable, r.local_allowance, &at, &mut errs),
            },
            period_secs: match r.period {
                RatePeriod::Second => 1,
                RatePeriod::Minute => 60,
                RatePeriod::Hour => 3600,
            },
            burst: r.burst.unwrap_or(r.requests),
            policy_header: http::HeaderValue::from_static(""),
        });
        let rl = out.rate_limits.last_mut().expect("just pushed");
        let (capacity, rate) = (
            rl.burst.max(1),
            rl.common.limit as f64 / rl.period_secs as f64,
        );
        rl.policy_header = rate_limit_policy_header(&rl.common.name, capacity, rate);
    }
    if errs.is_empty() { Ok(out) } else { Err(errs) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> i64 {
        s.parse::<Timestamp>().unwrap().as_second()
    }

    fn window(unit: BudgetWindow, zone: &str) -> Window {
        Window {
            unit,
            zone: jiff::tz::db().get(zone).unwrap(),
        }
    }

    #[test]
    fn a_month_in_paris_runs_from_local_midnight_on_the_first() {
        let w = window(BudgetWindow::Month, "Europe/Paris");
        // 2026-01-31 23:30 UTC is already February 1st, 00:30 in Paris (UTC+1).
        let (start, end) = w.bounds(ts("2026-01-31T23:30:00Z"));
        assert_eq!(start, ts("2026-01-31T23:00:00Z"));
        assert_eq!(end, ts("2026-02-28T23:00:00Z"));
        // One second before, it is still January there.
        let (start, end) = w.bounds(ts("2026-01-31T22:59:59Z"));
        assert_eq!(start, ts("2025-12-31T23:00:00Z"));
        assert_eq!(end, ts("2026-01-31T23:00:00Z"));
    }

    #[test]
    fn a_month_across_the_spring_change_is_an_hour_short() {
        // March 2026 in Paris: UTC+1 until the 29th, UTC+2 after (CEST).
        let w = window(BudgetWindow::Month, "Europe/Paris");
        let (start, end) = w.bounds(ts("2026-03-15T12:00:00Z"));
        assert_eq!(start, ts("2026-02-28T23:00:00Z"));
        assert_eq!(end, ts("2026-03-31T22:00:00Z"));
        assert_eq!(end - start, 31 * 86_400 - 3600);
    }

    #[test]
    fn days_across_daylight_saving_changes_last_23_and_25_hours() {
        let w = window(BudgetWindow::Day, "America/New_York");
        // 2026-03-08: clocks go from 02:00 to 03:00 (EST -> EDT).
        let (start, end) = w.bounds(ts("2026-03-08T12:00:00Z"));
        assert_eq!(start, ts("2026-03-08T05:00:00Z"));
        assert_eq!(end - start, 23 * 3600);
        // 2026-11-01: clocks go from 02:00 back to 01:00 (EDT -> EST).
        let (start, end) = w.bounds(ts("2026-11-01T12:00:00Z"));
        assert_eq!(start, ts("2026-11-01T04:00:00Z"));
        assert_eq!(end - start, 25 * 3600);
    }

    #[test]
    fn a_midnight_that_does_not_exist_starts_the_day_after_the_gap() {
        // America/Santiago skips 00:00-01:00 on 2026-09-06 (spring forward at midnight).
        let w = window(BudgetWindow::Day, "America/Santiago");
        let (start, end) = w.bounds(ts("2026-09-06T12:00:00Z"));
        // 01:00 local, UTC-3.
        assert_eq!(start, ts("2026-09-06T04:00:00Z"));
        assert!(end > start && end - start == 23 * 3600, "{}", end - start);
    }

    #[test]
    fn minutes_and_hours_are_absolute() {
        let w = window(BudgetWindow::Minute, "Asia/Kolkata");
        assert_eq!(w.bounds(125), (120, 180));
        let w = window(BudgetWindow::Hour, "Asia/Kolkata");
        assert_eq!(w.bounds(7199), (3600, 7200));
    }

    #[test]
    fn bad_quota_fields_are_named() {
        let b: LlmBudgetSpec = serde_json::from_value(serde_json::json!({
            "name": "m", "tokens": 0, "window": "month", "timeZone": "Mars/Olympus",
            "localAllowance": 5,
            "overrides": [{"consumer": "a", "limit": 1}, {"consumer": "a", "limit": 2}]
        }))
        .unwrap();
        let errs = compile_quotas("ns/p", &[b.clone(), b], &[]).unwrap_err();
        let paths: Vec<&str> = errs.iter().map(|(p, _)| p.as_str()).collect();
        for want in [
            "spec.llmBudgets[0].tokens",
            "spec.llmBudgets[0].timeZone",
            "spec.llmBudgets[0].localAllowance",
            "spec.llmBudgets[0].overrides[1].consumer",
            "spec.llmBudgets[1].name",
        ] {
            assert!(paths.contains(&want), "{want} missing from {errs:?}");
        }
    }

    #[test]
    fn an_override_scales_the_burst() {
        let r: RateLimitSpec = serde_json::from_value(serde_json::json!({
            "name": "r", "requests": 10, "period": "second", "burst": 20,
            "overrides": [{"consumer": "big", "limit": 100}]
        }))
        .unwrap();
        let q = compile_quotas("ns/p", &[], &[r]).unwrap();
        let rl = &q.rate_limits[0];
        assert_eq!(rl.bucket_for("x"), (20, 10.0));
        assert_eq!(rl.bucket_for("big"), (200, 100.0));
    }
}
