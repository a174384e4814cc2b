//! The Kubernetes side: watchers feed an in-memory [`Store`]; every change recompiles
//! (debounced by a few ms) and publishes a new version; the leader writes status with
//! server-side apply, emits Events for rejections, fetches remote key sets and prunes
//! expired revocations.
//!
//! ```text
//!  watch ApiRoute ────┐
//!  watch TokenPolicy ─┼─▶ Store ──(debounce)──▶ compile ──▶ Publisher ──▶ push streams
//!  watch Secret ──────┤                           │
//!  watch Service ─────┘                           ├─▶ status pass ──▶ StatusQueue ──▶ status writer (leader, SSA)
//!                                                 └─▶ remote key sources ──▶ fetcher (leader) ──▶ KeysReady
//!  Lease ──▶ leader election      acks Leases ──▶ other replicas' acks      prune (leader)
//! ```
//!
//! The publish loop ([`run`]) never waits on the API server: status writes, key-set
//! storage, acknowledgement sharing and pruning each run on a task of their own.
//!
//! Modules, one concern each: `store` (the watchers and what they saw), `leader` (the
//! Lease), `sources` (what is published, and its versions), `remote_keys` (fetched key
//! sets), `acks` (acknowledgements across replicas), `status_pass` (statuses, computed in
//! memory), `status_writer` (the queue and the task that writes), `prune`.

mod acks;
mod leader;
mod prune;
mod remote_keys;
mod sources;
mod status_pass;
mod status_writer;
pub(crate) mod store;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::{Api, Client};
use portcullis_api::push::SourceObject;
use portcullis_policy::{CompileError, RemoteSource};
use tokio::sync::watch;
use tracing::info;

pub use leader::LeaderElection;
pub use store::Store;

use crate::metrics::Metrics;
use crate::publisher::Publisher;
use crate::registry::ProxyRegistry;
use acks::RemoteAcks;
use remote_keys::{KeysReports, RemoteKeysTask};
use status_pass::{Programmed, StatusPlanner};
use status_writer::{KubeStatusApi, StatusQueue};
use store::key_of;

/// The one field manager every status write uses.
pub const FIELD_MANAGER: &str = "portcullis-controller";

/// How often statuses are recomputed without a change (acknowledgements of other
/// replicas' proxies, retries of failed writes).
const STATUS_EVERY: Duration = Duration::from_secs(2);

/// How to run the controller.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    /// Namespace of the leader Lease.
    pub lease_namespace: String,
    /// Name of the leader Lease.
    pub lease_name: String,
    /// This replica's identity (pod name).
    pub identity: String,
    /// Lease duration: a standby takes over this long after the leader stops renewing.
    pub lease_duration: Duration,
    /// Wait this long after a change before compiling, to batch bursts.
    pub debounce: Duration,
    /// Timeout of each status write.
    pub write_timeout: Duration,
    /// How often the leader looks for expired revocations.
    pub prune_interval: Duration,
    /// This replica's push endpoint as the other replicas reach it (advertised in the
    /// Lease while leading, for relayed quota leases).
    pub advertise_url: Option<String>,
    /// The ConfigMap (in the Lease's namespace) the quota ledger is checkpointed to.
    pub quota_configmap: String,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        Self {
            lease_namespace: "default".into(),
            lease_name: "portcullis-controller".into(),
            identity: "portcullis-controller".into(),
            lease_duration: Duration::from_secs(10),
            debounce: Duration::from_millis(5),
            write_timeout: Duration::from_secs(5),
            prune_interval: Duration::from_secs(10),
            advertise_url: None,
            quota_configmap: "portcullis-quota-ledger".into(),
        }
    }
}

