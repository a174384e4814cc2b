//! The compiled, immutable config: the route index and the compiled policies, with the
//! canonical request target ([`Snapshot::canonical_target`]). The decision itself is in
//! `authorize.rs`.
//!
//! Every part sits behind an `Arc`, so a new snapshot reuses what did not change:
//! [`Snapshot::with_revocations`] replaces the revocations of a few policies and shares
//! the route index, each policy's trust material (and with it the verified-token and
//! introspection caches) and the API-key tables with the snapshot it patches.
//!
//! ```text
//!  Snapshot ─┬─ Arc<RouteIndex>                    shared
//!            ├─ [CompiledPolicy] ─┬─ Arc<PolicyTrust>     shared (issuers, keys, caches)
//!            │                    └─ Arc<RevocationSet>   replaced by a patch
//!            └─ Arc<[API-key tables]>               shared
//! ```

use std::sync::Arc;

use http::HeaderName;
use portcullis_api::Revocation;

use crate::apikeys::ApiKeyTable;
use crate::clock::Clock;
use crate::compile::{CompileError, CompileReason};
use crate::index::RouteIndex;
pub(crate) use crate::policy::{
    CompiledIntrospection, CompiledIssuer, CompiledPolicy, IntrospectionCache, PolicyTrust,
    TokenCache,
};
use crate::revocation::RevocationSet;

/// Counts describing a snapshot, for `/config` and metrics. No key material.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SnapshotStats {
    /// Routes compiled in.
    pub routes: usize,
    /// Rules in the index.
    pub rules: usize,
    /// Distinct host entries.
    pub hosts: usize,
    /// Policies compiled in.
    pub policies: usize,
    /// Issuers across policies.
    pub issuers: usize,
    /// Verification keys across issuers.
    pub keys: usize,
    /// Revocation entries across policies (expired ones included).
    pub revocations: usize,
}

/// An immutable, versioned config: the route index and the compiled policies.
#[derive(Debug)]
pub struct Snapshot {
    version: u64,
    pub(crate) index: Arc<RouteIndex>,
    pub(crate) policies: Vec<CompiledPolicy>,
    /// The API keys of each policy (same order as `policies`), if it takes any.
    pub(crate) api_keys: Arc<[Option<Arc<ApiKeyTable>>]>,
    /// Every header some policy reads API keys from (lower case, deduplicated).
    api_key_headers: Arc<[HeaderName]>,
    routes: usize,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) max_token_bytes: usize,
    /// The AI gateway's OpenAPI document ([`crate::openapi::document`]).
    openapi: Arc<serde_json::Value>,
    /// The API catalog's entries ([`crate::catalog::entries`]).
    catalog: Arc<[crate::catalog::Entry]>,
}

impl Snapshot {
    pub(crate) fn new(
        index: RouteIndex,
        policies: Vec<CompiledPolicy>,
        routes: usize,
        clock: Arc<dyn Clock>,
        max_token_bytes: usize,
    ) -> Self {
        Self {
            version: 0,
            index: Arc::new(index),
            policies,
            api_keys: Arc::new([]),
            api_key_headers: Arc::new([]),
            routes,
            clock,
            max_token_bytes,
            openapi: Arc::new(crate::openapi::document(&[])),
            catalog: Arc::new([]),
        }
    }

    /// The OpenAPI document of the LLM routes and prompt endpoints in force.
    pub fn openapi(&self) -> &serde_json::Value {
        &self.openapi
    }

    pub(crate) fn set_openapi(&mut self, doc: serde_json::Value) {
        self.openapi = Arc::new(doc);
    }

    /// The API catalog: every route in force, sorted by `namespace/name`.
    pub fn catalog(&self) -> &[crate::catalog::Entry] {
        &self.catalog
    }

    pub(crate) fn set_catalog(&mut self, entries: Vec<crate::catalog::Entry>) {
        self.catalog = entries.into();
    }

    /// Sets the API keys of each policy (same order as the policies).
    pub(crate) fn set_api_keys(&mut self, tables: Vec<Option<Arc<ApiKeyTable>>>) {
        let mut headers: Vec<HeaderName> = tables
            .iter()
            .flatten()
            .filter_map(|t| t.header.clone())
            .collect();
        headers.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        headers.dedup();
        self.api_key_headers = headers.into();
        self.api_keys = tables.into();
    }

    /// The request headers some policy reads API keys from (each route reads only its own
    /// policy's: [`crate::Allow::credential_header`]).
    pub fn api_key_headers(&self) -> &[HeaderName] {
        &self.api_key_headers
    }

