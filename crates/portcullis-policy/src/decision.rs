//! What `authorize` is asked ([`RequestParts`]) and what it answers ([`Decision`]).
//!
//! Denials follow RFC 6750: `401` with `WWW-Authenticate: Bearer realm="portcullis",
//! error="invalid_token"`; a bare `Bearer realm="portcullis"` challenge when no credentials
//! were sent; `400 invalid_request` for a malformed or duplicated `Authorization` header or
//! a token in the query string; `403 insufficient_scope` with the missing scopes.

use std::sync::Arc;

use http::{HeaderName, HeaderValue};

use crate::token::{Fingerprint, TokenDigest, VerifiedToken};

/// The `Authorization` header(s) of a request, as the proxy saw them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthorizationHeader<'a> {
    /// No `Authorization` header.
    #[default]
    Absent,
    /// Exactly one header, raw bytes.
    One(&'a [u8]),
    /// More than one `Authorization` header: always refused.
    Duplicated,
}

/// The parts of a request `authorize` looks at. Borrowed, so building one allocates nothing.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    /// Method, e.g. `GET`.
    pub method: &'a str,
    /// Host (or `:authority`), with or without a port; compared case-insensitively.
    pub host: &'a str,
    /// Path, without the query string.
    pub path: &'a str,
    /// The query string without `?`, if any.
    pub query: Option<&'a str>,
    /// The `Authorization` header.
    pub authorization: AuthorizationHeader<'a>,
}

impl<'a> RequestParts<'a> {
    /// A request with no query and no `Authorization` header.
    pub fn new(method: &'a str, host: &'a str, path: &'a str) -> Self {
        Self {
            method,
            host,
            path,
            query: None,
            authorization: AuthorizationHeader::Absent,
        }
    }

    /// Sets one `Authorization` header value.
    pub fn with_authorization(mut self, value: &'a str) -> Self {
        self.authorization = AuthorizationHeader::One(value.as_bytes());
        self
    }

    /// Sets the query string.
    pub fn with_query(mut self, query: &'a str) -> Self {
        self.query = Some(query);
        self
    }
}

/// Where allowed traffic goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// `http` or `https`.
    pub scheme: http::uri::Scheme,
    /// `host:port`. A Service backend becomes `name.namespace.svc:port`.
    pub authority: http::uri::Authority,
    /// A path prefix to put before the request path (from a `backend.url` with a path),
    /// without a trailing slash; empty for none.
    pub base_path: String,
}

/// The route and rule a request matched.
#[derive(Debug, Clone)]
pub struct RouteInfo {
    /// `namespace/name` of the ApiRoute: the metric label.
    pub id: Arc<str>,
    /// Index of the matched rule in `spec.rules`.
    pub rule: usize,
    /// Where to send the request.
    pub upstream: Arc<Upstream>,
    /// Pass the client's `Authorization` header upstream.
    pub pass_authorization: bool,
    /// Connect timeout for the upstream.
    pub connect_timeout: std::time::Duration,
    /// Time allowed for the upstream's response headers.
    pub request_timeout: std::time::Duration,
    /// Every header name the route's policy may set from claims: the proxy removes
    /// client-sent headers of these names before adding the token's values.
    pub forwarded_header_names: Arc<[HeaderName]>,
}

