//! The Kubernetes side: watchers feed an in-memory [`Store`]; every change recompiles
//! (debounced by a few ms) and publishes a new version; the leader writes status with
//! server-side apply, emits Events for rejections, and prunes expired revocations.
//!
//! ```text
//!  watch ApiRoute ─┐
//!  watch TokenPolicy ─┼─▶ Store ──(debounce)──▶ compile ──▶ Publisher ──▶ push streams
//!  watch Secret ───┤                                   └─▶ status (leader only, SSA)
//!  watch Service ──┘                                   └─▶ prune expired revocations (leader)
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::events::{Event as KEvent, EventType, Recorder, Reporter};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use portcullis_api::push::{SourceObject, SourceSet};
use portcullis_api::{ApiRoute, ResourceStatus, TokenPolicy};
use portcullis_fetch::{FetchResult, HttpClient, KeyFetcher};
use portcullis_policy::{CompileError, CompileOptions, RemoteSource};
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::publisher::Publisher;
use crate::registry::ProxyRegistry;
use crate::status::{self, ObjectReport};

/// The one field manager every status write uses.
pub const FIELD_MANAGER: &str = "portcullis-controller";

type Key = (String, String);

/// How one watcher's events change the store; true once its initial list is complete.
type ApplyFn<K> = fn(&mut StoreInner, &mut Option<BTreeMap<Key, K>>, Event<K>) -> bool;

/// An object whose status may need writing: kind, key, generation, current status, reference.
type StatusTarget = (
    &'static str,
    Key,
    Option<i64>,
    Option<ResourceStatus>,
    k8s_openapi::api::core::v1::ObjectReference,
);

fn key_of<K: ResourceExt>(o: &K) -> Key {
    (o.namespace().unwrap_or_default(), o.name_any())
}

fn rv_of<K: ResourceExt>(o: &K) -> u64 {
    o.resource_version()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

// === Store ===

/// The objects the controller has seen, kept current by the watchers.
#[derive(Default)]
pub struct Store {
    inner: Mutex<StoreInner>,
    changed: Notify,
}

#[derive(Default)]
struct StoreInner {
    routes: BTreeMap<Key, ApiRoute>,
    policies: BTreeMap<Key, TokenPolicy>,
    secrets: BTreeMap<Key, Secret>,
    services: HashSet<Key>,
    /// Per object, the resourceVersion at which its content (spec, or a Secret's data)
    /// last changed. Status writes bump resourceVersions without changing content; these
    /// do not move, so every replica derives the same config version.
    route_rv: HashMap<Key, u64>,
    policy_rv: HashMap<Key, u64>,
    secret_rv: HashMap<Key, u64>,
    /// Highest resourceVersion among deletions of routes and policies.
    deleted_rv: u64,
    /// Each watcher has listed everything once.
    synced: HashSet<&'static str>,
}

/// Applies watcher events to a map, with Init/InitDone replacing the whole map atomically,
/// and keeps each object's content resourceVersion (see `StoreInner::route_rv`).
fn apply_event<K: ResourceExt + Clone>(
    map: &mut BTreeMap<Key, K>,
    content_rv: &mut HashMap<Key, u64>,
    same: fn(&K, &K) -> bool,
    buffer: &mut Option<BTreeMap<Key, K>>,
    ev: Event<K>,
    deleted_rv: &mut u64,
) -> bool {
    let rv_for =
        |map: &BTreeMap<Key, K>, content_rv: &HashMap<Key, u64>, key: &Key, o: &K| match map
            .get(key)
        {
            Some(old) if same(old, o) => content_rv.get(key).copied().unwrap_or_else(|| rv_of(old)),
            _ => rv_of(o),
        };
    match ev {
        Event::Apply(o) => {
            let key = key_of(&o);
            let rv = rv_for(map, content_rv, &key, &o);
            content_rv.insert(key.clone(), rv);
            map.insert(key, o);
            false
        }
        Event::Delete(o) => {
            *deleted_rv = (*deleted_rv).max(rv_of(&o));
            let key = key_of(&o);
            content_rv.remove(&key);
            map.remove(&key);
            false
        }
        Event::Init => {
            *buffer = Some(BTreeMap::new());
            false
        }
        Event::InitApply(o) => {
            buffer
                .get_or_insert_with(BTreeMap::new)
                .insert(key_of(&o), o);
            false
        }
        Event::InitDone => {
            let listed = buffer.take().unwrap_or_default();
            let rvs = listed
                .iter()
                .map(|(k, o)| (k.clone(), rv_for(map, content_rv, k, o)))
                .collect();
            *content_rv = rvs;
            *map = listed;
            true
        }
    }
}

impl Store {
    fn lock(&self) -> std::sync::MutexGuard<'_, StoreInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether every watcher has listed once.
    pub fn synced(&self) -> bool {
        self.lock().synced.len() == 4
    }
}

async fn watch_kind<K>(api: Api<K>, store: Arc<Store>, name: &'static str, apply: ApplyFn<K>)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let mut buffer = None;
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(ev) => {
                let mut g = store.lock();
                if apply(&mut g, &mut buffer, ev) {
                    g.synced.insert(name);
                }
                drop(g);
                store.changed.notify_one();
            }
            Err(e) => warn!(kind = name, error = %e, "watch failed; retrying with backoff"),
        }
    }
}

