//! Builders for the objects tests feed the compiler: `ApiRoute`, `TokenPolicy` and the
//! Secrets of API keys, written the way a user writes them (JSON through the CRD types'
//! own deserializers, so a fixture can never hold what a manifest could not).
//!
//! ```
//! use portcullis_testkit::fixtures::{PolicyBuilder, RouteBuilder};
//! let policy = PolicyBuilder::new("shop", "default").api_keys(&[("team", "payments")]).build();
//! let route = RouteBuilder::new("shop", "orders")
//!     .host("api.example.com")
//!     .policy("default")
//!     .backend_url("http://127.0.0.1:9000")
//!     .prefix("/orders", &["GET"], &["orders:read"])
//!     .public("/health")
//!     .build();
//! assert_eq!(route.spec.rules.len(), 2);
//! assert!(policy.spec.api_keys.is_some());
//! ```

use k8s_openapi::api::core::v1::Secret;
use portcullis_api::{ApiRoute, TokenPolicy};
use serde_json::{Value, json};

fn meta(namespace: &str, name: &str) -> Value {
    json!({"name": name, "namespace": namespace})
}

/// An `ApiRoute`, rule by rule.
#[derive(Debug, Clone)]
pub struct RouteBuilder {
    doc: Value,
}

impl RouteBuilder {
    /// A route `namespace/name` with no hosts, rules or backend yet, naming policy `default`.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            doc: json!({
                "apiVersion": "portcullis.dev/v1alpha1", "kind": "ApiRoute",
                "metadata": meta(namespace, name),
                "spec": {"hosts": [], "policyRef": {"name": "default"}, "rules": [],
                         "backend": {"url": "http://127.0.0.1:9000"}},
            }),
        }
    }

    /// Adds a host.
    pub fn host(mut self, host: &str) -> Self {
        self.doc["spec"]["hosts"]
            .as_array_mut()
            .unwrap()
            .push(json!(host));
        self
    }

    /// Names the TokenPolicy.
    pub fn policy(mut self, name: &str) -> Self {
        self.doc["spec"]["policyRef"] = json!({"name": name});
        self
    }

    /// The backend URL (standalone mode).
    pub fn backend_url(mut self, url: &str) -> Self {
        self.doc["spec"]["backend"] = json!({"url": url});
        self
    }

    /// Adds a rule as written in YAML (`{"match": ..., "requiredScopes": ...}`).
    pub fn rule(mut self, rule: Value) -> Self {
        self.doc["spec"]["rules"].as_array_mut().unwrap().push(rule);
        self
    }

    /// Adds a `pathPrefix` rule for `methods` (all when empty) needing every scope.
    pub fn prefix(self, prefix: &str, methods: &[&str], scopes: &[&str]) -> Self {
        let mut m = json!({"pathPrefix": prefix});
        if !methods.is_empty() {
            m["methods"] = json!(methods);
        }
        let mut rule = json!({"match": m});
        if !scopes.is_empty() {
            rule["requiredScopes"] = json!(scopes);
        }
        self.rule(rule)
    }

    /// Adds a public (`auth: none`) exact-path rule.
    pub fn public(self, path: &str) -> Self {
        self.rule(json!({"match": {"path": path}, "auth": "none"}))
    }

    /// Sets any `spec` field, e.g. `("timeouts", json!({"connect": "200ms"}))`.
    pub fn spec(mut self, field: &str, value: Value) -> Self {
        self.doc["spec"][field] = value;
        self
    }

    /// The route.
    pub fn build(self) -> ApiRoute {
        serde_json::from_value(self.doc).expect("a valid ApiRoute")
    }
}

/// A `TokenPolicy`, issuer by issuer.
#[derive(Debug, Clone)]
pub struct PolicyBuilder {
    doc: Value,
}

impl PolicyBuilder {
    /// A policy `namespace/name` with no issuers yet.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            doc: json!({
                "apiVersion": "portcullis.dev/v1alpha1", "kind": "TokenPolicy",
                "metadata": meta(namespace, name),
                "spec": {"issuers": []},
            }),
        }
    }

    /// Trusts `issuer` for `audience` with `algorithms` and an inline JWKS.
    pub fn issuer(
        mut self,
        issuer: &str,
        audience: &str,
        algorithms: &[&str],
        jwks: Value,
    ) -> Self {
        self.doc["spec"]["issuers"]
            .as_array_mut()
            .unwrap()
            .push(json!({
                "issuer": issuer, "audiences": [audience], "algorithms": algorithms,
                "jwks": {"inline": jwks},
            }));
        self
    }

    /// Accepts the API keys of Secrets carrying all of `labels` (and the portcullis
    /// label), in the default header.
    pub fn api_keys(mut self, labels: &[(&str, &str)]) -> Self {
        let match_labels: serde_json::Map<String, Value> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect();
        self.doc["spec"]["apiKeys"] = json!({"selector": {"matchLabels": match_labels}});
        self
    }

    /// Forwards `claim` to the upstream as `header`.
    pub fn forward(mut self, claim: &str, header: &str) -> Self {
        if self.doc["spec"]["forwardClaims"].is_null() {
            self.doc["spec"]["forwardClaims"] = json!({});
        }
        self.doc["spec"]["forwardClaims"][claim] = json!(header);
        self
    }

    /// Adds a revocation as written in YAML, e.g. `json!({"apiKeyId": id})`.
    pub fn revoke(mut self, revocation: Value) -> Self {
        if self.doc["spec"]["revocations"].is_null() {
            self.doc["spec"]["revocations"] = json!([]);
        }
        self.doc["spec"]["revocations"]
            .as_array_mut()
            .unwrap()
            .push(revocation);
        self
    }

    /// Sets a spec field as written in YAML, e.g. `("rateLimits", json!([...]))`.
    pub fn spec(mut self, field: &str, value: Value) -> Self {
        self.doc["spec"][field] = value;
        self
    }

    /// The policy.
    pub fn build(self) -> TokenPolicy {
        serde_json::from_value(self.doc).expect("a valid TokenPolicy")
    }
}

/// The Secret `portcullis apikey create` writes for `key`: its id, its SHA-256 (computed
/// by the caller, e.g. `portcullis_policy::token_digest(key).to_hex()`), the consumer and
/// scopes, labelled `portcullis.dev/api-key: "true"` plus `labels`. `extra` adds or
/// replaces data keys (`expiresAt`, `createdAt`, or broken values).
pub fn api_key_secret(
    namespace: &str,
    name: &str,
    (key_id, sha256_hex): (&str, &str),
    consumer: &str,
    scopes: &str,
    labels: &[(&str, &str)],
    extra: Value,
) -> Secret {
    let mut all_labels = serde_json::Map::new();
    all_labels.insert("portcullis.dev/api-key".into(), json!("true"));
    for (k, v) in labels {
        all_labels.insert((*k).to_owned(), json!(v));
    }
    let mut data = json!({
        "keyId": key_id, "sha256": sha256_hex, "consumer": consumer, "scopes": scopes,
    });
    if let Value::Object(extra) = extra {
        for (k, v) in extra {
            data[k] = v;
        }
    }
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "type": "portcullis.dev/api-key",
        "metadata": {"name": name, "namespace": namespace, "labels": all_labels},
        "stringData": data,
    }))
    .expect("a valid Secret")
}
