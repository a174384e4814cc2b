//! The API keys one TokenPolicy accepts, compiled from the Secrets it selects, and the
//! check of a presented key: format and checksum, lookup by id, SHA-256 comparison,
//! expiry. A known key becomes a [`Principal`] built once at compile time, so a request
//! with an API key allocates nothing.

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderName;

use crate::apikey::ApiKey;
use crate::principal::Principal;
use crate::reason::DenyReason;

/// The header API keys are read from when a policy names none.
pub const DEFAULT_API_KEY_HEADER: &str = "x-api-key";

/// Header names an API key may not travel in: `Authorization` would be two credentials
/// in one (it already carries `Bearer pcl_...`), and the others mean something to every
/// client, proxy or backend on the way (credentials, the DPoP proof, framing, content
/// negotiation, forwarding): the gateway removes the key header before forwarding, which
/// must never take one of those away.
const RESERVED_HEADERS: [&str; 20] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "dpop",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "te",
    "upgrade",
    "trailer",
    "keep-alive",
    "proxy-connection",
    "expect",
    "user-agent",
    "forwarded",
    "via",
    "x-request-id",
    "x-real-ip",
];

/// Header-name prefixes no API key may travel in (`content-type`, `accept-encoding`,
/// `x-forwarded-for`, ...).
const RESERVED_PREFIXES: [&str; 3] = ["content-", "accept", "x-forwarded-"];

/// Whether `name` may not carry API keys (compared case-insensitively).
pub(crate) fn is_reserved_header(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    RESERVED_HEADERS.contains(&lower.as_str())
        || RESERVED_PREFIXES.iter().any(|p| lower.starts_with(p))
}

/// One key a policy accepts.
#[derive(Debug)]
pub(crate) struct ApiKeyEntry {
    /// SHA-256 of the whole key.
    pub(crate) sha256: [u8; 32],
    /// Who calls with it (kind `ApiKey`; scopes, consumer, expiry, forwarded headers).
    pub(crate) principal: Arc<Principal>,
}

/// The API keys of one policy, by key id.
#[derive(Debug, Default)]
pub(crate) struct ApiKeyTable {
    /// The header the policy reads keys from (besides `Authorization: Bearer`).
    pub(crate) header: Option<HeaderName>,
    pub(crate) by_id: HashMap<Box<str>, ApiKeyEntry>,
}

impl ApiKeyTable {
    /// Judges a presented key. `digest` is its SHA-256 (computed once by the caller, also
    /// the `tokenSha256` revocations match on). Expiry has no clock skew: `expiresAt` is
    /// written by the key's owner and read by this clock only.
    pub(crate) fn check(
        &self,
        key: &str,
        digest: &[u8; 32],
        now: i64,
    ) -> Result<&Arc<Principal>, DenyReason> {
        let key = ApiKey::parse(key).map_err(|_| DenyReason::MalformedToken)?;
        let entry = self.by_id.get(key.id()).ok_or(DenyReason::UnknownApiKey)?;
        if !constant_time_eq(&entry.sha256, digest) {
            return Err(DenyReason::UnknownApiKey);
        }
        if now >= entry.principal.expires_at {
            return Err(DenyReason::Expired);
        }
        if entry.principal.issued_at.is_some_and(|t| t > now) {
            return Err(DenyReason::NotYetValid);
        }
        Ok(&entry.principal)
    }
}

/// Compares two digests in time independent of where they differ. The digests are of
/// secrets the client holds, so a timing difference would tell nothing useful anyway;
/// this keeps it that way if the table is ever keyed differently.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A problem with one API-key Secret a policy selects: the key is left out, the policy's
/// other keys still work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiKeyProblem {
    /// Index of the policy (in the snapshot's order).
    pub(crate) policy: usize,
    /// `namespace/name` of the Secret.
    pub(crate) secret: String,
    /// The data key at fault, e.g. `sha256`.
    pub(crate) field: &'static str,
    /// What is wrong.
    pub(crate) message: String,
}

/// Compiles the API keys of every policy that takes them (`spec.apiKeys`), from the
/// Secrets of its namespace labelled `portcullis.dev/api-key: "true"` that match its
/// selector. `compiled` and `specs` are matched by `namespace/name`.
pub(crate) fn compile_tables(
    compiled: &[crate::policy::CompiledPolicy],
    specs: &[portcullis_api::TokenPolicy],
    secrets: &[k8s_openapi::api::core::v1::Secret],
) -> (Vec<Option<Arc<ApiKeyTable>>>, Vec<ApiKeyProblem>) {
    let mut problems = Vec::new();
    let tables = compiled
        .iter()
        .enumerate()
        .map(|(index, policy)| {
            let spec = specs.iter().find(|s| {
                let m = &s.metadata;
                let (ns, name) = (m.namespace.as_deref().unwrap_or(""), m.name.as_deref());
                policy.id.split_once('/') == name.map(|n| (ns, n))
            })?;
            let keys = spec.spec.api_keys.as_ref()?;
            let namespace = spec.metadata.namespace.as_deref().unwrap_or("");
            let header = keys
                .header
                .as_deref()
                .unwrap_or(DEFAULT_API_KEY_HEADER)
                .to_ascii_lowercase();
            let mut table = ApiKeyTable {
                header: HeaderName::try_from(header)
                    .ok()
                    .filter(|h| !is_reserved_header(h.as_str())),
                by_id: HashMap::new(),
            };
            let mut selected: Vec<_> = secrets
                .iter()
                .filter(|s| s.metadata.namespace.as_deref().unwrap_or("") == namespace)
                .filter(|s| selects(&keys.selector, s))
                .collect();
            selected.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
            for secret in selected {
                let name = format!(
                    "{namespace}/{}",
                    secret.metadata.name.as_deref().unwrap_or("")
                );
                match entry(policy, secret) {
                    Ok((id, entry)) => {
                        if table.by_id.contains_key(&*id) {
                            problems.push(ApiKeyProblem {
                                policy: index,
                                secret: name,
                                field: crate::apikey::DATA_KEY_ID,
                                message: format!(
                                    "key id {id} is held by another selected Secret too; both keys would answer to one id, so this one is ignored"
                                ),
                            });
                            continue;
                        }
                        table.by_id.insert(id, entry);
                    }
                    Err((field, message)) => problems.push(ApiKeyProblem {
                        policy: index,
                        secret: name,
                        field,
                        message,
                    }),
                }
            }
            Some(Arc::new(table))
        })
        .collect();
    (tables, problems)
}

