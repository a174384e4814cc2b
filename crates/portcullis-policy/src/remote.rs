//! Which key sets must be fetched from providers: the `jwks.uri` and `jwks.discovery`
//! sources of every policy, merged by URL. Pure: the fetching lives with the controller
//! and standalone mode, which both read this list.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use portcullis_api::TokenPolicy;

/// Default lower bound between fetches of one source (and between `kid`-triggered
/// refetches).
pub const DEFAULT_MIN_REFRESH: Duration = Duration::from_secs(60);
/// Default upper bound between fetches of one source.
pub const DEFAULT_MAX_REFRESH: Duration = Duration::from_secs(3600);

/// What kind of document the source URL serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteSourceKind {
    /// A JWKS document.
    Jwks,
    /// An OpenID configuration whose `issuer` must equal this and whose `jwks_uri` serves
    /// the keys.
    Discovery {
        /// The expected issuer.
        issuer: String,
    },
}

/// One key source to fetch, merged across the policies that use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSource {
    /// The URL: a `jwks.uri`, or the issuer's discovery document. Also the key of the
    /// fetched document in [`crate::CompileOptions::remote_jwks`].
    pub url: String,
    /// What it serves.
    pub kind: RemoteSourceKind,
    /// An issuer using it, for metric labels.
    pub issuer: String,
    /// The smallest `minRefreshInterval` among its users.
    pub min_refresh: Duration,
    /// The smallest `maxRefreshInterval` among its users (never below `min_refresh`).
    pub max_refresh: Duration,
    /// PEM CA certificates trusted besides the system roots (from `caBundleSecretRef`).
    pub ca_pem: Vec<Vec<u8>>,
    /// The policies (`namespace/name`) using it.
    pub policies: Vec<String>,
}

/// The discovery document URL of an issuer (OpenID Connect Discovery 1.0, section 4).
pub fn discovery_url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

/// The key sources the policies need, sorted by URL. Bad durations fall back to the
/// defaults here; the compiler reports them against the policy.
pub fn remote_sources(policies: &[TokenPolicy], secrets: &[Secret]) -> Vec<RemoteSource> {
    let mut out: BTreeMap<String, RemoteSource> = BTreeMap::new();
    for p in policies {
        let ns = p.namespace().unwrap_or_default();
        let id = format!("{ns}/{}", p.name_any());
        for iss in &p.spec.issuers {
            let Some(jwks) = &iss.jwks else { continue };
            let (url, kind) = if let Some(uri) = &jwks.uri {
                (uri.clone(), RemoteSourceKind::Jwks)
            } else if jwks.discovery == Some(true) {
                (
                    discovery_url(&iss.issuer),
                    RemoteSourceKind::Discovery {
                        issuer: iss.issuer.clone(),
                    },
                )
            } else {
                continue;
            };
            let (min, max) = crate::compile::refresh_bounds(jwks);
            let ca = jwks.ca_bundle_secret_ref.as_ref().and_then(|r| {
                secrets
                    .iter()
                    .find(|s| s.namespace().unwrap_or_default() == ns && s.name_any() == r.name)
                    .and_then(|s| crate::compile::secret_value(s, &r.key))
            });
            let e = out.entry(url.clone()).or_insert_with(|| RemoteSource {
                url,
                kind,
                issuer: iss.issuer.clone(),
                min_refresh: min,
                max_refresh: max,
                ca_pem: Vec::new(),
                policies: Vec::new(),
            });
            e.min_refresh = e.min_refresh.min(min);
            e.max_refresh = e.max_refresh.min(max).max(e.min_refresh);
            if let Some(ca) = ca
                && !e.ca_pem.contains(&ca)
            {
                e.ca_pem.push(ca);
            }
            if !e.policies.contains(&id) {
                e.policies.push(id.clone());
            }
        }
    }
    out.into_values().collect()
}
