//! Unknown `kid` from an issuer whose keys are fetched: ask for a refetch (rate-limited per
//! key source) and hold the request a bounded time for a snapshot that may hold the key.
//!
//! ```text
//! request, kid unknown ──▶ refetch sent less than `minRefresh` ago?
//!                            ├─ no: send one (controller stream, or the standalone fetcher)
//!                            │      and hold until a new snapshot or `hold` has passed
//!                            ├─ yes, less than `hold` ago: hold for the same refetch
//!                            └─ yes, longer ago: no refetch coming; 401 at once
//! ```
//!
//! So a flood of tokens with random `kid`s costs one refetch per source per window, and
//! requests wait at most `hold`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portcullis_policy::{Refetch, Snapshot};

use crate::config::LiveConfig;

/// Something that can ask for key sets to be fetched again.
pub trait RefetchSink: Send + Sync {
    /// Asks for `url` to be refetched; false when the request could not be sent (no
    /// controller connection, or the fetcher's own limit refused it).
    fn request(&self, url: &str) -> bool;
}

/// Sends refetch requests and holds requests for their outcome.
pub struct KeyWaiter {
    sink: Arc<dyn RefetchSink>,
    hold: Duration,
    sent: Mutex<HashMap<Arc<str>, Instant>>,
}

impl std::fmt::Debug for KeyWaiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyWaiter")
            .field("hold", &self.hold)
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
    /// Holds requests up to `hold` for refetches sent through `sink`.
    pub fn new(sink: Arc<dyn RefetchSink>, hold: Duration) -> Self {
        Self {
            sink,
            hold,
            sent: Mutex::new(HashMap::new()),
        }
    }

    /// A waiter that never refetches.
    pub fn disabled() -> Self {
        Self::new(Arc::new(NoSink), Duration::ZERO)
    }

    /// Called for an `unknown_key` denial with a refetch hint: returns a newer snapshot to
    /// decide with, or `None` when none is coming (rate-limited) or none came in time.
    pub async fn wait_for_keys(
        &self,
        refetch: &Refetch,
        config: &LiveConfig,
        seen: &Snapshot,
    ) -> Option<Arc<Snapshot>> {
        if self.hold.is_zero() {
            return None;
        }
        let mut changes = config.subscribe();
        let deadline = {
            let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            match sent.get(&refetch.url) {
                Some(at) if now.duration_since(*at) < refetch.min_interval => {
                    if now.duration_since(*at) >= self.hold {
                        return None;
                    }
                    *at + self.hold
                }
                _ => {
                    if !self.sink.request(&refetch.url) {
                        return None;
                    }
                    sent.insert(refetch.url.clone(), now);
                    now + self.hold
                }
            }
        };
        let current = config.load();
        if current.version() != seen.version() {
            return Some(current);
        }
        let wait = async {
            loop {
                if changes.changed().await.is_err() {
                    return None;
                }
                let s = config.load();
                if s.version() != seen.version() {
                    return Some(s);
                }
            }
        };
        tokio::time::timeout_at(deadline.into(), wait)
            .await
            .ok()
            .flatten()
    }
}
