//! Identity events received by the proxy: OpenID Back-Channel Logout 1.0 logout tokens
//! posted to `/.portcullis/backchannel-logout/<namespace>/<policy>`.
//!
//! ```text
//! POST (form: logout_token) ─▶ Snapshot::logout_token (signature, iss, aud, iat, events,
//!                              no nonce, sub/sid)  ─▶ replay cache (iss, jti)
//!                           ─▶ EventSink: the controller writes the revocations to the
//!                              TokenPolicy (cluster), or the standalone overlay does
//!                           ─▶ 200 once they are written; every proxy then gets them
//!                              through the usual revocation push
//! ```
//!
//! A replay of an event already applied answers 200 without applying it again: an identity
//! provider retrying after a lost answer is told it succeeded, and a captured logout token
//! sent again cannot push the user's `issuedBefore` cut-off forward (which would log out
//! the sessions opened since).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{HeaderValue, Response, StatusCode, header};
use portcullis_api::Revocation;
use portcullis_api::push::{IdentityEvent, ProxyMessage};
use portcullis_policy::events::{EventError, EventId};
use tokio::sync::{Notify, mpsc, oneshot};
use tracing::{info, warn};

use crate::pipeline::{ProxyBody, response};

/// The path prefix of Back-Channel Logout endpoints (then `<namespace>/<policy>`).
pub const LOGOUT_PATH: &str = "/.portcullis/backchannel-logout/";
/// The path prefix of Shared Signals push endpoints (then `<namespace>/<policy>/<stream>`).
pub const SSF_PATH: &str = "/.portcullis/ssf/";

/// The standalone overlay's refusal of a verification answer it did not ask for.
const UNKNOWN_STATE: &str = "a verification event with a state not asked for";

/// Largest logout request body read.
const MAX_BODY: usize = 64 * 1024;

/// Where validated events go: the controller (cluster) or the standalone overlay.
pub trait EventSink: Send + Sync {
    /// Writes the event's revocations. `Ok(true)` when the event had been applied before
    /// (its `jti` on record), `Ok(false)` when applied now.
    fn apply(&self, event: IdentityEvent) -> BoxFuture<'static, Result<bool, String>>;
}

/// No sink: events are refused with 503 (a pipeline built without one).
pub struct NoEvents;

impl EventSink for NoEvents {
    fn apply(&self, _: IdentityEvent) -> BoxFuture<'static, Result<bool, String>> {
        Box::pin(async { Err("identity events are not enabled on this proxy".into()) })
    }
}

/// Events already applied, by issuer and `jti`, until their `iat` is too old to pass
/// again. Bounded: past `capacity` live entries, new events are refused (503) rather than
/// forgotten.
pub struct ReplayCache {
    /// Until when, and whether it was applied (false: under way).
    seen: Mutex<HashMap<EventId, (i64, bool)>>,
    capacity: usize,
}

impl Default for ReplayCache {
    fn default() -> Self {
        Self {
            seen: Mutex::default(),
            capacity: 100_000,
        }
    }
}

/// What the replay cache says of an event.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    New,
    /// Applied before.
    Again,
    /// Being applied by another request: the sender should retry (its answer is not yet
    /// known; "applied" could turn out false).
    Pending,
    Full,
}

impl ReplayCache {
    fn claim(&self, id: &EventId, until: i64, now: i64) -> Seen {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        match seen.get(id) {
            Some((t, true)) if *t > now => return Seen::Again,
            Some((t, false)) if *t > now => return Seen::Pending,
            _ => {}
        }
        if seen.len() >= self.capacity {
            seen.retain(|_, (t, _)| *t > now);
            if seen.len() >= self.capacity {
                return Seen::Full;
            }
        }
        seen.insert(id.clone(), (until, false));
        Seen::New
    }

    fn applied(&self, id: &EventId) {
        if let Some(e) = self
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(id)
        {
            e.1 = true;
        }
    }

