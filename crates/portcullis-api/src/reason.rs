//! Why an ApiRoute or TokenPolicy is not (fully) in force: the CamelCase reasons written to
//! `status.conditions[].reason`, and which condition each belongs to.
//!
//! They live with the CRD types, as Gateway API keeps `RouteReasonBackendNotFound` next to
//! `HTTPRoute`: they are part of what a user reads in `kubectl get -o yaml`, in Warning
//! Events and in metric labels, so their spelling is API. The compiler
//! (`portcullis-policy`) produces them; the controller and standalone mode report them.
//!
//! ```text
//!  Accepted=False      the object's own spec is wrong     Invalid, InvalidKeys, ...
//!  Accepted=True       but a rule was dropped             RuleConflict
//!  ResolvedRefs=False  something it refers to is missing  PolicyNotFound, SecretNotFound,
//!                      or not usable (yet)                BackendNotFound, KeysPending, ...
//! ```

use std::fmt;
use std::str::FromStr;

/// The status condition a [`CompileReason`] is reported under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConditionType {
    /// `Accepted`: whether the object's own spec is valid.
    Accepted,
    /// `ResolvedRefs`: whether everything the object refers to (a policy, a Secret, a
    /// Service, a fetched key set) exists and is usable. Gateway API: a reference that
    /// cannot be resolved is `ResolvedRefs=False` while the object stays `Accepted=True`.
    ResolvedRefs,
}

impl ConditionType {
    /// The condition type as written to status: `Accepted` or `ResolvedRefs`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ConditionType::Accepted => "Accepted",
            ConditionType::ResolvedRefs => "ResolvedRefs",
        }
    }
}

impl fmt::Display for ConditionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an object, or part of it, was left out of the configuration in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CompileReason {
    /// The spec breaks a rule (a CRD CEL rule or one of the compiler's own checks).
    Invalid,
    /// An algorithm is unknown, `none`, or does not fit the key source.
    InvalidAlgorithm,
    /// The backend is not a usable upstream (scheme, host, query).
    InvalidBackend,
    /// A duration field is not a positive duration such as `30s`.
    InvalidDuration,
    /// A key set (inline, from a Secret or fetched) holds no usable key.
    InvalidKeys,
    /// A revocation entry is malformed.
    InvalidRevocation,
    /// A scope is not one word of printable characters.
    InvalidScope,
    /// A rule's match is already claimed by an older route: that rule is dropped, the
    /// route serves its other rules (reported under `Accepted=True`).
    RuleConflict,
    /// The referenced TokenPolicy does not exist.
    PolicyNotFound,
    /// The referenced TokenPolicy exists but failed to compile.
    PolicyNotReady,
    /// The referenced TokenPolicy waits for a key set whose first fetch is under way: a
    /// wait, not a fault.
    PolicyPending,
    /// A referenced Secret, or a key in it, does not exist.
    SecretNotFound,
    /// The Service named by `backend.service` does not exist.
    BackendNotFound,
    /// No key set from a `jwks.uri` or discovery source is at hand, and none is being
    /// fetched for the first time (the fetch failed, or nothing fetches it).
    KeysNotFetched,
    /// The first fetch of a `jwks.uri` or discovery key set is under way: a wait, not a
    /// fault.
    KeysPending,
}

impl CompileReason {
    /// Every reason, e.g. to pre-register metric label values.
    pub const ALL: [CompileReason; 15] = [
        CompileReason::Invalid,
        CompileReason::InvalidAlgorithm,
        CompileReason::InvalidBackend,
        CompileReason::InvalidDuration,
        CompileReason::InvalidKeys,
        CompileReason::InvalidRevocation,
        CompileReason::InvalidScope,
        CompileReason::RuleConflict,
        CompileReason::PolicyNotFound,
        CompileReason::PolicyNotReady,
        CompileReason::PolicyPending,
        CompileReason::SecretNotFound,
        CompileReason::BackendNotFound,
        CompileReason::KeysNotFetched,
        CompileReason::KeysPending,
    ];

