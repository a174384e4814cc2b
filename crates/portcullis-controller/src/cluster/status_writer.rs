//! Status writing, off the publish path.
//!
//! ```text
//!  publish loop ──(every pass: each object's wanted status + Events)──▶ StatusQueue
//!                                                                          │ one entry per object,
//!                                                                          │ a newer one replaces it
//!  status writer task ◀──(oldest object first)─────────────────────────────┘
//!      └─▶ patch_status (SSA, timeout) ─▶ Events
//! ```
//!
//! The publish loop only computes statuses (in memory) and offers them; it never waits on
//! the API server. The queue holds at most one entry per live object, so it is bounded by
//! the store, and coalesces: while the writer is busy (a slow API server), a newer status
//! for an object replaces the queued one, so the latest always wins and the ones in
//! between are never sent. Only the leader writes.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event as KEvent, EventType, Recorder, Reporter};
use kube::{Api, Client};
use portcullis_api::{ApiRoute, ResourceStatus, TokenPolicy};
use tokio::sync::{Notify, watch};
use tracing::{debug, warn};

use super::FIELD_MANAGER;
use crate::metrics::Metrics;
use crate::status;

/// Events kept queued per object; older ones beyond this are dropped.
const MAX_EVENTS: usize = 16;

/// An object whose status the controller writes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ObjectId {
    /// `ApiRoute` or `TokenPolicy`.
    pub(crate) kind: &'static str,
    pub(crate) namespace: String,
    pub(crate) name: String,
}

/// A Warning Event to publish about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StatusEvent {
    pub(crate) reason: String,
    pub(crate) note: String,
    /// What the controller was doing (`Compile`, `FetchKeys`).
    pub(crate) action: &'static str,
}

/// What one status pass wants for one object.
#[derive(Debug, Clone)]
pub(crate) struct StatusUpdate {
    pub(crate) id: ObjectId,
    /// The resourceVersion of the object the status was computed against.
    pub(crate) resource_version: Option<String>,
    /// The status to write; None when the object's status is already what is wanted.
    pub(crate) status: Option<ResourceStatus>,
    /// Events to publish (after the status).
    pub(crate) events: Vec<StatusEvent>,
    /// Where Events point; needed only with events.
    pub(crate) object_ref: Option<ObjectReference>,
}

impl StatusUpdate {
    fn is_empty(&self) -> bool {
        self.status.is_none() && self.events.is_empty()
    }
}

/// The bounded, coalescing queue between the publish loop and the status writer.
#[derive(Default)]
pub(crate) struct StatusQueue {
    inner: Mutex<Queue>,
    ready: Notify,
}

#[derive(Default)]
struct Queue {
    /// Per object: its place in line and what is wanted.
    pending: HashMap<ObjectId, (u64, StatusUpdate)>,
    /// The line, oldest first: an object keeps its place when its update is replaced.
    order: BTreeMap<u64, ObjectId>,
    next: u64,
    /// What was written (or is being written) per object, and against which
    /// resourceVersion: a pass that sees the object before the watch brings the write
    /// back wants the same status again, which is not sent twice.
    written: HashMap<ObjectId, (Option<String>, ResourceStatus)>,
}

impl Queue {
    fn remove(&mut self, id: &ObjectId) -> Option<StatusUpdate> {
        let (seq, u) = self.pending.remove(id)?;
        self.order.remove(&seq);
        Some(u)
    }
}

