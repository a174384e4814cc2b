//! Standalone mode: the same manifests a user would `kubectl apply`, read from a directory,
//! compiled with `portcullis-policy`, and recompiled when a file changes.
//!
//! A broken edit never loosens what is enforced. Errors are reported with file, document,
//! object and field; an object that fails (to parse or to compile) is replaced by its last
//! good version, so a typo in a TokenPolicy keeps its revocations, keys and routes in force
//! while the rest of the directory applies. A file that is not valid YAML at all keeps
//! every object it last held.
//!
//! No API server has checked these manifests, so the CRDs' CEL rules run here
//! (`portcullis_api::validate::cel_errors`, passed to the compiler as its spec rules) with
//! the same messages `kubectl apply` would give. A key set whose first fetch is under way
//! is a wait, logged at INFO ("waiting for keys"), not a manifest problem.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use notify::{RecursiveMode, Watcher};
use portcullis_api::push::{SourceObject, SourceSet};
use portcullis_api::validate::cel_errors;
use portcullis_api::{ApiRoute, TokenPolicy};
use portcullis_fetch::{FetchResult, KeyFetcher};
use portcullis_policy::{CompileOptions, compile_sources};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::config::LiveConfig;
use crate::metrics::Metrics;

/// One object read from a manifest file.
#[derive(Debug, Clone)]
// Manifests are few and parsed once per reload: boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Object {
    /// An ApiRoute.
    Route(ApiRoute),
    /// A TokenPolicy.
    Policy(TokenPolicy),
    /// A Secret (JWKS, PEM or HMAC key material).
    Secret(Secret),
}

/// `(kind, namespace, name)`.
pub type ObjectKey = (&'static str, String, String);

impl Object {
    fn key(&self) -> ObjectKey {
        use kube::ResourceExt;
        match self {
            Object::Route(r) => ("ApiRoute", r.namespace().unwrap_or_default(), r.name_any()),
            Object::Policy(p) => (
                "TokenPolicy",
                p.namespace().unwrap_or_default(),
                p.name_any(),
            ),
            Object::Secret(s) => ("Secret", s.namespace().unwrap_or_default(), s.name_any()),
        }
    }
}

/// What one file yielded.
#[derive(Debug, Default)]
pub struct FileContents {
    /// Objects parsed, by key.
    pub objects: Vec<Object>,
    /// Keys of documents that named an object but failed to parse.
    pub broken: Vec<ObjectKey>,
    /// Problems, each naming file and document.
    pub errors: Vec<String>,
    /// The file could not be read or is not YAML at all.
    pub unreadable: bool,
}

/// Parses one manifest file (multi-document YAML).
pub fn parse_file(path: &Path, text: &str) -> FileContents {
    let mut out = FileContents::default();
    let file = path.display();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = match <serde_yaml::Value as serde::Deserialize>::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                out.errors
                    .push(format!("{file}: document {}: not valid YAML: {e}", i + 1));
                out.unreadable = true;
                return out;
            }
        };
        if value.is_null() {
            continue;
        }
        let kind = value
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or("")
            .to_owned();
        let name = value
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(|n| n.as_str())
            .unwrap_or("")
            .to_owned();
        let namespace = value
            .get("metadata")
            .and_then(|m| m.get("namespace"))
            .and_then(|n| n.as_str())
            .unwrap_or("default")
            .to_owned();
        let at = format!("{file}: document {}: {kind} {namespace}/{name}", i + 1);
        if name.is_empty() {
            out.errors.push(format!(
                "{file}: document {}: metadata.name is required",
                i + 1
            ));
            continue;
        }
        fn typed<T: DeserializeOwned>(v: serde_yaml::Value, namespace: &str) -> Result<T, String> {
            let mut v = v;
            // Objects without a namespace land in `default`, as with kubectl.
            if let Some(meta) = v.get_mut("metadata").and_then(|m| m.as_mapping_mut()) {
                meta.entry("namespace".into())
                    .or_insert_with(|| namespace.into());
            }
            serde_yaml::from_value(v).map_err(|e| e.to_string())
        }
        let api_version = value
            .get("apiVersion")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        let parsed = match (kind.as_str(), api_version) {
            ("ApiRoute", "portcullis.dev/v1alpha1") => typed(value, &namespace).map(Object::Route),
            ("TokenPolicy", "portcullis.dev/v1alpha1") => {
                typed(value, &namespace).map(Object::Policy)
            }
            ("Secret", "v1") => typed(value, &namespace).map(Object::Secret),
            ("ApiRoute" | "TokenPolicy", other) => Err(format!(
                "apiVersion {other:?} is not served; use portcullis.dev/v1alpha1"
            )),
            (other, _) => {
                warn!(file = %file, kind = other, "ignoring a document that is not an ApiRoute, TokenPolicy or Secret");
                continue;
            }
        };
        match parsed {
            Ok(obj) => out.objects.push(obj),
            Err(e) => {
                let key_kind: &'static str = match kind.as_str() {
                    "ApiRoute" => "ApiRoute",
                    "TokenPolicy" => "TokenPolicy",
                    _ => "Secret",
                };
                out.broken.push((key_kind, namespace.clone(), name.clone()));
                out.errors.push(format!("{at}: {e}"));
            }
        }
    }
    out
}

