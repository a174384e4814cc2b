//! RFC 7662 introspection calls, collapsed per token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portcullis_policy::IntrospectionEndpoint;
use prometheus::{IntCounterVec, Opts, Registry};
use serde_json::Value;
use tokio::sync::OnceCell;
use tracing::{debug, warn};

use crate::client::HttpClient;

/// Largest answer accepted.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

type Shared = Arc<OnceCell<Result<Value, String>>>;

/// Calls in flight are collapsed per endpoint, client and token: two policies that name
/// different endpoints (or credentials) never share an answer.
type FlightKey = (Arc<str>, Arc<str>, [u8; 32]);

/// Most calls in flight to one endpoint; more are refused at once (503 for that request)
/// rather than queued, so a flood of distinct tokens cannot become a flood of calls.
pub const MAX_CONCURRENT_CALLS: usize = 32;
/// After this many failures in a row, calls to the endpoint fail fast for
/// [`BREAKER_OPEN`]: a dead provider is not hammered, and requests get 503 at once.
pub const BREAKER_FAILURES: u32 = 5;
/// How long the breaker stays open.
pub const BREAKER_OPEN: Duration = Duration::from_secs(1);

#[derive(Default)]
struct EndpointState {
    inflight: usize,
    failures: u32,
    open_until: Option<Instant>,
}

/// Calls introspection endpoints; concurrent requests for the same token share one call.
pub struct Introspector {
    http: Arc<HttpClient>,
    inflight: Mutex<HashMap<FlightKey, Shared>>,
    endpoints: Mutex<HashMap<Arc<str>, EndpointState>>,
    calls: IntCounterVec,
}

impl std::fmt::Debug for Introspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Introspector").finish_non_exhaustive()
    }
}

/// Removes a flight's entry when its last waiter is gone before the call finished (a
/// cancelled request), so abandoned tokens do not pile up.
struct FlightGuard<'a> {
    map: &'a Mutex<HashMap<FlightKey, Shared>>,
    key: FlightKey,
    cell: Shared,
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let ours = map
            .get(&self.key)
            .is_some_and(|c| Arc::ptr_eq(c, &self.cell));
        // Done (every later request uses the snapshot's cache), or abandoned by everyone.
        if ours && (self.cell.initialized() || Arc::strong_count(&self.cell) <= 2) {
            map.remove(&self.key);
        }
    }
}

/// A call slot; given back when dropped (also when the call is cancelled), with the
/// call's outcome counted toward the breaker.
struct Slot<'a> {
    owner: &'a Introspector,
    url: &'a Arc<str>,
    outcome: Option<bool>,
}

impl Slot<'_> {
    fn finish(mut self, ok: bool) {
        self.outcome = Some(ok);
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut eps = self
            .owner
            .endpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let st = eps.entry(self.url.clone()).or_default();
        st.inflight = st.inflight.saturating_sub(1);
        match self.outcome {
            Some(true) => {
                st.failures = 0;
                st.open_until = None;
            }
            Some(false) => {
                st.failures = st.failures.saturating_add(1);
                if st.failures >= BREAKER_FAILURES {
                    st.open_until = Some(Instant::now() + BREAKER_OPEN);
                }
            }
            None => {}
        }
    }
}

impl Introspector {
    /// An introspector registering `portcullis_introspection_calls_total{issuer,result}`
    /// (`active`, `inactive`, `error`, `refused`: over the concurrency cap or breaker
    /// open) in `registry`.
    pub fn new(http: Arc<HttpClient>, registry: &Registry) -> Self {
        let calls = IntCounterVec::new(
            Opts::new(
                "portcullis_introspection_calls_total",
                "Calls to introspection endpoints, by issuer and result (active, inactive, error, refused).",
            ),
            &["issuer", "result"],
        )
        .expect("valid metric");
        if let Err(e) = registry.register(Box::new(calls.clone())) {
            debug!(error = %e, "introspection metric already registered");
        }
        Self {
            http,
            inflight: Mutex::new(HashMap::new()),
            endpoints: Mutex::new(HashMap::new()),
            calls,
        }
    }

