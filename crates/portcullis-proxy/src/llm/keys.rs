//! Which provider key a call uses: the lowest priority first, keys of equal priority in
//! turn, skipping keys out of rotation. A key the provider refuses (401, or 429) is
//! taken out for the route's cooldown, or for a 429's `Retry-After` when it gives one (up
//! to [`MAX_COOLDOWN`]). Shared by every worker of the process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portcullis_policy::llm::LlmRoute;

use super::metrics::GenAiMetrics;

/// The longest a key is kept out, whatever `Retry-After` says.
pub const MAX_COOLDOWN: Duration = Duration::from_secs(600);

/// Why a key was taken out of rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CooldownReason {
    /// 401: the provider does not accept the key.
    Unauthorized,
    /// 429: the key's quota or rate limit is spent.
    RateLimited,
}

impl CooldownReason {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            CooldownReason::Unauthorized => "unauthorized",
            CooldownReason::RateLimited => "rate_limited",
        }
    }
}

/// Cooldowns of every route's keys, by `(route, key name)`.
#[derive(Default)]
pub struct KeyPools {
    /// Until when each key rests: route -> key name -> instant. Looked up by `&str` on
    /// every call (no allocation); written only when a key is refused.
    cooling: Mutex<Rests>,
    turn: AtomicUsize,
}

/// Until when each key rests, by route and key name.
type Rests = HashMap<Arc<str>, HashMap<Arc<str>, Instant>>;

/// Until when key `name` of `route` rests, if it still does at `now`.
fn resting(cooling: &Rests, route: &str, name: &str, now: Instant) -> Option<Instant> {
    cooling.get(route)?.get(name).copied().filter(|t| *t > now)
}

impl KeyPools {
    /// The index (in `llm.keys`) of the key to use next, skipping `tried`; or, when every
    /// key is cooling down, how long until the first one is back.
    pub fn pick(
        &self,
        route: &str,
        llm: &LlmRoute,
        tried: &[usize],
        now: Instant,
    ) -> Result<usize, Duration> {
        let cooling = self
            .cooling
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let until = |name: &str| resting(&cooling, route, name, now);
        let available: Vec<usize> = (0..llm.keys.len())
            .filter(|i| !tried.contains(i) && until(&llm.keys[*i].name).is_none())
            .collect();
        let Some(&first) = available.first() else {
            let soonest = llm
                .keys
                .iter()
                .filter_map(|k| until(&k.name))
                .min()
                .map_or(Duration::from_secs(1), |t| t - now);
            return Err(soonest);
        };
        // `keys` is sorted by priority: take turns among the best available priority.
        let best = llm.keys[first].priority;
        let same: Vec<usize> = available
            .into_iter()
            .filter(|i| llm.keys[*i].priority == best)
            .collect();
        let n = self.turn.fetch_add(1, Ordering::Relaxed);
        Ok(same[n % same.len()])
    }

    /// Takes key `index` of `llm` out of rotation for `retry_after` when the provider gave
    /// one, else `llm.cooldown` (bounded by [`MAX_COOLDOWN`]). Returns how long.
    pub fn cool_down(
        &self,
        route: &str,
        llm: &LlmRoute,
        index: usize,
        reason: CooldownReason,
        retry_after: Option<Duration>,
        metrics: &GenAiMetrics,
    ) -> Duration {
        let key = &llm.keys[index];
        let span = retry_after.unwrap_or(llm.cooldown).min(MAX_COOLDOWN);
        self.cooling
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(Arc::from(route))
            .or_default()
            .insert(key.name.clone(), Instant::now() + span);
        metrics
            .key_cooldowns
            .with_label_values(&[route, &key.name, reason.as_str()])
            .inc();
        tracing::warn!(
            route,
            key = %key.name,
            reason = reason.as_str(),
            cooldown_s = span.as_secs(),
            "provider key taken out of rotation"
        );
        self.report(route, llm, metrics);
        span
    }

    /// Sets the key-pool gauge of `route`.
    pub fn report(&self, route: &str, llm: &LlmRoute, metrics: &GenAiMetrics) {
        let now = Instant::now();
        let cooling = self
            .cooling
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = llm
            .keys
            .iter()
            .filter(|k| resting(&cooling, route, &k.name, now).is_some())
            .count();
        metrics
            .provider_keys
            .with_label_values(&[route, "cooling"])
            .set(n as i64);
        metrics
            .provider_keys
            .with_label_values(&[route, "available"])
            .set((llm.keys.len() - n) as i64);
    }
}