impl StatusQueue {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Offers a whole status pass: one update per live object. Objects not in it are gone
    /// and forgotten; a queued update is replaced by the newer one for the same object
    /// (its Events are kept).
    pub(crate) fn offer(&self, pass: Vec<StatusUpdate>) {
        let mut q = self.lock();
        let live: std::collections::HashSet<&ObjectId> = pass.iter().map(|u| &u.id).collect();
        q.written.retain(|id, _| live.contains(id));
        let gone: Vec<ObjectId> = q
            .pending
            .keys()
            .filter(|id| !live.contains(id))
            .cloned()
            .collect();
        for id in gone {
            q.remove(&id);
        }
        for mut u in pass {
            if let Some(s) = &u.status
                && q.written.get(&u.id).is_some_and(|(rv, w)| {
                    *rv == u.resource_version && !status::differs(Some(w), s)
                })
            {
                u.status = None;
            }
            match q.pending.get_mut(&u.id) {
                Some((_, queued)) => {
                    queued.status = u.status;
                    queued.resource_version = u.resource_version;
                    if u.object_ref.is_some() {
                        queued.object_ref = u.object_ref;
                    }
                    queued.events.extend(u.events);
                    let extra = queued.events.len().saturating_sub(MAX_EVENTS);
                    queued.events.drain(..extra);
                    if queued.is_empty() {
                        q.remove(&u.id);
                    }
                }
                None if !u.is_empty() => {
                    let seq = q.next;
                    q.next += 1;
                    q.order.insert(seq, u.id.clone());
                    q.pending.insert(u.id.clone(), (seq, u));
                }
                None => {}
            }
        }
        let any = !q.pending.is_empty();
        drop(q);
        if any {
            self.ready.notify_one();
        }
    }

    /// Drops everything queued (this replica stopped leading).
    pub(crate) fn clear(&self) {
        let mut q = self.lock();
        q.pending.clear();
        q.order.clear();
        q.written.clear();
    }

    /// Objects waiting to be written.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().pending.len()
    }

    /// Takes the object waiting longest, marking its status as being written.
    fn pop(&self) -> Option<StatusUpdate> {
        let mut q = self.lock();
        let (_, id) = q.order.pop_first()?;
        let (_, u) = q.pending.remove(&id)?;
        if let Some(s) = &u.status {
            q.written
                .insert(id, (u.resource_version.clone(), s.clone()));
        }
        Some(u)
    }

    /// Waits for the next object to write.
    async fn next(&self) -> StatusUpdate {
        loop {
            if let Some(u) = self.pop() {
                return u;
            }
            self.ready.notified().await;
        }
    }

    /// A write failed: the next pass wants it again.
    fn failed(&self, u: &StatusUpdate) {
        let mut q = self.lock();
        if let Some((rv, s)) = q.written.get(&u.id)
            && *rv == u.resource_version
            && Some(s) == u.status.as_ref()
        {
            q.written.remove(&u.id);
        }
    }
}

/// The API calls of status writing (a trait so tests can hold them).
pub(crate) trait StatusApi: Send + Sync + 'static {
    /// Writes an object's status.
    fn patch_status(
        &self,
        id: &ObjectId,
        status: &ResourceStatus,
    ) -> impl Future<Output = Result<(), kube::Error>> + Send;

    /// Publishes a Warning Event about an object.
    fn publish_event(
        &self,
        object: &ObjectReference,
        event: &StatusEvent,
    ) -> impl Future<Output = Result<(), kube::Error>> + Send;
}

/// Status by server-side apply under [`FIELD_MANAGER`], Events through a [`Recorder`].
pub(crate) struct KubeStatusApi {
    client: Client,
    recorder: Recorder,
}

impl KubeStatusApi {
    /// Writes as `identity` (the Events' reporting instance).
    pub(crate) fn new(client: Client, identity: &str) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: Some(identity.to_owned()),
            },
        );
        Self { client, recorder }
    }
}

