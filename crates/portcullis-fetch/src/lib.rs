//! Portcullis's outbound HTTP, kept apart from the pure enforcement core:
//!
//! * [`client::HttpClient`]: https (system roots plus an optional CA bundle), plain http
//!   only to loopback addresses, connect and total timeouts, a size limit on bodies.
//! * [`keys::KeyFetcher`]: fetches `jwks.uri` and OIDC discovery sources, refreshes them on
//!   `Cache-Control: max-age` clamped to the policy's bounds, keeps the last good document
//!   through failures, and answers rate-limited refetch requests for unknown `kid`s.
//! * [`introspect::Introspector`]: RFC 7662 calls with `client_secret_basic`, one call per
//!   token however many requests wait for it.

pub mod client;
pub mod introspect;
pub mod keys;
pub mod ssf;
pub mod tls;

pub use client::{FetchError, HttpClient};
pub use introspect::Introspector;
pub use keys::{FetchResult, KeyFetcher, SourceState};
