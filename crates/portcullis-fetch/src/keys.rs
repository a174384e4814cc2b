//! Remote key sets: fetched, refreshed, kept through failures, refetched on demand.
//!
//! One task per source URL. After a good fetch it sleeps for the document's
//! `Cache-Control: max-age`, clamped to `[minRefresh, maxRefresh]`; after a failure it
//! retries with exponential backoff (1 s, 2 s, ... capped at `min(60 s, maxRefresh)`),
//! keeping the last good document in force. A refetch request (a token with an unknown
//! `kid`) wakes the task early, at most once per `minRefresh` per source: a flood of
//! random `kid`s costs one fetch per window, not one per request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use portcullis_policy::{RemoteSource, RemoteSourceKind, url_allowed, usable_keys};
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use serde_json::Value;
use tokio::sync::{Notify, oneshot, watch};
use tracing::{debug, info, warn};

use crate::client::{HttpClient, max_age};

/// Largest document accepted.
const MAX_DOCUMENT_BYTES: usize = 512 * 1024;
/// Time allowed for one fetch (discovery and key set each).
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The outcome of the last fetch of a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchResult {
    /// Not fetched yet.
    Pending,
    /// Fetched, and the document holds usable keys.
    Ok,
    /// The provider could not be reached or answered with an error status.
    FetchFailed,
    /// The document is not JSON, not a JWKS, or holds no usable key.
    InvalidDocument,
    /// The discovery document names another issuer.
    IssuerMismatch,
}

impl FetchResult {
    /// The CamelCase reason used in status conditions.
    pub fn reason(self) -> &'static str {
        match self {
            FetchResult::Pending => "Pending",
            FetchResult::Ok => "Fetched",
            FetchResult::FetchFailed => "FetchFailed",
            FetchResult::InvalidDocument => "InvalidDocument",
            FetchResult::IssuerMismatch => "IssuerMismatch",
        }
    }

    /// The snake_case metric label.
    pub fn label(self) -> &'static str {
        match self {
            FetchResult::Pending => "pending",
            FetchResult::Ok => "ok",
            FetchResult::FetchFailed => "fetch_failed",
            FetchResult::InvalidDocument => "invalid_document",
            FetchResult::IssuerMismatch => "issuer_mismatch",
        }
    }
}

/// What is known about one source.
#[derive(Debug, Clone)]
pub struct SourceState {
    /// The source, as configured.
    pub source: RemoteSource,
    /// The last good JWKS document (kept through failures).
    pub document: Option<Value>,
    /// Usable keys in it.
    pub keys: usize,
    /// When it was fetched.
    pub fetched_at: Option<SystemTime>,
    /// The last fetch's outcome.
    pub result: FetchResult,
    /// What went wrong, when something did.
    pub message: String,
}

struct Entry {
    state: SourceState,
    trigger: Arc<Notify>,
    last_refetch: Option<Instant>,
    /// Granted refetches waiting for their outcome: answered by the next fetch to start
    /// after them, with whether it brought a new document.
    reports: Vec<oneshot::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

/// Prometheus metrics of the fetcher.
#[derive(Clone)]
struct Metrics {
    fetches: IntCounterVec,
    keys: IntGaugeVec,
    age: IntGaugeVec,
    refetches: IntCounterVec,
}

/// Fetches and refreshes remote key sets.
pub struct KeyFetcher {
    http: Arc<HttpClient>,
    entries: Mutex<HashMap<String, Entry>>,
    changed: watch::Sender<u64>,
    metrics: Metrics,
}

impl std::fmt::Debug for KeyFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyFetcher").finish_non_exhaustive()
    }
}

