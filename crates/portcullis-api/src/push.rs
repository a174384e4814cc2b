//! The config push protocol between the controller and the proxies: types only, no IO.
//!
//! A proxy opens one long-lived HTTP/2 request, `POST /v1/stream?since=<version>&proxy=<id>`
//! with `Authorization: Bearer <token>` and `Content-Type: application/x-ndjson`. Both
//! directions are NDJSON: one JSON object per line.
//!
//! ```text
//! controller -> proxy (response body)        proxy -> controller (request body)
//!   {"type":"full", version, sources}          {"type":"ack", version}
//!   {"type":"delta", from, version, ...}       {"type":"refetch", url}
//!   {"type":"heartbeat", version}          {"type":"lease", id, quota, consumer,
//!   {"type":"grant", id, granted,              window, kind, end|rate, limit, need, want}
//!      remaining, reset}                       {"type":"release", quota, consumer, window,
//!                                                unused, over, end, limit}
//! ```
//!
//! * Quotas (LLM budgets, rate limits) are held by the controller's leader in a ledger.
//!   A proxy leases slices (`lease` -> `grant`) and admits calls from them locally,
//!   returning what it did not use (`release`). A replica that does not lead relays
//!   leases to the leader; `grant` with `unavailable: true` means no ledger answered.
//!
//! * Key sets fetched from `jwks.uri` or OIDC discovery travel as `RemoteKeys` source
//!   objects (kind `RemoteKeys`, name = the URL the issuer's keys come from), so every proxy
//!   verifies with the same keys and the provider sees the controller's fetches only. A
//!   proxy that meets an unknown `kid` from such an issuer sends `refetch`; the controller
//!   rate-limits those per URL.
//!
//! * On connect the controller sends `full`, unless the proxy's `since` is a version it
//!   still has deltas from, in which case it sends only those deltas (resume).
//! * A `delta` applies on top of version `from` and yields `version`. Revocation-only
//!   changes travel as `revocations` entries (added and removed entries of one policy), so
//!   their size does not grow with the rest of the config.
//! * Versions only go up. A proxy ignores any message whose version is not above the one
//!   it enforces, and reconnects with `since` when a delta does not start at its version.
//! * The proxy compiles the sources itself with `portcullis_policy::compile`: the same
//!   compiler the controller ran, so both agree on what is enforced.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use serde::{Deserialize, Serialize};

use crate::{ApiRoute, Revocation, TokenPolicy};

/// Path of the stream endpoint.
pub const STREAM_PATH: &str = "/v1/stream";

/// `(kind, namespace, name)` of a source object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectKey {
    /// `ApiRoute`, `TokenPolicy` or `Secret`.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// One input of the compiler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)]
pub enum SourceObject {
    /// An ApiRoute.
    ApiRoute(ApiRoute),
    /// A TokenPolicy.
    TokenPolicy(TokenPolicy),
    /// A Secret holding key material (only the referenced keys are sent).
    Secret(Secret),
    /// A key set fetched by the controller.
    RemoteKeys(RemoteKeys),
}

/// A JWKS document fetched from a provider, as the compiler's `remote_jwks` input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteKeys {
    /// The source: a `jwks.uri`, or `<issuer>/.well-known/openid-configuration` for
    /// discovery.
    pub url: String,
    /// The last good JWKS document fetched from it.
    pub jwks: serde_json::Value,
}