/// Runs the controller until `shutdown`: watchers, compile loop, leader election, status.
#[allow(clippy::too_many_arguments)] // each is one part the binary builds and shares
pub async fn run(
    client: Client,
    opts: ControllerOptions,
    publisher: Arc<Publisher>,
    registry: Arc<ProxyRegistry>,
    metrics: Metrics,
    quota: Arc<crate::quota::QuotaService>,
    events: Arc<crate::events::EventService>,
    shutdown: watch::Receiver<bool>,
) {
    let store = Arc::new(Store::default());
    store::spawn_watchers(&client, &store);

    let leader = Arc::new(
        LeaderElection::new(
            Api::namespaced(client.clone(), &opts.lease_namespace),
            opts.lease_name.clone(),
            opts.identity.clone(),
            opts.lease_duration,
        )
        .with_advertise_url(opts.advertise_url.clone()),
    );
    tokio::spawn(leader.clone().run(metrics.clone(), shutdown.clone()));
    {
        let l = leader.clone();
        quota.attach(
            leader.subscribe(),
            Arc::new(move || l.leader_url()),
            Arc::new(crate::quota::ConfigMapStore::new(
                Api::namespaced(client.clone(), &opts.lease_namespace),
                opts.quota_configmap.clone(),
            )),
        );
        tokio::spawn(quota.clone().run(shutdown.clone()));
    }

    // Shared Signals streams the leader drives (poll delivery, verification).
    let ssf = Arc::new(crate::events::ControllerSsf::new(
        publisher.clone(),
        leader.subscribe(),
        events,
        store.clone(),
        metrics.registry(),
    ));
    tokio::spawn(portcullis_fetch::ssf::run(
        ssf.clone(),
        Arc::new(portcullis_fetch::HttpClient::default()),
    ));

    let (remote_acks_tx, remote_acks) = watch::channel(None);
    tokio::spawn(acks::share_acks(
        client.clone(),
        opts.clone(),
        registry.clone(),
        publisher.clone(),
        leader.subscribe(),
        remote_acks_tx,
        shutdown.clone(),
    ));

    let (sources_tx, sources_rx) = watch::channel(Vec::new());
    let (keys_tx, keys) = watch::channel(KeysReports::new());
    let remote_keys = RemoteKeysTask::new(
        client.clone(),
        opts.clone(),
        store.clone(),
        registry.clone(),
        &metrics,
        sources_rx,
        leader.subscribe(),
        keys_tx,
    );
    tokio::spawn(remote_keys.run(shutdown.clone()));

    tokio::spawn(prune::run(
        client.clone(),
        store.clone(),
        metrics.clone(),
        opts.prune_interval,
        leader.subscribe(),
        shutdown.clone(),
    ));

    let statuses = Arc::new(StatusQueue::default());
    tokio::spawn(status_writer::run(
        statuses.clone(),
        KubeStatusApi::new(client, &opts.identity),
        leader.subscribe(),
        metrics.clone(),
        opts.write_timeout,
        shutdown.clone(),
    ));

    let controller = Controller {
        leader: leader.subscribe(),
        opts,
        store,
        publisher,
        registry,
        metrics,
        remote_acks,
        keys,
        remote_sources: sources_tx,
        statuses,
        quota: Some(quota),
        ssf: Some(ssf),
        planner: StatusPlanner::default(),
        programmed: Programmed::new(),
        errors: Vec::new(),
    };
    controller.run(shutdown).await;
}

/// What woke the publish loop.
enum Wake {
    /// The store changed: recompile, then a status pass.
    Changed,
    /// Only a status pass.
    Status,
    Shutdown,
}

/// The publish loop's state: compiles the store, publishes, and plans statuses.
struct Controller {
    opts: ControllerOptions,
    store: Arc<Store>,
    publisher: Arc<Publisher>,
    registry: Arc<ProxyRegistry>,
    metrics: Metrics,
    leader: watch::Receiver<bool>,
    remote_acks: watch::Receiver<RemoteAcks>,
    keys: watch::Receiver<KeysReports>,
    /// The remote key sources of the last compile, for the remote-keys task.
    remote_sources: watch::Sender<Vec<RemoteSource>>,
    statuses: Arc<StatusQueue>,
    /// The quota ledger, whose budget use goes into TokenPolicy status.
    quota: Option<Arc<crate::quota::QuotaService>>,
    /// The Shared Signals receiver, whose streams go into TokenPolicy status.
    ssf: Option<Arc<crate::events::ControllerSsf>>,
    planner: StatusPlanner,
    programmed: Programmed,
    /// The last compile's errors.
    errors: Vec<CompileError>,
}

