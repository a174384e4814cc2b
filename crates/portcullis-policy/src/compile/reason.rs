//! [`CompileError`]: one problem with one object, naming the field at fault and a typed
//! [`CompileReason`] that says which status condition it belongs to.

pub use portcullis_api::{CompileReason, ConditionType};

/// A problem with one object, naming the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {namespace}/{name}: {path}: {message}")]
pub struct CompileError {
    /// `ApiRoute` or `TokenPolicy`.
    pub kind: &'static str,
    /// Namespace of the object.
    pub namespace: String,
    /// Name of the object.
    pub name: String,
    /// The field path, e.g. `spec.rules[2].requiredScopes[0]`.
    pub path: String,
    /// What is wrong, and what to do.
    pub message: String,
    /// Why, for status conditions, Events and metrics (`reason.as_str()` is the CamelCase
    /// string, e.g. `InvalidKeys`, `PolicyNotFound`).
    pub reason: CompileReason,
}

impl CompileError {
    /// Whether the error is about a missing or unusable reference (a `ResolvedRefs`
    /// problem) rather than the object's own spec (an `Accepted` problem).
    pub fn is_ref_error(&self) -> bool {
        self.reason.condition() == ConditionType::ResolvedRefs
    }

    /// Whether the error is a wait that ends by itself (a key set whose first fetch is
    /// under way) rather than a fault: see [`CompileReason::is_pending`].
    pub fn is_pending(&self) -> bool {
        self.reason.is_pending()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(reason: CompileReason) -> CompileError {
        CompileError {
            kind: "ApiRoute",
            namespace: "shop".into(),
            name: "orders".into(),
            path: "spec.backend.service.name".into(),
            message: "Service shop/orders not found".into(),
            reason,
        }
    }

    /// A route whose Service is missing has an unresolved reference, not an invalid spec
    /// (Gateway API: `ResolvedRefs=False`, `Accepted=True`).
    #[test]
    fn backend_not_found_is_a_resolved_refs_reason() {
        assert_eq!(
            CompileReason::BackendNotFound.condition(),
            ConditionType::ResolvedRefs
        );
        let e = error(CompileReason::BackendNotFound);
        assert!(e.is_ref_error());
        assert!(!e.is_pending());
        assert_eq!(e.reason.as_str(), "BackendNotFound");
    }

    #[test]
    fn ref_errors_follow_the_condition() {
        for r in CompileReason::ALL {
            assert_eq!(
                error(r).is_ref_error(),
                r.condition() == ConditionType::ResolvedRefs,
                "{r}"
            );
        }
        // The reasons `is_ref_error` listed by name before it was typed.
        for r in [
            "PolicyNotFound",
            "PolicyNotReady",
            "SecretNotFound",
            "KeysNotFetched",
        ] {
            assert!(error(r.parse().unwrap()).is_ref_error(), "{r}");
        }
        assert!(!error(CompileReason::InvalidScope).is_ref_error());
        assert!(!error(CompileReason::RuleConflict).is_ref_error());
    }

    #[test]
    fn first_fetches_are_pending_ref_errors() {
        for r in [CompileReason::KeysPending, CompileReason::PolicyPending] {
            let e = error(r);
            assert!(e.is_pending() && e.is_ref_error(), "{r}");
        }
        assert!(!error(CompileReason::KeysNotFetched).is_pending());
    }
}
