//! [`compile_sources`]: a [`SourceSet`] (what the controller streams to its proxies) in, a
//! [`Snapshot`] out, by the cheapest way that gives what a full compile would give.
//!
//! ```text
//!  delta ─▶ SourceChanges::apply(&mut sources, &changes)    the objects it touched, as they were
//!                 │
//!  compile_sources(options, &sources, Some(PreviousCompile { snapshot, errors, changes }))
//!   ├─ every touched object is a TokenPolicy that differs in spec.revocations only,
//!   │  and that compiled last time           ─▶ Snapshot::with_revocations   patched
//!   └─ anything else: a route, a Secret, fetched keys, another field of a policy,
//!      a revocation entry in error            ─▶ compile_with + inherit_caches  full
//! ```
//!
//! The check looks at the touched objects only, never at the others: a revocation-only
//! delta costs the same with 10 or 10,000 routes.

use std::collections::BTreeMap;

use portcullis_api::push::{Changes, SourceObject, SourceSet};
use portcullis_api::{Revocation, TokenPolicy, TokenPolicySpec};

use crate::compile::objects::Named;
use crate::compile::{CompileError, CompileOptions, compile_with};
use crate::snapshot::Snapshot;

// === SourceChanges ===

/// The objects a change touched, as they were before it: what [`compile_sources`]
/// compares to tell a revocation-only change from any other, without reading the objects
/// the change did not touch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourceChanges {
    /// By map key ([`SourceSet::map_key`]): the object before the change, `None` where
    /// there was none.
    before: BTreeMap<String, Option<SourceObject>>,
}

impl SourceChanges {
    /// The objects of `sources` that `changes` touches (deletes, upserts, revocation
    /// edits), recorded before the changes are applied. Copies those objects only.
    pub fn record(sources: &SourceSet, changes: &Changes) -> Self {
        let keys = changes
            .deletes
            .iter()
            .map(SourceSet::map_key)
            .chain(changes.upserts.iter().map(|o| SourceSet::map_key(&o.key())))
            .chain(
                changes
                    .revocations
                    .iter()
                    .map(|e| SourceSet::map_key(&e.policy)),
            );
        let before = keys
            .map(|k| {
                let old = sources.objects.get(&k).cloned();
                (k, old)
            })
            .collect();
        Self { before }
    }

    /// Applies `changes` to `sources` in place ([`SourceSet::apply`]) and returns what
    /// they touched. On error (a revocation edit for a policy that is not there) `sources`
    /// is left as it was.
    pub fn apply(sources: &mut SourceSet, changes: &Changes) -> Result<Self, String> {
        let touched = Self::record(sources, changes);
        if let Err(e) = sources.apply(changes) {
            touched.restore(sources);
            return Err(e);
        }
        Ok(touched)
    }

    /// Every object that differs between two whole sets. This compares them all: a caller
    /// that has the delta should use [`SourceChanges::record`] or
    /// [`SourceChanges::apply`] instead.
    pub fn between(old: &SourceSet, new: &SourceSet) -> Self {
        let mut before = BTreeMap::new();
        for (k, n) in &new.objects {
            match old.objects.get(k) {
                Some(o) if o == n => {}
                o => {
                    before.insert(k.clone(), o.cloned());
                }
            }
        }
        for (k, o) in &old.objects {
            if !new.objects.contains_key(k) {
                before.insert(k.clone(), Some(o.clone()));
            }
        }
        Self { before }
    }

    /// Number of objects touched.
    pub fn len(&self) -> usize {
        self.before.len()
    }

    /// Whether nothing was touched.
    pub fn is_empty(&self) -> bool {
        self.before.is_empty()
    }

    /// Puts the touched objects of `sources` back as they were.
    fn restore(&self, sources: &mut SourceSet) {
        for (k, old) in &self.before {
            match old {
                Some(o) => {
                    sources.objects.insert(k.clone(), o.clone());
                }
                None => {
                    sources.objects.remove(k);
                }
            }
        }
    }
}

// === compile_sources ===

/// The compile a new one may patch: the snapshot compiled from the sources as they were,
/// the errors that compile reported, and what changed in the sources since.
#[derive(Debug, Clone, Copy)]
pub struct PreviousCompile<'a> {
    /// The snapshot compiled from the sources before `changes`, with the same options.
    pub snapshot: &'a Snapshot,
    /// The errors reported with it: a patched snapshot reports them again.
    pub errors: &'a [CompileError],
    /// What changed in the sources since.
    pub changes: &'a SourceChanges,
}