impl SourceObject {
    /// The object's key.
    pub fn key(&self) -> ObjectKey {
        let (kind, meta) = match self {
            SourceObject::ApiRoute(o) => ("ApiRoute", &o.metadata),
            SourceObject::TokenPolicy(o) => ("TokenPolicy", &o.metadata),
            SourceObject::Secret(o) => ("Secret", &o.metadata),
            SourceObject::RemoteKeys(k) => {
                return ObjectKey {
                    kind: "RemoteKeys".into(),
                    namespace: String::new(),
                    name: k.url.clone(),
                };
            }
        };
        ObjectKey {
            kind: kind.into(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

/// The whole input of a snapshot.
///
/// Decoding checks that every map key is the key of the object under it
/// ([`SourceSet::map_key`]): a set keyed otherwise would make later deltas miss the
/// object they name (a deleted object kept, an object held twice), so it is refused as a
/// whole with an error naming the key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "UncheckedSourceSet")]
pub struct SourceSet {
    /// Objects by key.
    pub objects: BTreeMap<String, SourceObject>,
}

/// A [`SourceSet`] as it arrives, before its keys are checked.
#[derive(Deserialize)]
struct UncheckedSourceSet {
    objects: BTreeMap<String, SourceObject>,
}

impl TryFrom<UncheckedSourceSet> for SourceSet {
    type Error = String;

    fn try_from(raw: UncheckedSourceSet) -> Result<Self, String> {
        for (key, obj) in &raw.objects {
            let want = SourceSet::map_key(&obj.key());
            if *key != want {
                return Err(format!(
                    "objects[{key:?}] holds the object {want:?}: every key must name its own object"
                ));
            }
        }
        Ok(SourceSet {
            objects: raw.objects,
        })
    }
}

impl SourceSet {
    /// The map key of an object key.
    pub fn map_key(key: &ObjectKey) -> String {
        format!("{}/{}/{}", key.kind, key.namespace, key.name)
    }

    /// Inserts or replaces an object.
    pub fn upsert(&mut self, obj: SourceObject) {
        self.objects.insert(Self::map_key(&obj.key()), obj);
    }

    /// Splits into the compiler's three inputs.
    pub fn split(&self) -> (Vec<ApiRoute>, Vec<TokenPolicy>, Vec<Secret>) {
        let (mut r, mut p, mut s) = (Vec::new(), Vec::new(), Vec::new());
        for o in self.objects.values() {
            match o {
                SourceObject::ApiRoute(x) => r.push(x.clone()),
                SourceObject::TokenPolicy(x) => p.push(x.clone()),
                SourceObject::Secret(x) => s.push(x.clone()),
                SourceObject::RemoteKeys(_) => {}
            }
        }
        (r, p, s)
    }

    /// The fetched key sets, by source URL: the compiler's `remote_jwks`.
    pub fn remote_jwks(&self) -> std::collections::HashMap<String, serde_json::Value> {
        self.objects
            .values()
            .filter_map(|o| match o {
                SourceObject::RemoteKeys(k) => Some((k.url.clone(), k.jwks.clone())),
                _ => None,
            })
            .collect()
    }

    /// The change from `self` to `next`: replaced and removed objects, with policies whose
    /// only change is their revocations sent as revocation edits.
    pub fn diff(&self, next: &SourceSet) -> Changes {
        let mut changes = Changes::default();
        for (k, new) in &next.objects {
            match self.objects.get(k) {
                Some(old) if old == new => {}
                Some(SourceObject::TokenPolicy(old)) => match new {
                    SourceObject::TokenPolicy(new_p) if only_revocations_differ(old, new_p) => {
                        let removed: Vec<Revocation> = old
                            .spec
                            .revocations
                            .iter()
                            .filter(|r| !new_p.spec.revocations.contains(r))
                            .cloned()
                            .collect();
                        let added: Vec<Revocation> = new_p
                            .spec
                            .revocations
                            .iter()
                            .filter(|r| !old.spec.revocations.contains(r))
                            .cloned()
                            .collect();
                        changes.revocations.push(RevocationEdit {
                            policy: new.key(),
                            generation: new_p.metadata.generation,
                            resource_version: new_p.metadata.resource_version.clone(),
                            added,
                            removed,
                        });
                    }
                    _ => changes.upserts.push(new.clone()),
                },
                _ => changes.upserts.push(new.clone()),
            }
        }
        for (k, old) in &self.objects {
            if !next.objects.contains_key(k) {
                changes.deletes.push(old.key());
            }
        }
        changes
    }

    /// Applies changes in place. A revocation edit for a policy that is not present is an
    /// error: the proxy must resynchronise.
    pub fn apply(&mut self, changes: &Changes) -> Result<(), String> {
        for key in &changes.deletes {
            self.objects.remove(&Self::map_key(key));
        }
        for obj in &changes.upserts {
            self.upsert(obj.clone());
        }
        for edit in &changes.revocations {
            let Some(SourceObject::TokenPolicy(p)) =
                self.objects.get_mut(&Self::map_key(&edit.policy))
            else {
                return Err(format!(
                    "revocation edit for {} which is not present",
                    edit.policy
                ));
            };
            p.spec.revocations.retain(|r| !edit.removed.contains(r));
            for r in &edit.added {
                if !p.spec.revocations.contains(r) {
                    p.spec.revocations.push(r.clone());
                }
            }
            p.metadata.generation = edit.generation;
            p.metadata.resource_version = edit.resource_version.clone();
        }
        Ok(())
    }
}

fn only_revocations_differ(a: &TokenPolicy, b: &TokenPolicy) -> bool {
    let mut a2 = a.spec.clone();
    let mut b2 = b.spec.clone();
    a2.revocations.clear();
    b2.revocations.clear();
    a2 == b2 && a.metadata.name == b.metadata.name && a.metadata.namespace == b.metadata.namespace
}

/// Changes between two versions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Changes {
    /// Objects added or replaced whole.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upserts: Vec<SourceObject>,
    /// Objects removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deletes: Vec<ObjectKey>,
    /// Revocation-only changes of policies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revocations: Vec<RevocationEdit>,
}

impl Changes {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.deletes.is_empty() && self.revocations.is_empty()
    }
}

/// Revocations added to and removed from one policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevocationEdit {
    /// The policy.
    pub policy: ObjectKey,
    /// The policy's new `metadata.generation`.
    #[serde(default)]
    pub generation: Option<i64>,
    /// The policy's new `metadata.resourceVersion`.
    #[serde(default)]
    pub resource_version: Option<String>,
    /// Entries added.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub added: Vec<Revocation>,
    /// Entries removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<Revocation>,
}

/// Controller -> proxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerMessage {
    /// The whole config at `version`.
    Full {
        /// Version.
        version: u64,
        /// Every source object.
        sources: SourceSet,
    },
    /// Changes from `from` to `version`.
    Delta {
        /// The version the changes apply to.
        from: u64,
        /// The version they yield.
        version: u64,
        /// The changes.
        #[serde(flatten)]
        changes: Changes,
    },
    /// Nothing new; the controller's current version.
    Heartbeat {
        /// Version.
        version: u64,
    },
    /// The answer to the proxy's [`ProxyMessage::Event`] `id`.
    Applied {
        /// The event answered.
        id: u64,
        /// `None` when the revocations are written (or were already: a replay); else why
        /// not.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// The event had been applied before (its `jti` is on record).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        replay: bool,
    },
    /// The answer to the proxy's [`ProxyMessage::Lease`] `id`.
    Grant {
        /// The lease request answered.
        id: u64,
        /// What the ledger granted.
        #[serde(flatten)]
        grant: Grant,
    },
}