// === Leader election ===

/// Holds (or waits for) the leader Lease.
pub struct LeaderElection {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    is_leader: AtomicBool,
}

impl LeaderElection {
    /// Whether this replica holds the Lease now.
    pub fn is_leader(&self) -> bool {
        self.is_leader.load(Ordering::Acquire)
    }

    async fn step(&self) -> Result<bool, kube::Error> {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let secs = self.duration.as_secs() as i32;
        match self.api.get_opt(&self.name).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.identity.clone()),
                        lease_duration_seconds: Some(secs),
                        acquire_time: Some(now.clone()),
                        renew_time: Some(now),
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                };
                match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
            Some(mut lease) => {
                let spec = lease.spec.get_or_insert_with(Default::default);
                let holder = spec.holder_identity.clone().unwrap_or_default();
                let expired = spec
                    .renew_time
                    .as_ref()
                    .map(|t| {
                        t.0.as_second() + i64::from(spec.lease_duration_seconds.unwrap_or(secs))
                            < now.0.as_second()
                    })
                    .unwrap_or(true);
                if holder != self.identity && !holder.is_empty() && !expired {
                    return Ok(false);
                }
                if holder != self.identity {
                    spec.acquire_time = Some(now.clone());
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                    spec.holder_identity = Some(self.identity.clone());
                }
                spec.renew_time = Some(now);
                spec.lease_duration_seconds = Some(secs);
                // replace() carries resourceVersion: a concurrent taker loses with 409.
                match self
                    .api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
        }
    }

    async fn run(
        self: Arc<Self>,
        metrics: Metrics,
        changed: Arc<Notify>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let retry = self.duration / 5;
        loop {
            let was = self.is_leader();
            let now = match tokio::time::timeout(retry * 2, self.step()).await {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => {
                    warn!(error = %e, "leader election step failed");
                    false
                }
                Err(_) => false,
            };
            self.is_leader.store(now, Ordering::Release);
            metrics.leader.set(now as i64);
            if now != was {
                info!(identity = %self.identity, leader = now, "leadership changed");
                changed.notify_one();
            }
            tokio::select! {
                _ = tokio::time::sleep(retry) => {}
                _ = shutdown.changed() => break,
            }
        }
        if self.is_leader() {
            // Step down so a standby takes over at once.
            if let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await
                && let Some(spec) = lease.spec.as_mut()
                && spec.holder_identity.as_deref() == Some(&self.identity)
            {
                spec.holder_identity = None;
                let _ = self
                    .api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await;
            }
            self.is_leader.store(false, Ordering::Release);
        }
    }
}

// === Controller ===

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
        }
    }
}

/// Per object: the generation last published, and the version that first held it.
type Programmed = HashMap<(String, Key), (Option<i64>, u64)>;

