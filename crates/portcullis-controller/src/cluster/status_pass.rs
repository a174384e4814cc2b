//! One status pass, in memory: from the store, the last compile's errors, the proxies'
//! acknowledgements and `KeysReady`, what every ApiRoute's and TokenPolicy's status should
//! be, and which Warning Events to publish (once per generation and reason). The result
//! goes to the [`StatusQueue`](super::status_writer::StatusQueue); nothing here waits.

use std::collections::{HashMap, HashSet};

use kube::{Resource, ResourceExt};
use portcullis_api::{CompileReason, ResourceStatus};
use portcullis_policy::CompileError;

use super::acks::Ack;
use super::remote_keys::KeysReports;
use super::status_writer::{ObjectId, StatusEvent, StatusUpdate};
use super::store::{Key, Store, key_of};
use crate::status::{self, ObjectReport};

/// What the status of a TokenPolicy shows beside its conditions, by policy
/// (`namespace/name`): its budgets' use and its Shared Signals streams.
pub(crate) struct PolicyExtras<'a> {
    /// Budget use, from the leader's ledger.
    pub(crate) budgets: &'a dyn Fn(&str) -> Vec<portcullis_api::BudgetStatus>,
    /// Stream delivery and verification, from the leader's receiver.
    pub(crate) streams: &'a dyn Fn(&str) -> Vec<portcullis_api::StreamStatus>,
}

/// Per object (kind, key): the generation last published, and the version that first
/// held it.
pub(crate) type Programmed = HashMap<(String, Key), (Option<i64>, u64)>;

/// Events longer than this are cut.
const NOTE_MAX: usize = 1000;

/// What the acknowledgements say about the published config.
pub(crate) struct Acks<'a> {
    /// Every connected proxy's, on any replica.
    pub(crate) all: &'a [Ack],
    /// The digest of the current content.
    pub(crate) current_digest: Option<&'a str>,
}

/// Plans status passes; remembers which Events were published.
#[derive(Default)]
pub(crate) struct StatusPlanner {
    /// (kind, key, generation, reason) of every Warning Event published.
    warned: HashSet<(String, Key, Option<i64>, String)>,
}

/// An object as the pass reads it.
struct Target {
    kind: &'static str,
    key: Key,
    generation: Option<i64>,
    resource_version: Option<String>,
    current: Option<ResourceStatus>,
    object_ref: k8s_openapi::api::core::v1::ObjectReference,
    /// An ApiRoute's lifecycle stage in effect.
    stage: Option<&'static str>,
}

/// An ApiRoute's lifecycle stage in effect now (`Retired` past its `sunsetAt`), as the
/// spec spells it.
fn stage_of(r: &portcullis_api::ApiRoute) -> &'static str {
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    r.spec
        .lifecycle
        .as_ref()
        .map_or(portcullis_api::LifecycleStage::Published, |l| {
            l.stage_at(now)
        })
        .name()
}

