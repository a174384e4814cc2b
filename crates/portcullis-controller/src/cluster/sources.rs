//! What the controller publishes: the [`SourceSet`] built from the store (routes and
//! policies with slim metadata, the Secrets they use with only the data keys they use,
//! fetched key sets), the resourceVersion of each source for versioning, and the compile
//! errors that become status.
//!
//! Secrets reach proxies only when a policy or route uses them: an LLM backend's
//! `credentials`, or by `secretRef` (a JWKS, a PEM, a CA
//! bundle), as introspection credentials, or as API keys selected by a policy's
//! `apiKeys.selector` among the Secrets of its namespace labelled
//! `portcullis.dev/api-key: "true"`. API-key Secrets keep their labels (the compiler
//! selects by label again, as it does in standalone mode with raw Secrets).

use std::collections::{BTreeMap, HashMap, HashSet};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use portcullis_api::push::{ObjectKey, RemoteKeys, SourceObject, SourceSet};
use portcullis_api::{ApiRoute, CompileReason, TokenPolicy};
use portcullis_policy::{CompileError, CompileOptions, RemoteSource, apikey};

use super::store::{Key, Store, StoreInner, key_of, rv_of};

/// resourceVersions of the source objects (by `SourceSet` map key), and the highest
/// resourceVersion among deletions seen.
#[derive(Debug, Default)]
pub(crate) struct Versions {
    pub(crate) of: HashMap<String, u64>,
    /// Secrets in the store that are not published but could be (those of a namespace
    /// whose policies select API keys): one that drops out of the set (relabelled) is
    /// removed at the version of the change that deselected it.
    pub(crate) unpublished: HashMap<String, u64>,
    pub(crate) deleted: u64,
}

impl Versions {
    /// The version a change from `prev` to `next` is published at: the highest
    /// resourceVersion among the objects that changed (etcd revisions, the same for every
    /// replica). Status writes bump resourceVersions too, so objects that did not change
    /// are left out: replicas that saw the same changes agree on the version.
    pub(crate) fn for_change(&self, prev: &SourceSet, next: &SourceSet) -> u64 {
        let changes = prev.diff(next);
        let key = |k: &ObjectKey| SourceSet::map_key(k);
        let mut v = changes
            .upserts
            .iter()
            .map(|o| key(&o.key()))
            .chain(changes.revocations.iter().map(|e| key(&e.policy)))
            .filter_map(|k| self.of.get(&k).copied())
            .max()
            .unwrap_or(0);
        for d in &changes.deletes {
            v = v.max(
                self.unpublished
                    .get(&key(d))
                    .copied()
                    .unwrap_or(self.deleted),
            );
        }
        v
    }
}

/// One compile of the store: what to publish, and what to report.
pub(crate) struct Compiled {
    pub(crate) sources: SourceSet,
    pub(crate) versions: Versions,
    pub(crate) errors: Vec<CompileError>,
    pub(crate) remote: Vec<RemoteSource>,
}

/// Builds the published source set from the store and compiles it for errors.
pub(crate) fn compile_store(store: &Store, jwks_namespace: &str) -> Compiled {
    let g = store.lock();
    let (sources, versions, remote) = source_set(&g, jwks_namespace);
    let errors = compile_errors(&g, &sources);
    Compiled {
        sources,
        versions,
        errors,
        remote,
    }
}

/// How much of one Secret is published.
#[derive(Default)]
struct SecretUse {
    /// Data keys a policy reads.
    keys: HashSet<String>,
    /// Selected as an API key: its labels are kept too.
    api_key: bool,
}

