//! The state file: the applied config persisted off the stream's read loop.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use portcullis_api::push::SourceSet;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

/// The state file, as read.
#[derive(Deserialize)]
pub(super) struct PersistedState {
    pub(super) version: u64,
    pub(super) sources: SourceSet,
}

/// The state file, as written: the same document, borrowing the sources.
#[derive(Serialize)]
struct PersistedStateRef<'a> {
    version: u64,
    sources: &'a SourceSet,
}

// === StateWriter ===

/// What the writer does with a state: write the file (or, in tests, record it). It owns
/// the sources' `Arc` and drops it as soon as it has serialized them.
type StateSink = Box<dyn FnMut(u64, Arc<SourceSet>) -> std::io::Result<()> + Send>;

/// Writes the applied config to the state file on a thread of its own, so neither the
/// stream's read loop nor a request ever waits for the disk. Only the newest state is
/// kept: states handed over while a write is under way replace one another, and the next
/// write is of the last one.
///
/// One writer per file in a process ([`StateWriter::for_path`]): two subscribers of the
/// same file (one replacing another) share it, so their writes never interleave and the
/// second reads the file only once the first one's writes are done.
pub(crate) struct StateWriter {
    pub(super) shared: Arc<WriterShared>,
}

pub(super) struct WriterShared {
    slot: Mutex<WriterSlot>,
    /// Signalled when a state is handed over, a write ends, or a handle goes away.
    changed: Condvar,
    /// The file, for the registry; `None` for a writer outside it (tests).
    path: Option<PathBuf>,
}

#[derive(Default)]
struct WriterSlot {
    /// The newest state not yet being written.
    pending: Option<(u64, Arc<SourceSet>)>,
    /// A write is under way.
    writing: bool,
    /// Live handles; the thread ends when none is left and nothing is pending.
    handles: usize,
    /// The version last written.
    written: Option<u64>,
}

/// The writers by file; an entry is removed by its thread as it ends.
pub(super) fn writers() -> &'static Mutex<HashMap<PathBuf, Arc<WriterShared>>> {
    static WRITERS: OnceLock<Mutex<HashMap<PathBuf, Arc<WriterShared>>>> = OnceLock::new();
    WRITERS.get_or_init(Default::default)
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl StateWriter {
    /// The writer of `path`: the one already running for it in this process, or a new one.
    pub(crate) fn for_path(path: &Path) -> Arc<Self> {
        let mut registry = lock(writers());
        if let Some(shared) = registry.get(path) {
            lock(&shared.slot).handles += 1;
            return Arc::new(Self {
                shared: shared.clone(),
            });
        }
        let target = path.to_owned();
        let writer = Self::spawn(
            Some(path.to_owned()),
            Box::new(move |version, sources| persist(&target, version, sources)),
        );
        registry.insert(path.to_owned(), writer.shared.clone());
        Arc::new(writer)
    }

    /// A writer thread handing every state to `sink`.
    pub(super) fn spawn(path: Option<PathBuf>, sink: StateSink) -> Self {
        let shared = Arc::new(WriterShared {
            slot: Mutex::new(WriterSlot {
                handles: 1,
                ..Default::default()
            }),
            changed: Condvar::new(),
            path,
        });
        let thread_shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("portcullis-state".into())
            .spawn(move || write_states(thread_shared, sink));
        if let Err(e) = spawned {
            // No thread: states are kept in the slot and never written; enforcement is
            // unaffected, a restart serves an older state (or none).
            warn!(error = %e, "cannot start the state file writer; the config will not be persisted");
        }
        Self { shared }
    }

    /// Hands over the newest state, replacing any that has not started being written.
    pub(crate) fn submit(&self, version: u64, sources: Arc<SourceSet>) {
        lock(&self.shared.slot).pending = Some((version, sources));
        self.shared.changed.notify_all();
    }

    /// Takes back the state waiting to be written, if any (a newer one follows); returns
    /// whether there was one.
    pub(crate) fn withdraw(&self) -> bool {
        lock(&self.shared.slot).pending.take().is_some()
    }

    /// Waits until every state handed over is written (or failed), at most `timeout`;
    /// returns whether it was.
    pub(crate) fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut slot = lock(&self.shared.slot);
        while slot.pending.is_some() || slot.writing {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            slot = self
                .shared
                .changed
                .wait_timeout(slot, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// The version last written.
    #[cfg(test)]
    pub(super) fn written(&self) -> Option<u64> {
        lock(&self.shared.slot).written
    }
}

impl Drop for StateWriter {
    fn drop(&mut self) {
        lock(&self.shared.slot).handles -= 1;
        self.shared.changed.notify_all();
    }
}

/// The writer thread: waits for a state, writes it, repeats; ends when no handle is left
/// and nothing is pending.
fn write_states(shared: Arc<WriterShared>, mut sink: StateSink) {
    loop {
        let (version, sources) = {
            let mut slot = lock(&shared.slot);
            loop {
                if let Some(state) = slot.pending.take() {
                    slot.writing = true;
                    break state;
                }
                if slot.handles == 0 {
                    drop(slot);
                    if retire(&shared) {
                        return;
                    }
                    slot = lock(&shared.slot);
                    continue;
                }
                slot = shared.changed.wait(slot).unwrap_or_else(|e| e.into_inner());
            }
        };
        let path = shared.path.as_deref().unwrap_or(Path::new("-"));
        let result = sink(version, sources);
        match &result {
            Ok(()) => debug!(version, path = %path.display(), "config persisted"),
            Err(e) => {
                warn!(version, path = %path.display(), error = %e, "could not persist the config")
            }
        }
        let mut slot = lock(&shared.slot);
        slot.writing = false;
        if result.is_ok() {
            slot.written = Some(version);
        }
        drop(slot);
        shared.changed.notify_all();
    }
}

/// Removes an idle writer with no handles from the registry; false if a handle or a state
/// arrived meanwhile (the writer then goes on).
fn retire(shared: &Arc<WriterShared>) -> bool {
    // Registry first, then the slot: the order `for_path` takes them in.
    let mut registry = lock(writers());
    let slot = lock(&shared.slot);
    if slot.handles > 0 || slot.pending.is_some() {
        return false;
    }
    if let Some(path) = &shared.path
        && registry
            .get(path)
            .is_some_and(|current| Arc::ptr_eq(current, shared))
    {
        registry.remove(path);
    }
    true
}

/// Writes the state file: serialized first (the sources are released then), written to a
/// temporary file, synced, and renamed over the file.
fn persist(path: &Path, version: u64, sources: Arc<SourceSet>) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec(&PersistedStateRef {
        version,
        sources: &sources,
    })
    .map_err(std::io::Error::other)?;
    drop(sources);
    // The sources hold key material and introspection client secrets: owner-only.
    {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(tmp, path)
}
