//! Quotas of a `TokenPolicy`: LLM token budgets (`spec.llmBudgets`) and request rate
//! limits (`spec.rateLimits`), per consumer, held across every proxy by slices leased
//! from the controller.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Whose calls a quota counts: one allowance per subject or per consumer.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
#[serde(rename_all = "camelCase")]
pub enum QuotaKey {
    /// The token's `sub` claim (an API key's consumer).
    Subject,
    /// The consumer the call is accounted to: an API key's `consumer`, or a token's
    /// `client_id` (else `azp`).
    #[default]
    Consumer,
}

/// What a budget counts.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
#[serde(rename_all = "camelCase")]
pub enum BudgetCount {
    /// Prompt and completion tokens together.
    #[default]
    Total,
    /// Prompt (input) tokens.
    Input,
    /// Completion (output) tokens.
    Output,
}

/// The window a budget's allowance renews in. `minute` and `hour` are UTC clock minutes
/// and hours. `day` and `month` are calendar units of `timeZone`: a `day` starts at local
/// midnight (so it lasts 23 or 25 hours on a daylight-saving change), a `month` on the 1st
/// at midnight.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum BudgetWindow {
    /// A clock minute.
    Minute,
    /// A clock hour.
    Hour,
    /// A calendar day.
    Day,
    /// A calendar month.
    Month,
}

/// What a proxy does when it cannot reach the controller to lease more of a quota.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
#[serde(rename_all = "camelCase")]
pub enum WhenUnreachable {
    /// Refuse what the slices already leased cannot cover (503 with `Retry-After`).
    #[default]
    FailClosed,
    /// Admit up to `localAllowance` per consumer and window on each proxy, and report
    /// what was used when the controller is back. The overshoot is then bounded by
    /// `localAllowance` times the number of proxies.
    FailOpen,
}

/// A different allowance for one consumer.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct QuotaOverride {
    /// The consumer (or subject, per the quota's `key`) this allowance is for.
    #[schemars(length(min = 1, max = 256))]
    pub consumer: String,
    /// Its allowance per window: tokens for a budget, requests for a rate limit.
    pub limit: u64,
}

/// An LLM token budget: how many tokens each consumer may use per window on the LLM
/// routes that use this policy. A call reserves its worst case before it is sent (the
/// prompt's size in bytes, an upper bound of its tokens, plus `max_tokens`) and is settled
/// from the usage the provider reports, so concurrent calls cannot overrun the budget.
/// Over budget: 429 with `Retry-After` and `x-ratelimit-*-tokens` headers.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LlmBudgetSpec {
    /// The budget's name, unique in the policy: metric label, status key and the name in
    /// error messages.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("llmBudgets[].name must be a DNS label, e.g. monthly-tokens"))]
    pub name: String,

    /// Whose calls share one allowance: `consumer` (default) or `subject`. A call
    /// without that identity is refused (403): it cannot be accounted.
    #[serde(default)]
    pub key: QuotaKey,

    /// Tokens each consumer may use per window.
    pub tokens: u64,

    /// What counts: `total` (default), `input` or `output` tokens.
    #[serde(default)]
    pub count: BudgetCount,

    /// The window: `minute`, `hour`, `day` or `month`.
    pub window: BudgetWindow,

    /// The IANA time zone `day` and `month` windows follow (e.g. `Europe/Paris`). Default
    /// `UTC`.
    #[schemars(length(max = 64))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,

    /// Public model names the budget applies to. Empty: every model of the route.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,

    /// Consumers with an allowance other than `tokens`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<QuotaOverride>,

    /// The `max_tokens` set on a call that names none: the reservation's completion part.
    /// Lowered to what the consumer has left, so the call still fits. Default 4096.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_max_tokens: Option<u64>,

    /// When the controller cannot be reached: `failClosed` (default) or `failOpen`.
    #[serde(default)]
    pub when_unreachable: WhenUnreachable,

    /// With `failOpen`: tokens per consumer and window each proxy may admit on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_allowance: Option<u64>,
}

/// The period a rate limit counts requests over.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum RatePeriod {
    /// Per second.
    Second,
    /// Per minute.
    Minute,
    /// Per hour.
    Hour,
}

/// A request rate limit per consumer on every route that uses this policy, whatever the
/// credential (JWT, introspected token, API key; `auth: none` rules have no caller to count
/// and are not limited): a token bucket that refills at
/// `requests` per `period` and holds at most `burst`. Over the limit: 429 with
/// `Retry-After`, `RateLimit` and `RateLimit-Policy` headers.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitSpec {
    /// The limit's name, unique in the policy.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("rateLimits[].name must be a DNS label, e.g. per-client"))]
    pub name: String,

    /// Whose requests share one limit: `consumer` (default) or `subject`.
    #[serde(default)]
    pub key: QuotaKey,

    /// Requests per period.
    #[schemars(range(min = 1))]
    pub requests: u64,

    /// `second`, `minute` or `hour`.
    pub period: RatePeriod,

    /// Most requests admitted at once after a quiet spell. Default `requests`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,

    /// Consumers with a rate (`limit` requests per period) other than `requests`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<QuotaOverride>,

    /// When the controller cannot be reached: `failClosed` (default) or `failOpen`.
    #[serde(default)]
    pub when_unreachable: WhenUnreachable,

    /// With `failOpen`: requests per consumer and period each proxy may admit on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_allowance: Option<u64>,
}

/// One consumer's use of a budget in the current window, as the controller's ledger holds
/// it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct QuotaUse {
    /// The consumer.
    pub consumer: String,
    /// Tokens used or held by proxies in the window.
    pub used: u64,
    /// The consumer's allowance.
    pub limit: u64,
}

/// A budget's use, in the TokenPolicy's status.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BudgetStatus {
    /// The budget's name.
    pub name: String,
    /// Start of the current window, RFC 3339.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub window_start: String,
    /// Consumers seen in the window.
    pub consumers: u64,
    /// The consumers who used the most, at most ten, most first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top: Vec<QuotaUse>,
}
