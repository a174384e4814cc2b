//! Identity events from proxies: the revocations a validated Back-Channel Logout token
//! asks for, written to the TokenPolicy's `spec.revocations` by JSON-patch append. From
//! there they travel like any revocation: a revocation-only delta to every proxy, each
//! acknowledging it, and the leader prunes them at `expiresAt`.
//!
//! Any replica writes (the API server orders the writes); an event whose `source` (issuer
//! and `jti`) is already on the policy is a replay and is not written again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use portcullis_api::push::IdentityEvent;
use portcullis_api::{Revocation, TokenPolicy};
use prometheus::IntCounterVec;
use tracing::{info, warn};

/// Writes event revocations to TokenPolicies.
pub struct EventService {
    client: Option<kube::Client>,
    applied: IntCounterVec,
}

/// Most entries one event may ask for (a logout makes at most two).
const MAX_ENTRIES: usize = 4;

/// The entries a proxy may ask for: `subject` or `email` + `issuedBefore`, or
/// `sessionId`, naming an issuer and a source, expiring (within the policy's retention,
/// [`check_bounds`]). A proxy (or whoever holds its token) cannot revoke by key, token or
/// API key through this path, nor for longer than the policy keeps event entries.
fn check_entry(r: &Revocation) -> Result<(), String> {
    let selector_ok = matches!(
        (&r.subject, &r.email, &r.issued_before, &r.session_id),
        (Some(_), None, Some(_), None)
            | (None, Some(_), Some(_), None)
            | (None, None, None, Some(_))
    );
    if !selector_ok
        || r.jti.is_some()
        || r.token_sha256.is_some()
        || r.key_id.is_some()
        || r.jwk_thumbprint.is_some()
        || r.api_key_id.is_some()
    {
        return Err("an event may only revoke by subject, email or sessionId".into());
    }
    if r.issuer.is_none() || r.expires_at.is_none() {
        return Err("an event's entries name their issuer and expire".into());
    }
    match &r.source {
        Some(s) if !s.jti.is_empty() && !s.issuer.is_empty() => Ok(()),
        _ => Err("an event's entries name their source".into()),
    }
}

fn same_source(a: &Revocation, b: &Revocation) -> bool {
    matches!((&a.source, &b.source), (Some(x), Some(y)) if x.issuer == y.issuer && x.jti == y.jti)
}

impl EventService {
    /// Writes with `client`; `None` refuses every event (tests without an API server).
    pub fn new(client: Option<kube::Client>, registry: &prometheus::Registry) -> Self {
        let applied = IntCounterVec::new(
            prometheus::Opts::new(
                "portcullis_controller_identity_events_total",
                "Identity events from proxies, by result (applied, replay, refused, failed).",
            ),
            &["result"],
        )
        .expect("valid metric");
        let _ = registry.register(Box::new(applied.clone()));
        for r in ["applied", "replay", "refused", "failed"] {
            applied.with_label_values(&[r]);
        }
        Self { client, applied }
    }

    /// Writes the event's revocations. `Ok(true)` for a replay (already written).
    pub async fn apply(&self, event: IdentityEvent) -> Result<bool, String> {
        let result = self.write(&event).await;
        let label = match &result {
            Ok(true) => "replay",
            Ok(false) => "applied",
            Err(Refusal::Refused(_)) => "refused",
            Err(Refusal::Failed(_)) => "failed",
        };
        self.applied.with_label_values(&[label]).inc();
        match result {
            Ok(replay) => {
                info!(policy = %event.policy, entries = event.revocations.len(), replay, "identity event written");
                Ok(replay)
            }
            Err(Refusal::Refused(e) | Refusal::Failed(e)) => {
                warn!(policy = %event.policy, error = %e, "identity event not written");
                Err(e)
            }
        }
    }

