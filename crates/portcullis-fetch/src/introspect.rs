//! RFC 7662 introspection calls, collapsed per token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use portcullis_policy::IntrospectionEndpoint;
use prometheus::{IntCounterVec, Opts, Registry};
use serde_json::Value;
use tokio::sync::OnceCell;
use tracing::{debug, warn};

use crate::client::HttpClient;

/// Largest answer accepted.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

type Shared = Arc<OnceCell<Result<Value, String>>>;

/// Calls introspection endpoints; concurrent requests for the same token share one call.
pub struct Introspector {
    http: Arc<HttpClient>,
    inflight: Mutex<HashMap<[u8; 32], Shared>>,
    calls: IntCounterVec,
}

impl std::fmt::Debug for Introspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Introspector").finish_non_exhaustive()
    }
}

impl Introspector {
    /// An introspector registering `portcullis_introspection_calls_total{issuer,result}`
    /// (`active`, `inactive`, `error`) in `registry`.
    pub fn new(http: Arc<HttpClient>, registry: &Registry) -> Self {
        let calls = IntCounterVec::new(
            Opts::new(
                "portcullis_introspection_calls_total",
                "Calls to introspection endpoints, by issuer and result (active, inactive, error).",
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
            calls,
        }
    }

    /// Asks `endpoint` about `token` (whose SHA-256 is `digest`). `Err` when the endpoint
    /// could not be reached in time or did not answer with a JSON object; the message
    /// never contains the token.
    pub async fn introspect(
        &self,
        endpoint: &IntrospectionEndpoint,
        digest: [u8; 32],
        token: &str,
    ) -> Result<Value, String> {
        let cell = {
            let mut map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(digest).or_default().clone()
        };
        let result = cell
            .get_or_init(|| async {
                let r = self.call(endpoint, token).await;
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
            .await
            .clone();
        let mut map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(&digest).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            map.remove(&digest);
        }
        result
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
