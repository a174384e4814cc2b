//! Versioned config publication: the current [`SourceSet`], a bounded history of deltas for
//! resuming proxies, and a watch channel that wakes every stream on a new version.
//!
//! Versions only go up. The controller derives them from Kubernetes `resourceVersion`s
//! (etcd revisions, shared by every replica), so replicas that saw the same objects agree
//! on the version. A proxy ahead of a replica gets nothing from it until the replica moves
//! past the proxy's version: an older config is never sent.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use portcullis_api::push::{Changes, ServerMessage, SourceSet};
use tokio::sync::watch;

/// How many deltas are kept for resuming proxies.
const HISTORY: usize = 512;

struct State {
    version: u64,
    sources: Arc<SourceSet>,
    /// `(from, to, changes)`, oldest first, contiguous.
    history: VecDeque<(u64, u64, Arc<Changes>)>,
    /// When each recent version was published (for push-latency metrics).
    created: HashMap<u64, Instant>,
    /// Content digest of each recent version (see [`Publisher::digest_of`]).
    digests: HashMap<u64, String>,
}

/// What a proxy at some version needs to catch up.
#[derive(Debug)]
pub enum Catchup {
    /// It is current.
    UpToDate,
    /// These deltas, in order.
    Deltas(Vec<ServerMessage>),
    /// The whole config.
    Full(ServerMessage),
}

/// The config being published, and its history.
pub struct Publisher {
    state: Mutex<State>,
    tx: watch::Sender<u64>,
}

impl Default for Publisher {
    fn default() -> Self {
        Self::new()
    }
}

impl Publisher {
    /// Nothing published yet (version 0, empty sources).
    pub fn new() -> Self {
        let (tx, _) = watch::channel(0);
        Self {
            state: Mutex::new(State {
                version: 0,
                sources: Arc::new(SourceSet::default()),
                history: VecDeque::new(),
                created: HashMap::new(),
                digests: HashMap::new(),
            }),
            tx,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current version and sources.
    pub fn current(&self) -> (u64, Arc<SourceSet>) {
        let s = self.lock();
        (s.version, s.sources.clone())
    }

    /// Wakes when the version changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }

    /// The content digest of `version`, if recent.
    pub fn digest_of(&self, version: u64) -> Option<String> {
        self.lock().digests.get(&version).cloned()
    }

    /// The digest of the current content.
    pub fn current_digest(&self) -> Option<String> {
        let s = self.lock();
        s.digests.get(&s.version).cloned()
    }

    /// When `version` was published, if recent.
    pub fn created_at(&self, version: u64) -> Option<Instant> {
        self.lock().created.get(&version).copied()
    }

    /// Publishes `sources` if they differ from the current ones. The new version is above
    /// both the current one and `at_least`. Returns the new version, or None if nothing
    /// changed.
    pub fn publish(&self, sources: SourceSet, at_least: u64) -> Option<u64> {
        let mut s = self.lock();
        if *s.sources == sources && s.version > 0 {
            return None;
        }
        let changes = s.sources.diff(&sources);
        let from = s.version;
        let version = at_least.max(from + 1);
        s.history.push_back((from, version, Arc::new(changes)));
        while s.history.len() > HISTORY {
            s.history.pop_front();
        }
        s.version = version;
        s.sources = Arc::new(sources);
        let now = Instant::now();
        s.created.insert(version, now);
        let digest = digest(&s.sources);
        s.digests.insert(version, digest);
        if s.created.len() > HISTORY {
            let oldest = s.history.front().map(|h| h.0).unwrap_or(0);
            s.created.retain(|v, _| *v >= oldest);
            s.digests.retain(|v, _| *v >= oldest);
        }
        drop(s);
        self.tx.send_replace(version);
        Some(version)
    }

    /// What a proxy at `since` needs.
    pub fn catchup(&self, since: Option<u64>) -> Catchup {
        let s = self.lock();
        let full = || {
            Catchup::Full(ServerMessage::Full {
                version: s.version,
                sources: (*s.sources).clone(),
            })
        };
        let Some(since) = since else { return full() };
        if since >= s.version {
            // The proxy is current, or ahead of this replica (which lags, or restarted):
            // never send it anything older than what it enforces. It hears from us once
            // we move past its version.
            return Catchup::UpToDate;
        }
        let Some(start) = s.history.iter().position(|(from, _, _)| *from == since) else {
            return full();
        };
        Catchup::Deltas(
            s.history
                .iter()
                .skip(start)
                .map(|(from, to, c)| ServerMessage::Delta {
                    from: *from,
                    version: *to,
                    changes: (**c).clone(),
                })
                .collect(),
        )
    }
}

/// A digest of a source set's content. Replicas number versions from what they saw and
/// when, so two replicas may give the same content different versions; the digest is the
/// same for the same content, which lets the leader tell that a proxy of another replica
/// holds what it holds.
pub fn digest(sources: &SourceSet) -> String {
    use sha2::{Digest, Sha256};
    let bytes = serde_json::to_vec(sources).unwrap_or_default();
    hex::encode(&Sha256::digest(&bytes)[..12])
}