impl KeyFetcher {
    /// A fetcher with no sources, registering its metrics
    /// (`portcullis_jwks_fetches_total{issuer,result}`, `portcullis_jwks_keys{issuer}`,
    /// `portcullis_jwks_age_seconds{issuer}`, `portcullis_jwks_refetch_requests_total
    /// {issuer,result}`) in `registry`.
    pub fn new(http: Arc<HttpClient>, registry: &Registry) -> Arc<Self> {
        let metrics = Metrics {
            fetches: IntCounterVec::new(
                Opts::new(
                    "portcullis_jwks_fetches_total",
                    "Fetches of remote key sets, by issuer and result.",
                ),
                &["issuer", "result"],
            )
            .expect("valid metric"),
            keys: IntGaugeVec::new(
                Opts::new(
                    "portcullis_jwks_keys",
                    "Usable keys in the last good key set, by issuer.",
                ),
                &["issuer"],
            )
            .expect("valid metric"),
            age: IntGaugeVec::new(
                Opts::new(
                    "portcullis_jwks_age_seconds",
                    "Seconds since the key set in force was fetched, by issuer.",
                ),
                &["issuer"],
            )
            .expect("valid metric"),
            refetches: IntCounterVec::new(
                Opts::new(
                    "portcullis_jwks_refetch_requests_total",
                    "Refetches asked for because of an unknown kid, by issuer and whether the rate limit allowed them.",
                ),
                &["issuer", "result"],
            )
            .expect("valid metric"),
        };
        for c in [
            Box::new(metrics.fetches.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(metrics.keys.clone()),
            Box::new(metrics.age.clone()),
            Box::new(metrics.refetches.clone()),
        ] {
            if let Err(e) = registry.register(c) {
                debug!(error = %e, "jwks metric already registered");
            }
        }
        let this = Arc::new(Self {
            http,
            entries: Mutex::new(HashMap::new()),
            changed: watch::channel(0).0,
            metrics,
        });
        // Ages tick on their own.
        let weak = Arc::downgrade(&this);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(this) = weak.upgrade() else { break };
                let now = SystemTime::now();
                for e in this.lock().values() {
                    if let Some(at) = e.state.fetched_at {
                        let age = now.duration_since(at).unwrap_or_default().as_secs();
                        this.metrics
                            .age
                            .with_label_values(&[&e.state.source.issuer])
                            .set(age as i64);
                    }
                }
            }
        });
        this
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bumped whenever a document or a source's state changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// Makes `sources` the set fetched: new ones start at once, removed ones stop, changed
    /// bounds apply from the next wait.
    pub fn set_sources(self: &Arc<Self>, sources: Vec<RemoteSource>) {
        let mut entries = self.lock();
        let wanted: HashMap<String, RemoteSource> =
            sources.into_iter().map(|s| (s.key.clone(), s)).collect();
        entries.retain(|url, e| {
            let keep = wanted.contains_key(url);
            if !keep {
                e.task.abort();
            }
            keep
        });
        for (url, source) in wanted {
            if let Some(e) = entries.get_mut(&url) {
                e.state.source = source;
                continue;
            }
            let trigger = Arc::new(Notify::new());
            let task = tokio::spawn(run_source(
                Arc::downgrade(self),
                url.clone(),
                trigger.clone(),
            ));
            entries.insert(
                url,
                Entry {
                    state: SourceState {
                        source,
                        document: None,
                        keys: 0,
                        fetched_at: None,
                        result: FetchResult::Pending,
                        message: String::new(),
                    },
                    trigger,
                    last_refetch: None,
                    reports: Vec::new(),
                    task,
                },
            );
        }
    }

    /// Seeds a source (by key) with a document kept from before (a restart, a new leader), used
    /// until the first fetch succeeds. Ignored when the source already has one.
    pub fn seed(&self, url: &str, document: Value, fetched_at: Option<SystemTime>) {
        let mut entries = self.lock();
        if let Some(e) = entries.get_mut(url)
            && e.state.document.is_none()
            && let Ok(keys) = usable_keys(&document)
        {
            e.state.document = Some(document);
            e.state.keys = keys;
            e.state.fetched_at = fetched_at;
            drop(entries);
            self.bump();
        }
    }

    /// The last good documents, by source key: the compiler's `remote_jwks`.
    pub fn documents(&self) -> HashMap<String, Value> {
        self.lock()
            .iter()
            .filter_map(|(url, e)| e.state.document.clone().map(|d| (url.clone(), d)))
            .collect()
    }

    /// Every source's state, by source key.
    pub fn states(&self) -> HashMap<String, SourceState> {
        self.lock()
            .iter()
            .map(|(url, e)| (url.clone(), e.state.clone()))
            .collect()
    }

    /// Asks for an early refetch of the source with key `url` (a token arrived with a
    /// `kid` not in its key set). Granted at most once per the source's `minRefresh`;
    /// returns whether it was.
    pub fn request_refetch(&self, url: &str) -> bool {
        self.refetch(url, None)
    }

    /// Like [`KeyFetcher::request_refetch`], and when granted, a receiver told once the
    /// refetch has run whether it brought a new key set (`false`: the same document, or
    /// the fetch failed). `None` when not granted.
    pub fn request_refetch_reported(&self, url: &str) -> Option<oneshot::Receiver<bool>> {
        let (tx, rx) = oneshot::channel();
        self.refetch(url, Some(tx)).then_some(rx)
    }

    fn refetch(&self, url: &str, report: Option<oneshot::Sender<bool>>) -> bool {
        let mut entries = self.lock();
        let Some(e) = entries.get_mut(url) else {
            return false;
        };
        let window = e.state.source.min_refresh;
        let granted = e.last_refetch.is_none_or(|at| at.elapsed() >= window);
        let issuer = e.state.source.issuer.clone();
        if granted {
            e.last_refetch = Some(Instant::now());
            e.reports.extend(report);
            e.trigger.notify_one();
        }
        drop(entries);
        self.metrics
            .refetches
            .with_label_values(&[
                issuer.as_str(),
                if granted { "accepted" } else { "limited" },
            ])
            .inc();
        if granted {
            info!(url, issuer, "refetching keys for an unknown kid");
        }
        granted
    }

    /// Records a fetch's outcome; true when it brought a new document.
    fn record(&self, url: &str, outcome: Result<(Value, usize), (FetchResult, String)>) -> bool {
        let mut entries = self.lock();
        let Some(e) = entries.get_mut(url) else {
            return false;
        };
        let mut new_document = false;
        let issuer = e.state.source.issuer.clone();
        let mut changed = false;
        match outcome {
            Ok((doc, keys)) => {
                self.metrics
                    .fetches
                    .with_label_values(&[issuer.as_str(), FetchResult::Ok.label()])
                    .inc();
                self.metrics
                    .keys
                    .with_label_values(&[&issuer])
                    .set(keys as i64);
                self.metrics.age.with_label_values(&[&issuer]).set(0);
                if e.state.document.as_ref() != Some(&doc) {
                    info!(url, issuer, keys, "fetched a new key set");
                    e.state.document = Some(doc);
                    changed = true;
                    new_document = true;
                }
                changed |= e.state.result != FetchResult::Ok;
                e.state.keys = keys;
                e.state.fetched_at = Some(SystemTime::now());
                e.state.result = FetchResult::Ok;
                e.state.message.clear();
            }
            Err((result, message)) => {
                self.metrics
                    .fetches
                    .with_label_values(&[issuer.as_str(), result.label()])
                    .inc();
                warn!(url, issuer, reason = result.reason(), %message, kept_keys = e.state.keys, "key set fetch failed; keeping the last good keys");
                changed = e.state.result != result || e.state.message != message;
                e.state.result = result;
                e.state.message = message;
            }
        }
        drop(entries);
        if changed {
            self.bump();
        }
        new_document
    }
}