/// Runs the controller until `shutdown`: watchers, compile loop, leader election, status.
pub async fn run(
    client: Client,
    opts: ControllerOptions,
    publisher: Arc<Publisher>,
    registry: Arc<ProxyRegistry>,
    metrics: Metrics,
    shutdown: watch::Receiver<bool>,
) {
    let store = Arc::new(Store::default());
    tokio::spawn(watch_kind(
        Api::<ApiRoute>::all(client.clone()),
        store.clone(),
        "ApiRoute",
        |s, b, e| {
            apply_event(
                &mut s.routes,
                &mut s.route_rv,
                |a, b| a.spec == b.spec && a.metadata.generation == b.metadata.generation,
                b,
                e,
                &mut s.deleted_rv,
            )
        },
    ));
    tokio::spawn(watch_kind(
        Api::<TokenPolicy>::all(client.clone()),
        store.clone(),
        "TokenPolicy",
        |s, b, e| {
            apply_event(
                &mut s.policies,
                &mut s.policy_rv,
                |a, b| a.spec == b.spec && a.metadata.generation == b.metadata.generation,
                b,
                e,
                &mut s.deleted_rv,
            )
        },
    ));
    tokio::spawn(watch_kind(
        Api::<Secret>::all(client.clone()),
        store.clone(),
        "Secret",
        |s, b, e| {
            let mut ignored = 0;
            apply_event(
                &mut s.secrets,
                &mut s.secret_rv,
                |a, b| a.data == b.data,
                b,
                e,
                &mut ignored,
            )
        },
    ));
    tokio::spawn(watch_kind(
        Api::<Service>::all(client.clone()),
        store.clone(),
        "Service",
        |s, b, e| {
            // Only names matter for Services.
            match e {
                Event::Apply(o) | Event::InitApply(o) => {
                    if b.is_some() {
                        b.get_or_insert_with(BTreeMap::new).insert(key_of(&o), o);
                    } else {
                        s.services.insert(key_of(&o));
                    }
                    false
                }
                Event::Delete(o) => {
                    s.services.remove(&key_of(&o));
                    false
                }
                Event::Init => {
                    *b = Some(BTreeMap::new());
                    false
                }
                Event::InitDone => {
                    s.services = b.take().unwrap_or_default().into_keys().collect();
                    true
                }
            }
        },
    ));

    let leader = Arc::new(LeaderElection {
        api: Api::namespaced(client.clone(), &opts.lease_namespace),
        name: opts.lease_name.clone(),
        identity: opts.identity.clone(),
        duration: opts.lease_duration,
        is_leader: AtomicBool::new(false),
    });
    tokio::spawn(share_acks(
        client.clone(),
        opts.clone(),
        registry.clone(),
        publisher.clone(),
        shutdown.clone(),
    ));
    let leader_changed = Arc::new(Notify::new());
    tokio::spawn(
        leader
            .clone()
            .run(metrics.clone(), leader_changed.clone(), shutdown.clone()),
    );

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: FIELD_MANAGER.into(),
            instance: Some(opts.identity.clone()),
        },
    );
    let mut programmed: Programmed = HashMap::new();
    let mut last_errors: Vec<CompileError> = Vec::new();
    let mut warned: HashSet<(String, Key, Option<i64>, String)> = HashSet::new();
    // Remote key sets: fetched by the leader only (see jwks_store).
    let fetcher = KeyFetcher::new(Arc::new(HttpClient::default()), metrics.registry());
    let mut fetch_changes = fetcher.subscribe();
    let mut remote_sources: Vec<RemoteSource> = Vec::new();
    let mut fetching = false;
    let mut stored: HashMap<String, (Option<serde_json::Value>, &'static str, String)> =
        HashMap::new();
    let mut handled_refetch: HashMap<String, String> = HashMap::new();
    // Key sets fetched but not stored (RBAC, API server trouble): retried every few seconds.
    let mut store_errors: HashMap<String, String> = HashMap::new();
    let mut retry_store = tokio::time::interval(Duration::from_secs(5));
    let mut forwarded: HashMap<String, Instant> = HashMap::new();
    let mut prune_tick = tokio::time::interval(opts.prune_interval);
    let mut status_tick = tokio::time::interval(Duration::from_secs(2));
    let mut shutdown = shutdown;
    loop {
        let mut recompile = false;
        tokio::select! {
            _ = store.changed.notified() => recompile = true,
            _ = registry.changed.notified() => {}
            _ = leader_changed.notified() => {}
            _ = fetch_changes.changed() => {
                if leader.is_leader() {
                    for st in fetcher.states().into_values() {
                        let now = (st.document.clone(), st.result.reason(), st.message.clone());
                        if st.document.is_some() && stored.get(&st.source.key) != Some(&now) {
                            match crate::jwks_store::write(&client, &opts.lease_namespace, FIELD_MANAGER, &st, opts.write_timeout).await {
                                Ok(()) => {
                                    stored.insert(st.source.key.clone(), now);
                                    store_errors.remove(&st.source.key);
                                }
                                Err(e) => {
                                    store_errors.insert(st.source.key.clone(), e);
                                    retry_store.reset();
                                }
                            }
                        }
                    }
                }
            }
            _ = retry_store.tick(), if !store_errors.is_empty() => {
                stored.retain(|url, _| !store_errors.contains_key(url));
                fetch_changes.mark_changed();
                continue;
            }
            _ = registry.refetch_requested.notified() => {
                for url in registry.take_refetches() {
                    let Some(src) = remote_sources.iter().find(|s| s.key == url) else {
                        continue;
                    };
                    if leader.is_leader() {
                        fetcher.request_refetch(&url);
                    } else {
                        // Passed on at most once per window: proxies may all ask at once.
                        if forwarded.get(&url).is_some_and(|at: &Instant| at.elapsed() < src.min_refresh) {
                            continue;
                        }
                        forwarded.insert(url.clone(), Instant::now());
                        crate::jwks_store::request_refetch(&client, &opts.lease_namespace, &url, opts.write_timeout).await;
                    }
                }
                continue;
            }
            _ = status_tick.tick() => {}
            _ = prune_tick.tick() => {
                if leader.is_leader() && store.synced() {
                    prune(&client, &store, &metrics).await;
                }
                continue;
            }
            _ = shutdown.changed() => break,
        }
        if recompile {
            tokio::time::sleep(opts.debounce).await;
            if !store.synced() {
                continue;
            }
            let started = Instant::now();
            let (sources, rvs, errors, remote) = compile_store(&store, &opts.lease_namespace);
            remote_sources = remote;
            let at_least = rvs.for_change(&publisher.current().1, &sources);
            metrics
                .compile_duration
                .observe(started.elapsed().as_secs_f64());
            for kind in ["ApiRoute", "TokenPolicy"] {
                metrics.reconciles.with_label_values(&[kind]).inc();
            }
            for e in &errors {
                metrics
                    .reconcile_errors
                    .with_label_values(&[e.kind, e.reason])
                    .inc();
            }
            if let Some(v) = publisher.publish(sources.clone(), at_least) {
                metrics.snapshot_version.set(v as i64);
                info!(
                    version = v,
                    objects = sources.objects.len(),
                    errors = errors.len(),
                    "published config"
                );
            }
            let version = publisher.current().0;
            for obj in sources.objects.values() {
                let (kind, key, generation) = match obj {
                    SourceObject::ApiRoute(r) => ("ApiRoute", key_of(r), r.metadata.generation),
                    SourceObject::TokenPolicy(p) => {
                        ("TokenPolicy", key_of(p), p.metadata.generation)
                    }
                    SourceObject::Secret(_) | SourceObject::RemoteKeys(_) => continue,
                };
                let entry = programmed
                    .entry((kind.into(), key))
                    .or_insert((generation, version));
                if entry.0 != generation {
                    *entry = (generation, version);
                }
            }
            last_errors = errors;
        }
        // The leader fetches; a replica that lost the lead stops.
        if leader.is_leader() && store.synced() {
            fetcher.set_sources(remote_sources.clone());
            let g = store.lock();
            for src in &remote_sources {
                let key = (
                    opts.lease_namespace.clone(),
                    crate::jwks_store::secret_name(&src.key),
                );
                if let Some(secret) = g.secrets.get(&key) {
                    if !fetching
                        && let Some(doc) = crate::jwks_store::stored_document(secret, &src.key)
                    {
                        fetcher.seed(&src.key, doc, crate::jwks_store::stored_fetched_at(secret));
                    }
                    // Refetches other replicas passed on.
                    if let Some(at) = secret
                        .annotations()
                        .get(crate::jwks_store::REFETCH_REQUESTED)
                        && handled_refetch.get(&src.key) != Some(at)
                    {
                        handled_refetch.insert(src.key.clone(), at.clone());
                        fetcher.request_refetch(&src.key);
                    }
                }
            }
            drop(g);
            fetching = true;
        } else if fetching {
            fetcher.set_sources(Vec::new());
            stored.clear();
            store_errors.clear();
            fetching = false;
        }
        store_errors.retain(|key, _| remote_sources.iter().any(|s| &s.key == key));
        if leader.is_leader() && store.synced() {
            let mut keys = keys_reports(&fetcher);
            // Keys reach proxies only once stored: until then (or when storing fails),
            // KeysReady is not True.
            for src in &remote_sources {
                let report = match store_errors.get(&src.key) {
                    Some(err) => (false, "StoreFailed", err.clone()),
                    None if !stored.contains_key(&src.key)
                        && keys
                            .get(src.policies.first().map(String::as_str).unwrap_or_default())
                            .is_some_and(|k| k.0) =>
                    {
                        (
                            false,
                            "Pending",
                            format!("fetched {}; storing the keys", src.url),
                        )
                    }
                    None => continue,
                };
                for p in &src.policies {
                    keys.insert(p.clone(), report.clone());
                }
            }
            let acks = cluster_acks(&client, &opts, &registry, &publisher).await;
            let current_digest = publisher.current_digest();
            write_statuses(
                &client,
                &store,
                &acks,
                current_digest.as_deref(),
                &programmed,
                &last_errors,
                &keys,
                &recorder,
                &mut warned,
                &metrics,
                opts.write_timeout,
            )
            .await;
        }
    }
}

