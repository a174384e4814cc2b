//! The Secret of an API key, and the old Secret of a rotated key re-dated.
//!
//! Pure: no IO and no clock (callers pass `now` as seconds since the epoch), so every rule
//! here is unit-tested. The key itself never enters a [`Secret`]: [`KeySecretSpec::secret`]
//! reads only its id and SHA-256 from the parsed [`ApiKey`].

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use portcullis_policy::apikey::{self, ApiKey};

/// How a manifest is printed or written.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// YAML; several objects are separate documents (`---`).
    Yaml,
    /// JSON; several objects are the items of a `v1` `List`.
    Json,
}

/// The Secret name prefix of `apikey-<consumer>-<keyid>`.
const NAME_PREFIX: &str = "apikey-";
/// A default name stays a DNS-1123 label (63 characters) so it fits anywhere a name does.
const MAX_DEFAULT_NAME_LEN: usize = 63;

/// What an API key's Secret says besides the key's id and hash.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySecretSpec {
    /// The consumer the key belongs to.
    pub consumer: String,
    /// Scopes granted, in order, without duplicates.
    pub scopes: Vec<String>,
    /// When the key was created, seconds since the epoch.
    pub created_at: i64,
    /// When the key stops being accepted, seconds since the epoch.
    pub expires_at: Option<i64>,
    /// The Secret's name; `None`: [`default_name`] of the consumer and key id.
    pub name: Option<String>,
    /// The Secret's namespace; `None` leaves it to kubectl (or the kubeconfig's context).
    pub namespace: Option<String>,
    /// Labels besides `portcullis.dev/api-key: "true"` (what `apiKeys.selector` matches).
    pub labels: BTreeMap<String, String>,
}

impl KeySecretSpec {
    /// The Secret for `key`: its id and the SHA-256 of the whole key, never the key.
    pub fn secret(&self, key: &ApiKey<'_>) -> anyhow::Result<Secret> {
        let name = match &self.name {
            Some(n) => n.clone(),
            None => default_name(&self.consumer, key.id()),
        };
        let mut labels = self.labels.clone();
        labels.insert(apikey::SECRET_LABEL.to_owned(), "true".to_owned());
        let mut data = BTreeMap::from([
            (apikey::DATA_KEY_ID.to_owned(), key.id().to_owned()),
            (apikey::DATA_SHA256.to_owned(), hex(&key.sha256())),
            (apikey::DATA_CONSUMER.to_owned(), self.consumer.clone()),
            (apikey::DATA_SCOPES.to_owned(), self.scopes.join(" ")),
            (
                apikey::DATA_CREATED_AT.to_owned(),
                rfc3339(self.created_at)?,
            ),
        ]);
        if let Some(t) = self.expires_at {
            data.insert(apikey::DATA_EXPIRES_AT.to_owned(), rfc3339(t)?);
        }
        Ok(Secret {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: self.namespace.clone(),
                labels: Some(labels),
                ..Default::default()
            },
            type_: Some(apikey::SECRET_TYPE.to_owned()),
            string_data: Some(data),
            ..Default::default()
        })
    }
}

/// `apikey-<consumer>-<key id, lowercase>` as a DNS-1123 label: the consumer lowercased,
/// runs of other characters turned into one `-`, and cut so the whole fits 63 characters.
pub fn default_name(consumer: &str, key_id: &str) -> String {
    let mut part = String::new();
    for c in consumer.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            part.push(c);
        } else if !part.is_empty() && !part.ends_with('-') {
            part.push('-');
        }
    }
    let room = MAX_DEFAULT_NAME_LEN - NAME_PREFIX.len() - 1 - key_id.len();
    part.truncate(room);
    let part = part.trim_end_matches('-');
    let id = key_id.to_ascii_lowercase();
    if part.is_empty() {
        format!("{NAME_PREFIX}{id}")
    } else {
        format!("{NAME_PREFIX}{part}-{id}")
    }
}

// === rotation ===

