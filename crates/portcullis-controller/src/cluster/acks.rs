//! Acknowledgements across replicas. Every replica serves streams, but only the leader
//! writes status: each replica shares the versions its proxies acknowledged in a Lease of
//! its own (`portcullis-acks-<identity>`, refreshed every second), and the leader reads the
//! other replicas' shares into a watch channel the status pass reads without waiting.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;
use tracing::debug;

use super::{ControllerOptions, FIELD_MANAGER};
use crate::publisher::Publisher;
use crate::registry::ProxyRegistry;

/// Label on the Leases through which replicas share their proxies' acknowledgements.
const ACKS_LABEL: &str = "portcullis.dev/acks";
/// Annotation holding a replica's acknowledged versions, one per connected proxy.
const ACKS_ANNOTATION: &str = "portcullis.dev/acked-versions";
/// A replica's share older than this is ignored (the replica is gone).
const ACKS_TTL: i64 = 15;
/// How often a replica refreshes its share, and the leader reads the others'.
const SHARE_EVERY: Duration = Duration::from_secs(1);

/// A proxy's acknowledgement as the leader reads it: the version (numbered by the replica
/// it is connected to) and the content digest of that version.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Ack {
    pub(crate) v: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) d: Option<String>,
}

fn acks_lease_name(identity: &str) -> String {
    let clean: String = identity
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("portcullis-acks-{}", clean.trim_matches('-'))
}

/// This replica's proxies' acknowledgements, with the digest of each acked version.
pub(crate) fn local_acks(registry: &ProxyRegistry, publisher: &Publisher) -> Vec<Ack> {
    registry
        .acked_versions()
        .into_iter()
        .map(|v| Ack {
            v,
            d: publisher.digest_of(v),
        })
        .collect()
}

/// What the leader last read of the other replicas' acknowledgements: None until it has
/// read them once since it took the lead (the status pass waits for them, or it would
/// count only this replica's proxies).
pub(crate) type RemoteAcks = Option<Vec<Ack>>;

/// Shares this replica's acknowledgements until `shutdown` (then deletes its share) and,
/// while `leader` reads true, keeps `remote` holding the acknowledgements of the proxies
/// connected to every other live replica.
pub(crate) async fn share_acks(
    client: Client,
    opts: ControllerOptions,
    registry: Arc<ProxyRegistry>,
    publisher: Arc<Publisher>,
    mut leader: watch::Receiver<bool>,
    remote: watch::Sender<RemoteAcks>,
    mut shutdown: watch::Receiver<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &opts.lease_namespace);
    let name = acks_lease_name(&opts.identity);
    let mut last: Option<(Vec<Ack>, Instant)> = None;
    let mut read_at: Option<Instant> = None;
    loop {
        let acks = local_acks(&registry, &publisher);
        let stale = last
            .as_ref()
            .is_none_or(|(v, at)| *v != acks || at.elapsed() > Duration::from_secs(5));
        if stale {
            let lease = serde_json::json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": name, "labels": {ACKS_LABEL: "true"}, "annotations": {ACKS_ANNOTATION: serde_json::to_string(&acks).unwrap_or_default()}},
                "spec": {"holderIdentity": opts.identity, "leaseDurationSeconds": ACKS_TTL, "renewTime": MicroTime(k8s_openapi::jiff::Timestamp::now())},
            });
            match tokio::time::timeout(
                opts.write_timeout,
                api.patch(
                    &name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&lease),
                ),
            )
            .await
            {
                Ok(Ok(_)) => last = Some((acks, Instant::now())),
                Ok(Err(e)) => debug!(error = %e, "could not share acknowledgements"),
                Err(_) => debug!("sharing acknowledgements timed out"),
            }
        }
        if !*leader.borrow_and_update() {
            read_at = None;
            remote.send_if_modified(|v| v.take().is_some());
        } else if read_at.is_none_or(|at| at.elapsed() >= SHARE_EVERY) {
            read_at = Some(Instant::now());
            let others = other_replicas_acks(&api, &name, opts.write_timeout).await;
            remote.send_if_modified(|v| match (others, v.as_ref()) {
                (Some(o), Some(old)) if o == *old => false,
                (Some(o), _) => {
                    *v = Some(o);
                    true
                }
                // Unreadable: keep what was read last, or count this replica's own.
                (None, Some(_)) => false,
                (None, None) => {
                    *v = Some(Vec::new());
                    true
                }
            });
        }
        tokio::select! {
            _ = tokio::time::sleep(SHARE_EVERY) => {}
            _ = registry.changed_share.notified() => tokio::time::sleep(Duration::from_millis(20)).await,
            Ok(()) = leader.changed() => {}
            _ = shutdown.changed() => break,
        }
    }
    let _ = api.delete(&name, &Default::default()).await;
}

