//! What `authorize` is asked ([`RequestParts`], with the request's [`Credentials`]) and
//! what it answers ([`Decision`]): allow, deny, or [`Pending`] on IO the caller performs
//! before it calls [`crate::Snapshot::resume`].
//!
//! Denials follow RFC 6750: `401` with `WWW-Authenticate: Bearer realm="portcullis",
//! error="invalid_token"`; a bare `Bearer realm="portcullis"` challenge when no credentials
//! were sent; `400 invalid_request` for a malformed or duplicated `Authorization` header,
//! a token in the query string or more than one credential; `403 insufficient_scope` with
//! the missing scopes.

use std::sync::Arc;

use http::{HeaderName, HeaderValue};

pub use crate::credentials::{AuthorizationHeader, Credentials, HeaderField};
pub use crate::principal::{Confirmation, Principal, PrincipalKind};
pub use crate::reason::DenyReason;
pub use crate::route::{RouteInfo, UnderscoreHeaderAction, Upstream};
use crate::token::{Fingerprint, TokenDigest};

/// The parts of a request `authorize` looks at. Borrowed, so building one allocates nothing.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    /// Method, e.g. `GET`.
    pub method: &'a str,
    /// Host (or `:authority`), with or without a port; compared case-insensitively.
    pub host: &'a str,
    /// Path, without the query string: canonical ([`crate::Snapshot::canonical_target`]).
    pub path: &'a str,
    /// The query string without `?`, if any.
    pub query: Option<&'a str>,
    /// The credentials the request carries, extracted once.
    pub credentials: Credentials<'a>,
    /// How the client reached the gateway (`https` or `http`): the scheme a DPoP proof's
    /// `htu` must name.
    pub scheme: &'a str,
    /// The MCP headers (`Mcp-Method`, `Mcp-Name`, `MCP-Protocol-Version`, `Origin`),
    /// read on MCP routes.
    pub mcp: crate::mcp::McpHeaders<'a>,
}

impl<'a> RequestParts<'a> {
    /// A request with no query and no credentials.
    pub fn new(method: &'a str, host: &'a str, path: &'a str) -> Self {
        Self {
            method,
            host,
            path,
            query: None,
            credentials: Credentials::default(),
            scheme: "https",
            mcp: crate::mcp::McpHeaders::default(),
        }
    }

    /// Sets one `Authorization` header value.
    pub fn with_authorization(mut self, value: &'a str) -> Self {
        self.credentials.authorization = AuthorizationHeader::One(value.as_bytes());
        self
    }

    /// Sets one API-key header (`name: value`, name in lower case).
    pub fn with_api_key_header(mut self, name: &'a str, value: &'a str) -> Self {
        self.credentials.api_key = Some((name, HeaderField::One(value.as_bytes())));
        self
    }

    /// Sets the MCP headers.
    pub fn with_mcp(mut self, mcp: crate::mcp::McpHeaders<'a>) -> Self {
        self.mcp = mcp;
        self
    }

    /// Sets the query string.
    pub fn with_query(mut self, query: &'a str) -> Self {
        self.query = Some(query);
        self
    }
}

/// The answer to one request.
#[derive(Debug, Clone)]
pub enum Decision<'s> {
    /// Forward the request.
    Allow(Allow<'s>),
    /// Answer it here.
    Deny(Deny<'s>),
    /// The decision needs IO first (see [`Need`]): the caller performs it and hands the
    /// outcome to [`crate::Snapshot::resume`] with the same [`RequestParts`]. The policy
    /// core stays pure; one pause shape covers key refetch and introspection.
    Pending(Pending<'s>),
}

impl Decision<'_> {
    /// The matched route, if any.
    pub fn route(&self) -> Option<&RouteInfo> {
        match self {
            Decision::Allow(a) => Some(a.route),
            Decision::Deny(d) => d.route,
            Decision::Pending(p) => Some(p.route),
        }
    }

    /// The fingerprint of the presented credential, if one was read.
    pub fn fingerprint(&self) -> Option<Fingerprint> {
        match self {
            Decision::Allow(a) => a.fingerprint,
            Decision::Deny(d) => d.fingerprint,
            Decision::Pending(p) => p.fingerprint,
        }
    }

    /// True when allowed.
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }
}

/// A decision waiting on IO.
#[derive(Debug, Clone)]
pub struct Pending<'s> {
    /// The route and rule matched.
    pub route: &'s RouteInfo,
    /// Fingerprint of the credential, for logs.
    pub fingerprint: Option<Fingerprint>,
    /// What is needed.
    pub need: Need<'s>,
}

/// The IO a [`Pending`] decision needs.
#[derive(Debug, Clone)]
pub enum Need<'s> {
    /// A token signed with a `kid` missing from keys that are fetched: ask for a refetch of
    /// the source, wait (bounded) for a snapshot that brings new keys, and resume on that
    /// snapshot with [`Answer::KeysRefreshed`], or on this one with
    /// [`Answer::KeysUnchanged`] when nothing new came.
    Keys(Refetch),
    /// An opaque token with no cached verdict: ask the introspection endpoint (RFC 7662)
    /// and resume with [`Answer::Introspection`].
    Introspection {
        /// The endpoint and credentials.
        endpoint: &'s IntrospectionEndpoint,
        /// The token's SHA-256: the cache key, and the key to collapse concurrent calls on.
        digest: TokenDigest,
    },
}

impl Need<'_> {
    /// A short label for metrics and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Need::Keys(_) => "keys",
            Need::Introspection { .. } => "introspection",
        }
    }
}