    async fn write(&self, event: &IdentityEvent) -> Result<bool, Refusal> {
        use Refusal::{Failed, Refused};
        let (ns, name) = event
            .policy
            .split_once('/')
            .ok_or_else(|| Refused("the policy is namespace/name".into()))?;
        if let (Some(stream), Some(state)) = (&event.stream, &event.verification) {
            return self.verified(ns, name, stream, state).await.map(|()| false);
        }
        if event.revocations.is_empty() || event.revocations.len() > MAX_ENTRIES {
            return Err(Refused(format!(
                "an event carries 1 to {MAX_ENTRIES} revocations"
            )));
        }
        for r in &event.revocations {
            check_entry(r).map_err(Refused)?;
        }
        let client = self
            .client
            .clone()
            .ok_or_else(|| Failed("this controller has no API client".into()))?;
        let api: kube::Api<TokenPolicy> = kube::Api::namespaced(client.clone(), ns);
        // A write that lost a race with another (the list was empty, then was not) is
        // tried again on the fresh object.
        for _ in 0..5 {
            let policy = api
                .get(name)
                .await
                .map_err(|e| Failed(format!("reading TokenPolicy {ns}/{name}: {e}")))?;
            if policy.spec.identity_events.is_none() {
                return Err(Refused(format!(
                    "TokenPolicy {ns}/{name} does not accept identity events"
                )));
            }
            if event.revocations.iter().any(|new| {
                policy
                    .spec
                    .revocations
                    .iter()
                    .any(|old| same_source(old, new))
            }) {
                return Ok(true);
            }
            check_bounds(&policy, &event.revocations).map_err(Refused)?;
            let ops = merge_ops(&policy, &event.revocations).map_err(Failed)?;
            let body = serde_json::to_vec(&ops).map_err(|e| Failed(e.to_string()))?;
            let req = http::Request::patch(format!(
                "/apis/portcullis.dev/v1alpha1/namespaces/{ns}/tokenpolicies/{name}"
            ))
            .header(http::header::CONTENT_TYPE, "application/json-patch+json")
            .body(body)
            .map_err(|e| Failed(e.to_string()))?;
            match client.request::<serde_json::Value>(req).await {
                Ok(_) => return Ok(false),
                // 422 (the test op failed) or 409: someone wrote first; read again.
                Err(kube::Error::Api(e)) if e.code == 422 || e.code == 409 => continue,
                Err(e) => return Err(Failed(format!("patching TokenPolicy {ns}/{name}: {e}"))),
            }
        }
        Err(Failed(format!(
            "TokenPolicy {ns}/{name} kept changing; try again"
        )))
    }
}

impl EventService {
    /// Records that `stream` answered a verification request with `state`: an
    /// annotation on the policy, which the leader (whichever replica asked) compares with
    /// the state it asked for.
    async fn verified(
        &self,
        ns: &str,
        name: &str,
        stream: &str,
        state: &str,
    ) -> Result<(), Refusal> {
        use Refusal::{Failed, Refused};
        if state.is_empty() || state.len() > 256 || stream.len() > 63 {
            return Err(Refused(
                "a verification state of 1 to 256 characters".into(),
            ));
        }
        let client = self
            .client
            .clone()
            .ok_or_else(|| Failed("this controller has no API client".into()))?;
        let api: kube::Api<TokenPolicy> = kube::Api::namespaced(client, ns);
        let value = format!("{state} {}", k8s_openapi::jiff::Timestamp::now());
        let patch = serde_json::json!({"metadata": {"annotations": {
            verification_annotation(stream): value,
        }}});
        api.patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .map(|_| ())
        .map_err(|e| Failed(format!("annotating TokenPolicy {ns}/{name}: {e}")))
    }
}

/// The most entries `spec.revocations` may hold (the CRD's bound).
const MAX_REVOCATIONS: usize = 5000;

/// Parses an RFC 3339 instant.
fn instant(s: Option<&str>) -> Option<i64> {
    s?.parse::<k8s_openapi::jiff::Timestamp>()
        .ok()
        .map(|t| t.as_second())
}