/// Reads and compiles a manifest directory, remembering the last good version of every
/// object so a broken edit never drops what was enforced.
pub struct ManifestDir {
    dir: PathBuf,
    options: CompileOptions,
    /// Objects per file, as last read successfully.
    last_file: HashMap<PathBuf, Vec<Object>>,
    /// The last version of each object that compiled cleanly.
    last_good: HashMap<ObjectKey, Object>,
    version: u64,
    fetcher: Option<Arc<KeyFetcher>>,
    /// Revocations from identity events, compiled into their policies.
    events: Option<Arc<crate::events::LocalEvents>>,
}

/// The outcome of one load.
pub struct Loaded {
    /// The snapshot to put in force.
    pub snapshot: portcullis_policy::Snapshot,
    /// Every problem found, with file/object/field, waits included (see
    /// [`Problem::waiting`]).
    pub errors: Vec<Problem>,
    /// The files read.
    pub sources: Vec<String>,
}

/// One problem a load found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What is wrong, or awaited, naming file, document, object and field.
    pub message: String,
    /// A wait that ends by itself (a key set whose first fetch is under way, and the
    /// routes whose policy waits for it), not a fault: logged at INFO, not ERROR.
    pub waiting: bool,
}

impl Problem {
    /// A fault someone must fix.
    fn fault(message: String) -> Self {
        Self {
            message,
            waiting: false,
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl ManifestDir {
    /// A directory to load from, with compile options.
    pub fn new(dir: PathBuf, options: CompileOptions) -> Self {
        Self {
            dir,
            options,
            last_file: HashMap::new(),
            last_good: HashMap::new(),
            version: 0,
            fetcher: None,
            events: None,
        }
    }

    /// Compiles the revocations identity events made (Back-Channel Logout) into their
    /// policies, and recompiles when they change.
    pub fn with_events(mut self, events: Arc<crate::events::LocalEvents>) -> Self {
        self.events = Some(events);
        self
    }

    /// The identity-event overlay, if any.
    pub fn events(&self) -> Option<&Arc<crate::events::LocalEvents>> {
        self.events.as_ref()
    }

    /// Fetches `jwks.uri` and `jwks.discovery` key sets with `fetcher` (standalone mode
    /// has no controller to do it). Needs a tokio runtime.
    pub fn with_fetcher(mut self, fetcher: Arc<KeyFetcher>) -> Self {
        self.fetcher = Some(fetcher);
        self
    }

    /// The key fetcher, if any.
    pub fn fetcher(&self) -> Option<&Arc<KeyFetcher>> {
        self.fetcher.as_ref()
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads every `*.yaml`/`*.yml` file and compiles. Never fails: problems are returned
    /// in [`Loaded::errors`] and the objects they touch fall back to their last good state.
    pub fn load(&mut self) -> Loaded {
        let mut errors: Vec<String> = Vec::new();
        let mut files: Vec<PathBuf> = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
                .filter(|p| {
                    !p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with('.'))
                })
                .collect(),
            Err(e) => {
                errors.push(format!(
                    "{}: cannot read directory: {e}",
                    self.dir.display()
                ));
                Vec::new()
            }
        };
        files.sort();

        // key -> object, in file order; later duplicates are errors.
        let mut objects: BTreeMap<ObjectKey, Object> = BTreeMap::new();
        let mut origin: HashMap<ObjectKey, PathBuf> = HashMap::new();
        let mut broken = Vec::new();
        let mut new_last_file = HashMap::new();
        for path in &files {
            let contents = match std::fs::read_to_string(path) {
                Ok(text) => parse_file(path, &text),
                Err(e) => FileContents {
                    errors: vec![format!("{}: cannot read: {e}", path.display())],
                    unreadable: true,
                    ..Default::default()
                },
            };
            errors.extend(contents.errors);
            let objs = if contents.unreadable {
                // Keep what this file held last time.
                self.last_file.get(path).cloned().unwrap_or_default()
            } else {
                broken.extend(contents.broken);
                contents.objects
            };
            new_last_file.insert(path.clone(), objs.clone());
            for obj in objs {
                let key = obj.key();
                if let Some(first) = origin.get(&key) {
                    errors.push(format!(
                        "{}: {} {}/{} is already defined in {}; this copy is ignored",
                        path.display(),
                        key.0,
                        key.1,
                        key.2,
                        first.display()
                    ));
                    continue;
                }
                origin.insert(key.clone(), path.clone());
                objects.insert(key, obj);
            }
        }
        self.last_file = new_last_file;

        // Documents that failed to parse: their last good version stays.
        for key in broken {
            if let Some(good) = self.last_good.get(&key) {
                objects.entry(key).or_insert_with(|| good.clone());
            }
        }

        // The key sets to fetch: those of the objects as read, and of the last good
        // versions that may stand in for them, so an edit that moves a policy to fetched
        // keys starts fetching even while it cannot compile yet.
        if let Some(fetcher) = &self.fetcher {
            let mut policies = Vec::new();
            let mut secrets = Vec::new();
            for (key, obj) in &objects {
                for o in [Some(obj), self.last_good.get(key)].into_iter().flatten() {
                    match o {
                        Object::Policy(p) => policies.push(p.clone()),
                        Object::Secret(s) => secrets.push(s.clone()),
                        Object::Route(_) => {}
                    }
                }
            }
            fetcher.set_sources(portcullis_policy::remote_sources(&policies, &secrets));
        }
        let started = Instant::now();
        let (mut snapshot, mut compile_errors) = self.compile(&objects);
        // Objects that failed to compile: fall back to their last good version and compile
        // again, once.
        let mut substituted = false;
        for e in &compile_errors {
            let key: ObjectKey = (e.kind, e.namespace.clone(), e.name.clone());
            if let Some(good) = self.last_good.get(&key)
                && objects.get(&key).is_some_and(|cur| !same(cur, good))
            {
                objects.insert(key, good.clone());
                substituted = true;
            }
        }
        if substituted {
            let first_errors = compile_errors;
            (snapshot, compile_errors) = self.compile(&objects);
            // Report the errors of the edit the user made, not of the fallback.
            compile_errors =
                first_errors
                    .into_iter()
                    .chain(compile_errors)
                    .fold(Vec::new(), |mut acc, e| {
                        if !acc.contains(&e) {
                            acc.push(e);
                        }
                        acc
                    });
        }
        let _ = started;
        let failed: std::collections::HashSet<ObjectKey> = compile_errors
            .iter()
            .map(|e| (e.kind, e.namespace.clone(), e.name.clone()))
            .collect();
        for (key, obj) in &objects {
            if !failed.contains(key) {
                self.last_good.insert(key.clone(), obj.clone());
            }
        }
        let mut problems: Vec<Problem> = errors.into_iter().map(Problem::fault).collect();
        for e in compile_errors {
            let key: ObjectKey = (e.kind, e.namespace.clone(), e.name.clone());
            let message = match origin.get(&key) {
                Some(file) => format!("{}: {e}", file.display()),
                None => e.to_string(),
            };
            problems.push(Problem {
                message,
                waiting: e.is_pending(),
            });
        }
        if let Some(fetcher) = &self.fetcher {
            let mut states: Vec<_> = fetcher.states().into_iter().collect();
            states.sort_by(|a, b| a.0.cmp(&b.0));
            for (_, st) in states {
                if matches!(st.result, FetchResult::Ok | FetchResult::Pending) {
                    continue;
                }
                let age = st
                    .fetched_at
                    .and_then(|t| t.elapsed().ok())
                    .map(|d| format!("fetched {}s ago", d.as_secs()))
                    .unwrap_or_else(|| "none fetched yet".into());
                problems.push(Problem::fault(format!(
                    "key set {} (issuer {}, used by {}): KeysReady=False {}: {}; keeping the last good keys ({} keys, {age})",
                    st.source.url,
                    st.source.issuer,
                    st.source.policies.join(", "),
                    st.result.reason(),
                    st.message,
                    st.keys,
                )));
            }
        }
        self.version += 1;
        Loaded {
            snapshot: snapshot.with_version(self.version),
            errors: problems,
            sources: files.iter().map(|p| p.display().to_string()).collect(),
        }
    }

    fn compile(
        &self,
        objects: &BTreeMap<ObjectKey, Object>,
    ) -> (
        portcullis_policy::Snapshot,
        Vec<portcullis_policy::CompileError>,
    ) {
        let mut sources = SourceSet::default();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        for obj in objects.values() {
            sources.upsert(match obj {
                Object::Route(r) => SourceObject::ApiRoute(r.clone()),
                Object::Policy(p) => {
                    let mut p = p.clone();
                    if let Some(events) = &self.events {
                        let id = format!(
                            "{}/{}",
                            p.metadata.namespace.as_deref().unwrap_or("default"),
                            p.metadata.name.as_deref().unwrap_or_default()
                        );
                        p.spec.revocations.extend(events.entries(&id, now));
                    }
                    SourceObject::TokenPolicy(p)
                }
                Object::Secret(s) => SourceObject::Secret(s.clone()),
            });
        }
        let mut options = self.options.clone();
        if let Some(fetcher) = &self.fetcher {
            // States before documents: a source seen pending whose document lands in
            // between simply compiles; one seen failed stays a fault.
            options.pending_jwks = fetcher
                .states()
                .into_iter()
                .filter(|(_, st)| st.result == FetchResult::Pending)
                .map(|(key, _)| key)
                .collect();
            options.remote_jwks = fetcher.documents();
        }
        // No API server has checked these objects: run the CRDs' CEL rules first.
        if options.validate_cel && options.spec_rules.is_none() {
            options = options.with_spec_rules(cel_errors::<ApiRoute>, cel_errors::<TokenPolicy>);
        }
        // The one entry point the controller and the subscriber use too. Always a full
        // compile here: a file edit may change anything, and the debounce dominates.
        let out = compile_sources(&options, &sources, None);
        (out.snapshot, out.errors)
    }
}

fn same(a: &Object, b: &Object) -> bool {
    match (a, b) {
        (Object::Route(a), Object::Route(b)) => a.spec == b.spec,
        (Object::Policy(a), Object::Policy(b)) => a.spec == b.spec,
        (Object::Secret(a), Object::Secret(b)) => {
            a.data == b.data && a.string_data == b.string_data
        }
        _ => false,
    }
}

/// An inotify (or platform) watch on the manifest directory, registered when it is
/// created. Create it before the first load: an edit made between that load and the
/// watch's registration would otherwise go unnoticed until the next edit.
pub struct DirWatch {
    // Kept alive for as long as the watch should last; dropping it ends the watch.
    _watcher: Option<notify::RecommendedWatcher>,
    events: mpsc::UnboundedReceiver<()>,
}

impl DirWatch {
    /// Registers the watch on `dir` now. A directory that cannot be watched is logged
    /// and yields a watch that never fires: the gateway keeps serving its loaded config.
    pub fn new(dir: &Path) -> DirWatch {
        let (tx, events) = mpsc::unbounded_channel();
        let watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            // Reads (access events) are not changes.
            if let Ok(ev) = ev
                && !matches!(ev.kind, notify::EventKind::Access(_))
            {
                let _ = tx.send(());
            }
        });
        let mut watcher = match watcher {
            Ok(w) => w,
            Err(e) => {
                error!(error = %e, "cannot watch the manifest directory; changes will not be picked up");
                return DirWatch {
                    _watcher: None,
                    events,
                };
            }
        };
        if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            error!(error = %e, dir = %dir.display(), "cannot watch the manifest directory; changes will not be picked up");
            return DirWatch {
                _watcher: None,
                events,
            };
        }
        DirWatch {
            _watcher: Some(watcher),
            events,
        }
    }
}