/// What [`compile_sources`] made.
#[derive(Debug)]
pub struct CompiledSources {
    /// The snapshot (version 0 from a full compile, the previous one's when patched: set
    /// it with [`Snapshot::with_version`]).
    pub snapshot: Snapshot,
    /// Every problem found, as [`compile_with`] reports them.
    pub errors: Vec<CompileError>,
    /// Whether the previous snapshot was patched (only revocations changed) rather than
    /// everything compiled again.
    pub patched: bool,
}

/// Compiles `sources`: the one entry point of the proxy's subscriber, and of any caller
/// holding a [`SourceSet`]. The key sets fetched by the controller (`RemoteKeys` objects)
/// are added to `options.remote_jwks`.
///
/// With `previous`, when the only change since it is in TokenPolicies' `spec.revocations`
/// (the other fields of each touched policy equal, every other touched object unchanged,
/// each such policy compiled last time, its new entries well-formed and, with
/// [`CompileOptions::spec_rules`], the policy still passing them), the previous snapshot is
/// patched ([`Snapshot::with_revocations`]): it costs the changed revocations, not the
/// routes. Otherwise everything is compiled, and the new snapshot keeps the previous one's
/// caches where the trust settings did not change ([`Snapshot::inherit_caches`]). Either
/// way the decisions and the errors are those of a full compile.
///
/// `options` must be those `previous` was compiled with: when they changed (other fetched
/// documents, other pending fetches), pass `None`.
pub fn compile_sources(
    options: &CompileOptions,
    sources: &SourceSet,
    previous: Option<PreviousCompile<'_>>,
) -> CompiledSources {
    if let Some(previous) = previous
        && let Some(snapshot) = patch(options, sources, previous)
    {
        return CompiledSources {
            snapshot,
            errors: previous.errors.to_vec(),
            patched: true,
        };
    }
    let (routes, policies, secrets) = sources.split();
    let fetched = sources.remote_jwks();
    let with_fetched;
    let options = if fetched.is_empty() {
        options
    } else {
        let mut remote_jwks = options.remote_jwks.clone();
        remote_jwks.extend(fetched);
        with_fetched = CompileOptions {
            remote_jwks,
            ..options.clone()
        };
        &with_fetched
    };
    let (mut snapshot, errors) = compile_with(options, &routes, &policies, &secrets);
    if let Some(previous) = previous {
        snapshot.inherit_caches(previous.snapshot);
    }
    CompiledSources {
        snapshot,
        errors,
        patched: false,
    }
}

/// The previous snapshot with the new revocations, if the change is revocation-only and
/// the patch gives what a full compile would.
fn patch(
    options: &CompileOptions,
    sources: &SourceSet,
    previous: PreviousCompile<'_>,
) -> Option<Snapshot> {
    let mut edits: Vec<(String, &[Revocation])> = Vec::new();
    for (key, before) in &previous.changes.before {
        match (before, sources.objects.get(key)) {
            (None, None) => {}
            (Some(old), Some(new)) if old == new => {}
            (Some(SourceObject::TokenPolicy(old)), Some(SourceObject::TokenPolicy(new)))
                if only_revocations_differ(old, new) =>
            {
                // A policy breaking a spec rule is left out by a full compile.
                if let Some(rules) = &options.spec_rules
                    && !(rules.token_policy)(new).is_empty()
                {
                    return None;
                }
                edits.push((
                    format!("{}/{}", new.ns(), new.name_any()),
                    &new.spec.revocations,
                ));
            }
            _ => return None,
        }
    }
    // A malformed entry leaves the policy out of a full compile (and its routes with it):
    // the full compile reports that.
    previous
        .snapshot
        .with_revocations(edits.iter().map(|(id, list)| (id.as_str(), *list)))
        .ok()
}

/// Whether two versions of a policy differ in nothing the compiler reads but
/// `spec.revocations` (of the metadata, it reads the namespace and name only).
fn only_revocations_differ(a: &TokenPolicy, b: &TokenPolicy) -> bool {
    let (ma, mb) = (&a.metadata, &b.metadata);
    if ma.name != mb.name || ma.namespace != mb.namespace || ma.generate_name != mb.generate_name {
        return false;
    }
    let without_revocations = |p: &TokenPolicy| TokenPolicySpec {
        revocations: Vec::new(),
        ..p.spec.clone()
    };
    without_revocations(a) == without_revocations(b)
}