/// The source set published for the store's content, with each source's content
/// resourceVersion, and the remote key sources its policies use.
pub(crate) fn source_set(
    g: &StoreInner,
    jwks_namespace: &str,
) -> (SourceSet, Versions, Vec<RemoteSource>) {
    let mut set = SourceSet::default();
    let mut rvs = Versions {
        deleted: g.deleted_rv,
        ..Default::default()
    };
    let mut used: BTreeMap<Key, SecretUse> = BTreeMap::new();
    let mut api_key_namespaces: HashSet<String> = HashSet::new();
    for p in g.policies.values() {
        let key = key_of(p);
        rvs.of.insert(
            format!("TokenPolicy/{}/{}", key.0, key.1),
            g.policy_rv.get(&key).copied().unwrap_or_else(|| rv_of(p)),
        );
        let ns = key.0.clone();
        for iss in &p.spec.issuers {
            let jwks = iss.jwks.as_ref();
            for r in [
                jwks.and_then(|j| j.secret_ref.as_ref()),
                jwks.and_then(|j| j.ca_bundle_secret_ref.as_ref()),
                // The DPoP nonce key: every proxy makes and checks the same nonces.
                iss.dpop
                    .as_ref()
                    .and_then(|d| d.nonce.as_ref())
                    .map(|n| &n.secret_ref),
            ]
            .into_iter()
            .flatten()
            {
                used.entry((ns.clone(), r.name.clone()))
                    .or_default()
                    .keys
                    .insert(r.key.clone());
            }
            if let Some(intro) = &iss.introspection {
                let keys = &mut used
                    .entry((ns.clone(), intro.credentials_secret_ref.name.clone()))
                    .or_default()
                    .keys;
                keys.insert(portcullis_policy::INTROSPECTION_CLIENT_ID_KEY.into());
                keys.insert(portcullis_policy::INTROSPECTION_CLIENT_SECRET_KEY.into());
            }
        }
        if let Some(api_keys) = &p.spec.api_keys {
            for (key, _) in api_key_secrets(g, &ns, &api_keys.selector.match_labels) {
                let u = used.entry(key.clone()).or_default();
                u.api_key = true;
                u.keys
                    .extend(apikey::DATA_KEYS.iter().map(|k| (*k).to_owned()));
            }
            api_key_namespaces.insert(ns.clone());
        }
        // Shared Signals push streams: the Authorization value proxies check. The poll and
        // management tokens stay with the controller (its leader polls and asks for
        // verification): proxies never hold them.
        for s in p
            .spec
            .identity_events
            .iter()
            .flat_map(|e| &e.shared_signals)
        {
            if let Some(r) = s.push.as_ref().map(|x| &x.authorization_secret_ref) {
                used.entry((ns.clone(), r.name.clone()))
                    .or_default()
                    .keys
                    .insert(r.key.clone());
            }
        }
        let mut clean = TokenPolicy::new(&p.name_any(), p.spec.clone());
        clean.metadata = slim_meta(&p.metadata);
        set.upsert(SourceObject::TokenPolicy(clean));
    }
    for r in g.routes.values() {
        let key = key_of(r);
        rvs.of.insert(
            format!("ApiRoute/{}/{}", key.0, key.1),
            g.route_rv.get(&key).copied().unwrap_or_else(|| rv_of(r)),
        );
        // An LLM backend's provider keys.
        for c in r.spec.backend.llm.iter().flat_map(|l| &l.credentials) {
            used.entry((key.0.clone(), c.secret_ref.name.clone()))
                .or_default()
                .keys
                .insert(c.secret_ref.key.clone());
        }
        // An MCP route's own credential for its server.
        if let Some(c) = r
            .spec
            .mcp
            .as_ref()
            .and_then(|m| m.upstream_credential.as_ref())
        {
            used.entry((key.0.clone(), c.secret_ref.name.clone()))
                .or_default()
                .keys
                .insert(c.secret_ref.key.clone());
        }
        let mut clean = ApiRoute::new(&r.name_any(), r.spec.clone());
        clean.metadata = slim_meta(&r.metadata);
        set.upsert(SourceObject::ApiRoute(clean));
    }
    for (key, what) in &used {
        if let Some(s) = g.secrets.get(key) {
            rvs.of.insert(
                format!("Secret/{}/{}", key.0, key.1),
                g.secret_rv.get(key).copied().unwrap_or_else(|| rv_of(s)),
            );
            set.upsert(SourceObject::Secret(published_secret(key, s, what)));
        }
    }
    for ns in &api_key_namespaces {
        let from = (ns.clone(), String::new());
        for (key, s) in g.secrets.range(from..).take_while(|((n, _), _)| n == ns) {
            if !used.contains_key(key) {
                rvs.unpublished.insert(
                    format!("Secret/{}/{}", key.0, key.1),
                    g.secret_rv.get(key).copied().unwrap_or_else(|| rv_of(s)),
                );
            }
        }
    }
    // Fetched key sets: the leader keeps them in Secrets of the controller's namespace.
    let (_, policies, secrets) = set.split();
    let remote = portcullis_policy::remote_sources(&policies, &secrets);
    for src in &remote {
        let key = (
            jwks_namespace.to_owned(),
            crate::jwks_store::secret_name(&src.key),
        );
        if let Some(secret) = g.secrets.get(&key)
            && let Some(doc) = crate::jwks_store::stored_document(secret, &src.key)
        {
            let obj = SourceObject::RemoteKeys(RemoteKeys {
                url: src.key.clone(),
                jwks: doc,
            });
            rvs.of.insert(
                SourceSet::map_key(&obj.key()),
                g.secret_rv
                    .get(&key)
                    .copied()
                    .unwrap_or_else(|| rv_of(secret)),
            );
            set.upsert(obj);
        }
    }
    (set, rvs, remote)
}

