//! Unknown `kid` from an issuer whose keys are fetched: ask for a refetch (rate-limited per
//! key source) and hold the request a bounded time for a snapshot that may hold the key.
//!
//! ```text
//! request, kid unknown ──▶ refetching off? 401 at once
//!                      ──▶ refetch sent less than `minRefresh` ago?
//!                            ├─ no: send one (controller stream, or the standalone fetcher)
//!                            │      and hold (unless `hold` is zero)
//!                            ├─ yes, less than `hold` ago: hold for the same refetch
//!                            └─ yes, longer ago: no refetch coming; 401 at once
//! holding ──▶ a new snapshot: decide again with it
//!         ──▶ the refetch reports nothing new (same keys, or the fetch failed): 401 at once
//!         ──▶ `hold` has passed: 401
//! ```
//!
//! So a flood of tokens with random `kid`s costs one refetch per source per window, and
//! requests wait at most `hold`, and only as long as a refetch may still bring something.
//! Whether a refetch brought anything is known when the sink can tell
//! ([`RefetchSink::request_tracked`]): the standalone fetcher does; a refetch sent to the
//! controller over the config stream has no answer of its own (the controller pushes a
//! new snapshot when keys change, and nothing otherwise), so those waits are bounded by
//! `hold` alone.
//!
//! The hold and the refetch are separate settings: with a zero hold the refetch is still
//! sent (the request is refused at once, later ones find the key), unless refetching is
//! turned off ([`KeyWaiter::with_refetch`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use portcullis_policy::{Refetch, Snapshot};
use tokio::time::Instant;

use crate::config::LiveConfig;

/// What a refetch brought, as far as its sink can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefetchOutcome {
    /// A key set different from the one in force: a new snapshot is on its way.
    NewKeys,
    /// The same key set, or the fetch failed: no snapshot with new keys is coming.
    Unchanged,
}

/// Resolves when a refetch has finished, with what it brought. Cheap to clone: every
/// request holding for the same refetch waits on the same report.
#[derive(Clone)]
pub struct RefetchReport(Shared<BoxFuture<'static, RefetchOutcome>>);

impl std::fmt::Debug for RefetchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefetchReport")
    }
}

impl RefetchReport {
    /// A report resolving with `outcome`'s output.
    pub fn new(outcome: impl Future<Output = RefetchOutcome> + Send + 'static) -> Self {
        Self(outcome.boxed().shared())
    }

    /// A refetch whose outcome nobody reports: waits are bounded by the hold alone.
    pub fn untracked() -> Self {
        Self::new(std::future::pending())
    }

    async fn outcome(&self) -> RefetchOutcome {
        self.0.clone().await
    }
}

/// Something that can ask for key sets to be fetched again.
pub trait RefetchSink: Send + Sync {
    /// Asks for `url` to be refetched; false when the request could not be sent (no
    /// controller connection, or the fetcher's own limit refused it).
    fn request(&self, url: &str) -> bool;

    /// Asks for `url` to be refetched and reports its outcome: `None` when the request
    /// could not be sent. The default sends [`RefetchSink::request`] and reports nothing.
    fn request_tracked(&self, url: &str) -> Option<RefetchReport> {
        self.request(url).then(RefetchReport::untracked)
    }
}

/// A refetch sent, shared by every request that holds for it.
struct Sent {
    at: Instant,
    report: RefetchReport,
}

/// Sends refetch requests and holds requests for their outcome.
pub struct KeyWaiter {
    sink: Arc<dyn RefetchSink>,
    hold: Duration,
    refetch: bool,
    sent: Mutex<HashMap<Arc<str>, Sent>>,
    /// Requests that may be held at once: a flood of tokens with made-up `kid`s costs one
    /// refetch per source, and beyond this many held requests, no waiting either.
    waiters: Arc<tokio::sync::Semaphore>,
}

/// Requests a proxy holds for refetched keys at once; beyond them an unknown `kid` is
/// answered at once, as when the refetch brings nothing new.
pub const MAX_KEY_WAITERS: usize = 1024;

impl std::fmt::Debug for KeyWaiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyWaiter")
            .field("hold", &self.hold)
            .field("refetch", &self.refetch)
            .finish_non_exhaustive()
    }
}

/// A sink for proxies with no way to refetch (no remote keys).
struct NoSink;