impl Controller {
    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut status_tick = tokio::time::interval(STATUS_EVERY);
        let (store, registry) = (self.store.clone(), self.registry.clone());
        loop {
            let wake = tokio::select! {
                _ = store.changed.notified() => Wake::Changed,
                _ = registry.changed.notified() => Wake::Status,
                Ok(()) = self.leader.changed() => Wake::Status,
                Ok(()) = self.keys.changed() => Wake::Status,
                Ok(()) = self.remote_acks.changed() => Wake::Status,
                _ = status_tick.tick() => Wake::Status,
                _ = shutdown.changed() => Wake::Shutdown,
            };
            match wake {
                Wake::Changed => self.recompile().await,
                Wake::Status => {}
                Wake::Shutdown => break,
            }
            self.offer_statuses();
        }
    }

    /// After the debounce, compiles the store and publishes what changed.
    async fn recompile(&mut self) {
        tokio::time::sleep(self.opts.debounce).await;
        if !self.store.synced() {
            return;
        }
        let started = Instant::now();
        let compiled = sources::compile_store(&self.store, &self.opts.lease_namespace);
        let sources = compiled.sources;
        let at_least = compiled
            .versions
            .for_change(&self.publisher.current().1, &sources);
        self.metrics
            .compile_duration
            .observe(started.elapsed().as_secs_f64());
        for kind in ["ApiRoute", "TokenPolicy"] {
            self.metrics.reconciles.with_label_values(&[kind]).inc();
        }
        for e in &compiled.errors {
            self.metrics
                .reconcile_errors
                .with_label_values(&[e.kind, e.reason.as_str()])
                .inc();
        }
        let objects = sources.objects.len();
        if let Some(v) = self.publisher.publish(sources, at_least) {
            self.metrics.snapshot_version.set(v as i64);
            info!(
                version = v,
                objects,
                errors = compiled.errors.len(),
                "published config"
            );
        }
        // What is published now: what was just compiled (or the same content).
        let (version, published) = self.publisher.current();
        for obj in published.objects.values() {
            let (kind, key, generation) = match obj {
                SourceObject::ApiRoute(r) => ("ApiRoute", key_of(r), r.metadata.generation),
                SourceObject::TokenPolicy(p) => ("TokenPolicy", key_of(p), p.metadata.generation),
                SourceObject::Secret(_) | SourceObject::RemoteKeys(_) => continue,
            };
            let entry = self
                .programmed
                .entry((kind.into(), key))
                .or_insert((generation, version));
            if entry.0 != generation {
                *entry = (generation, version);
            }
        }
        self.errors = compiled.errors;
        self.remote_sources.send_replace(compiled.remote);
    }

    /// The leader's status pass: every object's wanted status, offered to the writer.
    fn offer_statuses(&mut self) {
        if !*self.leader.borrow() {
            // A standby writes nothing; the new leader computes its own.
            self.statuses.clear();
            return;
        }
        if !self.store.synced() {
            return;
        }
        // Until the other replicas' acknowledgements are read, only this replica's
        // proxies would be counted.
        let Some(remote) = self.remote_acks.borrow().clone() else {
            return;
        };
        let mut all = acks::local_acks(&self.registry, &self.publisher);
        all.extend(remote);
        let digest = self.publisher.current_digest();
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let pass = self.planner.plan(
            &self.store,
            &status_pass::Acks {
                all: &all,
                current_digest: digest.as_deref(),
            },
            &self.programmed,
            &self.errors,
            &self.keys.borrow(),
            &status_pass::PolicyExtras {
                budgets: &|policy: &str| match &self.quota {
                    Some(q) => q.budget_status(policy),
                    None => Vec::new(),
                },
                streams: &|policy: &str| {
                    let (Some(ssf), Some((ns, name))) = (&self.ssf, policy.split_once('/')) else {
                        return Vec::new();
                    };
                    let g = self.store.lock();
                    g.policies
                        .get(&(ns.to_owned(), name.to_owned()))
                        .map(|p| ssf.stream_status(p))
                        .unwrap_or_default()
                },
            },
            &now,
        );
        self.statuses.offer(pass);
    }
}
