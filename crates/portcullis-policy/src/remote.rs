//! Which key sets must be fetched from providers: the `jwks.uri` and `jwks.discovery`
//! sources of every policy, merged by URL. Pure: the fetching lives with the controller
//! and standalone mode, which both read this list.
//!
//! The compiler reads [`source_of`] and [`refresh_bounds`] from here; this module reads
//! only the leaf `compile::objects` (names, Secret values), never the compiler.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use portcullis_api::{JwksSource, TokenPolicy, parse_duration};

use crate::compile::objects::{Named, secret_value};

/// Default lower bound between fetches of one source (and between `kid`-triggered
/// refetches).
pub const DEFAULT_MIN_REFRESH: Duration = Duration::from_secs(60);
/// No source is fetched more often than this, whatever a policy says.
pub const MIN_REFRESH_FLOOR: Duration = Duration::from_secs(1);
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

/// One key source to fetch, shared by the policies that use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSource {
    /// What the source is known by (see [`source_key`]): the key of the fetched document
    /// in [`crate::CompileOptions::remote_jwks`], of the `RemoteKeys` source object, and of
    /// refetch requests.
    pub key: String,
    /// The URL fetched: a `jwks.uri`, or the issuer's discovery document.
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

/// Where one issuer's keys come from: the source key, the URL, the kind and the CA
/// bundle (resolved from this namespace's Secrets), or `None` for inline or Secret keys.
pub(crate) fn source_of(
    iss: &portcullis_api::IssuerSpec,
    ca_lookup: impl Fn(&str, &str) -> Option<Vec<u8>>,
) -> Option<(String, String, RemoteSourceKind, Option<Vec<u8>>)> {
    let jwks = iss.jwks.as_ref()?;
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
        return None;
    };
    let ca = jwks
        .ca_bundle_secret_ref
        .as_ref()
        .and_then(|r| ca_lookup(&r.name, &r.key));
    Some((source_key(&url, &kind, ca.as_deref()), url, kind, ca))
}

/// The key a source is fetched, stored and looked up under. Sources are shared only when
/// everything that decides what is trusted is the same: the URL, what it serves (a JWKS,
/// or a discovery document for one exact issuer) and the CA bundle. So one tenant's CA
/// bundle or issuer spelling never changes how another tenant's keys are fetched.
pub fn source_key(url: &str, kind: &RemoteSourceKind, ca: Option<&[u8]>) -> String {
    use sha2::{Digest, Sha256};
    match (kind, ca) {
        (RemoteSourceKind::Jwks, None) => url.to_owned(),
        _ => {
            let mut h = Sha256::new();
            if let RemoteSourceKind::Discovery { issuer } = kind {
                h.update(b"discovery\0");
                h.update(issuer.as_bytes());
            }
            h.update(b"\0ca\0");
            h.update(ca.unwrap_or_default());
            format!("{url}#{}", hex::encode(&h.finalize()[..8]))
        }
    }
}

/// The key sources the policies need, sorted by key. Bad durations fall back to the
/// defaults here; the compiler reports them against the policy.
pub fn remote_sources(policies: &[TokenPolicy], secrets: &[Secret]) -> Vec<RemoteSource> {
    let mut out: BTreeMap<String, RemoteSource> = BTreeMap::new();
    for p in policies {
        let ns = p.ns();
        let id = format!("{ns}/{}", p.name_any());
        for iss in &p.spec.issuers {
            let lookup = |name: &str, key: &str| {
                secrets
                    .iter()
                    .find(|s| s.ns() == ns && s.name_any() == name)
                    .and_then(|s| secret_value(s, key))
            };
            let Some((key, url, kind, ca)) = source_of(iss, lookup) else {
                continue;
            };
            let Some(jwks) = &iss.jwks else { continue };
            let (min, max) = refresh_bounds(jwks);
            let e = out.entry(key.clone()).or_insert_with(|| RemoteSource {
                key,
                url,
                kind,
                issuer: iss.issuer.clone(),
                min_refresh: min,
                max_refresh: max,
                ca_pem: ca.into_iter().collect(),
                policies: Vec::new(),
            });
            e.min_refresh = e.min_refresh.min(min);
            e.max_refresh = e.max_refresh.min(max).max(e.min_refresh);
            if !e.policies.contains(&id) {
                e.policies.push(id.clone());
            }
        }
        // Shared Signals transmitters: their keys, through their SSF configuration.
        for s in p
            .spec
            .identity_events
            .iter()
            .flat_map(|e| &e.shared_signals)
        {
            let (key, url, kind) = ssf_source(&s.transmitter);
            let e = out.entry(key.clone()).or_insert_with(|| RemoteSource {
                key,
                url,
                kind,
                issuer: s.transmitter.clone(),
                min_refresh: DEFAULT_MIN_REFRESH.max(MIN_REFRESH_FLOOR),
                max_refresh: DEFAULT_MAX_REFRESH,
                ca_pem: Vec::new(),
                policies: Vec::new(),
            });
            if !e.policies.contains(&id) {
                e.policies.push(id.clone());
            }
        }
    }
    out.into_values().collect()
}

/// The SSF configuration URL of a transmitter (SSF 1.0 section 7.1: the well-known path
/// goes after the host, before the issuer's own path).
pub fn ssf_configuration_url(transmitter: &str) -> String {
    let t = transmitter.trim_end_matches('/');
    match t
        .split_once("://")
        .and_then(|(s, rest)| rest.find('/').map(|i| (s, &rest[..i], &rest[i..])))
    {
        Some((scheme, host, path)) => {
            format!("{scheme}://{host}/.well-known/ssf-configuration{path}")
        }
        None => format!("{t}/.well-known/ssf-configuration"),
    }
}

/// The key source of a transmitter: its SSF configuration, read like an OpenID discovery
/// document (`issuer` must equal the transmitter, `jwks_uri` serves the keys).
pub(crate) fn ssf_source(transmitter: &str) -> (String, String, RemoteSourceKind) {
    let url = ssf_configuration_url(transmitter);
    let kind = RemoteSourceKind::Discovery {
        issuer: transmitter.to_owned(),
    };
    (source_key(&url, &kind, None), url, kind)
}

/// `minRefreshInterval` and `maxRefreshInterval` of a key source, with their defaults; the
/// minimum is at least [`MIN_REFRESH_FLOOR`] and the maximum at least the minimum, so no
/// policy can make a source be fetched in a tight loop.
pub(crate) fn refresh_bounds(jwks: &JwksSource) -> (Duration, Duration) {
    let dur = |v: &Option<String>, d: Duration| {
        v.as_deref()
            .and_then(|v| parse_duration(v).ok())
            .filter(|d| !d.is_zero())
            .unwrap_or(d)
    };
    let min = dur(&jwks.min_refresh_interval, DEFAULT_MIN_REFRESH).max(MIN_REFRESH_FLOOR);
    let max = dur(&jwks.max_refresh_interval, DEFAULT_MAX_REFRESH).max(min);
    (min, max)
}