impl RefetchSink for NoSink {
    fn request(&self, _url: &str) -> bool {
        false
    }
}

impl KeyWaiter {
    /// Refetches through `sink` and holds requests up to `hold` for the outcome (a zero
    /// hold still refetches; see [`KeyWaiter::with_refetch`]).
    pub fn new(sink: Arc<dyn RefetchSink>, hold: Duration) -> Self {
        Self {
            sink,
            hold,
            refetch: true,
            sent: Mutex::new(HashMap::new()),
            waiters: Arc::new(tokio::sync::Semaphore::new(MAX_KEY_WAITERS)),
        }
    }

    /// At most `n` requests held at once (default [`MAX_KEY_WAITERS`]).
    pub fn with_max_waiters(mut self, n: usize) -> Self {
        self.waiters = Arc::new(tokio::sync::Semaphore::new(n));
        self
    }

    /// Turns refetching on (the default) or off. Off, an unknown `kid` is refused at once
    /// and only the fetcher's own schedule brings new keys.
    pub fn with_refetch(mut self, refetch: bool) -> Self {
        self.refetch = refetch;
        self
    }

    /// A waiter that never refetches.
    pub fn disabled() -> Self {
        Self::new(Arc::new(NoSink), Duration::ZERO).with_refetch(false)
    }

    /// Called for an `unknown_key` denial with a refetch hint: returns a newer snapshot to
    /// decide with, or `None` when none is coming (refetching off, rate-limited, the
    /// refetch brought nothing new, or a zero hold) or none came within the hold.
    pub async fn wait_for_keys(
        &self,
        refetch: &Refetch,
        config: &LiveConfig,
        seen: &Snapshot,
    ) -> Option<Arc<Snapshot>> {
        if !self.refetch {
            return None;
        }
        let mut changes = config.subscribe();
        let (deadline, report) = {
            let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            match sent.get(&refetch.url) {
                Some(s) if now.duration_since(s.at) < refetch.min_interval => {
                    if now.duration_since(s.at) >= self.hold {
                        return None;
                    }
                    (s.at + self.hold, s.report.clone())
                }
                _ => {
                    let report = self.sink.request_tracked(&refetch.url)?;
                    sent.insert(
                        refetch.url.clone(),
                        Sent {
                            at: now,
                            report: report.clone(),
                        },
                    );
                    (now + self.hold, report)
                }
            }
        };
        if self.hold.is_zero() {
            return None;
        }
        let newer = || {
            let s = config.load();
            (s.version() != seen.version()).then_some(s)
        };
        if let Some(s) = newer() {
            return Some(s);
        }
        // Held only while a slot is free: the hold bounds each wait, this bounds how many.
        let Ok(_slot) = self.waiters.try_acquire() else {
            return None;
        };
        let wait = async {
            let mut reported = false;
            loop {
                tokio::select! {
                    outcome = report.outcome(), if !reported => match outcome {
                        // Nothing new is coming: decide now (with a snapshot that arrived
                        // meanwhile for another reason, if one did).
                        RefetchOutcome::Unchanged => return newer(),
                        RefetchOutcome::NewKeys => reported = true,
                    },
                    changed = changes.changed() => {
                        if changed.is_err() {
                            return None;
                        }
                        if let Some(s) = newer() {
                            return Some(s);
                        }
                    }
                }
            }
        };
        tokio::time::timeout_at(deadline, wait).await.ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A sink that counts requests and reports what it is told to.
    struct Counting {
        requests: AtomicUsize,
        outcome: Option<RefetchOutcome>,
    }

    impl RefetchSink for Counting {
        fn request(&self, _url: &str) -> bool {
            self.requests.fetch_add(1, Ordering::SeqCst);
            true
        }

        fn request_tracked(&self, url: &str) -> Option<RefetchReport> {
            self.request(url);
            Some(match self.outcome {
                Some(o) => RefetchReport::new(async move { o }),
                None => RefetchReport::untracked(),
            })
        }
    }

    fn refetch() -> Refetch {
        Refetch {
            url: "https://issuer.test/keys".into(),
            issuer: "https://issuer.test".into(),
            min_interval: Duration::from_secs(300),
        }
    }

    fn setup(outcome: Option<RefetchOutcome>) -> (Arc<Counting>, LiveConfig, Arc<Snapshot>) {
        let sink = Arc::new(Counting {
            requests: AtomicUsize::new(0),
            outcome,
        });
        let config = LiveConfig::new(crate::Metrics::new());
        let seen = config.load();
        (sink, config, seen)
    }

    /// Bounds a wait that must end long before the hour-long holds used below.
    async fn within<T>(f: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(30), f)
            .await
            .expect("released long before the hold")
    }

