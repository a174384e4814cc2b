//! The introspection side of one issuer (RFC 7662): the endpoint, its credentials from a
//! Secret, timeouts and cache lifetimes.

use std::hash::{Hash, Hasher};
use std::time::Duration;

use portcullis_api::{IntrospectionSpec, IssuerSpec, TokenPolicy, parse_duration};

use super::objects::{Named, SecretIndex, secret_value};
use super::policy::policy_error;
use super::{CompileError, CompileReason};
use crate::decision::IntrospectionEndpoint;

/// Key of the client id in an introspection credentials Secret.
pub const INTROSPECTION_CLIENT_ID_KEY: &str = "client-id";
/// Key of the client secret in an introspection credentials Secret.
pub const INTROSPECTION_CLIENT_SECRET_KEY: &str = "client-secret";

/// Whether a URL may be fetched: https, or plain http to a loopback address.
pub fn url_allowed(url: &str) -> bool {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return false;
    };
    match (uri.scheme_str(), uri.host()) {
        (Some("https"), Some(_)) => true,
        (Some("http"), Some(host)) => {
            host == "localhost"
                || host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        _ => false,
    }
}

/// A compiled introspection issuer, before its cache is attached.
pub(super) struct IntrospectionParts {
    pub(super) endpoint: IntrospectionEndpoint,
    pub(super) audiences: Vec<String>,
    /// Seconds an active verdict is reused (at least 1).
    pub(super) cache_ttl: i64,
    /// Seconds an inactive verdict is reused (at least 1).
    pub(super) negative_ttl: i64,
}

/// Compiles `spec.issuers[i].introspection` (`at` is `spec.issuers[i]`); the credentials
/// are hashed into `trust`.
// Compile errors are the cold path; boxing them would only obscure the code.
#[allow(clippy::result_large_err)]
pub(super) fn compile_introspection(
    p: &TokenPolicy,
    at: &str,
    iss: &IssuerSpec,
    intro: &IntrospectionSpec,
    secrets: &SecretIndex<'_>,
    trust: &mut impl Hasher,
) -> Result<IntrospectionParts, CompileError> {
    let ns = p.ns();
    if !url_allowed(&intro.endpoint) {
        return Err(policy_error(
            p,
            format!("{at}.introspection.endpoint"),
            CompileReason::Invalid,
            "the endpoint must be an https:// URL (plain http only for loopback addresses)",
        ));
    }
    let name = &intro.credentials_secret_ref.name;
    let secret = secrets.get(&(ns.clone(), name.clone())).ok_or_else(|| {
        policy_error(
            p,
            format!("{at}.introspection.credentialsSecretRef"),
            CompileReason::SecretNotFound,
            format!("Secret {ns}/{name} not found"),
        )
    })?;
    let mut creds = Vec::new();
    for key in [INTROSPECTION_CLIENT_ID_KEY, INTROSPECTION_CLIENT_SECRET_KEY] {
        let v = secret_value(secret, key)
            .and_then(|v| String::from_utf8(v).ok())
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                policy_error(
                    p,
                    format!("{at}.introspection.credentialsSecretRef"),
                    CompileReason::SecretNotFound,
                    format!("Secret {ns}/{name} has no non-empty UTF-8 key {key:?}"),
                )
            })?;
        v.hash(trust);
        creds.push(v);
    }
    let dur = |field: &str, v: &Option<String>, d: u64| -> Result<Duration, CompileError> {
        match v {
            None => Ok(Duration::from_secs(d)),
            Some(v) => parse_duration(v).map_err(|e| {
                policy_error(
                    p,
                    format!("{at}.introspection.{field}"),
                    CompileReason::InvalidDuration,
                    e,
                )
            }),
        }
    };
    let ttl = dur("cacheTTL", &intro.cache_ttl, 60)?;
    let negative = dur("negativeCacheTTL", &intro.negative_cache_ttl, 10)?;
    let timeout = dur("timeout", &intro.timeout, 2)?;
    let client_secret = creds.pop().unwrap_or_default();
    let client_id = creds.pop().unwrap_or_default();
    Ok(IntrospectionParts {
        endpoint: IntrospectionEndpoint {
            issuer: iss.issuer.as_str().into(),
            url: intro.endpoint.as_str().into(),
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            timeout: timeout.max(Duration::from_millis(1)),
        },
        audiences: iss.audiences.clone(),
        // The snapshot's clock counts seconds: sub-second TTLs round up to one second.
        cache_ttl: ttl.as_secs_f64().ceil().max(1.0) as i64,
        negative_ttl: negative.as_secs_f64().ceil().max(1.0) as i64,
    })
}
