//! Portcullis custom resources: [`ApiRoute`] and [`TokenPolicy`] (group `portcullis.dev`,
//! version `v1alpha1`, namespaced), their status types, and the generated CRD YAML.
//!
//! The types carry their own validation: OpenAPI schema bounds plus CEL
//! (`x-kubernetes-validations`) rules with messages a person can act on, so the
//! Kubernetes API server rejects what it can at `kubectl apply` time. The same rules run
//! client-side (see [`validate`]) for manifests read from disk in standalone mode. The
//! reasons written to `status.conditions` are typed here too ([`CompileReason`]).
//!
//! No IO happens here; the enforcement core (`portcullis-policy`) turns these types into a
//! `Snapshot`.

// kube's `printcolumn(...)` attributes repeat `type_ = "string"`, which clippy mistakes
// for duplicated attributes.
#![allow(clippy::duplicated_attributes)]

pub mod events;
pub mod llm;
pub mod mcp;
pub mod push;
pub mod quota;
pub mod reason;
pub mod route;
pub mod status;
pub mod token_policy;
pub mod validate;

pub use events::{
    BackChannelLogoutSpec, IdentityEventsSpec, LogoutScope, SharedSignalsSpec, SsfEvent, SsfPoll,
    SsfPush, SsfSubjects, StreamStatus, SubjectFormat,
};
pub use llm::{
    LlmBackend, LlmCredential, LlmKeyHeader, LlmModel, LlmProvider, ObjectType, PromptMessage,
    PromptRole, PromptTemplate, PromptVariables, VariableSchema, VariableType,
};
pub use mcp::{McpRule, McpSpec, McpUpstreamCredential};
pub use quota::{
    BudgetCount, BudgetStatus, BudgetWindow, LlmBudgetSpec, QuotaKey, QuotaOverride, QuotaUse,
    RateLimitSpec, RatePeriod, WhenUnreachable,
};
pub use reason::{CompileReason, ConditionType};
pub use route::{
    ApiRoute, ApiRouteSpec, AuthMode, Backend, CatalogSpec, CatalogVisibility, EscapedSlashAction,
    Lifecycle, LifecycleStage, Owner, PathNormalization, PolicyRef, RouteMatch, RouteRule,
    RouteTimeouts, SemicolonAction, ServiceBackend, UnderscoreHeaders,
};
pub use status::{Condition, ConditionStatus, ProxiesStatus, ResourceStatus};
pub use token_policy::{
    ApiKeySelector, ApiKeysSpec, CertificateBinding, DpopMode, DpopNonceSpec, DpopSpec,
    IntrospectionSpec, IssuerSpec, Jwk, JwkSet, JwksSource, Revocation, RevocationSource,
    SecretKeyRef, SecretRef, TokenPolicy, TokenPolicySpec,
};

use kube::CustomResourceExt;

/// The API group of every Portcullis resource.
pub const GROUP: &str = "portcullis.dev";
/// The API version of every Portcullis resource.
pub const VERSION: &str = "v1alpha1";

/// JWS algorithms Portcullis can verify. Anything else (above all `none`) is refused.
pub const SUPPORTED_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA", "HS256",
    "HS384", "HS512",
];

/// Parses a Go-style positive duration (`30s`, `5m`, `1h30m`, `500ms`), the format every
/// duration field of these resources uses. Negative durations are refused.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    // kube's parser panics when the total overflows a Duration (found by the push_frame
    // fuzz target: a manifest or config stream saying `99999999999999999999h` crashed the
    // compiler). At most 64 characters and 15 digits in a row keep every sum far below
    // that (4 parts of 10^15 h are 1.4e19 s < 1.8e19 s).
    let longest_digits = s
        .split(|c: char| !c.is_ascii_digit())
        .map(str::len)
        .max()
        .unwrap_or(0);
    if s.len() > 64 || longest_digits > 15 {
        return Err(format!(
            "{s:?} is not a duration such as 30s, 5m or 1h (too long or too large)"
        ));
    }
    let d: kube::core::Duration = s
        .parse()
        .map_err(|e| format!("{s:?} is not a duration such as 30s, 5m or 1h ({e})"))?;
    if d.is_negative() {
        return Err(format!("{s:?} is negative; durations must be positive"));
    }
    Ok(d.into())
}

/// Renders both CRDs as one multi-document YAML stream, in a stable order
/// (`ApiRoute`, then `TokenPolicy`): the output of `portcullis crd` and the content of `crds/`.
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for (i, crd) in [ApiRoute::crd(), TokenPolicy::crd()].iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_yaml::to_string(crd)?);
    }
    Ok(yaml11_safe(&out))
}

/// Quotes mapping keys that YAML 1.1 readers (kubectl among them) take for booleans:
/// serde_yaml writes YAML 1.2, where `n:` is the string "n", but kubectl would read the
/// JWK property `n` as `false` and lose it.
fn yaml11_safe(yaml: &str) -> String {
    const BOOLISH: &[&str] = &[
        "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off",
        "OFF", "true", "True", "TRUE", "false", "False", "FALSE",
    ];
    let mut out = String::with_capacity(yaml.len() + 16);
    for line in yaml.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let (item, rest) = match trimmed.strip_prefix("- ") {
            Some(r) => ("- ", r),
            None => ("", trimmed),
        };
        match rest.split_once(':') {
            Some((key, after))
                if BOOLISH.contains(&key)
                    && (after.starts_with(' ') || after.starts_with('\n') || after.is_empty()) =>
            {
                out.push_str(indent);
                out.push_str(item);
                out.push('"');
                out.push_str(key);
                out.push_str("\":");
                out.push_str(after);
            }
            _ => out.push_str(line),
        }
    }
    out
}

/// One CRD per file, as `(file name, YAML)`: the layout of the `crds/` directory.
pub fn crd_files() -> Result<Vec<(&'static str, String)>, serde_yaml::Error> {
    Ok(vec![
        (
            "apiroutes.portcullis.dev.yaml",
            yaml11_safe(&serde_yaml::to_string(&ApiRoute::crd())?),
        ),
        (
            "tokenpolicies.portcullis.dev.yaml",
            yaml11_safe(&serde_yaml::to_string(&TokenPolicy::crd())?),
        ),
    ])
}

#[cfg(test)]
mod tests {
    /// Found by the push_frame fuzz target: kube's parser panicked on a duration whose
    /// total overflows; such input is now a clear error.
    #[test]
    fn huge_durations_are_errors_not_panics() {
        for s in [
            "99999999999999999999h",
            "999999999999999h999999999999999h999999999999999h999999999999999h9h",
            "1000000000000000h",
        ] {
            let err = super::parse_duration(s).unwrap_err();
            assert!(err.contains("too long or too large"), "{err}");
        }
        let max = "999999999999999h999999999999999h999999999999999h999999999999999h";
        assert!(super::parse_duration(max).is_ok());
        assert_eq!(
            super::parse_duration("1h30m").unwrap(),
            std::time::Duration::from_secs(5400)
        );
    }
}
