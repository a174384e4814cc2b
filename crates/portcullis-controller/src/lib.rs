//! The Portcullis control plane.
//!
//! * [`cluster`]: watchers, compile loop, leader election (Lease), status by server-side
//!   apply on a task of its own behind a coalescing queue, Events, pruning of expired
//!   revocations.
//! * [`publisher`]: versioned sources with a delta history.
//! * [`push`]: the streaming endpoint every replica serves (protocol in
//!   `portcullis_api::push`), authenticated by [`auth`].
//! * [`status`]: conditions as plain data.
//! * [`jwks_store`]: fetched key sets, fetched by the leader and kept in Secrets.

pub mod auth;
pub mod cluster;
pub mod events;
pub mod jwks_store;
pub mod metrics;
pub mod publisher;
pub mod push;
pub mod quota;
pub mod registry;
pub mod status;

pub use auth::ProxyAuth;
pub use metrics::Metrics;
pub use publisher::Publisher;
pub use registry::ProxyRegistry;