/// One consumer's allowance of one quota in one window: the ledger's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct QuotaSlot {
    /// `namespace/policy/name` of the quota.
    pub quota: String,
    /// The consumer (or subject).
    pub consumer: String,
    /// Start of the window, seconds since the epoch (0 for a rate limit's bucket).
    pub window: i64,
}

/// How a quota renews.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum QuotaShape {
    /// A budget: `limit` per window, ending at `end` (seconds since the epoch).
    Budget {
        /// End of the window.
        end: i64,
    },
    /// A token bucket of `limit` refilled at `rate` per second.
    Bucket {
        /// Refill per second.
        rate: f64,
    },
}

impl QuotaShape {
    /// The window's end for a budget; 0 for a bucket (it has no window).
    pub fn end(self) -> i64 {
        match self {
            QuotaShape::Budget { end } => end,
            QuotaShape::Bucket { .. } => 0,
        }
    }
}

/// A proxy asks for a slice of a quota: at least `need`, up to `want`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseAsk {
    /// Which allowance.
    #[serde(flatten)]
    pub slot: QuotaSlot,
    /// How it renews.
    #[serde(flatten)]
    pub shape: QuotaShape,
    /// The consumer's allowance (budget) or bucket size.
    pub limit: u64,
    /// Less than this is no use: the ledger grants nothing.
    pub need: u64,
    /// What the proxy would like to hold.
    pub want: u64,
}

