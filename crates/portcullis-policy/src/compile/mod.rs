//! `compile`: ApiRoutes, TokenPolicies and Secrets in, one [`Snapshot`] and a list of
//! [`CompileError`]s out.
//!
//! Every error names the object and the field path
//! (`ApiRoute shop/orders: spec.rules[2].requiredScopes[0]: ...`) and a typed
//! [`CompileReason`]. A bad object is reported and left out; it never stops the others. A
//! route whose policy was left out is left out too, with an error on its `policyRef`.
//!
//! ```text
//!  compile_with (here)
//!   ├─ TokenPolicy ─▶ policy.rs ─┬─ issuer.rs         algorithms, keys (inline | Secret | fetched)
//!   │                            ├─ introspection.rs  endpoint, credentials, cache TTLs
//!   │                            └─ RevocationSet::compile
//!   ├─ ApiRoute ────▶ route.rs      hosts, policyRef, backend, rules ─▶ RouteIndex
//!   ├─ reason.rs      CompileError, CompileReason, ConditionType
//!   └─ objects.rs     names, Secret values (a leaf, shared with crate::remote)
//! ```
//!
//! The CRDs' CEL rules are not run here: they need kube's CEL evaluator, which has no
//! place in the enforcement core. Standalone mode, whose manifests no API server has
//! checked, passes them in as [`SpecRules`] (`portcullis_api::validate::cel_errors`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use portcullis_api::validate::FieldViolation;
use portcullis_api::{ApiRoute, TokenPolicy};

use crate::index::RouteIndex;
use crate::snapshot::Snapshot;

mod introspection;
mod issuer;
mod llm;
pub(crate) mod objects;
mod policy;
mod reason;
mod route;

pub use introspection::{
    INTROSPECTION_CLIENT_ID_KEY, INTROSPECTION_CLIENT_SECRET_KEY, url_allowed,
};
pub use reason::{CompileError, CompileReason};

/// Checks run on every object before the compiler's own, supplied by the caller because
/// the compiler holds no CEL evaluator: standalone mode passes the CRDs' CEL rules
/// (`portcullis_api::validate::cel_errors`), which the API server has already applied to
/// objects from a cluster. An object that breaks one is reported (reason `Invalid`, with
/// the rule's field and message) and left out, as if it had failed to compile: a route
/// using such a policy gets `PolicyNotReady`.
#[derive(Debug, Clone, Copy)]
pub struct SpecRules {
    /// The violations of an ApiRoute.
    pub api_route: fn(&ApiRoute) -> Vec<FieldViolation>,
    /// The violations of a TokenPolicy.
    pub token_policy: fn(&TokenPolicy) -> Vec<FieldViolation>,
}

/// Settings for compilation.
#[derive(Debug, Clone)]
pub struct CompileOptions {
    /// Longest token accepted, in bytes (default 8 KiB).
    pub max_token_bytes: usize,
    /// Verified-token cache entries per policy (default 10,000).
    pub cache_capacity: usize,
    /// Whether the objects still need the CRDs' CEL rules (default true): manifests read
    /// from disk, which no API server has checked. The compiler has no CEL evaluator and
    /// does not read this; the caller that reads the objects honours it by setting
    /// [`CompileOptions::spec_rules`] (standalone mode does). Cluster mode and the
    /// controller's config stream set it to false.
    pub validate_cel: bool,
    /// Checks run on every object before the compiler's own (default none): see
    /// `SpecRules` and [`CompileOptions::with_spec_rules`].
    pub spec_rules: Option<SpecRules>,
    /// Key sets fetched from `jwks.uri`s, by URI, as JSON documents.
    pub remote_jwks: HashMap<String, serde_json::Value>,
    /// Key sources (by [`crate::RemoteSource::key`]) without a document in `remote_jwks`
    /// whose first fetch is under way. A policy waiting for one is reported as
    /// [`CompileReason::KeysPending`], a wait, rather than
    /// [`CompileReason::KeysNotFetched`], a fault.
    pub pending_jwks: HashSet<String>,
    /// The clock the snapshot decides with.
    pub clock: Arc<dyn crate::Clock>,
    /// Default upstream connect timeout (5s).
    pub connect_timeout: Duration,
    /// Default time allowed for upstream response headers (30s).
    pub request_timeout: Duration,
    /// Whether this process drives Shared Signals streams (polls, asks for verification)
    /// and so needs their poll and management tokens: true in standalone mode and in the
    /// controller; false in a cluster's proxies, which only take pushes and are never
    /// sent those tokens.
    pub stream_receiver: bool,
}

impl Default for CompileOptions {
    fn default() -> Self {
        Self {
            max_token_bytes: 8 * 1024,
            cache_capacity: 10_000,
            validate_cel: true,
            spec_rules: None,
            remote_jwks: HashMap::new(),
            pending_jwks: HashSet::new(),
            clock: Arc::new(crate::SystemClock),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            stream_receiver: true,
        }
    }
}

