//! Status conditions, Gateway API style, computed as plain data (no Kubernetes calls):
//! `Accepted` (the spec is valid), `ResolvedRefs` (every reference resolves) and
//! `Programmed` (every connected proxy enforces this generation).
//!
//! Each compile error goes under the condition its typed reason names
//! ([`CompileReason::condition`]): a missing Service, Secret or policy, or keys not
//! fetched yet, is `ResolvedRefs=False` while the route stays `Accepted=True`.

use portcullis_api::{
    CompileReason, Condition, ConditionStatus, ConditionType, ProxiesStatus, ResourceStatus,
};
use portcullis_policy::CompileError;

/// Condition types.
pub const ACCEPTED: &str = ConditionType::Accepted.as_str();
/// Condition types.
pub const RESOLVED_REFS: &str = ConditionType::ResolvedRefs.as_str();
/// Condition types.
pub const PROGRAMMED: &str = "Programmed";
/// Condition type: the keys fetched from a `jwks.uri` or discovery are current.
pub const KEYS_READY: &str = "KeysReady";

/// What the controller knows about one object after a compile pass.
#[derive(Debug, Clone)]
pub struct ObjectReport<'a> {
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// Errors about this object.
    pub errors: Vec<&'a CompileError>,
    /// `(programmed, connected)` proxies for the version holding this generation.
    pub proxies: (usize, usize),
    /// For a TokenPolicy with fetched keys: `(ready, reason, message)` for `KeysReady`.
    pub keys: Option<(bool, &'static str, String)>,
    /// For a TokenPolicy with LLM budgets: their use, from the leader's ledger.
    pub budgets: Vec<portcullis_api::BudgetStatus>,
    /// For a TokenPolicy with Shared Signals streams: their delivery and verification.
    pub streams: Vec<portcullis_api::StreamStatus>,
    /// For an ApiRoute: the lifecycle stage in effect.
    pub stage: Option<&'static str>,
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &str,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        },
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: now.into(),
    }
}

fn messages(errors: &[&CompileError]) -> String {
    let mut m: Vec<String> = errors
        .iter()
        .take(5)
        .map(|e| format!("{}: {}", e.path, e.message))
        .collect();
    if errors.len() > 5 {
        m.push(format!("and {} more", errors.len() - 5));
    }
    m.join("; ")
}

/// The desired status of an object. `previous` supplies `lastTransitionTime`s, which only
/// change when a condition's status does.
pub fn desired(
    report: &ObjectReport<'_>,
    previous: Option<&ResourceStatus>,
    now: &str,
) -> ResourceStatus {
    let g = report.generation;
    let (ref_errors, spec_errors): (Vec<&CompileError>, Vec<&CompileError>) =
        report.errors.iter().partition(|e| e.is_ref_error());
    // A rule dropped because another route already claims its match is reported, but the
    // route is accepted and serves its other rules.
    let (conflicts, invalid): (Vec<&CompileError>, Vec<&CompileError>) = spec_errors
        .into_iter()
        .partition(|e| e.reason == CompileReason::RuleConflict);
    let accepted = invalid.is_empty();
    let resolved = ref_errors.is_empty();
    let (programmed_n, connected) = report.proxies;

    let mut conditions = vec![
        if accepted {
            let msg = if conflicts.is_empty() {
                "the spec is valid".into()
            } else {
                messages(&conflicts)
            };
            condition(
                ACCEPTED,
                true,
                if conflicts.is_empty() {
                    ACCEPTED
                } else {
                    CompileReason::RuleConflict.as_str()
                },
                msg,
                g,
                now,
            )
        } else {
            condition(
                ACCEPTED,
                false,
                invalid[0].reason.as_str(),
                messages(&invalid),
                g,
                now,
            )
        },
        if resolved {
            condition(
                RESOLVED_REFS,
                true,
                RESOLVED_REFS,
                "every reference resolves".into(),
                g,
                now,
            )
        } else {
            condition(
                RESOLVED_REFS,
                false,
                ref_errors[0].reason.as_str(),
                messages(&ref_errors),
                g,
                now,
            )
        },
    ];
    if let Some((ok, reason, message)) = &report.keys {
        conditions.push(condition(KEYS_READY, *ok, reason, message.clone(), g, now));
    }
    let programmed = if !accepted || !resolved {
        condition(
            PROGRAMMED,
            false,
            "Invalid",
            "not programmed: see Accepted and ResolvedRefs".into(),
            g,
            now,
        )
    } else if connected == 0 {
        condition(
            PROGRAMMED,
            false,
            "NoProxies",
            "no proxy is connected".into(),
            g,
            now,
        )
    } else if programmed_n < connected {
        condition(
            PROGRAMMED,
            false,
            "Pending",
            format!("{programmed_n} of {connected} connected proxies enforce this generation"),
            g,
            now,
        )
    } else {
        condition(
            PROGRAMMED,
            true,
            "Programmed",
            format!("all {connected} connected proxies enforce this generation"),
            g,
            now,
        )
    };
    conditions.push(programmed);

    // Keep transition times of conditions whose status did not change.
    if let Some(prev) = previous {
        for c in &mut conditions {
            if let Some(p) = prev.conditions.iter().find(|p| p.type_ == c.type_)
                && p.status == c.status
            {
                c.last_transition_time = p.last_transition_time.clone();
            }
        }
    }
    ResourceStatus {
        observed_generation: g,
        conditions,
        proxies: Some(ProxiesStatus {
            programmed: programmed_n as i32,
            connected: connected as i32,
        }),
        budgets: report.budgets.clone(),
        streams: report.streams.clone(),
        stage: report.stage.map(str::to_owned),
    }
}

