//! What the compiler and [`crate::remote`] both read off the input objects: their names,
//! and the values in Secrets. A leaf: it imports neither, so the two never import each
//! other through it.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use portcullis_api::{ApiRoute, TokenPolicy};

/// Namespace and name of an input object: what `kube::ResourceExt` gives, without kube.
pub(crate) trait Named {
    /// The object's metadata.
    fn meta(&self) -> &ObjectMeta;

    /// The namespace, or `""` when there is none.
    fn ns(&self) -> String {
        self.meta().namespace.clone().unwrap_or_default()
    }

    /// The name, or for an object not created yet its `generateName` (as kube's
    /// `ResourceExt::name_any`).
    fn name_any(&self) -> String {
        let meta = self.meta();
        meta.name
            .clone()
            .or_else(|| meta.generate_name.clone())
            .unwrap_or_default()
    }
}

impl Named for ApiRoute {
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
}

impl Named for TokenPolicy {
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
}

impl Named for Secret {
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
}

/// The input Secrets by `(namespace, name)`.
pub(crate) type SecretIndex<'a> = HashMap<(String, String), &'a Secret>;

/// Indexes `secrets` by `(namespace, name)`; of two with the same key the later wins.
pub(crate) fn index_secrets(secrets: &[Secret]) -> SecretIndex<'_> {
    secrets
        .iter()
        .map(|s| ((s.ns(), s.name_any()), s))
        .collect()
}

/// Value of `key` in a Secret's `data` (or, as written in standalone manifests,
/// `stringData`).
pub(crate) fn secret_value(secret: &Secret, key: &str) -> Option<Vec<u8>> {
    if let Some(v) = secret.data.as_ref().and_then(|d| d.get(key)) {
        return Some(v.0.clone());
    }
    secret
        .string_data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|s| s.as_bytes().to_vec())
}