/// How long the policy keeps event revocations (as the compiler computes it).
fn retention(policy: &TokenPolicy) -> i64 {
    let secs = |v: &Option<String>| {
        v.as_deref()
            .and_then(|d| portcullis_api::parse_duration(d).ok())
            .map(|d| d.as_secs() as i64)
    };
    let ev = policy.spec.identity_events.as_ref();
    secs(&ev.and_then(|e| e.retention.clone()))
        .or_else(|| {
            secs(&policy.spec.max_token_lifetime)
                .map(|m| m.saturating_add(secs(&policy.spec.clock_skew).unwrap_or(30)))
        })
        .unwrap_or(86_400)
}

/// What an event may ask of this policy: its entries name one of the policy's issuers,
/// cut off no later than now (plus slack for clocks), and expire within the policy's
/// retention. So whoever holds a proxy's credentials cannot lock a user out for good.
fn check_bounds(policy: &TokenPolicy, entries: &[Revocation]) -> Result<(), String> {
    const SLACK: i64 = 300;
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    let keep = retention(policy);
    for r in entries {
        let iss = r.issuer.as_deref().unwrap_or_default();
        if !policy.spec.issuers.iter().any(|i| i.issuer == iss) {
            return Err(format!("{iss:?} is not an issuer of this policy"));
        }
        if instant(r.expires_at.as_deref()).is_none_or(|t| t > now + keep + SLACK) {
            return Err("expiresAt lies beyond the policy's retention".into());
        }
        if r.issued_before.is_some()
            && instant(r.issued_before.as_deref()).is_none_or(|t| t > now + SLACK)
        {
            return Err("issuedBefore lies in the future".into());
        }
    }
    Ok(())
}

/// The same user (or session) of the same issuer: an event-made entry for it is updated
/// rather than added, so event entries are bounded by distinct users, not by events.
fn same_target(a: &Revocation, b: &Revocation) -> bool {
    a.source.is_some()
        && a.issuer == b.issuer
        && a.subject == b.subject
        && a.email == b.email
        && a.session_id == b.session_id
}

/// The JSON patch writing `entries`: the policy's `resourceVersion` tested first (so a
/// concurrent write makes this one fail and be retried on the fresh object), then each
/// entry replacing the event entry for its user, with the later cut-off and expiry, or
/// appended. An append, not a server-side apply: `spec.revocations` is an atomic list
/// others write too (kubectl, `portcullis revoke`).
fn merge_ops(policy: &TokenPolicy, entries: &[Revocation]) -> Result<serde_json::Value, String> {
    let later = |a: &Option<String>, b: &Option<String>| match (
        instant(a.as_deref()),
        instant(b.as_deref()),
    ) {
        (Some(x), Some(y)) if x > y => a.clone(),
        _ => b.clone(),
    };
    let list = &policy.spec.revocations;
    let mut ops = vec![
        serde_json::json!({"op": "test", "path": "/metadata/resourceVersion",
                                           "value": policy.metadata.resource_version}),
    ];
    let mut appended = Vec::new();
    for new in entries {
        match list.iter().position(|old| same_target(old, new)) {
            Some(i) => {
                let old = &list[i];
                let merged = Revocation {
                    issued_before: later(&old.issued_before, &new.issued_before),
                    expires_at: later(&old.expires_at, &new.expires_at),
                    ..new.clone()
                };
                ops.push(serde_json::json!({"op": "replace",
                    "path": format!("/spec/revocations/{i}"), "value": merged}));
            }
            None => appended.push(new.clone()),
        }
    }
    if list.len() + appended.len() > MAX_REVOCATIONS {
        return Err(format!(
            "spec.revocations holds {} entries, the most it may hold is {MAX_REVOCATIONS}: shorten identityEvents.retention or maxTokenLifetime",
            list.len()
        ));
    }
    if list.is_empty() && !appended.is_empty() {
        ops.push(serde_json::json!({"op": "add", "path": "/spec/revocations", "value": appended}));
    } else {
        for r in appended {
            ops.push(serde_json::json!({"op": "add", "path": "/spec/revocations/-", "value": r}));
        }
    }
    Ok(serde_json::Value::Array(ops))
}

