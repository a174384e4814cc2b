//! Quotas on the proxy: admission against slices leased from the ledger.
//!
//! A call reserves what it may use from the slice this proxy holds for its consumer's
//! slot; when the slice is short the proxy leases more ([`LeaseBackend`]: the controller
//! over the config stream, or an in-process ledger in standalone mode) and the call waits
//! for the answer. The reservation is settled when the call ends: what it did not use goes
//! back into the slice, use beyond it is reported to the ledger. Slices unused for a
//! while are given back so other proxies can lease them.
//!
//! Slice sizes adapt: a slice that lasted under a second doubles the next one (up to a
//! quarter of the allowance), one that lasted over five seconds halves it; so the lease
//! rate stays near one per second per busy slot whatever the request rate.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::future::BoxFuture;
use portcullis_api::push::{Grant, LeaseAsk, ProxyMessage, QuotaShape, QuotaSlot, Release};
use portcullis_policy::ledger::{Leased, Ledger};
use portcullis_policy::quota::{FailMode, QuotaCommon};
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::metrics::ConsumerLabels;
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

/// How long a call waits for a lease before the controller counts as unreachable.
pub const LEASE_TIMEOUT: Duration = Duration::from_secs(2);
/// A slice unused this long is given back.
pub const IDLE_RETURN: Duration = Duration::from_secs(2);

/// Where slices come from.
pub trait LeaseBackend: Send + Sync {
    /// Asks for a slice; `None` when the ledger cannot be reached.
    fn lease(&self, ask: LeaseAsk) -> BoxFuture<'static, Option<Grant>>;
    /// Gives back; false when it could not be sent (kept and sent again later).
    fn release(&self, r: Release) -> bool;
}

/// Standalone mode: the ledger is in this process.
#[derive(Default)]
pub struct LocalLedger(Mutex<Ledger>);

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl LeaseBackend for LocalLedger {
    fn lease(&self, ask: LeaseAsk) -> BoxFuture<'static, Option<Grant>> {
        let mut l = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = now_secs();
        l.prune(now);
        let g = match l.lease(&ask, now) {
            Leased::Grant(g) => Some(g),
            Leased::NeedsCheckpoint => None,
        };
        Box::pin(async move { g })
    }

    fn release(&self, r: Release) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .release(&r, now_secs());
        true
    }
}

/// Cluster mode: leases travel over the config stream that is up, if any.
pub struct ControllerLeases {
    outgoing: Arc<Mutex<Option<mpsc::Sender<Bytes>>>>,
    pending: Mutex<HashMap<u64, Pending>>,
    next: AtomicU64,
}

/// A lease waiting for its grant. A grant that comes after the call stopped waiting is
/// given back at once: the ledger counts it as held, and no call will use it.
struct Pending {
    tx: oneshot::Sender<Grant>,
    ask: LeaseAsk,
    at: Instant,
}

/// A lease unanswered this long is forgotten (its stream broke): a grant for it after
/// that is dropped.
const PENDING_MAX_AGE: Duration = Duration::from_secs(60);

impl ControllerLeases {
    /// Leases over `outgoing` (set while a stream is up).
    pub fn new(outgoing: Arc<Mutex<Option<mpsc::Sender<Bytes>>>>) -> Self {
        Self {
            outgoing,
            pending: Mutex::default(),
            next: AtomicU64::new(1),
        }
    }

    fn send(&self, msg: &ProxyMessage) -> bool {
        crate::subscriber::send_message(&self.outgoing, msg)
    }

    /// The controller's answer to lease `id`.
    pub fn on_grant(&self, id: u64, grant: Grant) {
        let Some(p) = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id)
        else {
            return;
        };
        if let Err(late) = p.tx.send(grant)
            && late.granted > 0
        {
            // The call gave up waiting: hand the slice back rather than strand it.
            self.send(&ProxyMessage::Release(Release {
                slot: p.ask.slot,
                unused: late.granted,
                over: 0,
                end: p.ask.shape.end(),
                limit: p.ask.limit,
            }));
        }
    }
}

