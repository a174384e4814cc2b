//! Pruning of expired revocations (leader only): a revocation whose `expiresAt` has
//! passed is removed from its TokenPolicy, so revocation lists stay bounded.

use std::sync::Arc;
use std::time::Duration;

use kube::{Client, ResourceExt};
use portcullis_api::TokenPolicy;
use tokio::sync::watch;
use tracing::{debug, info};

use super::store::Store;
use crate::metrics::Metrics;

/// Every `interval`, while `leader` reads true and the store has listed once, prunes
/// expired revocations; until `shutdown`.
pub(crate) async fn run(
    client: Client,
    store: Arc<Store>,
    metrics: Metrics,
    interval: Duration,
    leader: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => break,
        }
        if *leader.borrow() && store.synced() {
            prune(&client, &store, &metrics).await;
        }
    }
}

/// Removes revocations whose `expiresAt` has passed, with a JSON patch that tests the
/// resourceVersion so a concurrent edit is never overwritten.
async fn prune(client: &Client, store: &Store, metrics: &Metrics) {
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    let candidates: Vec<TokenPolicy> = store.lock().policies.values().cloned().collect();
    for p in candidates {
        let expired = |r: &portcullis_api::Revocation| {
            r.expires_at
                .as_deref()
                .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
                .is_some_and(|t| t.as_second() <= now)
        };
        if !p.spec.revocations.iter().any(expired) {
            continue;
        }
        let kept: Vec<_> = p
            .spec
            .revocations
            .iter()
            .filter(|r| !expired(r))
            .cloned()
            .collect();
        let removed = p.spec.revocations.len() - kept.len();
        let ops = serde_json::json!([
            {"op": "test", "path": "/metadata/resourceVersion", "value": p.resource_version()},
            {"op": "replace", "path": "/spec/revocations", "value": kept},
        ]);
        let ns = p.namespace().unwrap_or_default();
        match raw_json_patch(client, &ns, &p.name_any(), &ops).await {
            Ok(()) => {
                metrics
                    .pruned
                    .with_label_values(&[&ns])
                    .inc_by(removed as u64);
                info!(policy = %format!("{ns}/{}", p.name_any()), removed, "pruned expired revocations");
            }
            Err(e) => debug!(error = %e, "prune skipped; will retry"),
        }
    }
}

/// Sends an RFC 6902 JSON patch to a TokenPolicy.
async fn raw_json_patch(
    client: &Client,
    ns: &str,
    name: &str,
    ops: &serde_json::Value,
) -> Result<(), kube::Error> {
    let url = format!("/apis/portcullis.dev/v1alpha1/namespaces/{ns}/tokenpolicies/{name}");
    let req = http::Request::patch(url)
        .header(http::header::CONTENT_TYPE, "application/json-patch+json")
        .body(serde_json::to_vec(ops).unwrap_or_default())
        .map_err(kube::Error::HttpError)?;
    let _: serde_json::Value = client.request(req).await?;
    Ok(())
}
