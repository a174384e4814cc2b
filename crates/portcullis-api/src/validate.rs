//! Client-side validation with the CRDs' own CEL rules.
//!
//! The API server runs the `x-kubernetes-validations` rules at `kubectl apply` time.
//! Standalone mode reads manifests from disk with no API server in between, so it runs
//! the very same rules here (through kube's CEL evaluator) and reports the same messages.
//!
//! This is the only place CEL runs: the compiler (`portcullis-policy`) has no CEL
//! evaluator and no kube dependency. Standalone mode hands [`cel_errors`] to it as the
//! checks to run before its own (`CompileOptions::with_spec_rules`).

use std::sync::OnceLock;

use kube::CustomResourceExt;
use kube::core::cel::Validator;
use serde::Serialize;
use serde_json::Value;

use crate::{ApiRoute, TokenPolicy};

/// A rule the object broke: where, and the rule's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// JSON path of the field, e.g. `spec.rules[0]`.
    pub path: String,
    /// The message the CRD gives for the rule.
    pub message: String,
}

impl std::fmt::Display for FieldViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for FieldViolation {}

/// A custom resource whose CRD carries CEL rules that can be run client-side.
pub trait CelRules: Serialize {
    /// The CRD's openAPIV3Schema as JSON, built once.
    fn schema() -> &'static Value;
}

impl CelRules for ApiRoute {
    fn schema() -> &'static Value {
        route_schema()
    }
}

impl CelRules for TokenPolicy {
    fn schema() -> &'static Value {
        policy_schema()
    }
}

/// Runs the CRD's CEL rules against `object`: the rules, and messages, the API server
/// applies at `kubectl apply` time. Each violation names its field
/// (`spec.rules[0].requiredScopes`); none means the object passes.
pub fn cel_errors<K: CelRules>(object: &K) -> Vec<FieldViolation> {
    run(K::schema(), object)
}

/// The openAPIV3Schema of a CRD as JSON.
pub fn crd_schema<K: CustomResourceExt>() -> Value {
    let crd = K::crd();
    crd.spec
        .versions
        .first()
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .and_then(|s| serde_json::to_value(s).ok())
        .unwrap_or(Value::Null)
}

fn route_schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(crd_schema::<ApiRoute>)
}

fn policy_schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(crd_schema::<TokenPolicy>)
}

/// Runs the ApiRoute CEL rules against `route` (the same as [`cel_errors`]).
pub fn api_route(route: &ApiRoute) -> Vec<FieldViolation> {
    cel_errors(route)
}

/// Runs the TokenPolicy CEL rules against `policy` (the same as [`cel_errors`]).
pub fn token_policy(policy: &TokenPolicy) -> Vec<FieldViolation> {
    cel_errors(policy)
}

fn run<T: Serialize>(schema: &Value, object: &T) -> Vec<FieldViolation> {
    let Ok(value) = serde_json::to_value(object) else {
        return vec![FieldViolation {
            path: String::new(),
            message: "object cannot be represented as JSON".into(),
        }];
    };
    match Validator::new().validate(schema, &value, None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .into_vec()
            .into_iter()
            .map(|e| FieldViolation {
                path: e.field_path,
                message: e.message,
            })
            .collect(),
    }
}
