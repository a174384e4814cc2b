//! Leader election with a `coordination.k8s.io` Lease: one replica writes status, fetches
//! remote key sets and prunes expired revocations; every replica serves streams.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::metrics::Metrics;

/// Holds (or waits for) the leader Lease.
pub struct LeaderElection {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    is_leader: watch::Sender<bool>,
    /// Written in the Lease while leading: where the other replicas relay quota leases.
    advertise_url: Option<String>,
    /// The current leader's advertised URL, as last read from the Lease.
    leader_url: std::sync::Mutex<Option<String>>,
}

/// The Lease annotation holding the leader's push endpoint URL.
pub const ADVERTISE_ANNOTATION: &str = "portcullis.dev/advertise-url";

impl LeaderElection {
    /// Elects among the replicas sharing the Lease `name` in `api`'s namespace; this one
    /// is `identity`. Nothing happens until [`LeaderElection::run`].
    pub fn new(api: Api<Lease>, name: String, identity: String, duration: Duration) -> Self {
        Self {
            api,
            name,
            identity,
            duration,
            is_leader: watch::channel(false).0,
            advertise_url: None,
            leader_url: std::sync::Mutex::new(None),
        }
    }

    /// Advertises `url` (this replica's push endpoint) in the Lease while leading.
    pub fn with_advertise_url(mut self, url: Option<String>) -> Self {
        self.advertise_url = url;
        self
    }

    /// The leader's push endpoint, as advertised in the Lease (None when unknown or
    /// expired).
    pub fn leader_url(&self) -> Option<String> {
        self.leader_url
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_leader_url(&self, url: Option<String>) {
        *self.leader_url.lock().unwrap_or_else(|e| e.into_inner()) = url;
    }

    fn annotate(&self, meta: &mut ObjectMeta) {
        let annotations = meta.annotations.get_or_insert_with(Default::default);
        match &self.advertise_url {
            Some(u) => {
                annotations.insert(ADVERTISE_ANNOTATION.into(), u.clone());
            }
            None => {
                annotations.remove(ADVERTISE_ANNOTATION);
            }
        }
    }

    /// Whether this replica holds the Lease now.
    pub fn is_leader(&self) -> bool {
        *self.is_leader.borrow()
    }

    /// Wakes on every change of leadership; reads true while this replica leads.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.is_leader.subscribe()
    }

    async fn step(&self) -> Result<bool, kube::Error> {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let secs = self.duration.as_secs() as i32;
        match self.api.get_opt(&self.name).await? {
            None => {
                let mut metadata = ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                };
                self.annotate(&mut metadata);
                let lease = Lease {
                    metadata,
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.identity.clone()),
                        lease_duration_seconds: Some(secs),
                        acquire_time: Some(now.clone()),
                        renew_time: Some(now),
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                };
                match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => {
                        self.set_leader_url(self.advertise_url.clone());
                        Ok(true)
                    }
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
            Some(mut lease) => {
                let spec = lease.spec.get_or_insert_with(Default::default);
                let holder = spec.holder_identity.clone().unwrap_or_default();
                let expired = spec
                    .renew_time
                    .as_ref()
                    .map(|t| {
                        t.0.as_second() + i64::from(spec.lease_duration_seconds.unwrap_or(secs))
                            < now.0.as_second()
                    })
                    .unwrap_or(true);
                if holder != self.identity && !holder.is_empty() && !expired {
                    self.set_leader_url(
                        lease
                            .metadata
                            .annotations
                            .as_ref()
                            .and_then(|a| a.get(ADVERTISE_ANNOTATION))
                            .cloned(),
                    );
                    return Ok(false);
                }
                if holder != self.identity {
                    // Nobody leads (or the leader is gone) until this replica takes it.
                    self.set_leader_url(None);
                }
                self.annotate(&mut lease.metadata);
                if holder != self.identity {
                    spec.acquire_time = Some(now.clone());
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                    spec.holder_identity = Some(self.identity.clone());
                }
                spec.renew_time = Some(now);
                spec.lease_duration_seconds = Some(secs);
                // replace() carries resourceVersion: a concurrent taker loses with 409.
                match self
                    .api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
                {
                    Ok(_) => {
                        self.set_leader_url(self.advertise_url.clone());
                        Ok(true)
                    }
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Takes and renews the Lease until `shutdown`, then steps down so a standby takes
    /// over at once.
    pub async fn run(self: Arc<Self>, metrics: Metrics, mut shutdown: watch::Receiver<bool>) {
        let retry = self.duration / 5;
        loop {
            let was = self.is_leader();
            let now = match tokio::time::timeout(retry * 2, self.step()).await {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => {
                    warn!(error = %e, "leader election step failed");
                    false
                }
                Err(_) => false,
            };
            metrics.leader.set(now as i64);
            if now != was {
                info!(identity = %self.identity, leader = now, "leadership changed");
                self.is_leader.send_replace(now);
            }
            tokio::select! {
                _ = tokio::time::sleep(retry) => {}
                _ = shutdown.changed() => break,
            }
        }
        if self.is_leader() {
            // Step down so a standby takes over at once.
            if let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await
                && let Some(spec) = lease.spec.as_mut()
                && spec.holder_identity.as_deref() == Some(&self.identity)
            {
                spec.holder_identity = None;
                let _ = self
                    .api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await;
            }
            self.is_leader.send_replace(false);
        }
    }
}
