//! The Portcullis enforcement core: compile CRDs into a [`Snapshot`], and decide every
//! request with [`Snapshot::authorize`].
//!
//! ```text
//!  ApiRoute ─┐                    ┌─ RouteIndex (host -> exact/prefix rules)
//!  TokenPolicy ─┼─ compile() ──▶ Snapshot ─┼─ CompiledPolicy (issuers, keys, claims rules)
//!  Secret ───┘    (+ errors)          └─ RevocationSet, TokenCache (per policy)
//!
//!  RequestParts ──▶ Snapshot::authorize ──▶ Decision::Allow { route, upstream, headers }
//!                                       └─▶ Decision::Deny  { status, WWW-Authenticate, reason }
//! ```
//!
//! Pure and synchronous: no tokio, no sockets, no Kubernetes client. Time comes from an
//! injectable [`Clock`]. Tokens are never stored: caches and logs see only their SHA-256.

pub mod apikey;
mod apikeys;
mod authorize;
pub mod catalog;
mod clock;
mod compile;
mod credentials;
mod decision;
mod dpop;
pub mod events;
mod index;
mod keys;
pub mod ledger;
pub mod llm;
pub mod mcp;
pub mod openapi;
mod policy;
mod principal;
pub mod quota;
mod reason;
mod remote;
mod revocation;
mod route;
mod snapshot;
mod sources;
mod target;
mod token;

pub use apikeys::DEFAULT_API_KEY_HEADER;
pub use clock::{Clock, ManualClock, SystemClock};
pub use compile::{
    CompileError, CompileOptions, CompileReason, INTROSPECTION_CLIENT_ID_KEY,
    INTROSPECTION_CLIENT_SECRET_KEY, SpecRules, compile, compile_with, url_allowed,
};
pub use credentials::{DPOP, TokenScheme, bearer_token, token_scheme};
pub use decision::{
    Allow, Answer, AuthorizationHeader, Confirmation, Credentials, Decision, Deny, DenyReason,
    HeaderField, IntrospectionEndpoint, Need, Pending, Principal, PrincipalKind, Refetch,
    RequestParts, RouteInfo, UnderscoreHeaderAction, Upstream,
};
pub use keys::{KeyError, KeyThumbprint, key_thumbprints, usable_keys};
pub use portcullis_api::ConditionType;
pub use principal::VerifiedToken;
pub use remote::{
    RemoteSource, RemoteSourceKind, discovery_url, remote_sources, source_key,
    ssf_configuration_url,
};
pub use snapshot::{Snapshot, SnapshotStats};
pub use sources::{CompiledSources, PreviousCompile, SourceChanges, compile_sources};
pub use target::{
    EscapedSlashes, PathOptions, Semicolons, TargetError, canonical_path,
    is_unreserved_or_sub_delim,
};
pub use token::{Fingerprint, TokenDigest, token_digest};