/// What rotation does to the old key's expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldExpiry {
    /// Its `expiresAt` becomes this instant (seconds since the epoch).
    Set(i64),
    /// It already expires at this instant, no later than the overlap: left alone.
    Kept(i64),
}

/// Checks that `old` is an API-key Secret and decides its expiry: `until` (now + overlap),
/// unless it already expires earlier. An `expiresAt` that does not parse is replaced.
pub fn old_expiry(old: &Secret, until: i64) -> anyhow::Result<OldExpiry> {
    let name = old.metadata.name.as_deref().unwrap_or("(unnamed)");
    let labelled = old
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(apikey::SECRET_LABEL))
        .is_some_and(|v| v == "true");
    if !labelled || secret_value(old, apikey::DATA_SHA256).is_none() {
        bail!(
            "Secret {name} is not an API-key Secret (label {}: \"true\" and a {} entry): refusing to rotate it",
            apikey::SECRET_LABEL,
            apikey::DATA_SHA256
        );
    }
    match secret_value(old, apikey::DATA_EXPIRES_AT).map(|s| parse_time(&s)) {
        Some(Ok(t)) if t <= until => Ok(OldExpiry::Kept(t)),
        _ => Ok(OldExpiry::Set(until)),
    }
}

/// The labels a rotated key's new Secret inherits from the old one (all but
/// `portcullis.dev/api-key`, which every key Secret carries anyway), so the TokenPolicy
/// that selected the old key selects the new one.
pub fn inherited_labels(old: &Secret) -> BTreeMap<String, String> {
    let mut labels = old.metadata.labels.clone().unwrap_or_default();
    labels.remove(apikey::SECRET_LABEL);
    labels
}

/// The consumer an API-key Secret names, if any.
pub fn consumer_of(secret: &Secret) -> Option<String> {
    secret_value(secret, apikey::DATA_CONSUMER)
}

/// `old` with `expiresAt` set to `until`, without the fields the API server owns, ready to
/// apply. The value goes where the Secret keeps its entries (`data` or `stringData`) and
/// is removed from the other, so no reader can see two expiries.
pub fn redated(old: &Secret, until: i64) -> anyhow::Result<Secret> {
    let value = rfc3339(until)?;
    let mut s = old.clone();
    let meta = &mut s.metadata;
    meta.managed_fields = None;
    meta.resource_version = None;
    meta.uid = None;
    meta.creation_timestamp = None;
    meta.generation = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
        if a.is_empty() {
            meta.annotations = None;
        }
    }
    let in_data = s
        .data
        .as_ref()
        .is_some_and(|d| d.contains_key(apikey::DATA_SHA256));
    if in_data {
        if let Some(sd) = s.string_data.as_mut() {
            sd.remove(apikey::DATA_EXPIRES_AT);
        }
        s.data.get_or_insert_default().insert(
            apikey::DATA_EXPIRES_AT.to_owned(),
            ByteString(value.into_bytes()),
        );
    } else {
        if let Some(d) = s.data.as_mut() {
            d.remove(apikey::DATA_EXPIRES_AT);
        }
        s.string_data
            .get_or_insert_default()
            .insert(apikey::DATA_EXPIRES_AT.to_owned(), value);
    }
    Ok(s)
}

/// The JSON merge patch that sets the old Secret's `expiresAt` to `until`, refused by the
/// API server if the Secret changed since it was read (its `resourceVersion`).
pub fn expiry_patch(old: &Secret, until: i64) -> anyhow::Result<serde_json::Value> {
    use base64::Engine;
    let value = base64::engine::general_purpose::STANDARD.encode(rfc3339(until)?);
    Ok(serde_json::json!({
        "metadata": {"resourceVersion": old.metadata.resource_version},
        "data": {(apikey::DATA_EXPIRES_AT): value},
    }))
}

/// Value of `key` in a Secret's `data`, else `stringData` (as the policy compiler reads it).
fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    if let Some(v) = secret.data.as_ref().and_then(|d| d.get(key)) {
        return Some(String::from_utf8_lossy(&v.0).into_owned());
    }
    secret
        .string_data
        .as_ref()
        .and_then(|d| d.get(key))
        .cloned()
}