/// What a proxy gives back: the unused part of its slices, and use beyond what it leased
/// (a call that used more than it reserved, or calls admitted on a local allowance while
/// the controller was unreachable).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    /// Which allowance.
    #[serde(flatten)]
    pub slot: QuotaSlot,
    /// Leased and not used.
    #[serde(default)]
    pub unused: u64,
    /// Used beyond what was leased.
    #[serde(default)]
    pub over: u64,
    /// The window's end for a budget (so use reported for a slot the ledger no longer
    /// holds is kept until then), 0 for a bucket.
    #[serde(default)]
    pub end: i64,
    /// The allowance, as in [`LeaseAsk::limit`].
    #[serde(default)]
    pub limit: u64,
}

/// The ledger's answer to a [`LeaseAsk`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Grant {
    /// Granted: 0 (less than `need` was left) or between `need` and `want`.
    pub granted: u64,
    /// Left in the ledger after this grant (not counting slices proxies hold).
    pub remaining: u64,
    /// Seconds since the epoch when the ask could be granted: the window's end for a
    /// budget, the time `need` is refilled for a bucket.
    pub reset: i64,
    /// The ledger could not be reached (no leader, or the leader failed): not a refusal.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unavailable: bool,
}

/// Proxy -> controller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ProxyMessage {
    /// The proxy enforces `version`.
    Ack {
        /// Version applied.
        version: u64,
    },
    /// A token arrived whose `kid` is not in the key set fetched from `url`: fetch it again
    /// (the controller decides whether the rate limit allows it).
    Refetch {
        /// The key source, as in [`RemoteKeys::url`].
        url: String,
    },
    /// A slice of a quota, answered by [`ServerMessage::Grant`] with the same `id`.
    Lease {
        /// Chosen by the proxy, echoed in the answer.
        id: u64,
        /// The ask.
        #[serde(flatten)]
        ask: LeaseAsk,
    },
    /// Unused slices and overuse given back; not answered.
    Release(Release),
    /// An identity event the proxy validated (a Back-Channel Logout token, a Security
    /// Event Token): its revocations, to be written to the policy. Answered by
    /// [`ServerMessage::Applied`] with the same `id`.
    Event {
        /// Chosen by the proxy, echoed in the answer.
        id: u64,
        /// The event.
        #[serde(flatten)]
        event: IdentityEvent,
    },
}

/// Revocations an identity event asks for, for one policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityEvent {
    /// The TokenPolicy, `namespace/name`.
    pub policy: String,
    /// The entries to add: `subject`, `email` or `sessionId` selectors only, each with a
    /// `source` naming the event (whose `jti` makes the event apply once). Empty for a
    /// verification event.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revocations: Vec<Revocation>,
    /// The Shared Signals stream it came from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// A verification event's `state` (SSF 1.0 section 8.1.4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the push_frame fuzz target: a set whose map key is not its object's key
    /// was kept as sent, and later deltas (which go by the object's key) missed it.
    #[test]
    fn a_source_set_keyed_by_another_name_is_refused() {
        let mut set = SourceSet::default();
        set.upsert(SourceObject::RemoteKeys(RemoteKeys {
            url: "https://idp.example/jwks".into(),
            jwks: serde_json::json!({"keys": []}),
        }));
        let good = serde_json::to_string(&set).unwrap();
        assert_eq!(serde_json::from_str::<SourceSet>(&good).unwrap(), set);
        let bad = good.replace("RemoteKeys//https", "TokenPolicy/ns/https");
        assert_ne!(bad, good);
        let err = serde_json::from_str::<SourceSet>(&bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("every key must name its own object"), "{err}");
    }
}
