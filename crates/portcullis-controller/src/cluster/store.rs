//! The objects the controller has seen, kept current by one watcher per kind.
//!
//! Each object's *content* resourceVersion is kept beside it: status writes bump an
//! object's resourceVersion without changing what is published, so only a change of
//! content (a spec, a Secret's data or labels) moves it, and every replica derives the
//! same config version from the same changes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use portcullis_api::{ApiRoute, TokenPolicy};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tracing::warn;

/// `(namespace, name)`.
pub(crate) type Key = (String, String);

/// The kinds watched; [`Store::synced`] once each has listed.
const KINDS: usize = 4;

/// How one watcher's events change the store; true once its initial list is complete.
type ApplyFn<K> = fn(&mut StoreInner, &mut Option<BTreeMap<Key, K>>, Event<K>) -> bool;

pub(crate) fn key_of<K: ResourceExt>(o: &K) -> Key {
    (o.namespace().unwrap_or_default(), o.name_any())
}

pub(crate) fn rv_of<K: ResourceExt>(o: &K) -> u64 {
    o.resource_version()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The objects the controller has seen, kept current by the watchers.
#[derive(Default)]
pub struct Store {
    inner: Mutex<StoreInner>,
    /// Woken after every watch event.
    pub(crate) changed: Notify,
}

#[derive(Default)]
pub(crate) struct StoreInner {
    pub(crate) routes: BTreeMap<Key, ApiRoute>,
    pub(crate) policies: BTreeMap<Key, TokenPolicy>,
    pub(crate) secrets: BTreeMap<Key, Secret>,
    pub(crate) services: HashSet<Key>,
    /// Per object, the resourceVersion at which its content (spec, or a Secret's data and
    /// labels) last changed. Status writes bump resourceVersions without changing content;
    /// these do not move, so every replica derives the same config version.
    pub(crate) route_rv: HashMap<Key, u64>,
    pub(crate) policy_rv: HashMap<Key, u64>,
    pub(crate) secret_rv: HashMap<Key, u64>,
    /// Highest resourceVersion among deletions of routes, policies and Secrets.
    pub(crate) deleted_rv: u64,
    /// Each watcher has listed everything once.
    pub(crate) synced: HashSet<&'static str>,
}

impl Store {
    pub(crate) fn lock(&self) -> MutexGuard<'_, StoreInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether every watcher has listed once.
    pub fn synced(&self) -> bool {
        self.lock().synced.len() == KINDS
    }
}

/// Applies watcher events to a map, with Init/InitDone replacing the whole map atomically,
/// and keeps each object's content resourceVersion (see `StoreInner::route_rv`).
pub(crate) fn apply_event<K: ResourceExt + Clone>(
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

/// What makes two versions of a route or policy the same content.
fn same_spec_route(a: &ApiRoute, b: &ApiRoute) -> bool {
    a.spec == b.spec && a.metadata.generation == b.metadata.generation
}

fn same_spec_policy(a: &TokenPolicy, b: &TokenPolicy) -> bool {
    a.spec == b.spec && a.metadata.generation == b.metadata.generation
}

/// A Secret's content is its data, and its labels: an API-key Secret is selected by label
/// and published with them.
fn same_secret(a: &Secret, b: &Secret) -> bool {
    a.data == b.data && a.metadata.labels == b.metadata.labels
}

fn apply_route(
    s: &mut StoreInner,
    b: &mut Option<BTreeMap<Key, ApiRoute>>,
    e: Event<ApiRoute>,
) -> bool {
    apply_event(
        &mut s.routes,
        &mut s.route_rv,
        same_spec_route,
        b,
        e,
        &mut s.deleted_rv,
    )
}

fn apply_policy(
    s: &mut StoreInner,
    b: &mut Option<BTreeMap<Key, TokenPolicy>>,
    e: Event<TokenPolicy>,
) -> bool {
    apply_event(
        &mut s.policies,
        &mut s.policy_rv,
        same_spec_policy,
        b,
        e,
        &mut s.deleted_rv,
    )
}

pub(crate) fn apply_secret(
    s: &mut StoreInner,
    b: &mut Option<BTreeMap<Key, Secret>>,
    e: Event<Secret>,
) -> bool {
    apply_event(
        &mut s.secrets,
        &mut s.secret_rv,
        same_secret,
        b,
        e,
        &mut s.deleted_rv,
    )
}

/// Only names matter for Services.
fn apply_service(
    s: &mut StoreInner,
    b: &mut Option<BTreeMap<Key, Service>>,
    e: Event<Service>,
) -> bool {
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
}

/// Starts one watcher per kind, all feeding `store`.
pub(crate) fn spawn_watchers(client: &Client, store: &Arc<Store>) {
    tokio::spawn(watch_kind(
        Api::<ApiRoute>::all(client.clone()),
        store.clone(),
        "ApiRoute",
        apply_route,
    ));
    tokio::spawn(watch_kind(
        Api::<TokenPolicy>::all(client.clone()),
        store.clone(),
        "TokenPolicy",
        apply_policy,
    ));
    tokio::spawn(watch_kind(
        Api::<Secret>::all(client.clone()),
        store.clone(),
        "Secret",
        apply_secret,
    ));
    tokio::spawn(watch_kind(
        Api::<Service>::all(client.clone()),
        store.clone(),
        "Service",
        apply_service,
    ));
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

/// Test helpers: fill a store as the watchers would.
#[cfg(test)]
impl Store {
    /// Applies one event of each kind's watcher, as if it came from the API server.
    pub(crate) fn apply_route_event(&self, e: Event<ApiRoute>) {
        let mut g = self.lock();
        apply_route(&mut g, &mut None, e);
    }

    pub(crate) fn apply_policy_event(&self, e: Event<TokenPolicy>) {
        let mut g = self.lock();
        apply_policy(&mut g, &mut None, e);
    }

    pub(crate) fn apply_secret_event(&self, e: Event<Secret>) {
        let mut g = self.lock();
        apply_secret(&mut g, &mut None, e);
    }

    /// Marks every watcher as having listed once.
    pub(crate) fn mark_synced(&self) {
        let mut g = self.lock();
        g.synced
            .extend(["ApiRoute", "TokenPolicy", "Secret", "Service"]);
    }
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
}
