//! Fetched key sets, kept in Secrets of the controller's namespace.
//!
//! Only the leader fetches (so the provider sees one fetcher, whatever the replica count),
//! and it writes each good document into a Secret `portcullis-jwks-<hash of the URL>`
//! labelled `portcullis.dev/jwks`. Every replica reads those Secrets through its Secret
//! watch and publishes them as `RemoteKeys` sources, so all replicas publish the same keys
//! at the same version (the Secret's resourceVersion), and a new leader starts from the
//! last good keys even while the provider is down. A replica that is not the leader passes
//! a proxy's refetch request on by stamping the Secret's
//! `portcullis.dev/refetch-requested-at` annotation; the leader's fetcher rate-limits it.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use portcullis_fetch::SourceState;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tracing::{debug, warn};

/// Label on every key-set Secret.
pub const JWKS_LABEL: &str = "portcullis.dev/jwks";
/// Secret key holding the source key (the URL, plus a suffix when the source is specific
/// to an issuer or a CA bundle).
pub const URL_KEY: &str = "url";
/// Secret key holding the JWKS document.
pub const JWKS_KEY: &str = "jwks.json";
/// Annotation: when the document was fetched (RFC 3339).
pub const FETCHED_AT: &str = "portcullis.dev/fetched-at";
/// Annotation: the last fetch's outcome (`Fetched`, `FetchFailed`, ...).
pub const RESULT: &str = "portcullis.dev/fetch-result";
/// Annotation: what went wrong.
pub const MESSAGE: &str = "portcullis.dev/fetch-message";
/// Annotation: a replica asks the leader for a refetch (Unix milliseconds).
pub const REFETCH_REQUESTED: &str = "portcullis.dev/refetch-requested-at";

/// The Secret name for a source URL.
pub fn secret_name(url: &str) -> String {
    let digest = Sha256::digest(url.as_bytes());
    format!("portcullis-jwks-{}", &hex::encode(digest)[..16])
}

/// The document stored for `url` in `secret`, if the Secret is the one for that URL.
pub fn stored_document(secret: &Secret, url: &str) -> Option<Value> {
    let data = secret.data.as_ref()?;
    if data.get(URL_KEY).map(|v| v.0.as_slice()) != Some(url.as_bytes()) {
        return None;
    }
    serde_json::from_slice(&data.get(JWKS_KEY)?.0).ok()
}

/// When the stored document was fetched.
pub fn stored_fetched_at(secret: &Secret) -> Option<SystemTime> {
    let t: k8s_openapi::jiff::Timestamp = secret.annotations().get(FETCHED_AT)?.parse().ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(t.as_second().max(0) as u64))
}

/// Writes a source's last good document and outcome (server-side apply). An error says
/// why the keys could not be stored (they then reach no proxy).
pub async fn write(
    client: &Client,
    namespace: &str,
    field_manager: &str,
    state: &SourceState,
    timeout: Duration,
) -> Result<(), String> {
    let Some(doc) = &state.document else {
        return Ok(());
    };
    let url = &state.source.key;
    let name = secret_name(url);
    let fetched_at = state
        .fetched_at
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .and_then(|d| k8s_openapi::jiff::Timestamp::from_second(d.as_secs() as i64).ok())
        .map(|t| t.to_string())
        .unwrap_or_default();
    let mut data = BTreeMap::new();
    data.insert(URL_KEY.to_owned(), ByteString(url.as_bytes().to_vec()));
    data.insert(
        JWKS_KEY.to_owned(),
        ByteString(serde_json::to_vec(doc).unwrap_or_default()),
    );
    let secret = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {JWKS_LABEL: "true", "app.kubernetes.io/managed-by": "portcullis"},
            "annotations": {
                FETCHED_AT: fetched_at,
                RESULT: state.result.reason(),
                MESSAGE: state.message.chars().take(1000).collect::<String>(),
                "portcullis.dev/issuer": state.source.issuer,
                "portcullis.dev/url": state.source.url,
            },
        },
        "type": "Opaque",
        "data": data,
    });
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let params = PatchParams::apply(field_manager).force();
    let result = match tokio::time::timeout(
        timeout,
        api.patch(&name, &params, &Patch::Apply(&secret)),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!(
            "fetched, but cannot store the keys in Secret {namespace}/{name}: {e}"
        )),
        Err(_) => Err(format!(
            "fetched, but storing the keys in Secret {namespace}/{name} timed out"
        )),
    };
    match &result {
        Ok(()) => debug!(url, secret = name, "stored fetched keys"),
        Err(e) => warn!(url, error = %e, "could not store fetched keys"),
    }
    result
}

/// Asks the leader for a refetch of `url` by stamping its Secret.
pub async fn request_refetch(client: &Client, namespace: &str, url: &str, timeout: Duration) {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let patch =
        serde_json::json!({"metadata": {"annotations": {REFETCH_REQUESTED: now.to_string()}}});
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let name = secret_name(url);
    match tokio::time::timeout(
        timeout,
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)),
    )
    .await
    {
        Ok(Ok(_)) => debug!(url, "asked the leader for a refetch"),
        Ok(Err(e)) => debug!(url, error = %e, "could not pass a refetch request on"),
        Err(_) => debug!(url, "passing a refetch request on timed out"),
    }
}