impl LeaseBackend for Arc<ControllerLeases> {
    fn lease(&self, ask: LeaseAsk) -> BoxFuture<'static, Option<Grant>> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending.retain(|_, p| p.at.elapsed() < PENDING_MAX_AGE);
            pending.insert(
                id,
                Pending {
                    tx,
                    ask: ask.clone(),
                    at: Instant::now(),
                },
            );
        }
        let sent = self.send(&ProxyMessage::Lease { id, ask });
        if !sent {
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
        }
        Box::pin(async move {
            if !sent {
                return None;
            }
            // On a timeout the entry stays: a late grant is given back by `on_grant`.
            tokio::time::timeout(LEASE_TIMEOUT, rx)
                .await
                .ok()
                .and_then(Result::ok)
        })
    }

    fn release(&self, r: Release) -> bool {
        self.send(&ProxyMessage::Release(r))
    }
}

/// The quota metrics.
#[derive(Clone)]
pub struct QuotaMetrics {
    /// Decisions by policy, quota, kind (`budget`, `rate_limit`) and result.
    pub requests: IntCounterVec,
    /// What a consumer has left, as this proxy last learned it.
    pub remaining: IntGaugeVec,
    /// A consumer's allowance.
    pub limit: IntGaugeVec,
    /// Lease requests by result.
    pub leases: IntCounterVec,
    /// Budget tokens by type: `reserved`, `used`, `returned`, `over`.
    pub tokens: IntCounterVec,
}

impl QuotaMetrics {
    /// Creates and registers the metrics.
    pub fn new(registry: &Registry) -> Self {
        fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
            r.register(Box::new(c.clone()))
                .expect("quota metrics register once");
            c
        }
        Self {
            requests: reg(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "portcullis_quota_requests_total",
                        "Quota decisions, by policy, quota, kind (budget, rate_limit) and result (admitted, exhausted, unreachable, no_identity, local_allowance).",
                    ),
                    &["policy", "quota", "kind", "result"],
                )
                .expect("valid metric"),
            ),
            remaining: reg(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "portcullis_quota_remaining",
                        "What a consumer has left of a quota in its window (tokens or requests), as this proxy last learned it; consumer hashed and capped.",
                    ),
                    &["policy", "quota", "consumer"],
                )
                .expect("valid metric"),
            ),
            limit: reg(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "portcullis_quota_limit",
                        "A consumer's allowance of a quota per window (tokens, or the bucket size of a rate limit).",
                    ),
                    &["policy", "quota", "consumer"],
                )
                .expect("valid metric"),
            ),
            leases: reg(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "portcullis_quota_lease_requests_total",
                        "Slices asked of the ledger, by result (granted, partial, denied, timeout, unreachable).",
                    ),
                    &["result"],
                )
                .expect("valid metric"),
            ),
            tokens: reg(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "portcullis_quota_tokens_total",
                        "Budget tokens by policy, quota and type: reserved by calls, used, returned to the slice, over (used beyond the reservation).",
                    ),
                    &["policy", "quota", "type"],
                )
                .expect("valid metric"),
            ),
        }
    }
}

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// The consumer's allowance is spent (429).
    Exhausted,
    /// The ledger could not be reached and the quota fails closed (503).
    Unreachable,
    /// The call has no identity to count it under (403).
    NoIdentity,
}

impl RefusalKind {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalKind::Exhausted => "exhausted",
            RefusalKind::Unreachable => "unreachable",
            RefusalKind::NoIdentity => "no_identity",
        }
    }
}

/// A refused call, with what the headers say.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// Why.
    pub kind: RefusalKind,
    /// The allowance.
    pub limit: u64,
    /// Left (as far as this proxy knows).
    pub remaining: u64,
    /// Seconds until the call could succeed.
    pub retry_after: u64,
}