    fn forget(&self, id: &EventId) {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `resp` with `Retry-After: secs` (RFC 9110 section 10.2.3): nothing was applied, and
/// the sender may try again after that long.
fn retry_after(mut resp: Response<ProxyBody>, secs: &'static str) -> Response<ProxyBody> {
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static(secs));
    resp
}

fn json_error(status: StatusCode, error: &str, description: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({"error": error, "error_description": description});
    response(status, "application/json", body.to_string())
}

/// The `logout_token` of an `application/x-www-form-urlencoded` body: exactly one.
fn logout_token(body: &[u8]) -> Option<String> {
    let mut found = None;
    for (k, v) in form_urlencoded::parse(body) {
        if k == "logout_token" {
            if found.is_some() {
                return None;
            }
            found = Some(v.into_owned());
        }
    }
    found
}

impl crate::pipeline::Pipeline {
    /// Serves a Back-Channel Logout request (OpenID Back-Channel Logout 1.0 section 2.8:
    /// 200 on success, 400 with a JSON error otherwise, `Cache-Control: no-store`).
    pub(crate) async fn back_channel_logout(
        &self,
        head: &http::request::Parts,
        body: hyper::body::Incoming,
        policy: &str,
    ) -> Response<ProxyBody> {
        const KIND: &str = "backchannel_logout";
        let count = |result: &str| {
            self.metrics
                .identity_events
                .with_label_values(&[KIND, result])
                .inc();
        };
        if head.method != http::Method::POST {
            let mut r = json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request",
                "logout tokens are POSTed",
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            return r;
        }
        let snapshot = self.config.load();
        if !snapshot.accepts_logout_tokens(policy) {
            count("not_accepted");
            return json_error(
                StatusCode::NOT_FOUND,
                "invalid_request",
                "this policy does not accept back-channel logout tokens",
            );
        }
        let form = head
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|m| {
                m.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            });
        if !form {
            count("rejected");
            return json_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the body must be application/x-www-form-urlencoded with a logout_token",
            );
        }
        let bytes: Bytes = match crate::pipeline::read_limited(
            &head.headers,
            body,
            MAX_BODY,
            Duration::from_secs(10),
        )
        .await
        {
            Ok(b) => b,
            Err(_) => {
                count("rejected");
                return json_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "the body could not be read (at most 64 KiB)",
                );
            }
        };
        let Some(token) = logout_token(&bytes) else {
            count("rejected");
            return json_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "exactly one logout_token parameter is required",
            );
        };
        let fingerprint = portcullis_policy::token_digest(&token).fingerprint();
        let now = now_secs();
        let mut result = snapshot.logout_token(policy, &token, now);
        if matches!(result, Err(EventError::UnknownKey))
            && let Some(refetch) = snapshot.logout_refetch(policy, &token)
            && let Some(newer) = self
                .keys
                .wait_for_keys(&refetch, &self.config, &snapshot)
                .await
        {
            // A key the issuer rotated in since the last fetch.
            result = newer.logout_token(policy, &token, now);
        }
        let event = match result {
            Ok(e) => e,
            Err(EventError::UnknownKey) => {
                count("unavailable");
                info!(policy, token = %fingerprint, "logout token signed with an unknown key");
                return retry_after(
                    json_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "temporarily_unavailable",
                        "the signing key is unknown; retry later",
                    ),
                    "5",
                );
            }
            Err(e) => {
                count("rejected");
                info!(policy, token = %fingerprint, error = %e, "logout token refused");
                let status = match e {
                    EventError::NotAccepted => StatusCode::NOT_FOUND,
                    _ => StatusCode::BAD_REQUEST,
                };
                return json_error(status, "invalid_request", &e.to_string());
            }
        };
        drop(snapshot);
        match self.replay.claim(&event.id, event.remember_until, now) {
            Seen::New => {}
            Seen::Again => {
                count("replay");
                info!(policy, issuer = %event.id.issuer, jti = %event.id.jti, token = %fingerprint, "logout token already applied");
                return response(StatusCode::OK, "application/json", "{}".into());
            }
            Seen::Pending => {
                return retry_after(
                    json_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "temporarily_unavailable",
                        "this logout token is being applied; retry shortly",
                    ),
                    "1",
                );
            }
            Seen::Full => {
                count("unavailable");
                return json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "too many recent events; retry later",
                );
            }
        }
        let started = Instant::now();
        let applied = self
            .events
            .apply(IdentityEvent {
                policy: event.policy.to_string(),
                revocations: event.revocations,
                stream: None,
                verification: None,
            })
            .await;
        match applied {
            Ok(replay) => {
                self.replay.applied(&event.id);
                count(if replay { "replay" } else { "applied" });
                info!(
                    policy,
                    issuer = %event.id.issuer,
                    jti = %event.id.jti,
                    token = %fingerprint,
                    replay,
                    apply_ms = started.elapsed().as_millis() as u64,
                    "back-channel logout applied"
                );
                response(StatusCode::OK, "application/json", "{}".into())
            }
            Err(e) => {
                self.replay.forget(&event.id);
                count("unavailable");
                warn!(policy, issuer = %event.id.issuer, jti = %event.id.jti, error = %e, "back-channel logout not applied");
                retry_after(
                    json_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "temporarily_unavailable",
                        "the revocation could not be written; retry later",
                    ),
                    "2",
                )
            }
        }
    }
}