    /// Asks `endpoint` about `token` (whose SHA-256 is `digest`). `Err` when the endpoint
    /// could not be reached in time, did not answer with a JSON object, or is refused
    /// calls right now (too many in flight, or failing); the message never contains the
    /// token.
    pub async fn introspect(
        &self,
        endpoint: &IntrospectionEndpoint,
        digest: [u8; 32],
        token: &str,
    ) -> Result<Value, String> {
        self.introspect_then(endpoint, digest, token, Result::clone)
            .await
    }

    /// Like [`Introspector::introspect`], and hands the answer to `apply` while this
    /// request still holds its place in the flight: a caller that caches the verdict in
    /// `apply` has it cached before the flight can end, so a request for the same token
    /// arriving just after the call either joins the finished flight or finds the verdict
    /// cached; it never starts a second call.
    pub async fn introspect_then<T>(
        &self,
        endpoint: &IntrospectionEndpoint,
        digest: [u8; 32],
        token: &str,
        apply: impl FnOnce(&Result<Value, String>) -> T,
    ) -> T {
        let key = (endpoint.url.clone(), endpoint.client_id.clone(), digest);
        let cell = {
            let mut map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(key.clone()).or_default().clone()
        };
        // The guard holds the only other reference this request keeps (see its Drop).
        let guard = FlightGuard {
            map: &self.inflight,
            key,
            cell,
        };
        let result = guard
            .cell
            .get_or_init(|| async {
                let r = match self.admit(endpoint) {
                    Err(why) => {
                        self.calls
                            .with_label_values(&[&*endpoint.issuer, "refused"])
                            .inc();
                        return Err(why);
                    }
                    Ok(slot) => {
                        let r = self.call(endpoint, token).await;
                        slot.finish(r.is_ok());
                        r
                    }
                };
                let label = match &r {
                    Ok(v) if v.get("active") == Some(&Value::Bool(true)) => "active",
                    Ok(_) => "inactive",
                    Err(_) => "error",
                };
                self.calls
                    .with_label_values(&[&*endpoint.issuer, label])
                    .inc();
                if let Err(e) = &r {
                    warn!(issuer = %endpoint.issuer, error = %e, "introspection failed");
                }
                r
            })
            .await;
        let out = apply(result);
        drop(guard);
        out
    }

    /// Tokens with a call in flight (for tests and debugging).
    pub fn flights(&self) -> usize {
        self.inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Takes a call slot for the endpoint, unless the cap is reached or the breaker open.
    fn admit<'a>(&'a self, ep: &'a IntrospectionEndpoint) -> Result<Slot<'a>, String> {
        let mut eps = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        let st = eps.entry(ep.url.clone()).or_default();
        if st.open_until.is_some_and(|t| Instant::now() < t) {
            return Err(format!("{}: failing; calls paused", ep.url));
        }
        if st.inflight >= MAX_CONCURRENT_CALLS {
            return Err(format!(
                "{}: {MAX_CONCURRENT_CALLS} calls already in flight",
                ep.url
            ));
        }
        st.inflight += 1;
        Ok(Slot {
            owner: self,
            url: &ep.url,
            outcome: None,
        })
    }

    async fn call(&self, ep: &IntrospectionEndpoint, token: &str) -> Result<Value, String> {
        let resp = self
            .http
            .post_form(
                &ep.url,
                &ep.client_id,
                &ep.client_secret,
                &[("token", token), ("token_type_hint", "access_token")],
                ep.timeout,
                MAX_ANSWER_BYTES,
            )
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status.is_success() {
            return Err(format!("{}: HTTP {}", ep.url, resp.status));
        }
        let v: Value = serde_json::from_slice(&resp.body)
            .map_err(|e| format!("{}: answer is not JSON: {e}", ep.url))?;
        if !v.is_object() {
            return Err(format!("{}: answer is not a JSON object", ep.url));
        }
        Ok(v)
    }
}