/// An admitted call's hold on a slot, settled when the call ends.
#[derive(Debug)]
pub struct Ticket {
    quota: Arc<str>,
    consumer: Arc<str>,
    window: i64,
    /// Reserved.
    pub reserved: u64,
    /// Of `reserved`, what came from the local allowance (the ledger was unreachable).
    offline: u64,
    end: i64,
    /// The allowance.
    pub limit: u64,
    /// Left after this reservation (as far as this proxy knows).
    pub remaining: u64,
    /// Seconds until the window (or bucket) renews.
    pub reset_in: u64,
}

impl Ticket {
    fn slot(&self) -> QuotaSlot {
        QuotaSlot {
            quota: self.quota.to_string(),
            consumer: self.consumer.to_string(),
            window: self.window,
        }
    }
}

struct Slice {
    /// The consumer, shared with the map key and the tickets.
    consumer: Arc<str>,
    window: i64,
    /// Leased and not reserved.
    available: u64,
    /// Left in the ledger at the last grant.
    ledger_remaining: u64,
    reset: i64,
    /// What the next lease asks for beyond the need.
    size: u64,
    last_lease: Option<Instant>,
    last_use: Instant,
    /// Admitted on the local allowance while the ledger was unreachable, this window
    /// (for a bucket: since `offline_since`, reset after a refill period).
    offline_used: u64,
    offline_since: Option<Instant>,
    /// A bucket's refill period (limit / rate), seconds.
    refill_secs: f64,
    /// Use not yet reported (beyond reservations, or on the local allowance).
    pending_over: u64,
    /// Reserved from leased slices by calls still running: refunds may come soon.
    in_flight: u64,
    end: i64,
    limit: u64,
    admitted: IntCounter,
    remaining_gauge: IntGauge,
    limit_gauge: IntGauge,
    /// `portcullis_quota_tokens_total` by type: reserved, used, returned, over.
    tokens: [IntCounter; 4],
}

/// Fast, DoS-resistant hashing (foldhash, seeded per process): slots are looked up on
/// every admitted call.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type Slices = Map<Arc<str>, Map<Arc<str>, Slice>>;

/// Admission and settlement against leased slices.
pub struct QuotaClient {
    backend: Arc<dyn LeaseBackend>,
    slices: Mutex<Slices>,
    /// Metrics.
    pub metrics: QuotaMetrics,
}

/// What to reserve in a slot.
pub struct Reserve<'a> {
    /// The quota.
    pub quota: &'a QuotaCommon,
    /// `budget` or `rate_limit`, for metrics.
    pub kind: &'static str,
    /// The consumer.
    pub consumer: &'a str,
    /// Hashed, capped metric labels of consumers.
    pub labels: &'a ConsumerLabels,
    /// Start of the window (0 for a bucket).
    pub window: i64,
    /// How it renews.
    pub shape: QuotaShape,
    /// The consumer's allowance (or bucket size).
    pub limit: u64,
    /// At least this.
    pub min: u64,
    /// At most this.
    pub max: u64,
}

impl QuotaClient {
    /// A client leasing from `backend`.
    pub fn new(backend: Arc<dyn LeaseBackend>, registry: &Registry) -> Self {
        Self::with_metrics(backend, QuotaMetrics::new(registry))
    }

    /// A client leasing from `backend`, counting on `metrics` already registered.
    pub fn with_metrics(backend: Arc<dyn LeaseBackend>, metrics: QuotaMetrics) -> Self {
        Self {
            backend,
            slices: Mutex::default(),
            metrics,
        }
    }

    fn count(&self, r: &Reserve<'_>, result: &str) {
        self.metrics
            .requests
            .with_label_values(&[&r.quota.policy, &r.quota.name, r.kind, result])
            .inc();
    }

    /// Counts a call refused for want of an identity.
    pub fn no_identity(&self, quota: &QuotaCommon, kind: &'static str) -> Refusal {
        self.metrics
            .requests
            .with_label_values(&[&quota.policy, &quota.name, kind, "no_identity"])
            .inc();
        Refusal {
            kind: RefusalKind::NoIdentity,
            limit: quota.limit,
            remaining: 0,
            retry_after: 0,
        }
    }