/// An RFC 8935 section 2.3 error answer: `{"err": code, "description": text}`.
fn set_error(status: StatusCode, err: &str, description: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({"err": err, "description": description});
    response(status, "application/json", body.to_string())
}

impl crate::pipeline::Pipeline {
    /// Serves a Shared Signals push (RFC 8935): `POST` with `application/secevent+jwt`
    /// and the stream's `Authorization` value; 202 when accepted (applied, a replay, a
    /// verification, or an event the stream does not act on), 400 with `{err,
    /// description}` when the SET is refused, 401 for a wrong `Authorization`, 503 while
    /// the transmitter's keys are not fetched or the revocation cannot be written.
    pub(crate) async fn shared_signals_push(
        &self,
        head: &http::request::Parts,
        body: hyper::body::Incoming,
        target: &str,
    ) -> Response<ProxyBody> {
        const KIND: &str = "shared_signals";
        let count = |result: &str| {
            self.metrics
                .identity_events
                .with_label_values(&[KIND, result])
                .inc();
        };
        let Some((policy, stream)) = target.rsplit_once('/') else {
            return set_error(StatusCode::NOT_FOUND, "invalid_request", "no such stream");
        };
        if head.method != http::Method::POST {
            let mut r = set_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request",
                "SETs are POSTed",
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            return r;
        }
        let snapshot = self.config.load();
        let auth = {
            let mut all = head.headers.get_all(header::AUTHORIZATION).iter();
            match (all.next(), all.next()) {
                (Some(v), None) => Some(v.as_bytes()),
                (None, None) => None,
                _ => Some(&b"\0"[..]),
            }
        };
        match snapshot.ssf_push_authorized(policy, stream, auth) {
            Err(_) => {
                count("not_accepted");
                return set_error(StatusCode::NOT_FOUND, "invalid_request", "no such stream");
            }
            Ok(false) => {
                count("rejected");
                return set_error(
                    StatusCode::UNAUTHORIZED,
                    "authentication_failed",
                    "the Authorization header is not the stream's",
                );
            }
            Ok(true) => {}
        }
        let media_ok = head
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/secevent+jwt"));
        if !media_ok {
            count("rejected");
            return set_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the body must be application/secevent+jwt",
            );
        }
        let bytes = match crate::pipeline::read_limited(
            &head.headers,
            body,
            MAX_BODY,
            Duration::from_secs(10),
        )
        .await
        {
            Ok(b) => b,
            Err(_) => {
                count("rejected");
                return set_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "the body could not be read (at most 64 KiB)",
                );
            }
        };
        let raw = String::from_utf8_lossy(&bytes);
        let raw = raw.trim();
        let now = now_secs();
        let mut result = snapshot.security_event(policy, stream, raw, now);
        if matches!(&result, Err(e) if e.code == "unavailable")
            && let Some(refetch) = snapshot.ssf_refetch(policy, stream)
            && let Some(newer) = self
                .keys
                .wait_for_keys(&refetch, &self.config, &snapshot)
                .await
        {
            result = newer.security_event(policy, stream, raw, now);
        }
        let set = match result {
            Ok(s) => s,
            Err(e) => {
                let fingerprint = portcullis_policy::token_digest(raw).fingerprint();
                info!(policy, stream, set = %fingerprint, error = %e, "security event token refused");
                if e.code == "unavailable" {
                    count("unavailable");
                    return retry_after(
                        set_error(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "invalid_key",
                            e.description,
                        ),
                        "5",
                    );
                }
                count("rejected");
                return set_error(StatusCode::BAD_REQUEST, e.code, e.description);
            }
        };
        drop(snapshot);
        let accepted = || response(StatusCode::ACCEPTED, "application/json", String::new());
        if set.revocations.is_empty() && set.verification.is_none() {
            count("ignored");
            info!(policy, stream, event = %set.event, jti = %set.id.jti, "security event acknowledged, nothing to revoke");
            return accepted();
        }
        match self.replay.claim(&set.id, set.remember_until, now) {
            Seen::New => {}
            Seen::Again => {
                count("replay");
                return accepted();
            }
            Seen::Pending => {
                return retry_after(
                    set_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "invalid_request",
                        "this SET is being applied; retry shortly",
                    ),
                    "1",
                );
            }
            Seen::Full => {
                count("unavailable");
                return set_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "invalid_request",
                    "too many recent events; retry later",
                );
            }
        }
        let verification = set.verification.is_some();
        let (set_policy, set_stream) = (set.policy.clone(), set.stream.clone());
        let applied = self
            .events
            .apply(IdentityEvent {
                policy: set.policy.to_string(),
                revocations: set.revocations,
                stream: Some(set.stream.to_string()),
                verification: set.verification,
            })
            .await;
        match applied {
            Ok(replay) => {
                self.replay.applied(&set.id);
                if verification {
                    self.metrics
                        .ssf_verified
                        .with_label_values(&[&set_policy, &set_stream])
                        .set(now);
                }
                count(if verification {
                    "verification"
                } else if replay {
                    "replay"
                } else {
                    "applied"
                });
                info!(policy, stream, event = %set.event, jti = %set.id.jti, replay, "security event applied");
                accepted()
            }
            Err(e) if e == UNKNOWN_STATE => {
                // SSF 1.0 section 8.1.4.1: a state the receiver did not ask for.
                count("rejected");
                set_error(StatusCode::BAD_REQUEST, "invalid_state", UNKNOWN_STATE)
            }
            Err(e) => {
                self.replay.forget(&set.id);
                count("unavailable");
                warn!(policy, stream, jti = %set.id.jti, error = %e, "security event not applied");
                retry_after(
                    set_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "invalid_request",
                        "the revocation could not be written; retry later",
                    ),
                    "2",
                )
            }
        }
    }
}