/// Why a request was refused: a closed set, usable as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DenyReason {
    /// No route or rule matches host, path and method.
    NoRoute,
    /// No credentials were sent.
    MissingToken,
    /// An `Authorization` header with a scheme other than Bearer.
    UnsupportedScheme,
    /// A malformed `Authorization` header (no token, bad characters).
    MalformedHeader,
    /// More than one `Authorization` header.
    DuplicateHeader,
    /// A token in the query string (`access_token=`); refused without being verified.
    TokenInQuery,
    /// The token is longer than the limit.
    TokenTooLarge,
    /// Not a compact JWS: bad segments, base64 or JSON, duplicate or mistyped claims.
    MalformedToken,
    /// An encrypted token (JWE).
    EncryptedToken,
    /// `alg: none`.
    AlgorithmNone,
    /// An algorithm not on the issuer's allow-list.
    AlgorithmNotAllowed,
    /// A `crit` header: extensions Portcullis does not understand.
    CriticalHeader,
    /// `iss` names no trusted issuer.
    UnknownIssuer,
    /// No key with the token's `kid` (or, without `kid`, no single fitting key).
    UnknownKey,
    /// The key found does not fit the algorithm (e.g. HS256 against an RSA key).
    KeyAlgorithmMismatch,
    /// The signature does not verify.
    BadSignature,
    /// `aud` names none of the accepted audiences.
    WrongAudience,
    /// `exp` has passed.
    Expired,
    /// `nbf` or `iat` lies in the future.
    NotYetValid,
    /// The token has no `exp`.
    MissingExpiry,
    /// `exp - iat` exceeds the policy's `maxTokenLifetime`.
    LifetimeTooLong,
    /// A claim the policy requires is missing.
    MissingClaim,
    /// Revoked by `jti`.
    RevokedJti,
    /// Revoked by the token's SHA-256.
    RevokedToken,
    /// Revoked by `subject` + `issuedBefore`.
    RevokedSubject,
    /// Signed with a revoked key ID.
    RevokedKey,
    /// Valid token, missing scopes.
    InsufficientScope,
    /// The introspection endpoint says the token is not active (unknown, expired,
    /// revoked at the provider), or its answer does not fit the policy.
    InactiveToken,
    /// The introspection endpoint could not be reached in time: the token was not judged,
    /// so the answer is 503 with `Retry-After`, not 401.
    IntrospectionUnavailable,
}

impl DenyReason {
    /// The HTTP status this reason becomes.
    pub fn status(self) -> u16 {
        use DenyReason::*;
        match self {
            NoRoute => 404,
            MalformedHeader | DuplicateHeader | TokenInQuery => 400,
            InsufficientScope => 403,
            IntrospectionUnavailable => 503,
            _ => 401,
        }
    }

    /// The RFC 6750 error code, if the challenge carries one.
    pub fn error_code(self) -> Option<&'static str> {
        use DenyReason::*;
        match self {
            NoRoute | MissingToken | UnsupportedScheme | IntrospectionUnavailable => None,
            MalformedHeader | DuplicateHeader | TokenInQuery => Some("invalid_request"),
            InsufficientScope => Some("insufficient_scope"),
            _ => Some("invalid_token"),
        }
    }

    /// A stable snake_case label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        use DenyReason::*;
        match self {
            NoRoute => "no_route",
            MissingToken => "missing_token",
            UnsupportedScheme => "unsupported_scheme",
            MalformedHeader => "malformed_header",
            DuplicateHeader => "duplicate_header",
            TokenInQuery => "token_in_query",
            TokenTooLarge => "token_too_large",
            MalformedToken => "malformed_token",
            EncryptedToken => "encrypted_token",
            AlgorithmNone => "algorithm_none",
            AlgorithmNotAllowed => "algorithm_not_allowed",
            CriticalHeader => "critical_header",
            UnknownIssuer => "unknown_issuer",
            UnknownKey => "unknown_key",
            KeyAlgorithmMismatch => "key_algorithm_mismatch",
            BadSignature => "bad_signature",
            WrongAudience => "wrong_audience",
            Expired => "expired",
            NotYetValid => "not_yet_valid",
            MissingExpiry => "missing_expiry",
            LifetimeTooLong => "lifetime_too_long",
            MissingClaim => "missing_claim",
            RevokedJti => "revoked_jti",
            RevokedToken => "revoked_token",
            RevokedSubject => "revoked_subject",
            RevokedKey => "revoked_key",
            InsufficientScope => "insufficient_scope",
            InactiveToken => "inactive_token",
            IntrospectionUnavailable => "introspection_unavailable",
        }
    }

    /// The `error_description` sent to the client: short, and never containing the token.
    pub fn description(self) -> &'static str {
        use DenyReason::*;
        match self {
            NoRoute => "no route",
            MissingToken | UnsupportedScheme => "a bearer token is required",
            MalformedHeader => "the Authorization header is not a valid Bearer credential",
            DuplicateHeader => "more than one Authorization header",
            TokenInQuery => "tokens are accepted only in the Authorization header",
            TokenTooLarge => "the token is too large",
            MalformedToken => "the token is malformed",
            EncryptedToken => "encrypted tokens are not accepted",
            AlgorithmNone => "unsigned tokens are not accepted",
            AlgorithmNotAllowed => "the token's algorithm is not allowed",
            CriticalHeader => "the token has critical header parameters",
            UnknownIssuer => "the token's issuer is not trusted",
            UnknownKey => "the token's signing key is unknown",
            KeyAlgorithmMismatch => "the token's algorithm does not fit its key",
            BadSignature => "the token's signature is invalid",
            WrongAudience => "the token is not meant for this audience",
            Expired => "the token has expired",
            NotYetValid => "the token is not valid yet",
            MissingExpiry => "the token has no expiry",
            LifetimeTooLong => "the token's lifetime exceeds the maximum",
            MissingClaim => "the token lacks a required claim",
            RevokedJti | RevokedToken | RevokedSubject | RevokedKey => "the token has been revoked",
            InsufficientScope => "the token lacks a required scope",
            InactiveToken => "the token is not active",
            IntrospectionUnavailable => "the token could not be checked; retry later",
        }
    }
}

