//! Remote key sets (`jwks.uri`, OIDC discovery), on a task of their own: the leader
//! fetches them and stores each good document in a Secret (see [`crate::jwks_store`]);
//! a replica that is not the leader passes proxies' refetch requests on. The outcome per
//! policy (`KeysReady`) goes to the status pass through a watch channel.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::{Client, ResourceExt};
use portcullis_fetch::{FetchResult, HttpClient, KeyFetcher};
use portcullis_policy::RemoteSource;
use tokio::sync::watch;

use super::store::Store;
use super::{ControllerOptions, FIELD_MANAGER};
use crate::metrics::Metrics;
use crate::registry::ProxyRegistry;

/// `KeysReady` per policy (`namespace/name`): `(ready, reason, message)`.
pub(crate) type KeysReports = HashMap<String, (bool, &'static str, String)>;

/// How often key sets that could not be stored are retried.
const RETRY_STORE: Duration = Duration::from_secs(5);

/// The remote-keys task's state.
pub(crate) struct RemoteKeysTask {
    client: Client,
    opts: ControllerOptions,
    store: Arc<Store>,
    registry: Arc<ProxyRegistry>,
    fetcher: Arc<KeyFetcher>,
    /// The sources the last compile found (sent after every compile).
    sources: watch::Receiver<Vec<RemoteSource>>,
    leader: watch::Receiver<bool>,
    reports: watch::Sender<KeysReports>,
    /// Whether the fetcher runs (this replica led at the last sync).
    fetching: bool,
    /// Per source key: what was last stored (document, result, message).
    stored: HashMap<String, (Option<serde_json::Value>, &'static str, String)>,
    /// Refetch requests of other replicas already handled, by source key.
    handled_refetch: HashMap<String, String>,
    /// Key sets fetched but not stored (RBAC, API server trouble): retried every few seconds.
    store_errors: HashMap<String, String>,
    /// Refetch requests passed on to the leader, by source key.
    forwarded: HashMap<String, Instant>,
}

impl RemoteKeysTask {
    /// A task fed by `sources` that reports on `reports`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        client: Client,
        opts: ControllerOptions,
        store: Arc<Store>,
        registry: Arc<ProxyRegistry>,
        metrics: &Metrics,
        sources: watch::Receiver<Vec<RemoteSource>>,
        leader: watch::Receiver<bool>,
        reports: watch::Sender<KeysReports>,
    ) -> Self {
        Self {
            client,
            opts,
            store,
            registry,
            fetcher: KeyFetcher::new(Arc::new(HttpClient::default()), metrics.registry()),
            sources,
            leader,
            reports,
            fetching: false,
            stored: HashMap::new(),
            handled_refetch: HashMap::new(),
            store_errors: HashMap::new(),
            forwarded: HashMap::new(),
        }
    }

    /// Runs until `shutdown`.
    pub(crate) async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut fetch_changes = self.fetcher.subscribe();
        let mut retry_store = tokio::time::interval(RETRY_STORE);
        loop {
            tokio::select! {
                Ok(()) = self.sources.changed() => {}
                Ok(()) = self.leader.changed() => {}
                _ = fetch_changes.changed() => self.store_fetched(&mut retry_store).await,
                _ = retry_store.tick(), if !self.store_errors.is_empty() => {
                    self.stored.retain(|url, _| !self.store_errors.contains_key(url));
                    fetch_changes.mark_changed();
                    continue;
                }
                _ = self.registry.refetch_requested.notified() => {
                    self.refetch_requested().await;
                    continue;
                }
                _ = shutdown.changed() => break,
            }
            self.sync();
        }
        self.fetcher.set_sources(Vec::new());
    }

    fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// The leader stores every fetched document that changed.
    async fn store_fetched(&mut self, retry_store: &mut tokio::time::Interval) {
        if !self.is_leader() {
            return;
        }
        for st in self.fetcher.states().into_values() {
            let now = (st.document.clone(), st.result.reason(), st.message.clone());
            if st.document.is_some() && self.stored.get(&st.source.key) != Some(&now) {
                match crate::jwks_store::write(
                    &self.client,
                    &self.opts.lease_namespace,
                    FIELD_MANAGER,
                    &st,
                    self.opts.write_timeout,
                )
                .await
                {
                    Ok(()) => {
                        self.stored.insert(st.source.key.clone(), now);
                        self.store_errors.remove(&st.source.key);
                    }
                    Err(e) => {
                        self.store_errors.insert(st.source.key.clone(), e);
                        retry_store.reset();
                    }
                }
            }
        }
    }

    /// Proxies met unknown `kid`s: the leader refetches; another replica passes the
    /// request on, at most once per source's refresh window (proxies may all ask at once).
    async fn refetch_requested(&mut self) {
        for url in self.registry.take_refetches() {
            let min_refresh = match self.sources.borrow().iter().find(|s| s.key == url) {
                Some(src) => src.min_refresh,
                None => continue,
            };
            if self.is_leader() {
                self.fetcher.request_refetch(&url);
                continue;
            }
            if self
                .forwarded
                .get(&url)
                .is_some_and(|at| at.elapsed() < min_refresh)
            {
                continue;
            }
            self.forwarded.insert(url.clone(), Instant::now());
            crate::jwks_store::request_refetch(
                &self.client,
                &self.opts.lease_namespace,
                &url,
                self.opts.write_timeout,
            )
            .await;
        }
    }

    /// The leader fetches the current sources (seeded from stored documents when it
    /// starts, and refetching what other replicas passed on); a replica that lost the
    /// lead stops. Then reports `KeysReady`.
    fn sync(&mut self) {
        let sources = self.sources.borrow().clone();
        let leading = self.is_leader() && self.store.synced();
        if leading {
            self.fetcher.set_sources(sources.clone());
            let g = self.store.lock();
            for src in &sources {
                let key = (
                    self.opts.lease_namespace.clone(),
                    crate::jwks_store::secret_name(&src.key),
                );
                if let Some(secret) = g.secrets.get(&key) {
                    if !self.fetching
                        && let Some(doc) = crate::jwks_store::stored_document(secret, &src.key)
                    {
                        self.fetcher.seed(
                            &src.key,
                            doc,
                            crate::jwks_store::stored_fetched_at(secret),
                        );
                    }
                    // Refetches other replicas passed on.
                    if let Some(at) = secret
                        .annotations()
                        .get(crate::jwks_store::REFETCH_REQUESTED)
                        && self.handled_refetch.get(&src.key) != Some(at)
                    {
                        self.handled_refetch.insert(src.key.clone(), at.clone());
                        self.fetcher.request_refetch(&src.key);
                    }
                }
            }
            drop(g);
            self.fetching = true;
        } else if self.fetching {
            self.fetcher.set_sources(Vec::new());
            self.stored.clear();
            self.store_errors.clear();
            self.fetching = false;
        }
        self.store_errors
            .retain(|key, _| sources.iter().any(|s| &s.key == key));
        let reports = if leading {
            self.reports_for(&sources)
        } else {
            KeysReports::new()
        };
        self.reports.send_if_modified(|r| {
            let changed = *r != reports;
            *r = reports;
            changed
        });
    }

    /// `KeysReady` per policy. Keys reach proxies only once stored: until then (or when
    /// storing fails), KeysReady is not True.
    fn reports_for(&self, sources: &[RemoteSource]) -> KeysReports {
        let mut keys = keys_reports(&self.fetcher);
        for src in sources {
            let report = match self.store_errors.get(&src.key) {
                Some(err) => (false, "StoreFailed", err.clone()),
                None if !self.stored.contains_key(&src.key)
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
        keys
    }
}

/// `KeysReady` per policy (`namespace/name`) from the fetcher's sources: the first source
/// that is not ready decides.
fn keys_reports(fetcher: &KeyFetcher) -> KeysReports {
    let mut out = KeysReports::new();
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