/// The annotation recording a stream's last verification answer: `<state> <RFC 3339>`.
pub fn verification_annotation(stream: &str) -> String {
    format!("ssf.portcullis.dev/verified-{stream}")
}

enum Refusal {
    /// Not an event this path writes.
    Refused(String),
    /// The write failed (the API server, a race lost too often).
    Failed(String),
}

/// The controller's Shared Signals receiver: the leader polls poll streams and asks for
/// verification; SETs are validated against a snapshot compiled from what is published
/// (the transmitters' keys included) and written through the [`EventService`].
pub struct ControllerSsf {
    publisher: Arc<crate::publisher::Publisher>,
    leader: tokio::sync::watch::Receiver<bool>,
    events: Arc<EventService>,
    /// The controller's view of the cluster: the stream Secrets not published to proxies.
    store: Arc<crate::cluster::store::Store>,
    /// The snapshot last compiled: its published version, when, and the snapshot.
    compiled: Mutex<Option<Compiled>>,
    /// (policy, stream) -> what the leader did and saw.
    state: Mutex<HashMap<(String, String), StreamState>>,
    /// When each stream last answered a verification request with the state asked for.
    verified: prometheus::IntGaugeVec,
}

/// A snapshot compiled for the receiver: the published version it came from, and when.
type Compiled = (u64, std::time::Instant, Arc<portcullis_policy::Snapshot>);

#[derive(Default, Clone)]
struct StreamState {
    /// The state asked for, and when.
    requested: Option<(String, String)>,
    last_poll_at: Option<String>,
    last_error: Option<String>,
}

impl ControllerSsf {
    /// A receiver for the leader `leader`.
    pub fn new(
        publisher: Arc<crate::publisher::Publisher>,
        leader: tokio::sync::watch::Receiver<bool>,
        events: Arc<EventService>,
        store: Arc<crate::cluster::store::Store>,
        registry: &prometheus::Registry,
    ) -> Self {
        let verified = prometheus::IntGaugeVec::new(
            prometheus::Opts::new(
                "portcullis_ssf_stream_verified_timestamp_seconds",
                "When each Shared Signals stream last answered a verification request with the state asked for (the leader's view).",
            ),
            &["policy", "stream"],
        )
        .expect("valid metric");
        let _ = registry.register(Box::new(verified.clone()));
        Self {
            publisher,
            leader,
            events,
            store,
            compiled: Mutex::default(),
            state: Mutex::default(),
            verified,
        }
    }

    /// The status of `policy`'s streams: `spec` the policy, its annotations holding the
    /// verification answers.
    pub fn stream_status(&self, spec: &TokenPolicy) -> Vec<portcullis_api::StreamStatus> {
        let Some(ev) = &spec.spec.identity_events else {
            return Vec::new();
        };
        let id = format!(
            "{}/{}",
            spec.metadata.namespace.as_deref().unwrap_or_default(),
            spec.metadata.name.as_deref().unwrap_or_default()
        );
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let annotations = spec.metadata.annotations.clone().unwrap_or_default();
        ev.shared_signals
            .iter()
            .map(|s| {
                let st = state
                    .get(&(id.clone(), s.name.clone()))
                    .cloned()
                    .unwrap_or_default();
                let answered = annotations
                    .get(&verification_annotation(&s.name))
                    .and_then(|v| v.split_once(' '));
                let verified_at = match (&st.requested, answered) {
                    (Some((asked, _)), Some((state, at))) if asked == state => Some(at.to_owned()),
                    _ => None,
                };
                if let Some(t) = verified_at
                    .as_deref()
                    .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
                {
                    // The same series a proxy exports for a pushed answer: one alert for
                    // both deliveries.
                    self.verified
                        .with_label_values(&[&id, &s.name])
                        .set(t.as_second());
                }
                portcullis_api::StreamStatus {
                    name: s.name.clone(),
                    delivery: if s.poll.is_some() { "poll" } else { "push" }.into(),
                    verification_requested_at: st.requested.map(|(_, at)| at),
                    verified_at,
                    last_poll_at: st.last_poll_at,
                    last_error: st.last_error,
                }
            })
            .collect()
    }
}