    /// The CamelCase reason written to status conditions, Events and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            CompileReason::Invalid => "Invalid",
            CompileReason::InvalidAlgorithm => "InvalidAlgorithm",
            CompileReason::InvalidBackend => "InvalidBackend",
            CompileReason::InvalidDuration => "InvalidDuration",
            CompileReason::InvalidKeys => "InvalidKeys",
            CompileReason::InvalidRevocation => "InvalidRevocation",
            CompileReason::InvalidScope => "InvalidScope",
            CompileReason::RuleConflict => "RuleConflict",
            CompileReason::PolicyNotFound => "PolicyNotFound",
            CompileReason::PolicyNotReady => "PolicyNotReady",
            CompileReason::PolicyPending => "PolicyPending",
            CompileReason::SecretNotFound => "SecretNotFound",
            CompileReason::BackendNotFound => "BackendNotFound",
            CompileReason::KeysNotFetched => "KeysNotFetched",
            CompileReason::KeysPending => "KeysPending",
        }
    }

    /// The condition this reason is reported under: a missing or unusable reference is
    /// `ResolvedRefs`, anything about the object's own spec is `Accepted`.
    pub const fn condition(self) -> ConditionType {
        match self {
            CompileReason::Invalid
            | CompileReason::InvalidAlgorithm
            | CompileReason::InvalidBackend
            | CompileReason::InvalidDuration
            | CompileReason::InvalidKeys
            | CompileReason::InvalidRevocation
            | CompileReason::InvalidScope
            | CompileReason::RuleConflict => ConditionType::Accepted,
            CompileReason::PolicyNotFound
            | CompileReason::PolicyNotReady
            | CompileReason::PolicyPending
            | CompileReason::SecretNotFound
            | CompileReason::BackendNotFound
            | CompileReason::KeysNotFetched
            | CompileReason::KeysPending => ConditionType::ResolvedRefs,
        }
    }

    /// Whether this is a wait that ends by itself (a first key fetch under way) rather
    /// than a fault someone must fix: worth an INFO line, not an ERROR.
    pub const fn is_pending(self) -> bool {
        matches!(
            self,
            CompileReason::KeysPending | CompileReason::PolicyPending
        )
    }
}

impl fmt::Display for CompileReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not one of the [`CompileReason`]s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a compile reason")]
pub struct UnknownReason(pub String);

impl FromStr for CompileReason {
    type Err = UnknownReason;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CompileReason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownReason(s.to_owned()))
    }
}

impl From<CompileReason> for &'static str {
    fn from(r: CompileReason) -> Self {
        r.as_str()
    }
}

impl From<CompileReason> for String {
    fn from(r: CompileReason) -> Self {
        r.as_str().to_owned()
    }
}

/// Compares with the status string, as `http::Method` does with `&str`.
impl PartialEq<str> for CompileReason {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

/// Compares with the status string, as `http::Method` does with `&str`.
impl PartialEq<&str> for CompileReason {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_round_trip_and_are_camel_case() {
        for r in CompileReason::ALL {
            assert_eq!(r.as_str().parse::<CompileReason>(), Ok(r));
            assert_eq!(r.to_string(), r.as_str());
            assert!(r.as_str().starts_with(|c: char| c.is_ascii_uppercase()));
            assert!(r.as_str().chars().all(|c| c.is_ascii_alphabetic()));
        }
        assert!("invalid".parse::<CompileReason>().is_err());
    }

    #[test]
    fn missing_references_are_resolved_refs() {
        for r in [
            CompileReason::PolicyNotFound,
            CompileReason::PolicyNotReady,
            CompileReason::PolicyPending,
            CompileReason::SecretNotFound,
            CompileReason::BackendNotFound,
            CompileReason::KeysNotFetched,
            CompileReason::KeysPending,
        ] {
            assert_eq!(r.condition(), ConditionType::ResolvedRefs, "{r}");
        }
        assert_eq!(
            CompileReason::InvalidKeys.condition(),
            ConditionType::Accepted
        );
        assert_eq!(
            CompileReason::RuleConflict.condition(),
            ConditionType::Accepted
        );
    }

    #[test]
    fn only_first_fetches_are_waits() {
        let waits: Vec<_> = CompileReason::ALL
            .into_iter()
            .filter(|r| r.is_pending())
            .collect();
        assert_eq!(
            waits,
            [CompileReason::PolicyPending, CompileReason::KeysPending]
        );
    }
}