    /// The slice of `r`'s slot, made (or renewed for a new window) when needed.
    fn slice<'s>(
        &self,
        slices: &'s mut Slices,
        r: &Reserve<'_>,
        end: i64,
    ) -> Option<&'s mut Slice> {
        if !slices.contains_key(&*r.quota.id) {
            slices.insert(r.quota.id.clone(), Map::default());
        }
        let by_consumer = slices.get_mut(&*r.quota.id).expect("just inserted");
        if by_consumer
            .get(r.consumer)
            .is_some_and(|s| s.window > r.window)
        {
            // A call of a window that has just ended, racing one of the new window: it
            // must not replace the new window's slice (losing what it holds).
            return None;
        }
        // Absent, or of an old window (what was held of it is void in the new one).
        if by_consumer
            .get(r.consumer)
            .is_none_or(|s| s.window != r.window)
        {
            let consumer: Arc<str> = r.consumer.into();
            let label = r.labels.label(r.consumer);
            let labels = [&*r.quota.policy, &*r.quota.name, &*label];
            let refill_secs = match r.shape {
                QuotaShape::Bucket { rate } if rate > 0.0 => r.limit as f64 / rate,
                // A rate of 0 (an override of 0: the consumer is blocked) never refills.
                QuotaShape::Bucket { .. } => f64::INFINITY,
                _ => 0.0,
            };
            by_consumer.insert(
                consumer.clone(),
                Slice {
                    consumer,
                    window: r.window,
                    available: 0,
                    ledger_remaining: r.limit,
                    reset: end,
                    size: 1,
                    last_lease: None,
                    last_use: Instant::now(),
                    offline_used: 0,
                    offline_since: None,
                    refill_secs,
                    pending_over: 0,
                    in_flight: 0,
                    end,
                    limit: r.limit,
                    admitted: self.metrics.requests.with_label_values(&[
                        &*r.quota.policy,
                        &*r.quota.name,
                        r.kind,
                        "admitted",
                    ]),
                    remaining_gauge: self.metrics.remaining.with_label_values(&labels),
                    limit_gauge: self.metrics.limit.with_label_values(&labels),
                    tokens: ["reserved", "used", "returned", "over"].map(|t| {
                        self.metrics.tokens.with_label_values(&[
                            &*r.quota.policy,
                            &*r.quota.name,
                            t,
                        ])
                    }),
                },
            );
        }
        by_consumer.get_mut(r.consumer)
    }

    /// The refusal of a call of a window that has just ended (see [`QuotaClient::slice`]):
    /// try again at once, in the new window.
    fn ended_window(&self, r: &Reserve<'_>) -> Refusal {
        self.count(r, "exhausted");
        Refusal {
            kind: RefusalKind::Exhausted,
            limit: r.limit,
            remaining: 0,
            retry_after: 1,
        }
    }

    /// Reserves between `min` and `max` (as much of `max` as the slice and the ledger
    /// allow), leasing more when the slice holds less than `max`.
    pub async fn reserve(&self, r: Reserve<'_>) -> Result<Ticket, Refusal> {
        let end = r.shape.end();
        let now = now_secs();
        let (need, want) = {
            let mut slices = self.slices.lock().unwrap_or_else(|e| e.into_inner());
            let Some(s) = self.slice(&mut slices, &r, end) else {
                return Err(self.ended_window(&r));
            };
            s.limit = r.limit;
            s.last_use = Instant::now();
            if s.available >= r.max {
                return Ok(self.take(&r, s, end, now));
            }
            (
                r.min.saturating_sub(s.available),
                (r.max - s.available).saturating_add(s.size),
            )
        };
        let ask = LeaseAsk {
            slot: QuotaSlot {
                quota: r.quota.id.to_string(),
                consumer: r.consumer.to_owned(),
                window: r.window,
            },
            shape: r.shape,
            limit: r.limit,
            need,
            want,
        };
        let grant = self.backend.lease(ask).await.filter(|g| !g.unavailable);
        let mut slices = self.slices.lock().unwrap_or_else(|e| e.into_inner());
        let Some(s) = self.slice(&mut slices, &r, end) else {
            // The window ended while the lease was out: what it brought goes back.
            if let Some(g) = grant.filter(|g| g.granted > 0) {
                let slot = QuotaSlot {
                    quota: r.quota.id.to_string(),
                    consumer: r.consumer.to_owned(),
                    window: r.window,
                };
                self.give_back(slot, g.granted, 0, end, r.limit);
            }
            return Err(self.ended_window(&r));
        };
        let Some(g) = grant else {
            self.metrics
                .leases
                .with_label_values(&["unreachable"])
                .inc();
            if s.available >= r.min {
                return Ok(self.take(&r, s, end, now));
            }
            if let FailMode::Open { allowance } = r.quota.fail {
                if s.offline_since
                    .is_some_and(|t| end == 0 && t.elapsed().as_secs_f64() >= s.refill_secs)
                {
                    // A bucket's allowance renews with each refill period.
                    s.offline_used = 0;
                    s.offline_since = None;
                }
                // Never more than the consumer's own allowance (an override of 0 blocks).
                let room = allowance.min(r.limit).saturating_sub(s.offline_used);
                if s.available.saturating_add(room) >= r.min {
                    let from_slice = s.available.min(r.max);
                    let off = (r.max - from_slice)
                        .min(room)
                        .max(r.min.saturating_sub(from_slice));
                    s.available -= from_slice;
                    s.offline_used = s.offline_used.saturating_add(off);
                    s.offline_since.get_or_insert_with(Instant::now);
                    if r.kind == "rate_limit" {
                        // Used at once: reported when the ledger is back.
                        s.pending_over = s.pending_over.saturating_add(off);
                    } else {
                        s.in_flight = s.in_flight.saturating_add(from_slice);
                    }
                    let remaining = room - off;
                    let reset_in = reset_in(s.reset, now);
                    self.count(&r, "local_allowance");
                    return Ok(Ticket {
                        quota: r.quota.id.clone(),
                        consumer: s.consumer.clone(),
                        window: r.window,
                        reserved: from_slice.saturating_add(off),
                        offline: off,
                        end,
                        limit: r.limit,
                        remaining,
                        reset_in,
                    });
                }
            }
            self.count(&r, "unreachable");
            return Err(Refusal {
                kind: RefusalKind::Unreachable,
                limit: r.limit,
                remaining: s.available,
                retry_after: 1,
            });
        };
        let result = if g.granted == 0 {
            "denied"
        } else if g.granted < want {
            "partial"
        } else {
            "granted"
        };
        self.metrics.leases.with_label_values(&[result]).inc();
        s.available = s.available.saturating_add(g.granted);
        s.ledger_remaining = g.remaining;
        s.reset = g.reset;
        if g.granted > 0 {
            let now_i = Instant::now();
            s.size = match s.last_lease.map(|t| now_i.duration_since(t)) {
                Some(d) if d < Duration::from_secs(1) => {
                    s.size.saturating_mul(2).min((r.limit / 4).max(1))
                }
                Some(d) if d > Duration::from_secs(5) => (s.size / 2).max(1),
                _ => s.size,
            };
            s.last_lease = Some(now_i);
        }
        if s.available >= r.min {
            return Ok(self.take(&r, s, end, now));
        }
        let remaining = s.ledger_remaining.saturating_add(s.available);
        s.remaining_gauge.set(saturate(remaining));
        let retry_after = if s.in_flight > 0 {
            // Calls still running here will give back what they do not use: worth
            // trying again soon rather than at the window's end.
            1
        } else {
            reset_in(s.reset, now).max(1)
        };
        self.count(&r, "exhausted");
        Err(Refusal {
            kind: RefusalKind::Exhausted,
            limit: r.limit,
            remaining,
            retry_after,
        })
    }

    /// Takes what `r` may have of its slice (which holds at least `r.min`).
    fn take(&self, r: &Reserve<'_>, s: &mut Slice, end: i64, now: f64) -> Ticket {
        let n = s.available.min(r.max);
        s.available -= n;
        if r.kind == "budget" {
            s.in_flight = s.in_flight.saturating_add(n);
            s.tokens[0].inc_by(n);
        }
        let remaining = s.ledger_remaining.saturating_add(s.available);
        s.remaining_gauge.set(saturate(remaining));
        s.limit_gauge.set(saturate(r.limit));
        s.admitted.inc();
        Ticket {
            quota: r.quota.id.clone(),
            consumer: s.consumer.clone(),
            window: r.window,
            reserved: n,
            offline: 0,
            end,
            limit: r.limit,
            remaining,
            reset_in: reset_in(s.reset, now),
        }
    }

    fn give_back(&self, slot: QuotaSlot, unused: u64, over: u64, end: i64, limit: u64) -> bool {
        self.backend.release(Release {
            slot,
            unused,
            over,
            end,
            limit,
        })
    }

    /// Settles a budget reservation with what the call used.
    pub fn settle(&self, t: Ticket, used: u64, policy: &str, quota: &str) {
        let mut slices = self.slices.lock().unwrap_or_else(|e| e.into_inner());
        let Some(s) = slices
            .get_mut(&*t.quota)
            .and_then(|m| m.get_mut(&*t.consumer))
            .filter(|s| s.window == t.window)
        else {
            self.metrics
                .tokens
                .with_label_values(&[policy, quota, "used"])
                .inc_by(used);
            // The window is over: only use beyond what was leased matters, for the record.
            let leased = t.reserved - t.offline;
            if used > leased {
                self.give_back(t.slot(), 0, used - leased, t.end, t.limit);
            }
            return;
        };
        let from_slice = t.reserved - t.offline;
        s.in_flight = s.in_flight.saturating_sub(from_slice);
        let used_slice = used.min(from_slice);
        let beyond = used - used_slice;
        s.available = s.available.saturating_add(from_slice - used_slice);
        s.tokens[1].inc_by(used);
        s.tokens[2].inc_by(from_slice - used_slice);
        if t.offline > 0 {
            // The local allowance counts what was used on it, not what was reserved.
            s.offline_used = s
                .offline_used
                .saturating_sub(t.offline)
                .saturating_add(beyond);
            s.pending_over = s.pending_over.saturating_add(beyond);
        } else if beyond > 0 {
            let from_refunds = s.available.min(beyond);
            s.available -= from_refunds;
            s.pending_over = s.pending_over.saturating_add(beyond - from_refunds);
        }
        if beyond > 0 {
            s.tokens[3].inc_by(beyond);
        }
        if s.pending_over > 0 {
            let slot = t.slot();
            if self.give_back(slot, 0, s.pending_over, s.end, s.limit) {
                s.pending_over = 0;
            }
        }
    }

    /// Gives back idle slices, drops ended windows, reports pending use. Run every half
    /// second by [`QuotaClient::run`].
    pub fn tick(&self, idle: Duration) {
        let now = now_secs() as i64;
        let mut slices = self.slices.lock().unwrap_or_else(|e| e.into_inner());
        for (quota, by_consumer) in slices.iter_mut() {
            by_consumer.retain(|consumer, s| {
                let slot = || QuotaSlot {
                    quota: quota.to_string(),
                    consumer: consumer.to_string(),
                    window: s.window,
                };
                if s.pending_over > 0 && self.give_back(slot(), 0, s.pending_over, s.end, s.limit) {
                    s.pending_over = 0;
                }
                if s.end != 0 && now >= s.end {
                    return false;
                }
                if s.last_use.elapsed() >= idle {
                    if s.available > 0 && self.give_back(slot(), s.available, 0, s.end, s.limit) {
                        debug!(%quota, unused = s.available, "idle slice given back");
                        s.available = 0;
                    }
                    return s.available > 0
                        || s.pending_over > 0
                        || s.offline_used > 0
                        || s.in_flight > 0;
                }
                true
            });
        }
        slices.retain(|_, m| !m.is_empty());
    }

    /// Runs [`QuotaClient::tick`] forever.
    pub async fn run(self: Arc<Self>) {
        let mut t = tokio::time::interval(Duration::from_millis(500));
        loop {
            t.tick().await;
            self.tick(IDLE_RETURN);
        }
    }
}