/// Label on the Leases through which replicas share their proxies' acknowledgements.
const ACKS_LABEL: &str = "portcullis.dev/acks";
/// Annotation holding a replica's acknowledged versions, one per connected proxy.
const ACKS_ANNOTATION: &str = "portcullis.dev/acked-versions";
/// A replica's share older than this is ignored (the replica is gone).
const ACKS_TTL: i64 = 15;

fn acks_lease_name(identity: &str) -> String {
    let clean: String = identity
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("portcullis-acks-{}", clean.trim_matches('-'))
}

/// Every replica serves streams, but only the leader writes status: each replica shares
/// the versions its proxies acknowledged in a Lease of its own, refreshed every second.
async fn share_acks(
    client: Client,
    opts: ControllerOptions,
    registry: Arc<ProxyRegistry>,
    publisher: Arc<Publisher>,
    mut shutdown: watch::Receiver<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &opts.lease_namespace);
    let name = acks_lease_name(&opts.identity);
    let mut last: Option<(Vec<Ack>, Instant)> = None;
    loop {
        let acks = local_acks(&registry, &publisher);
        let stale = last
            .as_ref()
            .is_none_or(|(v, at)| *v != acks || at.elapsed() > Duration::from_secs(5));
        if stale {
            let lease = serde_json::json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": name, "labels": {ACKS_LABEL: "true"}, "annotations": {ACKS_ANNOTATION: serde_json::to_string(&acks).unwrap_or_default()}},
                "spec": {"holderIdentity": opts.identity, "leaseDurationSeconds": ACKS_TTL, "renewTime": MicroTime(k8s_openapi::jiff::Timestamp::now())},
            });
            match tokio::time::timeout(
                opts.write_timeout,
                api.patch(
                    &name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&lease),
                ),
            )
            .await
            {
                Ok(Ok(_)) => last = Some((acks, Instant::now())),
                Ok(Err(e)) => debug!(error = %e, "could not share acknowledgements"),
                Err(_) => debug!("sharing acknowledgements timed out"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = registry.changed_share.notified() => tokio::time::sleep(Duration::from_millis(20)).await,
            _ = shutdown.changed() => break,
        }
    }
    let _ = api.delete(&name, &Default::default()).await;
}