impl CompileOptions {
    /// These options, with `api_route` and `token_policy` run on every object before the
    /// compiler's own checks (see `SpecRules`), e.g.
    /// `with_spec_rules(cel_errors::<ApiRoute>, cel_errors::<TokenPolicy>)`.
    pub fn with_spec_rules(
        mut self,
        api_route: fn(&ApiRoute) -> Vec<FieldViolation>,
        token_policy: fn(&TokenPolicy) -> Vec<FieldViolation>,
    ) -> Self {
        self.spec_rules = Some(SpecRules {
            api_route,
            token_policy,
        });
        self
    }
}

/// Compiles with default options.
pub fn compile(
    routes: &[ApiRoute],
    policies: &[TokenPolicy],
    secrets: &[Secret],
) -> (Snapshot, Vec<CompileError>) {
    compile_with(&CompileOptions::default(), routes, policies, secrets)
}

/// `(namespace, name)` of an object.
type ObjectKey = (String, String);

/// Why a policy was left out, for the routes that use it.
struct FailedPolicy {
    /// The message of its first error (its first fault, when it has one).
    why: String,
    /// Every error is a wait ([`CompileReason::is_pending`]): it will compile by itself.
    pending: bool,
}

/// Compiles with the given options.
pub fn compile_with(
    options: &CompileOptions,
    routes: &[ApiRoute],
    policies: &[TokenPolicy],
    secrets: &[Secret],
) -> (Snapshot, Vec<CompileError>) {
    use objects::Named;

    let mut errors = Vec::new();
    let all_secrets = secrets;
    let secrets = objects::index_secrets(secrets);

    // Policies, in a stable order.
    let mut sorted_policies: Vec<&TokenPolicy> = policies.iter().collect();
    sorted_policies.sort_by_key(|p| (p.ns(), p.name_any()));
    let mut compiled = Vec::new();
    let mut by_name: HashMap<ObjectKey, usize> = HashMap::new();
    let mut failed: HashMap<ObjectKey, FailedPolicy> = HashMap::new();
    for p in sorted_policies {
        let key = (p.ns(), p.name_any());
        match policy::compile_policy(options, p, &secrets) {
            Ok(cp) => {
                by_name.insert(key, compiled.len());
                compiled.push(cp);
            }
            Err(mut errs) => {
                let first = errs.iter().find(|e| !e.is_pending()).unwrap_or(&errs[0]);
                failed.insert(
                    key,
                    FailedPolicy {
                        why: first.message.clone(),
                        pending: errs.iter().all(CompileError::is_pending),
                    },
                );
                errors.append(&mut errs);
            }
        }
    }

    // Routes, oldest first, then by namespace/name: earlier routes win conflicts.
    let mut sorted_routes: Vec<&ApiRoute> = routes.iter().collect();
    sorted_routes.sort_by_key(|r| {
        (
            r.metadata.creation_timestamp.clone().map(|t| t.0),
            r.ns(),
            r.name_any(),
        )
    });
    let known = route::Policies {
        by_name: &by_name,
        failed: &failed,
        compiled: &compiled,
    };
    let mut index = RouteIndex::default();
    let mut route_count = 0;
    let mut compiled_routes = Vec::new();
    for r in sorted_routes {
        match route::compile_route(options, r, &known, &secrets, &mut index) {
            Ok(mut warnings) => {
                route_count += 1;
                compiled_routes.push(r);
                errors.append(&mut warnings);
            }
            Err(mut errs) => errors.append(&mut errs),
        }
    }

    // API keys, from the Secrets each policy selects: a bad Secret is reported and left
    // out; the policy's other keys still work.
    let (api_keys, problems) = crate::apikeys::compile_tables(&compiled, policies, all_secrets);
    for p in problems {
        let (namespace, name) = compiled[p.policy]
            .id
            .split_once('/')
            .map(|(n, m)| (n.to_owned(), m.to_owned()))
            .unwrap_or_default();
        errors.push(CompileError {
            kind: "TokenPolicy",
            namespace,
            name,
            path: format!("spec.apiKeys: Secret {} data.{}", p.secret, p.field),
            message: p.message,
            reason: CompileReason::InvalidKeys,
        });
    }
    let mut snapshot = Snapshot::new(
        index,
        compiled,
        route_count,
        options.clock.clone(),
        options.max_token_bytes,
    );
    snapshot.set_api_keys(api_keys);
    snapshot.set_openapi(crate::openapi::document(&compiled_routes));
    snapshot.set_catalog(crate::catalog::entries(&compiled_routes, policies));
    (snapshot, errors)
}
