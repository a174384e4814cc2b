//! Connected proxies and the versions they acknowledged.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// One connected proxy stream.
#[derive(Debug, Clone)]
pub struct ProxyEntry {
    /// The identity the proxy authenticated as.
    pub identity: String,
    /// The version it last acknowledged.
    pub acked: u64,
    /// When it connected.
    pub connected_at: Instant,
}

/// The proxies connected to this replica, by stream id.
#[derive(Debug, Default)]
pub struct ProxyRegistry {
    inner: Mutex<HashMap<u64, ProxyEntry>>,
    /// Woken on every connect, acknowledgement and disconnect (the status loop).
    pub changed: tokio::sync::Notify,
    /// The same, for the task that shares acknowledgements with the leader.
    pub changed_share: tokio::sync::Notify,
    next: std::sync::atomic::AtomicU64,
    refetch: Mutex<std::collections::BTreeSet<String>>,
    /// Woken when a proxy asks for a key set to be refetched.
    pub refetch_requested: tokio::sync::Notify,
}

impl ProxyRegistry {
    /// A proxy met an unknown `kid` from the key set at `url`. Requests are collapsed per
    /// URL until the controller takes them (the fetcher rate-limits what it grants).
    pub fn request_refetch(&self, url: String) {
        let mut q = self.refetch.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() < 256 {
            q.insert(url);
        }
        drop(q);
        self.refetch_requested.notify_one();
    }

    /// Takes the pending refetch requests.
    pub fn take_refetches(&self) -> Vec<String> {
        std::mem::take(&mut *self.refetch.lock().unwrap_or_else(|e| e.into_inner()))
            .into_iter()
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, ProxyEntry>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a stream; returns its id.
    pub fn connect(&self, identity: String) -> u64 {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.lock().insert(
            id,
            ProxyEntry {
                identity,
                acked: 0,
                connected_at: Instant::now(),
            },
        );
        self.changed.notify_one();
        self.changed_share.notify_one();
        id
    }

    /// Records an acknowledgement (versions only go up).
    pub fn ack(&self, id: u64, version: u64) {
        if let Some(e) = self.lock().get_mut(&id) {
            e.acked = e.acked.max(version);
        }
        self.changed.notify_one();
        self.changed_share.notify_one();
    }

    /// Removes a stream.
    pub fn disconnect(&self, id: u64) {
        self.lock().remove(&id);
        self.changed.notify_one();
        self.changed_share.notify_one();
    }

    /// Connected streams.
    pub fn connected(&self) -> usize {
        self.lock().len()
    }

    /// `(programmed, connected)`: how many connected proxies acknowledged `version` or later.
    pub fn programmed(&self, version: u64) -> (usize, usize) {
        let g = self.lock();
        (g.values().filter(|e| e.acked >= version).count(), g.len())
    }

    /// The acknowledged version of every connected proxy.
    pub fn acked_versions(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.lock().values().map(|e| e.acked).collect();
        v.sort_unstable();
        v
    }

    /// A copy of every entry.
    pub fn entries(&self) -> Vec<ProxyEntry> {
        self.lock().values().cloned().collect()
    }
}