/// A proxy's acknowledgement as the leader reads it: the version (numbered by the replica
/// it is connected to) and the content digest of that version.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Ack {
    v: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    d: Option<String>,
}

/// This replica's proxies' acknowledgements, with the digest of each acked version.
fn local_acks(registry: &ProxyRegistry, publisher: &Publisher) -> Vec<Ack> {
    registry
        .acked_versions()
        .into_iter()
        .map(|v| Ack {
            v,
            d: publisher.digest_of(v),
        })
        .collect()
}

/// The acknowledgements of every proxy connected to any live replica.
async fn cluster_acks(
    client: &Client,
    opts: &ControllerOptions,
    registry: &ProxyRegistry,
    publisher: &Publisher,
) -> Vec<Ack> {
    let mut acks = local_acks(registry, publisher);
    let own = acks_lease_name(&opts.identity);
    let api: Api<Lease> = Api::namespaced(client.clone(), &opts.lease_namespace);
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    if let Ok(Ok(list)) = tokio::time::timeout(
        opts.write_timeout,
        api.list(&kube::api::ListParams::default().labels(&format!("{ACKS_LABEL}=true"))),
    )
    .await
    {
        for lease in list {
            if lease.name_any() == own {
                continue;
            }
            let fresh = lease
                .spec
                .as_ref()
                .and_then(|s| s.renew_time.as_ref())
                .is_some_and(|t| now - t.0.as_second() <= ACKS_TTL);
            if !fresh {
                continue;
            }
            if let Some(v) = lease
                .annotations()
                .get(ACKS_ANNOTATION)
                .and_then(|a| serde_json::from_str::<Vec<Ack>>(a).ok())
            {
                acks.extend(v);
            }
        }
    }
    acks
}

/// resourceVersions of the source objects (by `SourceSet` map key), and the highest
/// resourceVersion among deletions seen.
#[derive(Default)]
struct Versions {
    of: HashMap<String, u64>,
    deleted: u64,
}

impl Versions {
    /// The version a change from `prev` to `next` is published at: the highest
    /// resourceVersion among the objects that changed (etcd revisions, the same for every
    /// replica). Status writes bump resourceVersions too, so objects that did not change
    /// are left out: replicas that saw the same changes agree on the version.
    fn for_change(&self, prev: &SourceSet, next: &SourceSet) -> u64 {
        let changes = prev.diff(next);
        let key = |k: &portcullis_api::push::ObjectKey| SourceSet::map_key(k);
        let mut v = changes
            .upserts
            .iter()
            .map(|o| key(&o.key()))
            .chain(changes.revocations.iter().map(|e| key(&e.policy)))
            .filter_map(|k| self.of.get(&k).copied())
            .max()
            .unwrap_or(0);
        if !changes.deletes.is_empty() {
            v = v.max(self.deleted);
        }
        v
    }
}