fn saturate(n: u64) -> i64 {
    n.min(i64::MAX as u64) as i64
}

fn reset_in(reset: i64, now: f64) -> u64 {
    reset.saturating_sub(now as i64).max(0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_policy::quota::FailMode;

    fn common(fail: FailMode) -> QuotaCommon {
        QuotaCommon {
            id: "ns/p/b".into(),
            policy: "ns/p".into(),
            name: "b".into(),
            key: portcullis_api::QuotaKey::Consumer,
            limit: 1000,
            overrides: HashMap::new(),
            fail,
        }
    }

    fn labels() -> &'static ConsumerLabels {
        static LABELS: std::sync::OnceLock<ConsumerLabels> = std::sync::OnceLock::new();
        LABELS.get_or_init(|| ConsumerLabels::new(16))
    }

    fn reserve<'a>(q: &'a QuotaCommon, min: u64, max: u64) -> Reserve<'a> {
        Reserve {
            quota: q,
            kind: "budget",
            consumer: "alice",
            labels: labels(),
            window: 1,
            shape: QuotaShape::Budget { end: i64::MAX },
            limit: 1000,
            min,
            max,
        }
    }

    /// Found in review: a grant that came after the call stopped waiting was dropped, and
    /// the slice stayed counted as held in the ledger with nobody to use it.
    #[tokio::test]
    async fn a_late_grant_is_given_back() {
        let (tx, mut rx) = mpsc::channel::<Bytes>(16);
        let leases = Arc::new(ControllerLeases::new(Arc::new(Mutex::new(Some(tx)))));
        let ask = LeaseAsk {
            slot: QuotaSlot {
                quota: "ns/p/b".into(),
                consumer: "alice".into(),
                window: 1,
            },
            shape: QuotaShape::Budget { end: 99 },
            limit: 1000,
            need: 10,
            want: 20,
        };
        let waiting = leases.lease(ask);
        drop(waiting); // the call gave up
        let sent: ProxyMessage = serde_json::from_slice(&rx.recv().await.unwrap()).unwrap();
        let ProxyMessage::Lease { id, .. } = sent else {
            panic!("{sent:?}")
        };
        leases.on_grant(
            id,
            Grant {
                granted: 20,
                remaining: 0,
                reset: 99,
                unavailable: false,
            },
        );
        let back: ProxyMessage = serde_json::from_slice(&rx.recv().await.unwrap()).unwrap();
        match back {
            ProxyMessage::Release(r) => assert_eq!((r.unused, r.end, r.limit), (20, 99, 1000)),
            other => panic!("{other:?}"),
        }
    }

    /// Found in review: a call of the window that just ended replaced the new window's
    /// slice, losing what it held.
    #[tokio::test]
    async fn a_call_of_an_ended_window_leaves_the_new_windows_slice_alone() {
        let c = QuotaClient::new(Arc::new(LocalLedger::default()), &Registry::new());
        let q = common(FailMode::Closed);
        let new = |min| Reserve {
            window: 2,
            ..reserve(&q, min, min)
        };
        let t = c.reserve(new(100)).await.unwrap();
        c.settle(t, 10, "ns/p", "b");
        let e = c.reserve(reserve(&q, 1, 1)).await.unwrap_err();
        assert_eq!((e.kind, e.retry_after), (RefusalKind::Exhausted, 1));
        let slices = c.slices.lock().unwrap();
        let s = &slices["ns/p/b"]["alice"];
        assert_eq!((s.window, s.available), (2, 91));
    }

    /// Found in review: under failOpen, a consumer whose allowance is 0 (an override that
    /// blocks it) was admitted on the local allowance while the ledger was unreachable.
    #[tokio::test]
    async fn a_blocked_consumer_is_not_admitted_on_the_local_allowance() {
        let c = QuotaClient::new(Arc::new(Down), &Registry::new());
        let open = common(FailMode::Open { allowance: 150 });
        let blocked = Reserve {
            limit: 0,
            shape: QuotaShape::Bucket { rate: 0.0 },
            window: 0,
            kind: "rate_limit",
            ..reserve(&open, 1, 1)
        };
        assert!(c.reserve(blocked).await.is_err());
    }

    struct Down;
    impl LeaseBackend for Down {
        fn lease(&self, _: LeaseAsk) -> BoxFuture<'static, Option<Grant>> {
            Box::pin(async { None })
        }
        fn release(&self, _: Release) -> bool {
            false
        }
    }

    #[tokio::test]
    async fn reservations_never_exceed_the_allowance_and_refunds_are_reused() {
        let c = QuotaClient::new(Arc::new(LocalLedger::default()), &Registry::new());
        let q = common(FailMode::Closed);
        let mut tickets = Vec::new();
        while let Ok(t) = c.reserve(reserve(&q, 100, 100)).await {
            tickets.push(t);
        }
        assert_eq!(tickets.len(), 10);
        let e = c.reserve(reserve(&q, 100, 100)).await.unwrap_err();
        assert_eq!(e.kind, RefusalKind::Exhausted);
        // Calls in flight will give back what they do not use: retry soon.
        assert_eq!(e.retry_after, 1);
        // One call used 40 of its 100: 60 come back, enough for a call of 60.
        c.settle(tickets.pop().unwrap(), 40, "ns/p", "b");
        assert!(c.reserve(reserve(&q, 61, 61)).await.is_err());
        let t = c.reserve(reserve(&q, 60, 60)).await.unwrap();
        assert_eq!(t.reserved, 60);
    }

    /// Found in review: the slice's remainder was taken as "what is left", so calls
    /// without max_tokens were cut short long before the budget was spent.
    #[tokio::test]
    async fn a_range_is_filled_from_the_ledger_not_just_the_slice() {
        let c = QuotaClient::new(Arc::new(LocalLedger::default()), &Registry::new());
        let q = common(FailMode::Closed);
        let t = c.reserve(reserve(&q, 10, 10)).await.unwrap();
        c.settle(t, 10, "ns/p", "b");
        let t = c.reserve(reserve(&q, 10, 500)).await.unwrap();
        assert_eq!(t.reserved, 500);
    }

    #[tokio::test]
    async fn a_reservation_without_max_tokens_takes_what_is_left() {
        let c = QuotaClient::new(Arc::new(LocalLedger::default()), &Registry::new());
        let q = common(FailMode::Closed);
        let _t = c.reserve(reserve(&q, 900, 900)).await.unwrap();
        let t = c.reserve(reserve(&q, 10, 500)).await.unwrap();
        assert_eq!(t.reserved, 100);
    }

    #[tokio::test]
    async fn an_unreachable_ledger_fails_closed_or_open_within_the_allowance() {
        let c = QuotaClient::new(Arc::new(Down), &Registry::new());
        let closed = common(FailMode::Closed);
        let e = c.reserve(reserve(&closed, 1, 1)).await.unwrap_err();
        assert_eq!(e.kind, RefusalKind::Unreachable);
        let open = common(FailMode::Open { allowance: 150 });
        let t = c.reserve(reserve(&open, 100, 100)).await.unwrap();
        assert_eq!(t.offline, 100);
        assert!(c.reserve(reserve(&open, 100, 100)).await.is_err());
        // Settling frees what was not used; the use is kept to report.
        c.settle(t, 30, "ns/p", "b");
        let t = c.reserve(reserve(&open, 100, 100)).await.unwrap();
        // The allowance bounds what is used in the window, not what is reserved at once:
        // calls one after another during a long outage stop at it.
        c.settle(t, 100, "ns/p", "b");
        assert!(c.reserve(reserve(&open, 21, 21)).await.is_err());
        assert!(c.reserve(reserve(&open, 20, 20)).await.is_ok());
        let slices = c.slices.lock().unwrap();
        assert_eq!(slices["ns/p/b"]["alice"].pending_over, 130);
    }
}
