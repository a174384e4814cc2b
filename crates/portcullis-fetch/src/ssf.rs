//! The receiver side of Shared Signals streams that the receiver drives: poll delivery
//! (RFC 8936) and verification requests (SSF 1.0 section 8.1.4). One task per stream of
//! the snapshot in force; the standalone process runs it, and in a cluster the
//! controller's leader does.
//!
//! ```text
//! every interval (at once while moreAvailable):
//!   POST poll endpoint {maxEvents, returnImmediately: true, ack: [...], setErrs: {...}}
//!     -> {sets: {jti: SET}, moreAvailable}
//!   each SET: Snapshot::security_event -> receiver.apply -> ack (a refused SET goes back
//!   in setErrs; one that could not be applied is neither acked nor refused: it comes
//!   again)
//! every verifyInterval (with a management token and a stream id):
//!   GET <transmitter>/.well-known/ssf-configuration -> verification_endpoint
//!   POST {stream_id, state} -> 204; the verification SET comes back through the stream
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_lite::BoxedFuture;
use portcullis_policy::Snapshot;
use portcullis_policy::events::{StreamInfo, ValidatedSet};
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use crate::HttpClient;

/// Futures without naming a runtime crate.
mod futures_lite {
    pub type BoxedFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;
}

/// Most SETs asked for per poll.
const MAX_EVENTS: u64 = 100;
const TIMEOUT: Duration = Duration::from_secs(10);
const MAX_BYTES: usize = 4 << 20;

/// What happened on a stream, for its status and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamReport {
    /// A poll answered (with this many SETs).
    Polled(usize),
    /// A poll or verification request failed.
    Failed(String),
    /// A verification event was asked for with this `state`.
    VerificationRequested(String),
    /// A SET was refused (its RFC 8935 error code).
    Refused(&'static str),
}

/// Where a receiver's SETs go and what it reports.
pub trait SsfReceiver: Send + Sync + 'static {
    /// The snapshot in force (streams, keys).
    fn snapshot(&self) -> Arc<Snapshot>;
    /// Applies a validated SET (revocations, or a verification's `state`).
    fn apply(&self, set: ValidatedSet) -> BoxedFuture<Result<(), String>>;
    /// Records what happened on a stream.
    fn report(&self, policy: &str, stream: &str, report: StreamReport);
    /// Whether this process drives the streams now (the leader, in a cluster).
    fn active(&self) -> bool {
        true
    }
}

/// The transmitter's SSF configuration (SSF 1.0 section 7.1), `issuer` checked.
pub async fn configuration(http: &HttpClient, transmitter: &str) -> Result<Value, String> {
    let url = portcullis_policy::ssf_configuration_url(transmitter);
    let resp = http
        .get(&url, &[], TIMEOUT, MAX_BYTES)
        .await
        .map_err(|e| e.to_string())?;
    if !resp.status.is_success() {
        return Err(format!("{url}: HTTP {}", resp.status));
    }
    let doc: Value =
        serde_json::from_slice(&resp.body).map_err(|e| format!("{url}: not JSON: {e}"))?;
    match doc.get("issuer").and_then(Value::as_str) {
        Some(i) if i == transmitter => Ok(doc),
        other => Err(format!(
            "{url} names issuer {:?}, expected {transmitter:?}",
            other.unwrap_or("(none)")
        )),
    }
}

/// Asks for a verification event (SSF 1.0 section 8.1.4.2).
pub async fn request_verification(
    http: &HttpClient,
    transmitter: &str,
    token: &str,
    stream_id: &str,
    state: &str,
) -> Result<(), String> {
    let doc = configuration(http, transmitter).await?;
    let endpoint = doc
        .get("verification_endpoint")
        .and_then(Value::as_str)
        .ok_or("the transmitter has no verification_endpoint")?;
    // The management token goes only to the transmitter's own origin (not to whatever URL
    // its configuration names: an internal address, plain http).
    if origin(endpoint) != origin(transmitter) {
        return Err(format!(
            "verification_endpoint {endpoint} is not on the transmitter's origin"
        ));
    }
    let resp = http
        .post_json(
            endpoint,
            Some(token),
            &json!({"stream_id": stream_id, "state": state}),
            TIMEOUT,
            MAX_BYTES,
        )
        .await
        .map_err(|e| e.to_string())?;
    if !resp.status.is_success() {
        return Err(format!("{endpoint}: HTTP {}", resp.status));
    }
    Ok(())
}

/// One poll's answer (RFC 8936 section 2.2).
#[derive(Debug, Default)]
pub struct PollAnswer {
    /// `jti` -> SET.
    pub sets: BTreeMap<String, String>,
    /// More are waiting.
    pub more: bool,
}