/// Whether two statuses differ in anything but transition times.
pub fn differs(a: Option<&ResourceStatus>, b: &ResourceStatus) -> bool {
    let Some(a) = a else { return true };
    if a.observed_generation != b.observed_generation
        || a.proxies != b.proxies
        || a.budgets != b.budgets
        || a.streams != b.streams
        || a.stage != b.stage
        || a.conditions.len() != b.conditions.len()
    {
        return true;
    }
    a.conditions.iter().zip(&b.conditions).any(|(x, y)| {
        x.type_ != y.type_
            || x.status != y.status
            || x.reason != y.reason
            || x.message != y.message
            || x.observed_generation != y.observed_generation
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(reason: CompileReason, path: &str) -> CompileError {
        CompileError {
            kind: "ApiRoute",
            namespace: "shop".into(),
            name: "orders".into(),
            path: path.into(),
            message: "bad".into(),
            reason,
        }
    }

    #[test]
    fn valid_and_acknowledged_by_all_is_programmed() {
        let s = desired(
            &ObjectReport {
                generation: Some(3),
                errors: vec![],
                proxies: (3, 3),
                keys: None,
                budgets: Vec::new(),
                streams: Vec::new(),
                stage: None,
            },
            None,
            "t0",
        );
        let find = |t: &str| s.conditions.iter().find(|c| c.type_ == t).unwrap().clone();
        assert_eq!(find(ACCEPTED).status, ConditionStatus::True);
        assert_eq!(find(RESOLVED_REFS).status, ConditionStatus::True);
        assert_eq!(find(PROGRAMMED).status, ConditionStatus::True);
        assert!(
            s.conditions
                .iter()
                .all(|c| c.observed_generation == Some(3))
        );
        assert_eq!(
            s.proxies,
            Some(ProxiesStatus {
                programmed: 3,
                connected: 3
            })
        );
    }

    #[test]
    fn pending_until_every_proxy_acknowledges() {
        let s = desired(
            &ObjectReport {
                generation: Some(1),
                errors: vec![],
                proxies: (2, 3),
                keys: None,
                budgets: Vec::new(),
                streams: Vec::new(),
                stage: None,
            },
            None,
            "t0",
        );
        let p = s.conditions.iter().find(|c| c.type_ == PROGRAMMED).unwrap();
        assert_eq!(
            (p.status, p.reason.as_str()),
            (ConditionStatus::False, "Pending")
        );
        assert!(p.message.contains("2 of 3"));
        let s = desired(
            &ObjectReport {
                generation: Some(1),
                errors: vec![],
                proxies: (0, 0),
                keys: None,
                budgets: Vec::new(),
                streams: Vec::new(),
                stage: None,
            },
            None,
            "t0",
        );
        assert_eq!(s.conditions[2].reason, "NoProxies");
    }

    #[test]
    fn spec_errors_reject_and_name_the_field() {
        let e = err(
            CompileReason::InvalidScope,
            "spec.rules[2].requiredScopes[0]",
        );
        let s = desired(
            &ObjectReport {
                generation: Some(1),
                errors: vec![&e],
                proxies: (1, 1),
                keys: None,
                budgets: Vec::new(),
                streams: Vec::new(),
                stage: None,
            },
            None,
            "t0",
        );
        let a = &s.conditions[0];
        assert_eq!(
            (a.status, a.reason.as_str()),
            (ConditionStatus::False, "InvalidScope")
        );
        assert!(a.message.contains("spec.rules[2].requiredScopes[0]"));
        assert_eq!(s.conditions[2].status, ConditionStatus::False);
    }

    #[test]
    fn ref_errors_are_resolved_refs_false() {
        let e = err(CompileReason::PolicyNotFound, "spec.policyRef.name");
        let s = desired(
            &ObjectReport {
                generation: Some(1),
                errors: vec![&e],
                proxies: (1, 1),
                keys: None,
                budgets: Vec::new(),
                streams: Vec::new(),
                stage: None,
            },
            None,
            "t0",
        );
        assert_eq!(s.conditions[0].status, ConditionStatus::True);
        assert_eq!(
            (s.conditions[1].status, s.conditions[1].reason.as_str()),
            (ConditionStatus::False, "PolicyNotFound")
        );
    }

    #[test]
    fn transition_times_survive_unchanged_statuses() {
        let first = desired(
            &ObjectReport {
                generation: Some(1),
                errors: vec![],
                proxies: (0, 1),
                keys: None,
                budgets: Vec::new(),
                streams: Vec::new(),
                stage: None,
            },
            None,
            "t0",
        );
        let second = desired(
            &ObjectReport {
                generation: Some(1),
                errors: vec![],
                proxies: (1, 1),
                keys: None,
                budgets: Vec::new(),
                streams: Vec::new(),
                stage: None,
            },
            Some(&first),
            "t1",
        );
        assert_eq!(second.conditions[0].last_transition_time, "t0");
        assert_eq!(second.conditions[2].last_transition_time, "t1");
        assert!(differs(Some(&first), &second));
        let third = desired(
            &ObjectReport {
                generation: Some(1),
                errors: vec![],
                proxies: (1, 1),
                keys: None,
                budgets: Vec::new(),
                streams: Vec::new(),
                stage: None,
            },
            Some(&second),
            "t2",
        );
        assert!(!differs(Some(&second), &third));
    }

    /// A route whose backend Service is missing: Gateway API says `ResolvedRefs=False`
    /// (reason `BackendNotFound`) while the route stays `Accepted=True`.
    #[test]
    fn a_missing_backend_service_is_resolved_refs_false_and_still_accepted() {
        // As the controller reports it when `backend.service` names no Service.
        let e = CompileError {
            kind: "ApiRoute",
            namespace: "shop".into(),
            name: "orders".into(),
            path: "spec.backend.service.name".into(),
            message: "Service shop/orders not found".into(),
            reason: CompileReason::BackendNotFound,
        };
        let s = desired(
            &ObjectReport {
                generation: Some(4),
                errors: vec![&e],
                proxies: (1, 1),
                keys: None,
                budgets: Vec::new(),
                streams: Vec::new(),
                stage: None,
            },
            None,
            "t0",
        );
        let find = |t: &str| s.conditions.iter().find(|c| c.type_ == t).unwrap();
        let accepted = find(ACCEPTED);
        assert_eq!(
            (accepted.status, accepted.reason.as_str()),
            (ConditionStatus::True, "Accepted")
        );
        let refs = find(RESOLVED_REFS);
        assert_eq!(
            (refs.status, refs.reason.as_str()),
            (ConditionStatus::False, "BackendNotFound")
        );
        assert!(refs.message.contains("Service shop/orders not found"));
        assert_eq!(find(PROGRAMMED).status, ConditionStatus::False);
    }

    /// Keys whose first fetch is under way: a reference not resolved yet, not a spec
    /// error.
    #[test]
    fn pending_keys_are_resolved_refs_false_and_still_accepted() {
        let e = err(CompileReason::KeysPending, "spec.issuers[0].jwks.uri");
        let s = desired(
            &ObjectReport {
                generation: Some(1),
                errors: vec![&e],
                proxies: (1, 1),
                keys: None,
                budgets: Vec::new(),
                streams: Vec::new(),
                stage: None,
            },
            None,
            "t0",
        );
        assert_eq!(s.conditions[0].status, ConditionStatus::True);
        assert_eq!(
            (s.conditions[1].status, s.conditions[1].reason.as_str()),
            (ConditionStatus::False, "KeysPending")
        );
    }
}