    /// Beyond the cap, an unknown `kid` is answered at once instead of held: a flood of
    /// made-up `kid`s cannot park an unbounded number of requests.
    #[tokio::test]
    async fn held_requests_are_capped() {
        let (sink, config, seen) = setup(None);
        let waiter =
            Arc::new(KeyWaiter::new(sink.clone(), Duration::from_secs(3600)).with_max_waiters(1));
        let held = {
            let (w, config, seen) = (waiter.clone(), Arc::new(config), seen.clone());
            let task =
                tokio::spawn(
                    async move { w.wait_for_keys(&refetch(), &config, &seen).await.is_none() },
                );
            // Let it take the one slot.
            while waiter.waiters.available_permits() > 0 {
                tokio::task::yield_now().await;
            }
            task
        };
        let (_, config2, seen2) = setup(None);
        assert!(
            within(waiter.wait_for_keys(&refetch(), &config2, &seen2))
                .await
                .is_none(),
            "answered at once"
        );
        held.abort();
        assert_eq!(sink.requests.load(Ordering::SeqCst), 1, "one refetch");
    }

    /// A refetch reported as bringing nothing new releases the hold at once, for the
    /// request that sent it and for one holding for the same refetch.
    #[tokio::test]
    async fn nothing_new_answers_at_once() {
        let (sink, config, seen) = setup(Some(RefetchOutcome::Unchanged));
        let waiter = KeyWaiter::new(sink.clone(), Duration::from_secs(3600));
        assert!(
            within(waiter.wait_for_keys(&refetch(), &config, &seen))
                .await
                .is_none()
        );
        assert!(
            within(waiter.wait_for_keys(&refetch(), &config, &seen))
                .await
                .is_none()
        );
        assert_eq!(sink.requests.load(Ordering::SeqCst), 1);
    }

    /// Without a report (the controller path) the hold bounds the wait.
    #[tokio::test]
    async fn untracked_refetch_waits_the_hold() {
        let (sink, config, seen) = setup(None);
        let waiter = KeyWaiter::new(sink, Duration::from_millis(300));
        let started = Instant::now();
        assert!(
            within(waiter.wait_for_keys(&refetch(), &config, &seen))
                .await
                .is_none()
        );
        assert!(started.elapsed() >= Duration::from_millis(300));
    }

    /// New keys reported: the request waits for the snapshot that carries them.
    #[tokio::test]
    async fn new_keys_wait_for_the_snapshot() {
        let (sink, config, seen) = setup(Some(RefetchOutcome::NewKeys));
        let config = Arc::new(config);
        let waiter = KeyWaiter::new(sink, Duration::from_secs(3600));
        let apply = {
            let config = config.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                config.apply(Snapshot::empty().with_version(7), Vec::new(), Vec::new());
            }
        };
        let hint = refetch();
        let (got, ()) =
            within(async { tokio::join!(waiter.wait_for_keys(&hint, &config, &seen), apply) })
                .await;
        assert_eq!(got.map(|s| s.version()), Some(7));
    }

    /// A zero hold still sends the refetch (later requests benefit), unless refetching is
    /// off.
    #[tokio::test]
    async fn zero_hold_still_refetches() {
        let (sink, config, seen) = setup(None);
        let waiter = KeyWaiter::new(sink.clone(), Duration::ZERO);
        assert!(
            waiter
                .wait_for_keys(&refetch(), &config, &seen)
                .await
                .is_none()
        );
        assert_eq!(sink.requests.load(Ordering::SeqCst), 1);

        let (sink, config, seen) = setup(None);
        let waiter = KeyWaiter::new(sink.clone(), Duration::ZERO).with_refetch(false);
        assert!(
            waiter
                .wait_for_keys(&refetch(), &config, &seen)
                .await
                .is_none()
        );
        assert_eq!(sink.requests.load(Ordering::SeqCst), 0);
    }
}