// === rendering ===

/// `objects` as YAML documents or JSON (one object, or a `List` of several).
pub fn render(objects: &[Secret], format: Format) -> anyhow::Result<String> {
    match (format, objects) {
        (Format::Yaml, _) => {
            let mut out = String::new();
            for (i, o) in objects.iter().enumerate() {
                if i > 0 {
                    out.push_str("---\n");
                }
                out.push_str(&serde_yaml::to_string(o).context("rendering YAML")?);
            }
            Ok(out)
        }
        (Format::Json, [one]) => Ok(serde_json::to_string_pretty(one)? + "\n"),
        (Format::Json, many) => {
            let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": many});
            Ok(serde_json::to_string_pretty(&list)? + "\n")
        }
    }
}

/// Parses a Secret (or, with rotation, the old one) from YAML or JSON text.
pub fn parse_secret(text: &str) -> anyhow::Result<Secret> {
    let value: serde_yaml::Value = serde_yaml::from_str(text).context("not YAML or JSON")?;
    match value.get("kind").and_then(|k| k.as_str()) {
        Some("Secret") => serde_yaml::from_value(value).context("not a valid Secret"),
        Some(other) => bail!("holds a {other}, not a Secret"),
        None => bail!("holds no Kubernetes object (no kind)"),
    }
}

// === time and hex ===

/// Seconds since the epoch as RFC 3339 UTC.
pub fn rfc3339(t: i64) -> anyhow::Result<String> {
    Ok(Timestamp::from_second(t)
        .with_context(|| format!("{t} is out of the range of RFC 3339 times"))?
        .to_string())
}

