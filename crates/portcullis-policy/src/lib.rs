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

mod clock;
mod compile;
mod decision;
mod index;
mod keys;
mod remote;
mod revocation;
mod snapshot;
mod token;

pub use clock::{Clock, ManualClock, SystemClock};
pub use compile::{
    CompileError, CompileOptions, INTROSPECTION_CLIENT_ID_KEY, INTROSPECTION_CLIENT_SECRET_KEY,
    compile, compile_with, url_allowed,
};
pub use decision::{
    Allow, AuthorizationHeader, Decision, Deny, DenyReason, Introspect, IntrospectionEndpoint,
    Refetch, RequestParts, RouteInfo, Upstream,
};
pub use keys::{KeyError, usable_keys};
pub use remote::{RemoteSource, RemoteSourceKind, discovery_url, remote_sources, source_key};
pub use snapshot::{Snapshot, SnapshotStats, bearer_token};
pub use token::{Fingerprint, TokenDigest, VerifiedToken, token_digest};