impl portcullis_fetch::ssf::SsfReceiver for ControllerSsf {
    fn snapshot(&self) -> Arc<portcullis_policy::Snapshot> {
        let (version, sources) = self.publisher.current();
        let mut compiled = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
        // Compiled again when the published version changes, and each half-minute: the
        // stream Secrets are not published, so their edits bring no new version.
        if let Some((v, at, s)) = &*compiled
            && *v == version
            && at.elapsed() < std::time::Duration::from_secs(30)
        {
            return s.clone();
        }
        let mut sources = (*sources).clone();
        {
            let g = self.store.lock();
            for p in g.policies.values() {
                let ns = p.metadata.namespace.clone().unwrap_or_default();
                let refs = p
                    .spec
                    .identity_events
                    .iter()
                    .flat_map(|e| &e.shared_signals)
                    .flat_map(|s| {
                        [
                            s.poll
                                .as_ref()
                                .and_then(|x| x.authorization_secret_ref.as_ref()),
                            s.management_secret_ref.as_ref(),
                        ]
                    })
                    .flatten();
                for r in refs {
                    if let Some(secret) = g.secrets.get(&(ns.clone(), r.name.clone())) {
                        sources.upsert(portcullis_api::push::SourceObject::Secret(secret.clone()));
                    }
                }
            }
        }
        let out = portcullis_policy::compile_sources(
            &portcullis_policy::CompileOptions::default(),
            &sources,
            None,
        );
        let snapshot = Arc::new(out.snapshot);
        *compiled = Some((version, std::time::Instant::now(), snapshot.clone()));
        snapshot
    }