/// A stream's verification: the `state` asked for, and when the answer carrying it came.
type Verification = (String, Option<i64>);

/// An event waiting for the controller's answer, and since when.
type Waiting = (oneshot::Sender<Result<bool, String>>, Instant);

/// Standalone mode: event revocations kept beside the manifests (and in a file, when one
/// is given, so a restart does not bring revoked tokens back) and compiled into their
/// policies.
#[derive(Default)]
pub struct LocalEvents {
    entries: Mutex<BTreeMap<String, Vec<Revocation>>>,
    file: Option<PathBuf>,
    /// Signalled on every change: the manifest loop recompiles.
    pub changed: Notify,
    /// Verification state per (policy, stream): the `state` asked for, and when an
    /// answer carrying it came.
    verification: Mutex<HashMap<(String, String), Verification>>,
}

impl LocalEvents {
    /// Events kept in `file` (JSON: policy -> entries), loaded now if it exists. A file
    /// that cannot be read is an error: starting without it would forget revocations.
    pub fn with_file(file: PathBuf) -> Result<Self, String> {
        let entries = match std::fs::read(&file) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| format!("{}: not an identity-event file: {e}", file.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(format!("{}: {e}", file.display())),
        };
        Ok(Self {
            entries: Mutex::new(entries),
            file: Some(file),
            changed: Notify::new(),
            verification: Mutex::default(),
        })
    }

    /// A verification event was asked for on a stream with `state`.
    pub fn verification_requested(&self, policy: &str, stream: &str, state: String) {
        let mut v = self.verification.lock().unwrap_or_else(|e| e.into_inner());
        let e = v
            .entry((policy.to_owned(), stream.to_owned()))
            .or_insert((String::new(), None));
        e.0 = state;
    }

