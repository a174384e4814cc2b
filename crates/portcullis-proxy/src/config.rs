//! Live config: the snapshot in force, swapped atomically. A request loads the current
//! `Arc<Snapshot>` once and keeps it to the end, so a swap applies to the next request and
//! never disturbs one in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use portcullis_policy::Snapshot;
use serde::Serialize;

use crate::metrics::Metrics;

/// What `/config` says about the snapshot in force: never keys or tokens.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConfigInfo {
    /// Snapshot version.
    pub version: u64,
    /// When it was applied, Unix seconds.
    pub applied_at: i64,
    /// Where it came from (files, or a controller URL).
    pub sources: Vec<String>,
    /// Counts.
    pub stats: portcullis_policy::SnapshotStats,
    /// Problems found in the last load, with file, object and field.
    pub errors: Vec<String>,
}

/// The snapshot in force and what is known about it.
pub struct LiveConfig {
    snapshot: ArcSwap<Snapshot>,
    info: ArcSwap<ConfigInfo>,
    loaded: AtomicBool,
    metrics: Metrics,
    changed: tokio::sync::watch::Sender<u64>,
}

impl LiveConfig {
    /// Starts with an empty snapshot (every request 404) and not ready.
    pub fn new(metrics: Metrics) -> Self {
        Self {
            snapshot: ArcSwap::from_pointee(Snapshot::empty()),
            info: ArcSwap::from_pointee(ConfigInfo::default()),
            loaded: AtomicBool::new(false),
            metrics,
            changed: tokio::sync::watch::channel(0).0,
        }
    }

    /// Notified with the version each time a snapshot is put in force.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The snapshot in force.
    pub fn load(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// What `/config` shows.
    pub fn info(&self) -> Arc<ConfigInfo> {
        self.info.load_full()
    }

    /// Whether a config has been applied (`/readyz`).
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Puts `snapshot` in force, keeping the verified-token caches that still apply, and
    /// returns it as it is now served: what the next revocation-only update patches
    /// ([`Snapshot::with_revocations`]).
    pub fn apply(
        &self,
        mut snapshot: Snapshot,
        sources: Vec<String>,
        errors: Vec<String>,
    ) -> Arc<Snapshot> {
        let previous = self.snapshot.load();
        snapshot.inherit_caches(&previous);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let stats = snapshot.stats();
        self.metrics.config_version.set(snapshot.version() as i64);
        self.metrics.config_applied.set(now);
        self.metrics.revocations.set(stats.revocations as i64);
        self.info.store(Arc::new(ConfigInfo {
            version: snapshot.version(),
            applied_at: now,
            sources,
            stats,
            errors,
        }));
        let version = snapshot.version();
        let snapshot = Arc::new(snapshot);
        self.snapshot.store(snapshot.clone());
        self.loaded.store(true, Ordering::Release);
        self.changed.send_replace(version);
        snapshot
    }

    /// Records load errors without changing the snapshot in force.
    pub fn set_errors(&self, errors: Vec<String>) {
        let mut info = (*self.info.load_full()).clone();
        info.errors = errors;
        self.info.store(Arc::new(info));
    }
}