impl Drop for KeyFetcher {
    fn drop(&mut self) {
        for e in self.lock().values() {
            e.task.abort();
        }
    }
}

async fn run_source(fetcher: std::sync::Weak<KeyFetcher>, url: String, trigger: Arc<Notify>) {
    let mut failures: u32 = 0;
    loop {
        let Some(this) = fetcher.upgrade() else {
            return;
        };
        // Refetches granted until now are answered by this fetch.
        let Some((source, reports)) = this
            .lock()
            .get_mut(&url)
            .map(|e| (e.state.source.clone(), std::mem::take(&mut e.reports)))
        else {
            return;
        };
        let http = this.http.clone();
        drop(this);
        let outcome = fetch_once(&http, &source).await;
        let wait = match &outcome {
            Ok((_, _, max_age)) => {
                failures = 0;
                max_age
                    .unwrap_or(source.max_refresh)
                    .clamp(source.min_refresh, source.max_refresh)
            }
            Err(_) => {
                failures = failures.saturating_add(1);
                let cap = source.max_refresh.min(Duration::from_secs(60));
                Duration::from_secs(1u64 << failures.min(7).saturating_sub(1)).min(cap)
            }
        };
        let Some(this) = fetcher.upgrade() else {
            return;
        };
        let new_document = this.record(&url, outcome.map(|(doc, keys, _)| (doc, keys)));
        drop(this);
        for report in reports {
            let _ = report.send(new_document);
        }
        debug!(url, wait_ms = wait.as_millis() as u64, "next key set fetch");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = trigger.notified() => {}
        }
    }
}