    /// When a stream last answered a verification request with the `state` asked for.
    pub fn verified_at(&self, policy: &str, stream: &str) -> Option<i64> {
        self.verification
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(policy.to_owned(), stream.to_owned()))
            .and_then(|(_, at)| *at)
    }

    /// The entries of `policy` (`namespace/name`) not yet expired at `now`.
    pub fn entries(&self, policy: &str, now: i64) -> Vec<Revocation> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(policy)
            .map(|list| list.iter().filter(|r| !expired(r, now)).cloned().collect())
            .unwrap_or_default()
    }

    fn save(&self, entries: &BTreeMap<String, Vec<Revocation>>) -> Result<(), String> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let tmp = file.with_extension("tmp");
        let body = serde_json::to_vec_pretty(entries).map_err(|e| e.to_string())?;
        std::fs::write(&tmp, body)
            .and_then(|()| std::fs::rename(&tmp, file))
            .map_err(|e| format!("{}: {e}", file.display()))
    }
}

fn expired(r: &Revocation, now: i64) -> bool {
    r.expires_at
        .as_deref()
        .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
        .is_some_and(|t| t.as_second() <= now)
}

fn same_event(a: &Revocation, b: &Revocation) -> bool {
    matches!((&a.source, &b.source), (Some(x), Some(y)) if x.issuer == y.issuer && x.jti == y.jti)
}

impl EventSink for Arc<LocalEvents> {
    fn apply(&self, event: IdentityEvent) -> BoxFuture<'static, Result<bool, String>> {
        let this = self.clone();
        Box::pin(async move {
            let now = now_secs();
            if let (Some(stream), Some(state)) = (&event.stream, &event.verification) {
                let mut v = this.verification.lock().unwrap_or_else(|e| e.into_inner());
                match v.get_mut(&(event.policy.clone(), stream.clone())) {
                    Some((asked, at)) if asked == state && !state.is_empty() => {
                        *at = Some(now);
                        return Ok(false);
                    }
                    _ => return Err(UNKNOWN_STATE.into()),
                }
            }
            let mut entries = this.entries.lock().unwrap_or_else(|e| e.into_inner());
            let list = entries.entry(event.policy.clone()).or_default();
            list.retain(|r| !expired(r, now));
            if event
                .revocations
                .iter()
                .any(|new| list.iter().any(|old| same_event(old, new)))
            {
                return Ok(true);
            }
            let before = list.len();
            list.extend(event.revocations);
            if let Err(e) = this.save(&entries) {
                entries
                    .get_mut(&event.policy)
                    .map(|l| l.truncate(before))
                    .unwrap_or_default();
                return Err(e);
            }
            drop(entries);
            this.changed.notify_one();
            Ok(false)
        })
    }
}

/// Standalone mode's Shared Signals receiver: polls and verification requests for the
/// streams of the config in force, applied to the standalone overlay.
pub struct StandaloneSsf {
    /// The config in force.
    pub config: Arc<crate::config::LiveConfig>,
    /// The overlay.
    pub events: Arc<LocalEvents>,
    /// Metrics.
    pub metrics: crate::metrics::Metrics,
}

impl portcullis_fetch::ssf::SsfReceiver for StandaloneSsf {
    fn snapshot(&self) -> Arc<portcullis_policy::Snapshot> {
        self.config.load()
    }

