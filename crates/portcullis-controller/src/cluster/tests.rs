//! The publish loop with an in-memory store and a fake API: status writes never hold up
//! publishing, the latest status wins, only the leader writes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::runtime::watcher::Event;
use portcullis_api::{ApiRoute, TokenPolicy};
use serde_json::json;
use tokio::sync::watch;

use super::status_writer::tests::FakeApi;
use super::*;

fn route(rv: u64, generation: i64, policy: &str) -> ApiRoute {
    serde_json::from_value(json!({
        "apiVersion": "portcullis.dev/v1alpha1", "kind": "ApiRoute",
        "metadata": {"name": "orders", "namespace": "shop", "resourceVersion": rv.to_string(), "generation": generation},
        "spec": {"hosts": ["shop.test"], "policyRef": {"name": policy}, "backend": {"url": "http://127.0.0.1:9"},
                 "rules": [{"match": {"pathPrefix": "/"}, "requiredScopes": [format!("scope-{generation}")]}]}
    }))
    .unwrap()
}

fn policy(rv: u64) -> TokenPolicy {
    serde_json::from_value(json!({
        "apiVersion": "portcullis.dev/v1alpha1", "kind": "TokenPolicy",
        "metadata": {"name": "default", "namespace": "shop", "resourceVersion": rv.to_string(), "generation": 1},
        "spec": {"issuers": [{"issuer": "https://issuer.test", "audiences": ["api"], "algorithms": ["EdDSA"],
                 "jwks": {"inline": {"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}}}]}
    }))
    .unwrap()
}

/// A controller over an in-memory store, with its status writer on `fake`.
struct Harness {
    ctl: Controller,
    store: Arc<Store>,
    publisher: Arc<Publisher>,
    queue: Arc<StatusQueue>,
    leader: watch::Sender<bool>,
    _keep: (
        watch::Sender<RemoteAcks>,
        watch::Sender<KeysReports>,
        watch::Receiver<Vec<RemoteSource>>,
        watch::Sender<bool>,
    ),
}

fn harness(fake: FakeApi) -> Harness {
    let store = Arc::new(Store::default());
    store.mark_synced();
    let publisher = Arc::new(Publisher::new());
    let (leader, leader_rx) = watch::channel(true);
    let (acks_tx, remote_acks) = watch::channel(Some(Vec::new()));
    let (keys_tx, keys) = watch::channel(KeysReports::new());
    let (remote_sources, sources_rx) = watch::channel(Vec::new());
    let (stop, stop_rx) = watch::channel(false);
    let queue = Arc::new(StatusQueue::default());
    let metrics = Metrics::new();
    tokio::spawn(status_writer::run(
        queue.clone(),
        fake,
        leader_rx.clone(),
        metrics.clone(),
        // Far beyond the test: a blocked patch stays blocked.
        Duration::from_secs(3600),
        stop_rx,
    ));
    let ctl = Controller {
        opts: ControllerOptions {
            debounce: Duration::ZERO,
            ..Default::default()
        },
        store: store.clone(),
        publisher: publisher.clone(),
        registry: Arc::new(ProxyRegistry::default()),
        metrics,
        leader: leader_rx,
        remote_acks,
        keys,
        remote_sources,
        statuses: queue.clone(),
        quota: None,
        ssf: None,
        planner: StatusPlanner::default(),
        programmed: Programmed::new(),
        errors: Vec::new(),
    };
    Harness {
        ctl,
        store,
        publisher,
        queue,
        leader,
        _keep: (acks_tx, keys_tx, sources_rx, stop),
    }
}

async fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn generations(fake: &FakeApi, kind: &str) -> Vec<Option<i64>> {
    fake.patches()
        .into_iter()
        .filter(|(id, _)| id.kind == kind)
        .map(|(_, s)| s.observed_generation)
        .collect()
}

#[tokio::test]
async fn publishing_goes_on_while_a_status_write_hangs_and_the_last_status_wins() {
    let (fake, gate) = FakeApi::gated(false);
    let mut h = harness(fake.clone());
    h.store.apply_policy_event(Event::Apply(policy(5)));
    h.store
        .apply_route_event(Event::Apply(route(10, 1, "default")));
    h.ctl.recompile().await;
    h.ctl.offer_statuses();
    assert_eq!(h.publisher.current().0, 10);
    // The writer takes the route first and hangs in its patch.
    eventually("the first patch", || fake.patches().len() == 1).await;
    assert_eq!(generations(&fake, "ApiRoute"), [Some(1)]);

    // Two more generations: each is published at once, though no status write returns.
    for (rv, generation) in [(11, 2), (12, 3)] {
        h.store
            .apply_route_event(Event::Apply(route(rv, generation, "default")));
        h.ctl.recompile().await;
        h.ctl.offer_statuses();
        assert_eq!(
            h.publisher.current().0,
            rv,
            "published while the writer hangs"
        );
    }
    assert_eq!(fake.patches().len(), 1, "the writer is still blocked");
    assert_eq!(h.queue.len(), 2, "one queued status per object");

    // Unblocked: the policy's status, then the route's latest; generation 2 is skipped.
    gate.send_replace(true);
    eventually("the queue drained", || {
        h.queue.len() == 0 && fake.patches().len() >= 3
    })
    .await;
    // Passes that still see the old statuses (the watch has not brought the writes back)
    // send nothing again.
    h.ctl.offer_statuses();
    h.ctl.offer_statuses();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(generations(&fake, "ApiRoute"), [Some(1), Some(3)]);
    assert_eq!(generations(&fake, "TokenPolicy"), [Some(1)]);
    assert_eq!(fake.patches().len(), 3);
}

#[tokio::test]
async fn only_the_leader_writes_status_and_events_go_out_once_per_generation() {
    let (fake, _gate) = FakeApi::gated(true);
    let mut h = harness(fake.clone());
    h.leader.send_replace(false);
    h.store
        .apply_route_event(Event::Apply(route(20, 1, "missing")));
    h.ctl.recompile().await;
    h.ctl.offer_statuses();
    assert_eq!(h.publisher.current().0, 20, "every replica publishes");
    assert_eq!(h.queue.len(), 0, "a standby queues no status");

    h.leader.send_replace(true);
    h.ctl.offer_statuses();
    eventually("the route's status", || fake.patches().len() == 1).await;
    let (_, status) = &fake.patches()[0];
    let refs = status
        .conditions
        .iter()
        .find(|c| c.type_ == crate::status::RESOLVED_REFS)
        .unwrap();
    assert_eq!(refs.reason, "PolicyNotFound");
    eventually("the Warning Event", || {
        fake.events.lock().unwrap().len() == 1
    })
    .await;
    // The same generation again (the object's status not yet seen back): no second
    // Event, no second write.
    h.ctl.offer_statuses();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let events = fake.events.lock().unwrap().clone();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].1.reason, "PolicyNotFound");
    assert_eq!(events[0].1.action, "Compile");
    assert_eq!(fake.patches().len(), 1);
}