/// Whether a Secret is an API key the selector picks.
fn selects(
    selector: &portcullis_api::ApiKeySelector,
    secret: &k8s_openapi::api::core::v1::Secret,
) -> bool {
    let labels = secret.metadata.labels.as_ref();
    let has = |k: &str, v: &str| labels.and_then(|l| l.get(k)).is_some_and(|x| x == v);
    has(crate::apikey::SECRET_LABEL, "true") && selector.match_labels.iter().all(|(k, v)| has(k, v))
}

/// One Secret's key, or the data key at fault and why.
fn entry(
    policy: &crate::policy::CompiledPolicy,
    secret: &k8s_openapi::api::core::v1::Secret,
) -> Result<(Box<str>, ApiKeyEntry), (&'static str, String)> {
    use crate::apikey::{
        DATA_CONSUMER, DATA_CREATED_AT, DATA_EXPIRES_AT, DATA_KEY_ID, DATA_SCOPES, DATA_SHA256,
        ID_LEN,
    };
    let text = |key: &'static str| -> Result<Option<String>, (&'static str, String)> {
        match crate::compile::objects::secret_value(secret, key) {
            None => Ok(None),
            Some(b) => String::from_utf8(b)
                .map(|s| Some(s.trim().to_owned()))
                .map_err(|_| (key, "is not UTF-8 text".to_owned())),
        }
    };
    let required = |key: &'static str| -> Result<String, (&'static str, String)> {
        text(key)?
            .filter(|s| !s.is_empty())
            .ok_or((key, "is missing".to_owned()))
    };
    let id = required(DATA_KEY_ID)?;
    if id.len() != ID_LEN || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err((
            DATA_KEY_ID,
            "must be the 12 letters and digits after pcl_ in the key".into(),
        ));
    }
    let hex_digest = required(DATA_SHA256)?;
    let mut sha256 = [0u8; 32];
    if hex_digest.bytes().any(|b| b.is_ascii_uppercase())
        || hex::decode_to_slice(&hex_digest, &mut sha256).is_err()
    {
        return Err((
            DATA_SHA256,
            "must be the lowercase hex SHA-256 of the whole key (64 characters)".into(),
        ));
    }
    let consumer = required(DATA_CONSUMER)?;
    if consumer.len() > 253 || consumer.chars().any(char::is_control) {
        return Err((
            DATA_CONSUMER,
            "must be at most 253 characters without control characters".into(),
        ));
    }
    let scopes = text(DATA_SCOPES)?.unwrap_or_default();
    let time = |key: &'static str| -> Result<Option<i64>, (&'static str, String)> {
        match text(key)?.filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some(s) => crate::revocation::parse_time(&s)
                .map(Some)
                .map_err(|e| (key, e)),
        }
    };
    let expires_at = time(DATA_EXPIRES_AT)?;
    let created_at = time(DATA_CREATED_AT)?;

    // The claims a key stands for, read by the same code as a token's: scopes, and the
    // policy's `forwardClaims` (`sub`, `consumer`, `client_id`, `api_key_id`, `scope`).
    let mut claims = serde_json::Map::new();
    claims.insert("sub".into(), consumer.clone().into());
    claims.insert("consumer".into(), consumer.clone().into());
    claims.insert("client_id".into(), consumer.clone().into());
    claims.insert("api_key_id".into(), id.clone().into());
    claims.insert("scope".into(), scopes.into());
    let (scopes, forward_headers) = policy.scopes_and_headers(&claims, "scope").map_err(|_| {
        (
            DATA_CONSUMER,
            "cannot be forwarded as a header value (a claim the policy forwards)".to_owned(),
        )
    })?;
    let mut principal = Principal::new(
        crate::principal::PrincipalKind::ApiKey,
        expires_at.unwrap_or(i64::MAX),
    );
    principal.issuer = Some(policy.id.clone());
    principal.subject = Some(consumer.as_str().into());
    principal.consumer = Some(consumer.as_str().into());
    principal.issued_at = created_at;
    principal.api_key_id = Some(id.as_str().into());
    principal.scopes = scopes;
    principal.forward_headers = forward_headers;
    Ok((
        id.into_boxed_str(),
        ApiKeyEntry {
            sha256,
            principal: Arc::new(principal),
        },
    ))
}