/// The API-key Secrets of `namespace` that carry `portcullis.dev/api-key: "true"` and
/// every label of `match_labels`.
fn api_key_secrets<'a>(
    g: &'a StoreInner,
    namespace: &'a str,
    match_labels: &'a BTreeMap<String, String>,
) -> impl Iterator<Item = (&'a Key, &'a Secret)> + 'a {
    let from = (namespace.to_owned(), String::new());
    g.secrets
        .range(from..)
        .take_while(move |((ns, _), _)| ns == namespace)
        .filter(move |(_, s)| {
            let labels = s.labels();
            labels.get(apikey::SECRET_LABEL).map(String::as_str) == Some("true")
                && match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
}

/// A Secret as published: name and namespace (and, for an API key, its labels), and only
/// the data keys some policy reads.
fn published_secret(key: &Key, s: &Secret, what: &SecretUse) -> Secret {
    let data: BTreeMap<String, ByteString> = s
        .data
        .iter()
        .flatten()
        .filter(|(k, _)| what.keys.contains(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Secret {
        metadata: ObjectMeta {
            name: Some(key.1.clone()),
            namespace: Some(key.0.clone()),
            labels: if what.api_key {
                s.metadata.labels.clone()
            } else {
                None
            },
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    }
}

/// Compiles `set` as a proxy would, for the errors status reports, and checks what only
/// the cluster knows: that Service backends exist.
fn compile_errors(g: &StoreInner, set: &SourceSet) -> Vec<CompileError> {
    // The same entry point as the proxies' (`compile_sources`), so the errors status
    // reports are the ones a proxy meets; it adds the fetched key sets itself.
    let mut errors = portcullis_policy::compile_sources(
        &CompileOptions {
            validate_cel: false,
            ..Default::default()
        },
        set,
        None,
    )
    .errors;
    // Service backends must exist (the route still serves; its requests get 502 until then).
    for r in g.routes.values() {
        if let Some(svc) = &r.spec.backend.service {
            let ns = r.namespace().unwrap_or_default();
            if !g.services.contains(&(ns.clone(), svc.name.clone())) {
                errors.push(CompileError {
                    kind: "ApiRoute",
                    namespace: ns.clone(),
                    name: r.name_any(),
                    path: "spec.backend.service.name".into(),
                    message: format!("Service {ns}/{} not found", svc.name),
                    reason: CompileReason::BackendNotFound,
                });
            }
        }
    }
    errors
}

fn slim_meta(m: &ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: m.name.clone(),
        namespace: m.namespace.clone(),
        generation: m.generation,
        creation_timestamp: m.creation_timestamp.clone(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use kube::runtime::watcher::Event;
    use serde_json::json;

    use super::*;

    fn policy(ns: &str, name: &str, api_keys: Option<serde_json::Value>) -> TokenPolicy {
        let mut spec = json!({"issuers": []});
        if let Some(a) = api_keys {
            spec["apiKeys"] = a;
        }
        serde_json::from_value(json!({
            "apiVersion": "portcullis.dev/v1alpha1", "kind": "TokenPolicy",
            "metadata": {"name": name, "namespace": ns, "resourceVersion": "5", "generation": 1},
            "spec": spec,
        }))
        .unwrap()
    }

    fn secret(ns: &str, name: &str, rv: u64, labels: serde_json::Value, data: &[&str]) -> Secret {
        let data: serde_json::Map<String, serde_json::Value> = data
            .iter()
            .map(|k| ((*k).to_owned(), json!("dmFsdWU=")))
            .collect();
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": ns, "resourceVersion": rv.to_string(),
                         "labels": labels, "annotations": {"note": "not published"}},
            "data": data,
        }))
        .unwrap()
    }

    fn published(set: &SourceSet, ns: &str, name: &str) -> Option<Secret> {
        match set.objects.get(&format!("Secret/{ns}/{name}")) {
            Some(SourceObject::Secret(s)) => Some(s.clone()),
            _ => None,
        }
    }

    #[test]
    fn api_key_secrets_selected_by_label_with_only_their_data_keys() {
        let store = Store::default();
        store.apply_policy_event(Event::Apply(policy(
            "shop",
            "keys",
            Some(json!({"selector": {"matchLabels": {"team": "orders"}}, "header": "x-api-key"})),
        )));
        // Selected: the portcullis label and the selector's; a raw `apiKey` someone
        // stored beside the hash must not travel.
        let all_keys: Vec<&str> = apikey::DATA_KEYS
            .iter()
            .copied()
            .chain(["apiKey"])
            .collect();
        store.apply_secret_event(Event::Apply(secret(
            "shop",
            "key-1",
            40,
            json!({apikey::SECRET_LABEL: "true", "team": "orders", "extra": "kept"}),
            &all_keys,
        )));
        // Not selected: no portcullis label; another team; another namespace.
        store.apply_secret_event(Event::Apply(secret(
            "shop",
            "plain",
            41,
            json!({"team": "orders"}),
            &["keyId", "sha256"],
        )));
        store.apply_secret_event(Event::Apply(secret(
            "shop",
            "other-team",
            42,
            json!({apikey::SECRET_LABEL: "true", "team": "billing"}),
            &["keyId", "sha256"],
        )));
        store.apply_secret_event(Event::Apply(secret(
            "elsewhere",
            "key-2",
            43,
            json!({apikey::SECRET_LABEL: "true", "team": "orders"}),
            &["keyId", "sha256"],
        )));
        store.apply_secret_event(Event::Apply(secret(
            "shop",
            "not-true",
            44,
            json!({apikey::SECRET_LABEL: "false", "team": "orders"}),
            &["keyId", "sha256"],
        )));

        let (set, rvs, _) = source_set(&store.lock(), "portcullis-system");
        let s = published(&set, "shop", "key-1").expect("the selected Secret is published");
        assert_eq!(
            s.metadata.labels.as_ref().map(|l| l.len()),
            Some(3),
            "labels kept: {:?}",
            s.metadata.labels
        );
        assert_eq!(s.labels()["team"], "orders");
        assert_eq!(s.labels()[apikey::SECRET_LABEL], "true");
        assert!(s.metadata.annotations.is_none() && s.metadata.resource_version.is_none());
        let data = s.data.as_ref().unwrap();
        let mut keys: Vec<&str> = data.keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut want = apikey::DATA_KEYS.to_vec();
        want.sort_unstable();
        assert_eq!(keys, want);
        assert!(!data.contains_key("apiKey"), "the raw key was published");
        for (ns, name) in [
            ("shop", "plain"),
            ("shop", "other-team"),
            ("elsewhere", "key-2"),
            ("shop", "not-true"),
        ] {
            assert!(
                published(&set, ns, name).is_none(),
                "{ns}/{name} must not be published"
            );
        }
        assert_eq!(rvs.of["Secret/shop/key-1"], 40);
    }

    #[test]
    fn an_empty_selector_takes_every_api_key_secret_of_the_namespace() {
        let store = Store::default();
        store.apply_policy_event(Event::Apply(policy("shop", "keys", Some(json!({})))));
        // Without apiKeys, a policy publishes no API-key Secret.
        store.apply_policy_event(Event::Apply(policy("other", "jwt-only", None)));
        for (ns, name) in [("shop", "a"), ("shop", "b"), ("other", "c")] {
            store.apply_secret_event(Event::Apply(secret(
                ns,
                name,
                50,
                json!({apikey::SECRET_LABEL: "true"}),
                &["keyId"],
            )));
        }
        let (set, _, _) = source_set(&store.lock(), "portcullis-system");
        assert!(published(&set, "shop", "a").is_some());
        assert!(published(&set, "shop", "b").is_some());
        assert!(published(&set, "other", "c").is_none());
    }

    /// A new key Secret, a relabelled one and a deleted one each publish as a small delta
    /// at the Secret's own resourceVersion.
    #[test]
    fn api_key_secret_changes_are_small_deltas_at_their_resource_version() {
        let store = Store::default();
        store.apply_policy_event(Event::Apply(policy("shop", "keys", Some(json!({})))));
        let labels = json!({apikey::SECRET_LABEL: "true"});
        store.apply_secret_event(Event::Apply(secret(
            "shop",
            "a",
            60,
            labels.clone(),
            &["keyId"],
        )));
        let (before, _, _) = source_set(&store.lock(), "ns");

        store.apply_secret_event(Event::Apply(secret(
            "shop",
            "b",
            70,
            labels.clone(),
            &["keyId"],
        )));
        let (added, rvs, _) = source_set(&store.lock(), "ns");
        let changes = before.diff(&added);
        assert_eq!((changes.upserts.len(), changes.deletes.len()), (1, 0));
        assert_eq!(rvs.for_change(&before, &added), 70);

        // Losing the label deselects it.
        store.apply_secret_event(Event::Apply(secret("shop", "b", 75, json!({}), &["keyId"])));
        let (relabelled, rvs, _) = source_set(&store.lock(), "ns");
        assert_eq!(added.diff(&relabelled).deletes.len(), 1);
        assert_eq!(rvs.for_change(&added, &relabelled), 75);

        let mut gone = secret("shop", "a", 80, labels, &["keyId"]);
        gone.metadata.resource_version = Some("80".into());
        store.apply_secret_event(Event::Delete(gone));
        let (deleted, rvs, _) = source_set(&store.lock(), "ns");
        let changes = relabelled.diff(&deleted);
        assert_eq!((changes.upserts.len(), changes.deletes.len()), (0, 1));
        assert_eq!(rvs.for_change(&relabelled, &deleted), 80);
    }
}