impl StatusApi for KubeStatusApi {
    async fn patch_status(
        &self,
        id: &ObjectId,
        status: &ResourceStatus,
    ) -> Result<(), kube::Error> {
        let patch = serde_json::json!({
            "apiVersion": "portcullis.dev/v1alpha1",
            "kind": id.kind,
            "status": status,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match id.kind {
            "ApiRoute" => Api::<ApiRoute>::namespaced(self.client.clone(), &id.namespace)
                .patch_status(&id.name, &params, &Patch::Apply(&patch))
                .await
                .map(|_| ()),
            _ => Api::<TokenPolicy>::namespaced(self.client.clone(), &id.namespace)
                .patch_status(&id.name, &params, &Patch::Apply(&patch))
                .await
                .map(|_| ()),
        }
    }

    async fn publish_event(
        &self,
        object: &ObjectReference,
        event: &StatusEvent,
    ) -> Result<(), kube::Error> {
        let ev = KEvent {
            type_: EventType::Warning,
            reason: event.reason.clone(),
            note: Some(event.note.clone()),
            action: event.action.into(),
            secondary: None,
        };
        self.recorder.publish(&ev, object).await
    }
}

/// Writes what `queue` holds, oldest object first, while `leader` reads true; until
/// `shutdown`. Each call is bounded by `timeout`; outcomes are counted.
pub(crate) async fn run<A: StatusApi>(
    queue: Arc<StatusQueue>,
    api: A,
    leader: watch::Receiver<bool>,
    metrics: Metrics,
    timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let u = tokio::select! {
            u = queue.next() => u,
            _ = shutdown.changed() => break,
        };
        if !*leader.borrow() {
            queue.failed(&u);
            continue;
        }
        let id = &u.id;
        if let Some(s) = &u.status {
            let result = match tokio::time::timeout(timeout, api.patch_status(id, s)).await {
                Ok(Ok(())) => "ok",
                Ok(Err(e)) => {
                    warn!(kind = %id.kind, ns = %id.namespace, name = %id.name, error = %e, "status write failed");
                    "error"
                }
                Err(_) => "timeout",
            };
            if result != "ok" {
                queue.failed(&u);
            }
            metrics
                .status_writes
                .with_label_values(&[id.kind, result])
                .inc();
        }
        if let Some(oref) = &u.object_ref {
            for ev in &u.events {
                match tokio::time::timeout(timeout, api.publish_event(oref, ev)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => debug!(error = %e, "event not published"),
                    Err(_) => debug!("publishing an event timed out"),
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use portcullis_api::ProxiesStatus;

    use super::*;

    /// A fake API: records every call; patches wait while the gate is closed.
    #[derive(Clone)]
    pub(crate) struct FakeApi {
        pub(crate) patches: Arc<Mutex<Vec<(ObjectId, ResourceStatus)>>>,
        pub(crate) events: Arc<Mutex<Vec<(ObjectId, StatusEvent)>>>,
        pub(crate) open: watch::Receiver<bool>,
    }

    impl FakeApi {
        /// A fake whose patches wait until `true` is sent on the returned gate.
        pub(crate) fn gated(open: bool) -> (Self, watch::Sender<bool>) {
            let (tx, rx) = watch::channel(open);
            let fake = Self {
                patches: Default::default(),
                events: Default::default(),
                open: rx,
            };
            (fake, tx)
        }

        pub(crate) fn patches(&self) -> Vec<(ObjectId, ResourceStatus)> {
            self.patches.lock().unwrap().clone()
        }
    }

    impl StatusApi for FakeApi {
        async fn patch_status(
            &self,
            id: &ObjectId,
            status: &ResourceStatus,
        ) -> Result<(), kube::Error> {
            self.patches
                .lock()
                .unwrap()
                .push((id.clone(), status.clone()));
            let mut open = self.open.clone();
            let _ = open.wait_for(|o| *o).await;
            Ok(())
        }

        async fn publish_event(
            &self,
            object: &ObjectReference,
            event: &StatusEvent,
        ) -> Result<(), kube::Error> {
            let id = ObjectId {
                kind: if object.kind.as_deref() == Some("ApiRoute") {
                    "ApiRoute"
                } else {
                    "TokenPolicy"
                },
                namespace: object.namespace.clone().unwrap_or_default(),
                name: object.name.clone().unwrap_or_default(),
            };
            self.events.lock().unwrap().push((id, event.clone()));
            Ok(())
        }
    }

    fn id(name: &str) -> ObjectId {
        ObjectId {
            kind: "ApiRoute",
            namespace: "ns".into(),
            name: name.into(),
        }
    }

    fn status_of(generation: i64) -> ResourceStatus {
        ResourceStatus {
            observed_generation: Some(generation),
            conditions: vec![],
            proxies: Some(ProxiesStatus {
                programmed: 0,
                connected: 0,
            }),
            budgets: Vec::new(),
            streams: Vec::new(),
            stage: None,
        }
    }

    fn update(name: &str, rv: &str, generation: Option<i64>, events: &[&str]) -> StatusUpdate {
        StatusUpdate {
            id: id(name),
            resource_version: Some(rv.into()),
            status: generation.map(status_of),
            events: events
                .iter()
                .map(|r| StatusEvent {
                    reason: (*r).into(),
                    note: String::new(),
                    action: "Compile",
                })
                .collect(),
            object_ref: Some(ObjectReference {
                kind: Some("ApiRoute".into()),
                namespace: Some("ns".into()),
                name: Some(name.into()),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_newer_status_replaces_the_queued_one_in_its_place_and_events_add_up() {
        let q = StatusQueue::default();
        q.offer(vec![
            update("a", "1", Some(1), &["Bad"]),
            update("b", "1", Some(1), &[]),
        ]);
        q.offer(vec![
            update("b", "1", Some(1), &[]),
            update("a", "2", Some(2), &["Worse"]),
        ]);
        assert_eq!(q.len(), 2, "one entry per object");
        let first = q.pop().unwrap();
        assert_eq!(first.id, id("a"), "a keeps its place in line");
        assert_eq!(first.status, Some(status_of(2)), "the latest status wins");
        let reasons: Vec<&str> = first.events.iter().map(|e| e.reason.as_str()).collect();
        assert_eq!(reasons, ["Bad", "Worse"]);
        assert_eq!(q.pop().unwrap().id, id("b"));
        assert!(q.pop().is_none());
    }

    #[test]
    fn what_was_written_is_not_queued_again_until_the_object_moves() {
        let q = StatusQueue::default();
        q.offer(vec![update("a", "1", Some(1), &[])]);
        let u = q.pop().unwrap();
        // A pass before the watch brings the write back wants the same status again.
        q.offer(vec![update("a", "1", Some(1), &[])]);
        assert_eq!(q.len(), 0);
        // Someone else changed the object: written again.
        q.offer(vec![update("a", "7", Some(1), &[])]);
        assert_eq!(q.len(), 1);
        let again = q.pop().unwrap();
        assert_eq!(again.resource_version.as_deref(), Some("7"));
        // A failed write is wanted again by the next pass.
        q.failed(&again);
        q.offer(vec![update("a", "7", Some(1), &[])]);
        assert_eq!(q.len(), 1);
        drop(u);
    }

    #[test]
    fn the_queue_holds_only_live_objects_and_the_latest_view_of_each() {
        let q = StatusQueue::default();
        q.offer(
            (0..100)
                .map(|i| update(&format!("r{i}"), "1", Some(1), &[]))
                .collect(),
        );
        assert_eq!(q.len(), 100);
        // Objects deleted: forgotten. One no longer needs a write: dropped.
        q.offer(vec![
            update("r1", "1", None, &[]),
            update("r2", "1", Some(2), &[]),
        ]);
        assert_eq!(q.len(), 1);
        assert_eq!(q.pop().unwrap().id, id("r2"));
        // Events per object stay bounded.
        for i in 0..100 {
            q.offer(vec![update("r2", "1", None, &[&format!("E{i}")])]);
        }
        assert_eq!(q.pop().unwrap().events.len(), MAX_EVENTS);
        q.offer(vec![update("r3", "1", Some(1), &[])]);
        q.clear();
        assert_eq!(q.len(), 0);
    }
}