    /// An empty snapshot: every request gets 404.
    pub fn empty() -> Self {
        Self::new(
            RouteIndex::default(),
            Vec::new(),
            0,
            Arc::new(crate::SystemClock),
            8192,
        )
    }

    /// The version (0 until set).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Sets the version.
    pub fn with_version(mut self, version: u64) -> Self {
        self.version = version;
        self
    }

    /// Keeps the verified-token and introspection caches of `previous` for policies whose
    /// trust settings (issuers, keys, endpoints, credentials, claim rules) did not change,
    /// so a revocation-only update does not make every token verify again. Revocations are
    /// checked per request regardless. A policy that already shares its trust material
    /// with `previous` (a patched snapshot) shares its caches too and is left as it is.
    pub fn inherit_caches(&mut self, previous: &Snapshot) {
        for p in &mut self.policies {
            let Some(old) = previous.policies.iter().find(|o| o.id == p.id) else {
                continue;
            };
            if Arc::ptr_eq(&p.trust, &old.trust) {
                continue;
            }
            // Proofs already used stay used, whatever else changed.
            if !Arc::ptr_eq(&p.dpop_replay, &old.dpop_replay) {
                Arc::make_mut(&mut p.trust).dpop_replay = old.dpop_replay.clone();
            }
            if old.trust_hash != p.trust_hash {
                continue;
            }
            // Unshared (a fresh compile): changed in place. Shared with a third snapshot:
            // copied first, so that one keeps its own caches.
            let trust = Arc::make_mut(&mut p.trust);
            trust.cache = old.cache.clone();
            // Introspection verdicts too: a config push during a provider outage must
            // not turn every cached opaque token into a 503.
            if let (Some(new), Some(old)) = (&mut trust.introspection, &old.introspection) {
                new.cache = old.cache.clone();
            }
        }
    }