type Fetched = (Value, usize, Option<Duration>);

/// One fetch: discovery first when configured, then the key set, checked.
pub async fn fetch_once(
    http: &HttpClient,
    source: &RemoteSource,
) -> Result<Fetched, (FetchResult, String)> {
    let failed = |m: String| (FetchResult::FetchFailed, m);
    let invalid = |m: String| (FetchResult::InvalidDocument, m);
    let jwks_url = match &source.kind {
        RemoteSourceKind::Jwks => source.url.clone(),
        RemoteSourceKind::Discovery { issuer } => {
            let resp = http
                .get(
                    &source.url,
                    &source.ca_pem,
                    FETCH_TIMEOUT,
                    MAX_DOCUMENT_BYTES,
                )
                .await
                .map_err(|e| failed(e.to_string()))?;
            if !resp.status.is_success() {
                return Err(failed(format!("{}: HTTP {}", source.url, resp.status)));
            }
            let doc: Value = serde_json::from_slice(&resp.body)
                .map_err(|e| invalid(format!("{}: not JSON: {e}", source.url)))?;
            match doc.get("issuer").and_then(Value::as_str) {
                Some(i) if i == issuer => {}
                other => {
                    return Err((
                        FetchResult::IssuerMismatch,
                        format!(
                            "{} names issuer {:?}, expected {issuer:?}",
                            source.url,
                            other.unwrap_or("(none)")
                        ),
                    ));
                }
            }
            let Some(jwks_uri) = doc.get("jwks_uri").and_then(Value::as_str) else {
                return Err(invalid(format!("{}: no jwks_uri", source.url)));
            };
            if !url_allowed(jwks_uri) {
                return Err(invalid(format!(
                    "{}: jwks_uri {jwks_uri} is not https (plain http only for loopback addresses)",
                    source.url
                )));
            }
            jwks_uri.to_owned()
        }
    };
    let resp = http
        .get(&jwks_url, &source.ca_pem, FETCH_TIMEOUT, MAX_DOCUMENT_BYTES)
        .await
        .map_err(|e| failed(e.to_string()))?;
    if !resp.status.is_success() {
        return Err(failed(format!("{jwks_url}: HTTP {}", resp.status)));
    }
    let doc: Value = serde_json::from_slice(&resp.body)
        .map_err(|e| invalid(format!("{jwks_url}: not JSON: {e}")))?;
    let keys = usable_keys(&doc).map_err(|e| invalid(format!("{jwks_url}: {e}")))?;
    Ok((doc, keys, max_age(&resp.headers)))
}