/// Reloads on every change `watch` reports (debounced by `debounce`) and on every change
/// of fetched keys. Runs until the process ends.
pub async fn run_watch(
    watch: DirWatch,
    mut manifests: ManifestDir,
    config: Arc<LiveConfig>,
    metrics: Metrics,
    debounce: Duration,
) {
    let DirWatch {
        _watcher: _keep,
        events: mut rx,
    } = watch;
    let mut keys = manifests.fetcher().map(|f| f.subscribe());
    // False once the directory watch has ended (or never started): fetched-key changes
    // still recompile.
    let mut dir_open = true;
    let events = manifests.events().cloned();
    loop {
        let event_change = async {
            match &events {
                Some(e) => e.changed.notified().await,
                None => std::future::pending().await,
            }
        };
        let key_change = async {
            match keys.as_mut() {
                Some(k) => k.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = rx.recv(), if dir_open => {
                if ev.is_none() {
                    dir_open = false;
                    continue;
                }
                // Debounce: editors write files in several steps.
                tokio::time::sleep(debounce).await;
                while rx.try_recv().is_ok() {}
            }
            ok = key_change => {
                if !ok {
                    keys = None;
                    continue;
                }
                info!("fetched keys changed; recompiling");
            }
            () = event_change => {
                info!("identity event revocations changed; recompiling");
            }
        }
        apply(&mut manifests, &config, &metrics);
    }
}

/// One load-and-apply, with logging and metrics.
pub fn apply(manifests: &mut ManifestDir, config: &LiveConfig, metrics: &Metrics) {
    let started = Instant::now();
    let loaded = manifests.load();
    metrics
        .compile_duration
        .observe(started.elapsed().as_secs_f64());
    let waiting = log_problems(&loaded.errors);
    let result = if loaded.errors.is_empty() {
        "applied"
    } else {
        "partial"
    };
    metrics.config_reloads.with_label_values(&[result]).inc();
    let stats = loaded.snapshot.stats();
    info!(
        version = loaded.snapshot.version(),
        routes = stats.routes,
        policies = stats.policies,
        revocations = stats.revocations,
        errors = loaded.errors.len() - waiting,
        waiting,
        "config applied"
    );
    let errors = loaded.errors.iter().map(ToString::to_string).collect();
    config.apply(loaded.snapshot, loaded.sources, errors);
}

/// Logs each problem: faults at ERROR, waits at INFO. Returns the number of waits.
fn log_problems(problems: &[Problem]) -> usize {
    let mut waiting = 0;
    for p in problems {
        if p.waiting {
            waiting += 1;
            info!(detail = %p, "waiting for keys");
        } else {
            error!(error = %p, "manifest problem");
        }
    }
    waiting
}