    /// This snapshot with the revocations of some policies replaced: for each
    /// `(policy id, revocations)` (id `namespace/name`, revocations its new
    /// `spec.revocations`, the whole list), that policy's revocations are compiled anew.
    /// Everything else is shared with `self`: the route index, every policy's trust
    /// material and caches (a token verified before stays a cache hit), the API-key
    /// tables. The version is kept; set the new one with [`Snapshot::with_version`].
    ///
    /// Costs the compiling of the given revocations plus a copy of one pointer pair per
    /// policy, whatever the number of routes: snapshots are patched, not rebuilt.
    ///
    /// A malformed entry, or a policy not in this snapshot (it does not exist, or it did
    /// not compile), is an error as [`crate::compile_with`] reports it (kind
    /// `TokenPolicy`, the policy's namespace and name, the field path), and no snapshot is
    /// made: the full compile then decides what the policy becomes.
    pub fn with_revocations<'a>(
        &self,
        changes: impl IntoIterator<Item = (&'a str, &'a [Revocation])>,
    ) -> Result<Snapshot, Vec<CompileError>> {
        let mut policies = self.policies.clone();
        let mut errors = Vec::new();
        for (id, list) in changes {
            let (namespace, name) = id.split_once('/').unwrap_or(("", id));
            let error = |path: String, reason, message: String| CompileError {
                kind: "TokenPolicy",
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                path,
                message,
                reason,
            };
            let Some(policy) = policies.iter_mut().find(|p| &*p.id == id) else {
                errors.push(error(
                    "metadata.name".into(),
                    CompileReason::PolicyNotFound,
                    format!("TokenPolicy {id} is not in the snapshot (missing, or it did not compile): compile the sources in full"),
                ));
                continue;
            };
            let (set, problems) = RevocationSet::compile(list);
            if problems.is_empty() {
                policy.revocations = Arc::new(set);
            }
            errors.extend(
                problems
                    .into_iter()
                    .map(|e| error(e.path, CompileReason::InvalidRevocation, e.message)),
            );
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Snapshot {
            version: self.version,
            index: self.index.clone(),
            policies,
            api_keys: self.api_keys.clone(),
            api_key_headers: self.api_key_headers.clone(),
            routes: self.routes,
            clock: self.clock.clone(),
            max_token_bytes: self.max_token_bytes,
            openapi: self.openapi.clone(),
            catalog: self.catalog.clone(),
        })
    }

    /// Whether `self` and `other` share one route index (the same allocation): true of a
    /// snapshot and the one it was patched from. For tests.
    #[doc(hidden)]
    pub fn shares_route_index_with(&self, other: &Snapshot) -> bool {
        Arc::ptr_eq(&self.index, &other.index)
    }

    /// Counts for `/config` and metrics.
    pub fn stats(&self) -> SnapshotStats {
        SnapshotStats {
            routes: self.routes,
            rules: self.index.rules,
            hosts: self.index.hosts(),
            policies: self.policies.len(),
            issuers: self.policies.iter().map(|p| p.issuers.len()).sum(),
            keys: self
                .policies
                .iter()
                .flat_map(|p| p.issuers.values())
                .map(|i| i.keys.keys.len())
                .sum(),
            revocations: self.policies.iter().map(|p| p.revocations.len()).sum(),
        }
    }

    /// Revocation entries past their `expiresAt` (ignored, awaiting pruning).
    pub fn expired_revocations(&self) -> usize {
        let now = self.clock.now();
        self.policies
            .iter()
            .map(|p| p.revocations.expired(now))
            .sum()
    }

    /// Policy ids (`namespace/name`) compiled in.
    pub fn policy_ids(&self) -> impl Iterator<Item = &str> {
        self.policies.iter().map(|p| &*p.id)
    }

    /// The canonical form of a request path: the one path [`Snapshot::authorize`] must be
    /// given and the upstream must receive. `raw_path` is the path of the request target
    /// as received (no query).
    ///
    /// The path is first normalized with the settings every route can live with (slashes
    /// merged, `%2F` and `;` kept) to find the route; if that route (or, with no route,
    /// the defaults) asks for other settings, the raw path is normalized again with them,
    /// and the route that path leads to must ask for the same settings. So a route's
    /// relaxed settings apply only to paths that end up on it, and the path decided on is
    /// always the path normalized under the settings of the route that decides it.
    pub fn canonical_target<'r>(
        &self,
        host: &str,
        method: &str,
        raw_path: &'r str,
    ) -> Result<std::borrow::Cow<'r, str>, crate::target::TargetError> {
        use crate::target::{EscapedSlashes, PathOptions, Semicolons, TargetError, canonical_path};
        let options_at = |path: &str| {
            self.index
                .lookup(host, path, method)
                .map_or_else(PathOptions::default, |r| r.info.path_options)
        };
        let first = canonical_path(raw_path, &PathOptions::LENIENT)?;
        if let std::borrow::Cow::Borrowed(_) = first {
            // Already canonical with no `%`, `;`, `//` or dot segment: canonical under
            // every setting, so no route can want it otherwise (the hot path: one scan).
            return Ok(first);
        }
        let wanted = options_at(&first);
        let second = if wanted == PathOptions::LENIENT {
            first
        } else {
            canonical_path(raw_path, &wanted)?
        };
        let rule = self.index.lookup(host, &second, method);
        let wanted_here = rule.map_or_else(PathOptions::default, |r| r.info.path_options);
        if wanted_here != wanted {
            return Err(TargetError::Ambiguous);
        }
        // A relaxed setting keeps something a backend may still resolve away (merge the
        // `//`, decode the `%2F`, strip the `;params`) in the path it is sent. Whatever the
        // backend does, it must land on the rule that decided: otherwise the request is
        // ambiguous and refused. (Found by the route fuzz target: variants of the raw path
        // instead of the forwarded one let `/pub//private//..` through as `/pub//private/`,
        // which a merging backend serves as the protected `/pub/private/`.)
        let same_rule = |variant: &str| match (rule, self.index.lookup(host, variant, method)) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        // The backend resolves the path it is sent, so the variants are of `second`.
        let holds = |options: PathOptions| match canonical_path(&second, &options) {
            Ok(variant) => variant == second || same_rule(&variant),
            Err(_) => false,
        };
        if !wanted.merge_slashes
            && second.contains("//")
            && !holds(PathOptions {
                merge_slashes: true,
                ..wanted
            })
        {
            return Err(TargetError::Ambiguous);
        }
        if wanted.escaped_slashes == EscapedSlashes::Keep
            && (second.contains("%2F") || second.contains("%5C"))
            && !holds(PathOptions {
                escaped_slashes: EscapedSlashes::Decode,
                ..wanted
            })
        {
            return Err(TargetError::Ambiguous);
        }
        if wanted.semicolons == Semicolons::Keep
            && second.contains(';')
            && !same_rule(&crate::target::strip_path_parameters(&second))
        {
            return Err(TargetError::Ambiguous);
        }
        Ok(second)
    }
}