/// The acknowledgements shared by every other live replica; None if they could not be
/// read (the last ones read are kept).
async fn other_replicas_acks(api: &Api<Lease>, own: &str, timeout: Duration) -> Option<Vec<Ack>> {
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    let list = match tokio::time::timeout(
        timeout,
        api.list(&ListParams::default().labels(&format!("{ACKS_LABEL}=true"))),
    )
    .await
    {
        Ok(Ok(list)) => list,
        Ok(Err(e)) => {
            debug!(error = %e, "could not read other replicas' acknowledgements");
            return None;
        }
        Err(_) => {
            debug!("reading other replicas' acknowledgements timed out");
            return None;
        }
    };
    let mut acks = Vec::new();
    for lease in list {
        if lease.name_any() == own {
            continue;
        }
        let fresh = lease
            .spec
            .as_ref()
            .and_then(|s| s.renew_time.as_ref())
            .is_some_and(|t| now - t.0.as_second() <= ACKS_TTL);
        if !fresh {
            continue;
        }
        if let Some(v) = lease
            .annotations()
            .get(ACKS_ANNOTATION)
            .and_then(|a| serde_json::from_str::<Vec<Ack>>(a).ok())
        {
            acks.extend(v);
        }
    }
    Some(acks)
}

#[cfg(test)]
mod tests {
    use portcullis_api::TokenPolicy;
    use portcullis_api::push::{SourceObject, SourceSet};

    use super::*;

    fn route(rv: u64) -> portcullis_api::ApiRoute {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "portcullis.dev/v1alpha1", "kind": "ApiRoute",
            "metadata": {"name": "r", "namespace": "ns", "resourceVersion": rv.to_string(), "generation": 1},
            "spec": {"hosts": ["a.test"], "policyRef": {"name": "p"}, "backend": {"url": "http://x"},
                     "rules": [{"match": {"pathPrefix": "/"}, "requiredScopes": ["read"]}]}
        }))
        .unwrap()
    }

    /// Two replicas that saw the same two objects in a different order number the same
    /// content differently (the second bumps past what it already published); the digest
    /// tells the leader that a proxy of the other replica holds the same content.
    #[test]
    fn replicas_numbering_the_same_content_differently_agree_on_its_digest() {
        let policy = TokenPolicy::new(
            "p",
            serde_json::from_value(serde_json::json!({"issuers": []})).unwrap(),
        );
        let r = route(218);
        let (a, b) = (Publisher::new(), Publisher::new());
        let mut only_policy = SourceSet::default();
        only_policy.upsert(SourceObject::TokenPolicy(policy.clone()));
        let mut only_route = SourceSet::default();
        only_route.upsert(SourceObject::ApiRoute(r.clone()));
        let mut both = only_policy.clone();
        both.upsert(SourceObject::ApiRoute(r));
        // A: policy (217), then route (218). B: route (218), then policy (217 -> bumped).
        assert_eq!(a.publish(only_policy, 217), Some(217));
        assert_eq!(a.publish(both.clone(), 218), Some(218));
        assert_eq!(b.publish(only_route, 218), Some(218));
        assert_eq!(b.publish(both, 217), Some(219));
        assert_ne!(a.current().0, b.current().0);
        assert_eq!(a.current_digest(), b.current_digest());
        assert_eq!(a.digest_of(218), b.digest_of(219));
        assert_ne!(a.digest_of(217), a.digest_of(218));
        let registry = ProxyRegistry::default();
        let id = registry.connect("proxy".into());
        registry.ack(id, 219);
        let acks = local_acks(&registry, &b);
        assert_eq!(acks[0].d, a.current_digest(), "B's proxy holds A's content");
    }
}