/// Builds the published source set from the store and compiles it for errors.
fn compile_store(
    store: &Store,
    jwks_namespace: &str,
) -> (SourceSet, Versions, Vec<CompileError>, Vec<RemoteSource>) {
    let g = store.lock();
    let mut set = SourceSet::default();
    let mut rvs = Versions {
        deleted: g.deleted_rv,
        ..Default::default()
    };
    let mut wanted_secrets: HashMap<Key, HashSet<String>> = HashMap::new();
    for p in g.policies.values() {
        rvs.of.insert(
            format!(
                "TokenPolicy/{}/{}",
                p.namespace().unwrap_or_default(),
                p.name_any()
            ),
            g.policy_rv
                .get(&key_of(p))
                .copied()
                .unwrap_or_else(|| rv_of(p)),
        );
        let ns = p.namespace().unwrap_or_default();
        for iss in &p.spec.issuers {
            let jwks = iss.jwks.as_ref();
            for r in [
                jwks.and_then(|j| j.secret_ref.as_ref()),
                jwks.and_then(|j| j.ca_bundle_secret_ref.as_ref()),
            ]
            .into_iter()
            .flatten()
            {
                wanted_secrets
                    .entry((ns.clone(), r.name.clone()))
                    .or_default()
                    .insert(r.key.clone());
            }
            if let Some(intro) = &iss.introspection {
                let keys = wanted_secrets
                    .entry((ns.clone(), intro.credentials_secret_ref.name.clone()))
                    .or_default();
                keys.insert(portcullis_policy::INTROSPECTION_CLIENT_ID_KEY.into());
                keys.insert(portcullis_policy::INTROSPECTION_CLIENT_SECRET_KEY.into());
            }
        }
        let mut clean = TokenPolicy::new(&p.name_any(), p.spec.clone());
        clean.metadata = slim_meta(&p.metadata);
        set.upsert(SourceObject::TokenPolicy(clean));
    }
    for r in g.routes.values() {
        rvs.of.insert(
            format!(
                "ApiRoute/{}/{}",
                r.namespace().unwrap_or_default(),
                r.name_any()
            ),
            g.route_rv
                .get(&key_of(r))
                .copied()
                .unwrap_or_else(|| rv_of(r)),
        );
        let mut clean = ApiRoute::new(&r.name_any(), r.spec.clone());
        clean.metadata = slim_meta(&r.metadata);
        set.upsert(SourceObject::ApiRoute(clean));
    }
    for (key, keys) in &wanted_secrets {
        if let Some(s) = g.secrets.get(key) {
            rvs.of.insert(
                format!("Secret/{}/{}", key.0, key.1),
                g.secret_rv.get(key).copied().unwrap_or_else(|| rv_of(s)),
            );
            let data: BTreeMap<String, ByteString> = s
                .data
                .iter()
                .flatten()
                .filter(|(k, _)| keys.contains(*k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            set.upsert(SourceObject::Secret(Secret {
                metadata: ObjectMeta {
                    name: Some(key.1.clone()),
                    namespace: Some(key.0.clone()),
                    ..Default::default()
                },
                data: Some(data),
                ..Default::default()
            }));
        }
    }
    // Fetched key sets: the leader keeps them in Secrets of the controller's namespace.
    let (_, policies, secrets) = set.split();
    let remote = portcullis_policy::remote_sources(&policies, &secrets);
    for src in &remote {
        let key = (
            jwks_namespace.to_owned(),
            crate::jwks_store::secret_name(&src.key),
        );
        if let Some(secret) = g.secrets.get(&key)
            && let Some(doc) = crate::jwks_store::stored_document(secret, &src.key)
        {
            let obj = SourceObject::RemoteKeys(portcullis_api::push::RemoteKeys {
                url: src.key.clone(),
                jwks: doc,
            });
            rvs.of.insert(
                SourceSet::map_key(&obj.key()),
                g.secret_rv
                    .get(&key)
                    .copied()
                    .unwrap_or_else(|| rv_of(secret)),
            );
            set.upsert(obj);
        }
    }
    let (routes, policies, secrets) = set.split();
    let (_, mut errors) = portcullis_policy::compile_with(
        &CompileOptions {
            validate_cel: false,
            remote_jwks: set.remote_jwks(),
            ..Default::default()
        },
        &routes,
        &policies,
        &secrets,
    );
    // Service backends must exist (the route still serves; its requests get 502 until then).
    for r in g.routes.values() {
        if let Some(svc) = &r.spec.backend.service {
            let ns = r.namespace().unwrap_or_default();
            if !g.services.contains(&(ns.clone(), svc.name.clone())) {
                errors.push(CompileError {
                    kind: "ApiRoute",
                    namespace: ns.clone(),
                    name: r.name_any(),
                    path: "spec.backend.service.name".into(),
                    message: format!("Service {ns}/{} not found", svc.name),
                    reason: "BackendNotFound",
                });
            }
        }
    }
    (set, rvs, errors, remote)
}

fn slim_meta(m: &ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: m.name.clone(),
        namespace: m.namespace.clone(),
        generation: m.generation,
        creation_timestamp: m.creation_timestamp.clone(),
        ..Default::default()
    }
}

#[allow(clippy::too_many_arguments)]
async fn write_statuses(
    client: &Client,
    store: &Store,
    acks: &[Ack],
    current_digest: Option<&str>,
    programmed: &Programmed,
    errors: &[CompileError],
    keys: &HashMap<String, (bool, &'static str, String)>,
    recorder: &Recorder,
    warned: &mut HashSet<(String, Key, Option<i64>, String)>,
    metrics: &Metrics,
    timeout: Duration,
) {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    // (kind, key, generation, current status, object reference)
    let objects: Vec<StatusTarget> = {
        let g = store.lock();
        g.routes
            .values()
            .map(|r| {
                (
                    "ApiRoute",
                    key_of(r),
                    r.metadata.generation,
                    r.status.clone(),
                    r.object_ref(&()),
                )
            })
            .chain(g.policies.values().map(|p| {
                (
                    "TokenPolicy",
                    key_of(p),
                    p.metadata.generation,
                    p.status.clone(),
                    p.object_ref(&()),
                )
            }))
            .collect()
    };
    let mut by_object: HashMap<(&str, &str, &str), Vec<&CompileError>> = HashMap::new();
    for e in errors {
        by_object
            .entry((e.kind, &e.namespace, &e.name))
            .or_default()
            .push(e);
    }
    for (kind, key, generation, current, oref) in objects {
        let errs = by_object
            .get(&(kind, key.0.as_str(), key.1.as_str()))
            .cloned()
            .unwrap_or_default();
        let proxies = match programmed.get(&(kind.to_string(), key.clone())) {
            // A proxy holds this generation if it acknowledged a version at or after the
            // one that first held it, or content identical to the leader's (replicas may
            // number the same content differently).
            Some((g, v)) if *g == generation => (
                acks.iter()
                    .filter(|a| a.v >= *v || (a.d.is_some() && a.d.as_deref() == current_digest))
                    .count(),
                acks.len(),
            ),
            _ => (0, acks.len()),
        };
        let keys_report = if kind == "TokenPolicy" {
            keys.get(&format!("{}/{}", key.0, key.1)).cloned()
        } else {
            None
        };
        if let Some((false, reason, message)) = &keys_report
            && *reason != "Pending"
            && warned.insert((
                kind.to_string(),
                key.clone(),
                generation,
                format!("keys:{reason}"),
            ))
        {
            let ev = KEvent {
                type_: EventType::Warning,
                reason: (*reason).into(),
                note: Some(message.chars().take(1000).collect()),
                action: "FetchKeys".into(),
                secondary: None,
            };
            if let Err(err) = recorder.publish(&ev, &oref).await {
                debug!(error = %err, "event not published");
            }
        }
        if let Some((true, _, _)) = &keys_report {
            // Recovered: a later failure deserves a new Event.
            warned.retain(|(k, o, g, r)| {
                !(k == kind && *o == key && *g == generation && r.starts_with("keys:"))
            });
        }
        let report = ObjectReport {
            generation,
            errors: errs.clone(),
            proxies,
            keys: keys_report,
        };
        let desired = status::desired(&report, current.as_ref(), &now);
        if !status::differs(current.as_ref(), &desired) {
            continue;
        }
        let patch = serde_json::json!({
            "apiVersion": "portcullis.dev/v1alpha1",
            "kind": kind,
            "status": desired,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let write = async {
            match kind {
                "ApiRoute" => Api::<ApiRoute>::namespaced(client.clone(), &key.0)
                    .patch_status(&key.1, &params, &Patch::Apply(&patch))
                    .await
                    .map(|_| ()),
                _ => Api::<TokenPolicy>::namespaced(client.clone(), &key.0)
                    .patch_status(&key.1, &params, &Patch::Apply(&patch))
                    .await
                    .map(|_| ()),
            }
        };
        let result = match tokio::time::timeout(timeout, write).await {
            Ok(Ok(())) => "ok",
            Ok(Err(e)) => {
                warn!(%kind, ns = %key.0, name = %key.1, error = %e, "status write failed");
                "error"
            }
            Err(_) => "timeout",
        };
        metrics
            .status_writes
            .with_label_values(&[kind, result])
            .inc();
        // A Warning Event per rejection, once per generation and reason.
        for e in &errs {
            if e.reason == "RuleConflict" && errs.len() > 1 {
                continue;
            }
            let id = (
                kind.to_string(),
                key.clone(),
                generation,
                e.reason.to_string(),
            );
            if warned.insert(id) {
                let ev = KEvent {
                    type_: EventType::Warning,
                    reason: e.reason.into(),
                    note: Some(
                        format!("{}: {}", e.path, e.message)
                            .chars()
                            .take(1000)
                            .collect(),
                    ),
                    action: "Compile".into(),
                    secondary: None,
                };
                if let Err(err) = recorder.publish(&ev, &oref).await {
                    debug!(error = %err, "event not published");
                }
            }
        }
    }
}

/// `KeysReady` per policy (`namespace/name`) from the fetcher's sources: the first source
/// that is not ready decides.
fn keys_reports(fetcher: &KeyFetcher) -> HashMap<String, (bool, &'static str, String)> {
    let mut out: HashMap<String, (bool, &'static str, String)> = HashMap::new();
    let mut states: Vec<_> = fetcher.states().into_iter().collect();
    states.sort_by(|a, b| a.0.cmp(&b.0));
    for (_, st) in states {
        let fetched = st
            .fetched_at
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|d| k8s_openapi::jiff::Timestamp::from_second(d.as_secs() as i64).ok())
            .map(|t| t.to_string());
        let report = match st.result {
            FetchResult::Ok => (
                true,
                "Fetched",
                format!("{} keys from {}", st.keys, st.source.url),
            ),
            FetchResult::Pending => (false, "Pending", format!("fetching {}", st.source.url)),
            other => (
                false,
                other.reason(),
                match fetched {
                    Some(at) => format!(
                        "{}; keeping the last good keys ({} keys fetched at {at})",
                        st.message, st.keys
                    ),
                    None => format!("{}; no keys fetched yet", st.message),
                },
            ),
        };
        for p in &st.source.policies {
            match out.get(p) {
                Some((false, _, _)) => {}
                _ => {
                    out.insert(p.clone(), report.clone());
                }
            }
        }
    }
    out
}

/// Removes revocations whose `expiresAt` has passed (leader only), with a JSON patch that
/// tests the resourceVersion so a concurrent edit is never overwritten.
async fn prune(client: &Client, store: &Store, metrics: &Metrics) {
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    let candidates: Vec<TokenPolicy> = store.lock().policies.values().cloned().collect();
    for p in candidates {
        let expired = |r: &portcullis_api::Revocation| {
            r.expires_at
                .as_deref()
                .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
                .is_some_and(|t| t.as_second() <= now)
        };
        if !p.spec.revocations.iter().any(expired) {
            continue;
        }
        let kept: Vec<_> = p
            .spec
            .revocations
            .iter()
            .filter(|r| !expired(r))
            .cloned()
            .collect();
        let removed = p.spec.revocations.len() - kept.len();
        let ops = serde_json::json!([
            {"op": "test", "path": "/metadata/resourceVersion", "value": p.resource_version()},
            {"op": "replace", "path": "/spec/revocations", "value": kept},
        ]);
        let ns = p.namespace().unwrap_or_default();
        match raw_json_patch(client, &ns, &p.name_any(), &ops).await {
            Ok(()) => {
                metrics
                    .pruned
                    .with_label_values(&[&ns])
                    .inc_by(removed as u64);
                info!(policy = %format!("{ns}/{}", p.name_any()), removed, "pruned expired revocations");
            }
            Err(e) => debug!(error = %e, "prune skipped; will retry"),
        }
    }
}

/// Sends an RFC 6902 JSON patch to a TokenPolicy.
async fn raw_json_patch(
    client: &Client,
    ns: &str,
    name: &str,
    ops: &serde_json::Value,
) -> Result<(), kube::Error> {
    let url = format!("/apis/portcullis.dev/v1alpha1/namespaces/{ns}/tokenpolicies/{name}");
    let req = http::Request::patch(url)
        .header(http::header::CONTENT_TYPE, "application/json-patch+json")
        .body(serde_json::to_vec(ops).unwrap_or_default())
        .map_err(kube::Error::HttpError)?;
    let _: serde_json::Value = client.request(req).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(rv: u64, scope: &str) -> ApiRoute {
        let mut r: ApiRoute = serde_json::from_value(serde_json::json!({
            "apiVersion": "portcullis.dev/v1alpha1", "kind": "ApiRoute",
            "metadata": {"name": "r", "namespace": "ns", "resourceVersion": rv.to_string(), "generation": 1},
            "spec": {"hosts": ["a.test"], "policyRef": {"name": "p"}, "backend": {"url": "http://x"},
                     "rules": [{"match": {"pathPrefix": "/"}, "requiredScopes": [scope]}]}
        }))
        .unwrap();
        if scope != "read" {
            r.metadata.generation = Some(2);
        }
        r
    }

    #[test]
    fn status_writes_do_not_move_the_content_version() {
        let same: fn(&ApiRoute, &ApiRoute) -> bool =
            |a, b| a.spec == b.spec && a.metadata.generation == b.metadata.generation;
        let (mut map, mut rvs, mut buf, mut del) = (BTreeMap::new(), HashMap::new(), None, 0);
        let key = ("ns".to_string(), "r".to_string());
        apply_event(
            &mut map,
            &mut rvs,
            same,
            &mut buf,
            Event::Apply(route(10, "read")),
            &mut del,
        );
        // A status write: new resourceVersion, same spec.
        apply_event(
            &mut map,
            &mut rvs,
            same,
            &mut buf,
            Event::Apply(route(12, "read")),
            &mut del,
        );
        assert_eq!(rvs[&key], 10);
        // A spec change moves it.
        apply_event(
            &mut map,
            &mut rvs,
            same,
            &mut buf,
            Event::Apply(route(15, "write")),
            &mut del,
        );
        assert_eq!(rvs[&key], 15);
        // A relist (watch restarted) of unchanged content keeps it.
        apply_event(&mut map, &mut rvs, same, &mut buf, Event::Init, &mut del);
        apply_event(
            &mut map,
            &mut rvs,
            same,
            &mut buf,
            Event::InitApply(route(20, "write")),
            &mut del,
        );
        apply_event(
            &mut map,
            &mut rvs,
            same,
            &mut buf,
            Event::InitDone,
            &mut del,
        );
        assert_eq!(rvs[&key], 15);
    }

    /// Two replicas that saw the same two objects in a different order number the same
    /// content differently (the second bumps past what it already published); the digest
    /// tells the leader that a proxy of the other replica holds the same content.
    #[test]
    fn replicas_numbering_the_same_content_differently_agree_on_its_digest() {
        let policy = TokenPolicy::new(
            "p",
            serde_json::from_value(serde_json::json!({"issuers": []})).unwrap(),
        );
        let r = route(218, "read");
        let (a, b) = (Publisher::new(), Publisher::new());
        let mut only_policy = SourceSet::default();
        only_policy.upsert(SourceObject::TokenPolicy(policy.clone()));
        let mut only_route = SourceSet::default();
        only_route.upsert(SourceObject::ApiRoute(r.clone()));
        let mut both = only_policy.clone();
        both.upsert(SourceObject::ApiRoute(r));
        // A: policy (217), then route (218). B: route (218), then policy (217 -> bumped).
        assert_eq!(a.publish(only_policy, 217), Some(217));
        assert_eq!(a.publish(both.clone(), 218), Some(218));
        assert_eq!(b.publish(only_route, 218), Some(218));
        assert_eq!(b.publish(both, 217), Some(219));
        assert_ne!(a.current().0, b.current().0);
        assert_eq!(a.current_digest(), b.current_digest());
        assert_eq!(a.digest_of(218), b.digest_of(219));
        assert_ne!(a.digest_of(217), a.digest_of(218));
        let registry = ProxyRegistry::default();
        let id = registry.connect("proxy".into());
        registry.ack(id, 219);
        let acks = local_acks(&registry, &b);
        assert_eq!(acks[0].d, a.current_digest(), "B's proxy holds A's content");
    }
}