impl StatusPlanner {
    /// One update per ApiRoute and TokenPolicy in the store.
    #[allow(clippy::too_many_arguments)] // each is one input of the status pass
    pub(crate) fn plan(
        &mut self,
        store: &Store,
        acks: &Acks<'_>,
        programmed: &Programmed,
        errors: &[CompileError],
        keys: &KeysReports,
        extras: &PolicyExtras<'_>,
        now: &str,
    ) -> Vec<StatusUpdate> {
        let targets: Vec<Target> = {
            let g = store.lock();
            g.routes
                .values()
                .map(|r| Target {
                    kind: "ApiRoute",
                    key: key_of(r),
                    generation: r.metadata.generation,
                    resource_version: r.resource_version(),
                    current: r.status.clone(),
                    object_ref: r.object_ref(&()),
                    stage: Some(stage_of(r)),
                })
                .chain(g.policies.values().map(|p| Target {
                    kind: "TokenPolicy",
                    key: key_of(p),
                    generation: p.metadata.generation,
                    resource_version: p.resource_version(),
                    current: p.status.clone(),
                    object_ref: p.object_ref(&()),
                    stage: None,
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
        targets
            .into_iter()
            .map(|t| {
                let errs = by_object
                    .get(&(t.kind, t.key.0.as_str(), t.key.1.as_str()))
                    .cloned()
                    .unwrap_or_default();
                self.plan_one(t, errs, acks, programmed, keys, extras, now)
            })
            .collect()
    }

    #[allow(clippy::too_many_arguments)] // each is one input of the status pass
    fn plan_one(
        &mut self,
        t: Target,
        errs: Vec<&CompileError>,
        acks: &Acks<'_>,
        programmed: &Programmed,
        keys: &KeysReports,
        extras: &PolicyExtras<'_>,
        now: &str,
    ) -> StatusUpdate {
        let Target {
            kind,
            key,
            generation,
            resource_version,
            current,
            object_ref,
            stage,
        } = t;
        let proxies = match programmed.get(&(kind.to_string(), key.clone())) {
            // A proxy holds this generation if it acknowledged a version at or after the
            // one that first held it, or content identical to the leader's (replicas may
            // number the same content differently).
            Some((g, v)) if *g == generation => (
                acks.all
                    .iter()
                    .filter(|a| {
                        a.v >= *v || (a.d.is_some() && a.d.as_deref() == acks.current_digest)
                    })
                    .count(),
                acks.all.len(),
            ),
            _ => (0, acks.all.len()),
        };
        let keys_report = if kind == "TokenPolicy" {
            keys.get(&format!("{}/{}", key.0, key.1)).cloned()
        } else {
            None
        };
        let mut events = Vec::new();
        if let Some((false, reason, message)) = &keys_report
            && *reason != "Pending"
            && self.warned.insert((
                kind.to_string(),
                key.clone(),
                generation,
                format!("keys:{reason}"),
            ))
        {
            events.push(StatusEvent {
                reason: (*reason).into(),
                note: message.chars().take(NOTE_MAX).collect(),
                action: "FetchKeys",
            });
        }
        if let Some((true, _, _)) = &keys_report {
            // Recovered: a later failure deserves a new Event.
            self.warned.retain(|(k, o, g, r)| {
                !(k == kind && *o == key && *g == generation && r.starts_with("keys:"))
            });
        }
        let report = ObjectReport {
            generation,
            errors: errs.clone(),
            proxies,
            keys: keys_report,
            budgets: if kind == "TokenPolicy" {
                (extras.budgets)(&format!("{}/{}", key.0, key.1))
            } else {
                Vec::new()
            },
            streams: if kind == "TokenPolicy" {
                (extras.streams)(&format!("{}/{}", key.0, key.1))
            } else {
                Vec::new()
            },
            stage,
        };
        let desired = status::desired(&report, current.as_ref(), now);
        let status = if status::differs(current.as_ref(), &desired) {
            // A Warning Event per rejection, once per generation and reason.
            for e in &errs {
                if e.reason == CompileReason::RuleConflict && errs.len() > 1 {
                    continue;
                }
                let id = (
                    kind.to_string(),
                    key.clone(),
                    generation,
                    e.reason.as_str().to_owned(),
                );
                if self.warned.insert(id) {
                    events.push(StatusEvent {
                        reason: e.reason.as_str().to_owned(),
                        note: format!("{}: {}", e.path, e.message)
                            .chars()
                            .take(NOTE_MAX)
                            .collect(),
                        action: "Compile",
                    });
                }
            }
            Some(desired)
        } else {
            None
        };
        StatusUpdate {
            object_ref: (!events.is_empty()).then_some(object_ref),
            id: ObjectId {
                kind,
                namespace: key.0,
                name: key.1,
            },
            resource_version,
            status,
            events,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::stage_of;

    fn route(lifecycle: &str) -> portcullis_api::ApiRoute {
        serde_yaml::from_str(&format!(
            "apiVersion: portcullis.dev/v1alpha1\nkind: ApiRoute\nmetadata: {{name: r, namespace: ns}}\nspec:\n  hosts: [a.test]\n  policyRef: {{name: p}}\n  backend: {{url: 'http://127.0.0.1:9'}}\n  rules: [{{match: {{pathPrefix: /}}}}]\n{lifecycle}"
        ))
        .unwrap()
    }

    /// `status.stage` is the stage in effect: a sunset in the past retires any stage.
    #[test]
    fn the_stage_in_effect_is_retired_past_the_sunset() {
        assert_eq!(stage_of(&route("")), "Published");
        assert_eq!(stage_of(&route("  lifecycle: {stage: Draft}")), "Draft");
        assert_eq!(
            stage_of(&route(
                "  lifecycle: {stage: Deprecated, deprecatedAt: '2020-01-01T00:00:00Z', sunsetAt: '2999-01-01T00:00:00Z'}"
            )),
            "Deprecated"
        );
        assert_eq!(
            stage_of(&route(
                "  lifecycle: {stage: Deprecated, deprecatedAt: '2020-01-01T00:00:00Z', sunsetAt: '2021-01-01T00:00:00Z'}"
            )),
            "Retired"
        );
        assert_eq!(stage_of(&route("  lifecycle: {stage: Retired}")), "Retired");
    }
}