    fn apply(
        &self,
        set: portcullis_policy::events::ValidatedSet,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>> {
        let events = self.events.clone();
        Box::pin(async move {
            if set.revocations.is_empty() && set.verification.is_none() {
                return Ok(());
            }
            events
                .apply(IdentityEvent {
                    policy: set.policy.to_string(),
                    revocations: set.revocations,
                    stream: Some(set.stream.to_string()),
                    verification: set.verification,
                })
                .await
                .map(|_| ())
        })
    }

    fn report(&self, policy: &str, stream: &str, report: portcullis_fetch::ssf::StreamReport) {
        use portcullis_fetch::ssf::StreamReport;
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let st = state
            .entry((policy.to_owned(), stream.to_owned()))
            .or_default();
        match report {
            StreamReport::Polled(_) => {
                st.last_poll_at = Some(now);
                st.last_error = None;
            }
            StreamReport::VerificationRequested(s) => {
                st.requested = Some((s, now));
                st.last_error = None;
            }
            StreamReport::Failed(e) => st.last_error = Some(e),
            StreamReport::Refused(code) => {
                st.last_error = Some(format!("a SET was refused: {code}"));
            }
        }
    }

    fn active(&self) -> bool {
        *self.leader.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_api::RevocationSource;

    fn entry() -> Revocation {
        Revocation {
            subject: Some("alice".into()),
            issued_before: Some("2026-01-01T00:00:00Z".into()),
            issuer: Some("https://idp".into()),
            expires_at: Some("2026-01-02T00:00:00Z".into()),
            source: Some(RevocationSource {
                kind: "backChannelLogout".into(),
                issuer: "https://idp".into(),
                jti: "j1".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_proxy_may_only_ask_for_subject_or_session_entries_with_a_source() {
        assert!(check_entry(&entry()).is_ok());
        let session = Revocation {
            subject: None,
            issued_before: None,
            session_id: Some("s1".into()),
            ..entry()
        };
        assert!(check_entry(&session).is_ok());
        // A leaked signing key is an operator's call, not an event's.
        let key = Revocation {
            key_id: Some("k1".into()),
            ..entry()
        };
        assert!(check_entry(&key).is_err());
        let forever = Revocation {
            expires_at: None,
            ..entry()
        };
        assert!(check_entry(&forever).is_err());
        let anonymous = Revocation {
            source: None,
            ..entry()
        };
        assert!(check_entry(&anonymous).is_err());
        let any_issuer = Revocation {
            issuer: None,
            ..entry()
        };
        assert!(check_entry(&any_issuer).is_err());
    }

    fn policy_with(entries: Vec<Revocation>) -> TokenPolicy {
        let mut p: TokenPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "portcullis.dev/v1alpha1", "kind": "TokenPolicy",
            "metadata": {"name": "p", "namespace": "default", "resourceVersion": "7"},
            "spec": {"issuers": [{"issuer": "https://idp", "audiences": ["a"],
                      "algorithms": ["RS256"], "jwks": {"uri": "https://idp/jwks"}}],
                     "identityEvents": {"retention": "1h"}},
        }))
        .unwrap();
        p.spec.revocations = entries;
        p
    }

    fn at(offset: i64) -> String {
        k8s_openapi::jiff::Timestamp::from_second(
            k8s_openapi::jiff::Timestamp::now().as_second() + offset,
        )
        .unwrap()
        .to_string()
    }

    #[test]
    fn an_event_for_a_user_already_revoked_updates_that_entry_instead_of_adding_one() {
        // Entries stay bounded by distinct users, not by events.
        let old = Revocation {
            issued_before: Some(at(-600)),
            expires_at: Some(at(600)),
            ..entry()
        };
        let p = policy_with(vec![old]);
        let newer = Revocation {
            issued_before: Some(at(0)),
            expires_at: Some(at(3000)),
            ..entry()
        };
        let bob = Revocation {
            subject: Some("bob".into()),
            ..newer.clone()
        };
        let ops = merge_ops(&p, &[newer.clone(), bob]).unwrap();
        let ops = ops.as_array().unwrap();
        assert_eq!(ops[0]["op"], "test", "the resourceVersion is tested first");
        assert_eq!(ops[0]["value"], "7");
        assert_eq!(ops[1]["op"], "replace");
        assert_eq!(ops[1]["path"], "/spec/revocations/0");
        assert_eq!(
            ops[1]["value"]["issuedBefore"],
            serde_json::json!(newer.issued_before)
        );
        assert_eq!(ops[2]["op"], "add");
        assert_eq!(ops[2]["path"], "/spec/revocations/-");
        // A full list refuses rather than being rejected by the API server over and over.
        let full = policy_with(vec![
            Revocation {
                jti: Some("x".into()),
                ..Default::default()
            };
            MAX_REVOCATIONS
        ]);
        let bob = Revocation {
            subject: Some("bob".into()),
            ..entry()
        };
        assert!(merge_ops(&full, &[bob]).unwrap_err().contains("5000"));
    }

    #[test]
    fn entries_beyond_the_policys_retention_or_issuers_are_refused() {
        let p = policy_with(vec![]);
        let ok = Revocation {
            issued_before: Some(at(1)),
            expires_at: Some(at(3600)),
            ..entry()
        };
        assert!(check_bounds(&p, std::slice::from_ref(&ok)).is_ok());
        let forever = Revocation {
            expires_at: Some(at(10 * 86_400)),
            ..ok.clone()
        };
        assert!(check_bounds(&p, &[forever]).is_err());
        let future_cut = Revocation {
            issued_before: Some(at(86_400)),
            ..ok.clone()
        };
        assert!(check_bounds(&p, &[future_cut]).is_err());
        let stranger = Revocation {
            issuer: Some("https://evil".into()),
            ..ok
        };
        assert!(check_bounds(&p, &[stranger]).is_err());
    }

    #[tokio::test]
    async fn without_an_api_client_events_fail_and_are_counted() {
        let reg = prometheus::Registry::new();
        let s = EventService::new(None, &reg);
        let r = s
            .apply(IdentityEvent {
                policy: "default/p".into(),
                revocations: vec![entry()],
                stream: None,
                verification: None,
            })
            .await;
        assert!(r.is_err());
        assert_eq!(s.applied.with_label_values(&["failed"]).get(), 1);
    }
}