impl std::fmt::Display for DenyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer to one request.
#[derive(Debug, Clone)]
pub enum Decision<'s> {
    /// Forward the request.
    Allow(Allow<'s>),
    /// Answer it here.
    Deny(Deny<'s>),
    /// An opaque token with no cached verdict: the caller asks the introspection endpoint
    /// (see [`Introspect`]) and hands the answer to [`crate::Snapshot::complete_introspection`].
    Introspect(Introspect<'s>),
}

impl Decision<'_> {
    /// The matched route, if any.
    pub fn route(&self) -> Option<&RouteInfo> {
        match self {
            Decision::Allow(a) => Some(a.route),
            Decision::Deny(d) => d.route,
            Decision::Introspect(i) => Some(i.route),
        }
    }

    /// The fingerprint of the presented token, if one was read.
    pub fn fingerprint(&self) -> Option<Fingerprint> {
        match self {
            Decision::Allow(a) => a.fingerprint,
            Decision::Deny(d) => d.fingerprint,
            Decision::Introspect(i) => Some(i.digest.fingerprint()),
        }
    }

    /// True when allowed.
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }
}

/// An allowed request.
#[derive(Debug, Clone)]
pub struct Allow<'s> {
    /// The route and rule matched.
    pub route: &'s RouteInfo,
    /// The verified token; `None` on a public (`auth: none`) rule.
    pub token: Option<Arc<VerifiedToken>>,
    /// Fingerprint of the token, for logs.
    pub fingerprint: Option<Fingerprint>,
    /// Whether the token came from the verified-token cache.
    pub cache_hit: bool,
}

impl Allow<'_> {
    /// Headers to add for the upstream (from `forwardClaims`).
    pub fn headers(&self) -> &[(HeaderName, HeaderValue)] {
        self.token
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
    /// For `unknown_key` from an issuer whose keys are fetched: where they come from, so
    /// the caller can ask for a refetch and retry once a snapshot with new keys arrives.
    pub refetch: Option<Refetch>,
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

/// An opaque token to judge at an introspection endpoint (RFC 7662).
#[derive(Debug, Clone)]
pub struct Introspect<'s> {
    /// The route and rule matched.
    pub route: &'s RouteInfo,
    /// The endpoint and credentials.
    pub endpoint: &'s IntrospectionEndpoint,
    /// The token's SHA-256: the cache key, and the key to collapse concurrent calls on.
    pub digest: TokenDigest,
    /// Index of the policy (for [`crate::Snapshot::complete_introspection`]).
    pub(crate) policy: usize,
    /// The rule whose scopes apply.
    pub(crate) rule: &'s crate::index::CompiledRule,
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
            DenyReason::NoRoute | DenyReason::IntrospectionUnavailable
        ) {
            return None;
        }
        let mut v = String::from("Bearer realm=\"portcullis\"");
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
