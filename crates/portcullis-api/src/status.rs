//! Status shared by both kinds, in the Gateway API style: `Accepted`, `ResolvedRefs` and
//! `Programmed` conditions, each with `observedGeneration` and a CamelCase reason.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Observed state of an ApiRoute or TokenPolicy, written by the controller.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ResourceStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Conditions: `Accepted` (the spec is valid), `ResolvedRefs` (every referenced
    /// policy, Secret and Service was found) and `Programmed` (every connected proxy
    /// enforces this generation).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// How many connected proxies enforce this generation, out of how many are connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxies: Option<ProxiesStatus>,

    /// TokenPolicy only: each LLM budget's use in its current window, from the
    /// controller's ledger.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub budgets: Vec<crate::quota::BudgetStatus>,

    /// TokenPolicy only: each Shared Signals stream's delivery and verification.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub streams: Vec<crate::events::StreamStatus>,

    /// ApiRoute only: the lifecycle stage in effect (`Draft`, `Published`, `Deprecated`
    /// or `Retired`; `Retired` once `sunsetAt` has passed, whatever `spec.lifecycle.stage`
    /// says).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
}

/// A status condition, as in Kubernetes `metav1.Condition`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type: `Accepted`, `ResolvedRefs` or `Programmed`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: ConditionStatus,
    /// A CamelCase reason for the condition's last transition (e.g. `InvalidAlgorithm`).
    pub reason: String,
    /// A human-readable message naming the field at fault, if any.
    #[serde(default)]
    pub message: String,
    /// The `metadata.generation` the condition was set for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the condition last changed status, RFC 3339.
    pub last_transition_time: String,
}

/// The status of a condition.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// It is not known yet.
    Unknown,
}

/// Proxy acknowledgement counts for a resource generation.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ProxiesStatus {
    /// Proxies that have applied a snapshot containing this generation.
    pub programmed: i32,
    /// Proxies connected to the controller.
    pub connected: i32,
}