    fn apply(
        &self,
        set: portcullis_policy::events::ValidatedSet,
    ) -> BoxFuture<'static, Result<(), String>> {
        let (events, metrics) = (self.events.clone(), self.metrics.clone());
        Box::pin(async move {
            let verification = set.verification.is_some();
            let nothing = set.revocations.is_empty() && !verification;
            let r = if nothing {
                Ok(false)
            } else {
                events
                    .apply(IdentityEvent {
                        policy: set.policy.to_string(),
                        revocations: set.revocations,
                        stream: Some(set.stream.to_string()),
                        verification: set.verification,
                    })
                    .await
            };
            let result = match &r {
                Ok(_) if nothing => "ignored",
                Ok(_) if verification => "verification",
                Ok(true) => "replay",
                Ok(false) => "applied",
                Err(_) => "unavailable",
            };
            metrics
                .identity_events
                .with_label_values(&["shared_signals", result])
                .inc();
            if verification
                && r.is_ok()
                && let Some(at) = events.verified_at(&set.policy, &set.stream)
            {
                metrics
                    .ssf_verified
                    .with_label_values(&[&set.policy, &set.stream])
                    .set(at);
            }
            r.map(|_| ())
        })
    }

    fn report(&self, policy: &str, stream: &str, report: portcullis_fetch::ssf::StreamReport) {
        use portcullis_fetch::ssf::StreamReport;
        let result = match report {
            StreamReport::Polled(_) => "ok",
            StreamReport::Failed(_) => "failed",
            StreamReport::VerificationRequested(state) => {
                self.events.verification_requested(policy, stream, state);
                "verification_requested"
            }
            StreamReport::Refused(_) => {
                self.metrics
                    .identity_events
                    .with_label_values(&["shared_signals", "rejected"])
                    .inc();
                return;
            }
        };
        self.metrics
            .ssf_polls
            .with_label_values(&[policy, stream, result])
            .inc();
    }
}

/// Cluster mode: events go to the controller over the config stream, which writes them to
/// the TokenPolicy; answered by `applied`.
pub struct ControllerEvents {
    outgoing: Arc<Mutex<Option<mpsc::Sender<Bytes>>>>,
    pending: Mutex<HashMap<u64, Waiting>>,
    next: AtomicU64,
}

/// How long an event waits for the controller's answer.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);

impl ControllerEvents {
    /// Events over `outgoing` (set while a stream is up).
    pub fn new(outgoing: Arc<Mutex<Option<mpsc::Sender<Bytes>>>>) -> Self {
        Self {
            outgoing,
            pending: Mutex::default(),
            next: AtomicU64::new(1),
        }
    }

    /// The controller's answer to event `id`.
    pub fn on_applied(&self, id: u64, result: Result<bool, String>) {
        let waiting = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        if let Some((tx, _)) = waiting {
            let _ = tx.send(result);
        }
    }
}

impl EventSink for Arc<ControllerEvents> {
    fn apply(&self, event: IdentityEvent) -> BoxFuture<'static, Result<bool, String>> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending.retain(|_, (_, at)| at.elapsed() < APPLY_TIMEOUT * 6);
            pending.insert(id, (tx, Instant::now()));
        }
        let sent =
            crate::subscriber::send_message(&self.outgoing, &ProxyMessage::Event { id, event });
        Box::pin(async move {
            if !sent {
                return Err("the controller is not connected".into());
            }
            match tokio::time::timeout(APPLY_TIMEOUT, rx).await {
                Ok(Ok(r)) => r,
                _ => Err("the controller did not answer in time".into()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_logout_token_is_read() {
        assert_eq!(
            logout_token(b"logout_token=a.b.c").as_deref(),
            Some("a.b.c")
        );
        assert_eq!(
            logout_token(b"x=1&logout_token=a%2Eb.c").as_deref(),
            Some("a.b.c")
        );
        assert_eq!(logout_token(b"logout_token=a&logout_token=b"), None);
        assert_eq!(logout_token(b"token=a"), None);
    }

    #[test]
    fn the_replay_cache_remembers_until_the_token_is_too_old_and_stays_bounded() {
        let c = ReplayCache {
            seen: Mutex::default(),
            capacity: 2,
        };
        let id = |j: &str| EventId {
            issuer: "https://idp".into(),
            jti: j.into(),
        };
        assert_eq!(c.claim(&id("a"), 100, 0), Seen::New);
        assert_eq!(c.claim(&id("a"), 100, 10), Seen::Pending, "under way");
        c.applied(&id("a"));
        assert_eq!(c.claim(&id("a"), 100, 50), Seen::Again);
        assert_eq!(
            c.claim(&id("a"), 200, 100),
            Seen::New,
            "remembered until 100"
        );
        assert_eq!(c.claim(&id("b"), 200, 100), Seen::New);
        assert_eq!(
            c.claim(&id("c"), 200, 100),
            Seen::Full,
            "never forgets a live one"
        );
        assert_eq!(
            c.claim(&id("c"), 300, 250),
            Seen::New,
            "expired ones make room"
        );
    }
}
