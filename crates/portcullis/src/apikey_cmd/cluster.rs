//! `apikey create --apply`: create the new key's Secret, read and re-date a rotated key's
//! old one. Plain calls (get, create, JSON merge patch), with the kubeconfig or in-cluster
//! config like `portcullis revoke`.

use anyhow::Context;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};

use super::manifest;

/// The field manager named on what `apikey create` writes.
const FIELD_MANAGER: &str = "portcullis-apikey";

/// Secrets of one namespace.
pub struct Cluster {
    api: Api<Secret>,
    namespace: String,
}

impl Cluster {
    /// Connects; `namespace` `None` is the kubeconfig context's namespace.
    pub async fn connect(namespace: Option<&str>) -> anyhow::Result<Self> {
        let client = kube::Client::try_default()
            .await
            .context("connecting to the Kubernetes API (KUBECONFIG or in-cluster config)")?;
        let namespace = namespace.unwrap_or(client.default_namespace()).to_owned();
        Ok(Self {
            api: Api::namespaced(client, &namespace),
            namespace,
        })
    }

    /// The namespace the Secrets are in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Reads the Secret `name`.
    pub async fn get(&self, name: &str) -> anyhow::Result<Secret> {
        self.api
            .get(name)
            .await
            .with_context(|| format!("reading Secret {}/{name}", self.namespace))
    }

    /// Creates `secret`; fails if a Secret of that name exists (it is never replaced).
    pub async fn create(&self, secret: &Secret) -> anyhow::Result<()> {
        let name = secret.metadata.name.as_deref().unwrap_or_default();
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..Default::default()
        };
        self.api
            .create(&params, secret)
            .await
            .with_context(|| format!("creating Secret {}/{name}", self.namespace))?;
        tracing::debug!(namespace = %self.namespace, %name, "created API-key Secret");
        Ok(())
    }

    /// Sets `old`'s `expiresAt` to `until` by a JSON merge patch that the API server refuses
    /// if the Secret changed since `old` was read.
    pub async fn set_expiry(&self, old: &Secret, until: i64) -> anyhow::Result<()> {
        let name = old.metadata.name.as_deref().unwrap_or_default();
        let patch = manifest::expiry_patch(old, until)?;
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..Default::default()
        };
        self.api
            .patch(name, &params, &Patch::Merge(&patch))
            .await
            .with_context(|| format!("setting expiresAt on Secret {}/{name}", self.namespace))?;
        tracing::debug!(namespace = %self.namespace, %name, until, "re-dated rotated API-key Secret");
        Ok(())
    }
}