/// RFC 3339 -> seconds since the epoch (a fraction of a second is dropped).
pub fn parse_time(s: &str) -> anyhow::Result<i64> {
    s.parse::<Timestamp>()
        .map(Timestamp::as_second)
        .map_err(|_| anyhow::anyhow!("{s:?} is not an RFC 3339 time such as 2026-01-31T12:00:00Z"))
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    const NOW: i64 = 1_780_000_000; // 2026-05-28T20:26:40Z

    fn key() -> String {
        let random: Vec<u8> = (0..128u8)
            .map(|i| i.wrapping_mul(53).wrapping_add(7))
            .collect();
        apikey::generate(&random).unwrap()
    }

    fn spec() -> KeySecretSpec {
        KeySecretSpec {
            consumer: "Acme Corp".into(),
            scopes: vec!["orders:read".into(), "orders:write".into()],
            created_at: NOW,
            expires_at: Some(NOW + 86_400),
            namespace: Some("shop".into()),
            labels: BTreeMap::from([("team".to_owned(), "payments".to_owned())]),
            ..Default::default()
        }
    }

    fn entry<'a>(s: &'a Secret, k: &str) -> Option<&'a str> {
        s.string_data.as_ref()?.get(k).map(String::as_str)
    }

    #[test]
    fn the_secret_holds_the_hash_never_the_key() {
        let key = key();
        let parsed = ApiKey::parse(&key).unwrap();
        let secret = spec().secret(&parsed).unwrap();
        for format in [Format::Yaml, Format::Json] {
            let text = render(std::slice::from_ref(&secret), format).unwrap();
            assert!(!text.contains(&key), "{format:?} manifest holds the key");
            // Not even the secret part alone.
            assert!(!text.contains(&key[16..48]), "{format:?}: {text}");
        }
        let want: String = Sha256::digest(key.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(entry(&secret, "sha256"), Some(want.as_str()));
        assert_eq!(entry(&secret, "keyId"), Some(&key[4..16]));
        assert_eq!(entry(&secret, "consumer"), Some("Acme Corp"));
        assert_eq!(entry(&secret, "scopes"), Some("orders:read orders:write"));
        assert_eq!(entry(&secret, "createdAt"), Some("2026-05-28T20:26:40Z"));
        assert_eq!(entry(&secret, "expiresAt"), Some("2026-05-29T20:26:40Z"));
        assert_eq!(secret.type_.as_deref(), Some("portcullis.dev/api-key"));
        assert!(secret.data.is_none());
        // Every entry is one the controller passes on to proxies.
        for k in secret.string_data.as_ref().unwrap().keys() {
            assert!(apikey::DATA_KEYS.contains(&k.as_str()), "{k}");
        }
    }

    #[test]
    fn labels_name_and_namespace() {
        let key = key();
        let parsed = ApiKey::parse(&key).unwrap();
        let secret = spec().secret(&parsed).unwrap();
        let labels = secret.metadata.labels.as_ref().unwrap();
        assert_eq!(
            labels.get("portcullis.dev/api-key").map(String::as_str),
            Some("true")
        );
        assert_eq!(labels.get("team").map(String::as_str), Some("payments"));
        assert_eq!(labels.len(), 2);
        assert_eq!(secret.metadata.namespace.as_deref(), Some("shop"));
        let name = secret.metadata.name.clone().unwrap();
        assert_eq!(
            name,
            format!("apikey-acme-corp-{}", key[4..16].to_ascii_lowercase())
        );

        let mut named = spec();
        named.name = Some("my-key".into());
        named.namespace = None;
        let secret = named.secret(&parsed).unwrap();
        assert_eq!(secret.metadata.name.as_deref(), Some("my-key"));
        assert!(secret.metadata.namespace.is_none());
        let yaml = render(&[secret], Format::Yaml).unwrap();
        assert!(!yaml.contains("namespace"), "{yaml}");
    }

    #[test]
    fn no_expiry_unless_asked() {
        let key = key();
        let mut s = spec();
        s.expires_at = None;
        s.scopes.clear();
        let secret = s.secret(&ApiKey::parse(&key).unwrap()).unwrap();
        assert_eq!(entry(&secret, "expiresAt"), None);
        assert_eq!(entry(&secret, "scopes"), Some(""));
    }

    #[test]
    fn default_names_are_dns_labels() {
        let id = "AbC123xyZ789";
        assert_eq!(default_name("alice", id), "apikey-alice-abc123xyz789");
        assert_eq!(
            default_name("Acme Corp_Ünïcode!!", id),
            "apikey-acme-corp-n-code-abc123xyz789"
        );
        assert_eq!(default_name("--", id), "apikey-abc123xyz789");
        assert_eq!(default_name("", id), "apikey-abc123xyz789");
        let long = default_name(&"consumer.".repeat(20), id);
        assert!(long.len() <= 63, "{long}");
        assert!(long.ends_with("-abc123xyz789"), "{long}");
        assert!(!long.contains("--"), "{long}");
        for name in [
            long,
            default_name("a-b-", id),
            default_name("x".repeat(100).as_str(), id),
        ] {
            assert!(super::super::validate::is_dns_label(&name), "{name}");
        }
    }

    fn old_secret(expires_at: Option<&str>, in_data: bool) -> Secret {
        let mut entries = BTreeMap::from([
            ("keyId".to_owned(), "OLDid0000000".to_owned()),
            ("sha256".to_owned(), "ab".repeat(32)),
            ("consumer".to_owned(), "alice".to_owned()),
        ]);
        if let Some(e) = expires_at {
            entries.insert("expiresAt".into(), e.into());
        }
        let mut s = Secret {
            metadata: ObjectMeta {
                name: Some("apikey-alice-old".into()),
                namespace: Some("shop".into()),
                resource_version: Some("42".into()),
                uid: Some("u-1".into()),
                labels: Some(BTreeMap::from([
                    ("portcullis.dev/api-key".to_owned(), "true".to_owned()),
                    ("team".to_owned(), "payments".to_owned()),
                ])),
                ..Default::default()
            },
            type_: Some("portcullis.dev/api-key".into()),
            ..Default::default()
        };
        if in_data {
            s.data = Some(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, ByteString(v.into_bytes())))
                    .collect(),
            );
        } else {
            s.string_data = Some(entries);
        }
        s
    }

    #[test]
    fn rotation_sets_the_overlap_but_never_extends_an_expiry() {
        let until = NOW + 86_400;
        for in_data in [true, false] {
            let none = old_secret(None, in_data);
            assert_eq!(old_expiry(&none, until).unwrap(), OldExpiry::Set(until));
            let later = old_secret(Some("2030-01-01T00:00:00Z"), in_data);
            assert_eq!(old_expiry(&later, until).unwrap(), OldExpiry::Set(until));
            let sooner = old_secret(Some("2026-05-28T21:00:00Z"), in_data);
            assert_eq!(
                old_expiry(&sooner, until).unwrap(),
                OldExpiry::Kept(parse_time("2026-05-28T21:00:00Z").unwrap())
            );
            let garbled = old_secret(Some("tomorrow"), in_data);
            assert_eq!(old_expiry(&garbled, until).unwrap(), OldExpiry::Set(until));

            let redone = redated(&later, until).unwrap();
            assert_eq!(
                secret_value(&redone, "expiresAt").as_deref(),
                Some("2026-05-29T20:26:40Z")
            );
            // Exactly one place holds the expiry, the one the other entries are in.
            let in_sd = redone
                .string_data
                .as_ref()
                .is_some_and(|d| d.contains_key("expiresAt"));
            let in_d = redone
                .data
                .as_ref()
                .is_some_and(|d| d.contains_key("expiresAt"));
            assert_eq!((in_d, in_sd), (in_data, !in_data));
            assert!(redone.metadata.resource_version.is_none() && redone.metadata.uid.is_none());
            assert_eq!(redone.metadata.name, later.metadata.name);
            assert_eq!(
                secret_value(&redone, "sha256"),
                secret_value(&later, "sha256")
            );
        }
        let mut plain = old_secret(None, true);
        plain.metadata.labels = None;
        let e = old_expiry(&plain, until).unwrap_err().to_string();
        assert!(e.contains("not an API-key Secret"), "{e}");

        let old = old_secret(None, true);
        assert_eq!(
            inherited_labels(&old).into_iter().collect::<Vec<_>>(),
            [("team".to_owned(), "payments".to_owned())]
        );
        assert_eq!(consumer_of(&old).as_deref(), Some("alice"));
    }

    #[test]
    fn expiry_patch_is_conditional_base64_data() {
        let patch = expiry_patch(&old_secret(None, true), NOW).unwrap();
        assert_eq!(patch["metadata"]["resourceVersion"], "42");
        use base64::Engine;
        let v = base64::engine::general_purpose::STANDARD
            .decode(patch["data"]["expiresAt"].as_str().unwrap())
            .unwrap();
        assert_eq!(v, b"2026-05-28T20:26:40Z");
    }

    #[test]
    fn renders_and_parses_several_objects() {
        let a = old_secret(None, true);
        let b = old_secret(Some("2030-01-01T00:00:00Z"), false);
        let yaml = render(&[a.clone(), b.clone()], Format::Yaml).unwrap();
        let docs: Vec<&str> = yaml.split("---\n").collect();
        assert_eq!(docs.len(), 2);
        assert_eq!(parse_secret(docs[0]).unwrap(), a);
        assert_eq!(parse_secret(docs[1]).unwrap(), b);
        let json = render(&[a.clone(), b], Format::Json).unwrap();
        let list: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(list["kind"], "List");
        assert_eq!(list["items"].as_array().unwrap().len(), 2);
        let one = render(std::slice::from_ref(&a), Format::Json).unwrap();
        assert_eq!(parse_secret(&one).unwrap(), a);
        assert!(parse_secret("kind: ConfigMap").is_err());
        assert!(parse_secret("a: b").is_err());
    }

    #[test]
    fn times() {
        assert_eq!(rfc3339(NOW).unwrap(), "2026-05-28T20:26:40Z");
        assert_eq!(parse_time("2026-05-28T20:26:40.9Z").unwrap(), NOW);
        assert_eq!(parse_time("2026-05-28T22:26:40+02:00").unwrap(), NOW);
        assert!(parse_time("2026-05-28").is_err());
        assert!(rfc3339(i64::MAX).is_err());
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
    }
}