/// The outcome of the IO a [`Need`] asked for.
#[derive(Debug, Clone, Copy)]
pub enum Answer<'a> {
    /// A newer snapshot arrived after the refetch: decide again on it. Another unknown key
    /// is then final (no second wait).
    KeysRefreshed,
    /// The refetch brought nothing new (or could not be asked for, or the wait ran out):
    /// the key stays unknown.
    KeysUnchanged,
    /// The introspection endpoint's answer: `Err` when it could not be reached in time or
    /// answered garbage (503, not cached).
    Introspection(Result<&'a serde_json::Value, ()>),
}

/// An allowed request.
#[derive(Debug, Clone)]
pub struct Allow<'s> {
    /// The route and rule matched.
    pub route: &'s RouteInfo,
    /// Who is calling: a verified JWT, an introspected token or an API key; `None` on a
    /// public (`auth: none`) rule.
    pub principal: Option<Arc<Principal>>,
    /// Fingerprint of the credential, for logs.
    pub fingerprint: Option<Fingerprint>,
    /// Whether the token came from the verified-token cache.
    pub cache_hit: bool,
    /// The API-key header the route's policy reads keys from, if any: a credential header
    /// the proxy removes (with `Authorization`) unless the route passes credentials on.
    pub credential_header: Option<&'s HeaderName>,
    /// A DPoP nonce to send in `DPoP-Nonce` with the answer (RFC 9449 section 9: the
    /// proof's nonce is about to expire).
    pub dpop_nonce: Option<String>,
}

impl Allow<'_> {
    /// Headers to add for the upstream (from `forwardClaims`).
    pub fn headers(&self) -> &[(HeaderName, HeaderValue)] {
        self.principal
            .as_deref()
            .map(|t| t.forward_headers.as_slice())
            .unwrap_or(&[])
    }

    /// The upstream to forward to.
    pub fn upstream(&self) -> &Upstream {
        &self.route.upstream
    }
}

/// A refused request.
#[derive(Debug, Clone)]
pub struct Deny<'s> {
    /// Why.
    pub reason: DenyReason,
    /// The route matched before the refusal, if any.
    pub route: Option<&'s RouteInfo>,
    /// Fingerprint of the token, if one was read.
    pub fingerprint: Option<Fingerprint>,
    /// Whether the token came from the verified-token cache.
    pub cache_hit: bool,
    /// For `insufficient_scope`: the scopes that were missing, space-separated.
    pub missing_scopes: Option<String>,
    /// For a DPoP refusal: the algorithms the issuer accepts for proofs (the challenge's
    /// `algs`, RFC 9449 section 7.1); the defaults when unset.
    pub dpop_algs: Option<std::sync::Arc<str>>,
    /// For `use_dpop_nonce`: the nonce to send in `DPoP-Nonce` (RFC 9449 section 9).
    pub dpop_nonce: Option<String>,
}

/// A key source worth fetching again: a trusted issuer signed with a `kid` that is not in
/// the key set fetched from `url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refetch {
    /// The key source, by its key ([`crate::RemoteSource::key`]: the `jwks.uri`, or the
    /// discovery URL with a suffix naming the issuer and CA bundle).
    pub url: Arc<str>,
    /// The issuer, for metrics and logs.
    pub issuer: Arc<str>,
    /// At most one refetch per this window (the policy's `minRefreshInterval`).
    pub min_interval: std::time::Duration,
}

/// Where and how to introspect a policy's opaque tokens.
#[derive(Clone)]
pub struct IntrospectionEndpoint {
    /// The issuer the answers must come from.
    pub issuer: Arc<str>,
    /// The endpoint URL.
    pub url: Arc<str>,
    /// `client_secret_basic` client id.
    pub client_id: Arc<str>,
    /// `client_secret_basic` client secret.
    pub client_secret: Arc<str>,
    /// Time allowed for one call.
    pub timeout: std::time::Duration,
}

impl std::fmt::Debug for IntrospectionEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntrospectionEndpoint")
            .field("issuer", &self.issuer)
            .field("url", &self.url)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .finish()
    }
}

impl Deny<'_> {
    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        self.reason.status()
    }

    /// The `WWW-Authenticate` header value, if the status calls for one.
    pub fn www_authenticate(&self) -> Option<String> {
        if matches!(
            self.reason,
            DenyReason::NoRoute
                | DenyReason::IntrospectionUnavailable
                | DenyReason::McpOrigin
                | DenyReason::McpDenied
                | DenyReason::CleartextCredentials
                | DenyReason::Retired
        ) {
            return None;
        }
        let mut v = if self.reason.dpop_challenge() {
            // RFC 9449 section 7.1: a DPoP challenge, with the algorithms proofs may use.
            format!(
                "DPoP realm=\"portcullis\", algs=\"{}\"",
                self.dpop_algs
                    .as_deref()
                    .unwrap_or(crate::dpop::DEFAULT_ALGS_HEADER)
            )
        } else {
            String::from("Bearer realm=\"portcullis\"")
        };
        // MCP: where the client finds the authorization servers (RFC 9728 section 5.1).
        if let Some(mcp) = self.route.and_then(|r| r.mcp.as_ref()) {
            v.push_str(", resource_metadata=\"");
            v.push_str(&mcp.metadata_url);
            v.push('"');
        }
        if let Some(code) = self.reason.error_code() {
            v.push_str(", error=\"");
            v.push_str(code);
            v.push_str("\", error_description=\"");
            v.push_str(self.reason.description());
            v.push('"');
        }
        if let Some(scopes) = &self.missing_scopes {
            v.push_str(", scope=\"");
            v.push_str(scopes);
            v.push('"');
        }
        Some(v)
    }
}