/// One poll (RFC 8936 section 2.4), acknowledging `ack` and refusing `errs`.
pub async fn poll(
    http: &HttpClient,
    endpoint: &str,
    token: Option<&str>,
    ack: &[String],
    errs: &BTreeMap<String, (&'static str, &'static str)>,
) -> Result<PollAnswer, String> {
    let set_errs: serde_json::Map<String, Value> = errs
        .iter()
        .map(|(jti, (err, d))| (jti.clone(), json!({"err": err, "description": d})))
        .collect();
    let mut body = json!({"maxEvents": MAX_EVENTS, "returnImmediately": true, "ack": ack});
    if !set_errs.is_empty() {
        body["setErrs"] = Value::Object(set_errs);
    }
    let resp = http
        .post_json(endpoint, token, &body, TIMEOUT, MAX_BYTES)
        .await
        .map_err(|e| e.to_string())?;
    if !resp.status.is_success() {
        return Err(format!("{endpoint}: HTTP {}", resp.status));
    }
    let doc: Value =
        serde_json::from_slice(&resp.body).map_err(|e| format!("{endpoint}: not JSON: {e}"))?;
    let mut out = PollAnswer {
        more: doc.get("moreAvailable").and_then(Value::as_bool) == Some(true),
        ..Default::default()
    };
    if let Some(sets) = doc.get("sets").and_then(Value::as_object) {
        for (jti, set) in sets {
            if let Some(s) = set.as_str() {
                out.sets.insert(jti.clone(), s.to_owned());
            }
        }
    }
    Ok(out)
}

/// `scheme://authority` of a URL, lower-cased.
fn origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    Some(format!("{scheme}://{authority}").to_ascii_lowercase())
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A `state` no one can guess ahead (its only use is to match the answer).
fn new_state() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("pc-{:016x}", h.finish())
}

/// Runs the streams of the snapshot in force until the process ends: a task per stream
/// that polls and/or asks for verification, restarted when its settings change.
pub async fn run(receiver: Arc<dyn SsfReceiver>, http: Arc<HttpClient>) {
    // (policy, stream) -> the settings a task runs with, and the task.
    type Running = (StreamInfo, tokio::task::JoinHandle<()>);
    let mut tasks: HashMap<(Arc<str>, Arc<str>), Running> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let wanted: Vec<StreamInfo> = if receiver.active() {
            receiver
                .snapshot()
                .ssf_streams()
                .into_iter()
                .filter(|s| s.poll.is_some() || s.management_token.is_some())
                .collect()
        } else {
            Vec::new()
        };
        tasks.retain(|key, (info, task)| {
            let keep = wanted
                .iter()
                .any(|w| (&w.policy, &w.name) == (&key.0, &key.1) && w == info);
            if !keep {
                task.abort();
            }
            keep
        });
        for info in wanted {
            let key = (info.policy.clone(), info.name.clone());
            if tasks.contains_key(&key) {
                continue;
            }
            info!(policy = %info.policy, stream = %info.name, "shared signals stream started");
            let task = tokio::spawn(stream_task(receiver.clone(), http.clone(), info.clone()));
            tasks.insert(key, (info, task));
        }
    }
}

async fn stream_task(receiver: Arc<dyn SsfReceiver>, http: Arc<HttpClient>, info: StreamInfo) {
    let (policy, name) = (info.policy.clone(), info.name.clone());
    let report = |r: StreamReport| receiver.report(&policy, &name, r);
    let mut next_verify = tokio::time::Instant::now();
    let mut ack: Vec<String> = Vec::new();
    let mut errs: BTreeMap<String, (&'static str, &'static str)> = BTreeMap::new();
    loop {
        if let (Some(token), Some(stream_id)) = (&info.management_token, &info.stream_id)
            && tokio::time::Instant::now() >= next_verify
        {
            let state = new_state();
            // Recorded before asking: the answer may come before the request returns.
            report(StreamReport::VerificationRequested(state.clone()));
            match request_verification(&http, &info.transmitter, token, stream_id, &state).await {
                Ok(()) => {
                    debug!(policy = %policy, stream = %name, "verification requested");
                    next_verify = tokio::time::Instant::now() + info.verify_interval;
                }
                Err(e) => {
                    warn!(policy = %policy, stream = %name, error = %e, "verification request failed");
                    report(StreamReport::Failed(e));
                    next_verify = tokio::time::Instant::now() + Duration::from_secs(30);
                }
            }
        }
        let Some((endpoint, interval, token)) = &info.poll else {
            tokio::time::sleep_until(next_verify).await;
            continue;
        };
        let answer = poll(&http, endpoint, token.as_deref(), &ack, &errs).await;
        let answer = match answer {
            Ok(a) => {
                ack.clear();
                errs.clear();
                a
            }
            Err(e) => {
                warn!(policy = %policy, stream = %name, error = %e, "poll failed");
                report(StreamReport::Failed(e));
                tokio::time::sleep(*interval).await;
                continue;
            }
        };
        report(StreamReport::Polled(answer.sets.len()));
        let snapshot = receiver.snapshot();
        let mut progress = false;
        let mut failures = 0u32;
        for (jti, set) in &answer.sets {
            match snapshot.security_event(&policy, &name, set, now_secs()) {
                Ok(v) => match receiver.apply(v).await {
                    Ok(()) => {
                        progress = true;
                        ack.push(jti.clone());
                    }
                    // Not acknowledged: the transmitter sends it again.
                    Err(e) => {
                        failures += 1;
                        report(StreamReport::Failed(e));
                    }
                },
                // Keys not fetched (yet): neither acknowledged nor refused.
                Err(e) if e.code == "unavailable" => failures += 1,
                Err(e) => {
                    progress = true;
                    report(StreamReport::Refused(e.code));
                    errs.insert(jti.clone(), (e.code, e.description));
                }
            }
        }
        // At once again only while the last poll moved the queue: a transmitter saying
        // "more" without giving any, or SETs that cannot be applied yet, wait.
        if !(answer.more && progress) {
            let backoff = if failures > 0 {
                (*interval * 2).max(Duration::from_secs(5))
            } else {
                *interval
            };
            tokio::time::sleep(backoff).await;
        }
    }
}
