//! `spec.backend.llm` and `spec.rules[].prompt` -> [`LlmRoute`], or every error found.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use portcullis_api::{ApiRoute, LlmKeyHeader, LlmProvider, PromptRole, parse_duration};

use super::objects::{SecretIndex, secret_value};
use super::route::upstream_from_uri;
use super::{CompileError, CompileReason};
use crate::llm::{LlmRoute, Model, Prompt, ProviderKey, parse_template};

/// Default `cooldown`.
const DEFAULT_COOLDOWN: Duration = Duration::from_secs(60);
/// Default `maxRequestBytes`.
const DEFAULT_MAX_REQUEST_BYTES: usize = 4 << 20;

/// The default API base of a provider.
fn default_url(p: LlmProvider) -> Option<&'static str> {
    match p {
        LlmProvider::Openai => Some("https://api.openai.com/v1"),
        LlmProvider::Anthropic => Some("https://api.anthropic.com/v1"),
        LlmProvider::OpenaiCompatible => None,
    }
}

/// Compiles the LLM backend of `r` (which must have one), pushing errors to `errs`.
pub(super) fn compile_llm(
    r: &ApiRoute,
    secrets: &SecretIndex<'_>,
    path_options: &crate::target::PathOptions,
    err: &dyn Fn(String, CompileReason, String) -> CompileError,
    errs: &mut Vec<CompileError>,
) -> Option<Arc<LlmRoute>> {
    let llm = r.spec.backend.llm.as_ref()?;
    let ns = r
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let before = errs.len();
    let url = match (llm.url.as_deref(), default_url(llm.provider)) {
        (Some(u), _) | (None, Some(u)) => Some(u),
        (None, None) => {
            errs.push(err(
                "spec.backend.llm.url".into(),
                CompileReason::InvalidBackend,
                "an openaiCompatible backend needs url (its API base, e.g. http://vllm:8000/v1)"
                    .into(),
            ));
            None
        }
    };
    let upstream = url.and_then(|u| {
        match u
            .parse::<http::Uri>()
            .map_err(|e| e.to_string())
            .and_then(upstream_from_uri)
        {
            Ok(up) => Some(Arc::new(up)),
            Err(e) => {
                errs.push(err(
                    "spec.backend.llm.url".into(),
                    CompileReason::InvalidBackend,
                    e,
                ));
                None
            }
        }
    });
    if let Some(q) = &llm.query
        && (q.starts_with('?') || http::uri::PathAndQuery::try_from(format!("/?{q}")).is_err())
    {
        errs.push(err(
            "spec.backend.llm.query".into(),
            CompileReason::InvalidBackend,
            format!("{q:?} is not a query string (write it without the leading ?)"),
        ));
    }
    let key_header = llm.key_header.unwrap_or(match llm.provider {
        LlmProvider::Anthropic => LlmKeyHeader::XApiKey,
        _ => LlmKeyHeader::Authorization,
    });
    let mut keys = Vec::new();
    if llm.credentials.is_empty() {
        errs.push(err(
            "spec.backend.llm.credentials".into(),
            CompileReason::Invalid,
            "at least one provider key is required".into(),
        ));
    }
    for (i, c) in llm.credentials.iter().enumerate() {
        let at = format!("spec.backend.llm.credentials[{i}].secretRef");
        let Some(secret) = secrets.get(&(ns.clone(), c.secret_ref.name.clone())) else {
            errs.push(err(
                at,
                CompileReason::SecretNotFound,
                format!("Secret {ns}/{} not found", c.secret_ref.name),
            ));
            continue;
        };
        let Some(raw) = secret_value(secret, &c.secret_ref.key) else {
            errs.push(err(
                at,
                CompileReason::SecretNotFound,
                format!(
                    "Secret {ns}/{} has no key {:?}",
                    c.secret_ref.name, c.secret_ref.key
                ),
            ));
            continue;
        };
        // Secrets written by hand often end in a newline.
        let text = String::from_utf8(raw).ok();
        let key = text.as_deref().map(str::trim).unwrap_or_default();
        let value = if key.is_empty() {
            None
        } else if key_header == LlmKeyHeader::Authorization {
            HeaderValue::from_str(&format!("Bearer {key}")).ok()
        } else {
            HeaderValue::from_str(key).ok()
        };
        match value {
            Some(mut v) => {
                v.set_sensitive(true);
                keys.push(ProviderKey {
                    name: format!("{}/{}", c.secret_ref.name, c.secret_ref.key).into(),
                    priority: c.priority,
                    value: v,
                });
            }
            None => errs.push(err(
                at,
                CompileReason::InvalidKeys,
                format!(
                    "Secret {ns}/{} key {:?} is empty or not a printable header value",
                    c.secret_ref.name, c.secret_ref.key
                ),
            )),
        }
    }
    keys.sort_by_key(|k| k.priority);
    let cooldown = match &llm.cooldown {
        None => DEFAULT_COOLDOWN,
        Some(d) => parse_duration(d).unwrap_or_else(|e| {
            errs.push(err(
                "spec.backend.llm.cooldown".into(),
                CompileReason::InvalidDuration,
                e,
            ));
            DEFAULT_COOLDOWN
        }),
    };
    let mut models = Vec::new();
    let mut seen = HashSet::new();
    for (i, m) in llm.models.iter().enumerate() {
        if !seen.insert(m.name.as_str()) {
            errs.push(err(
                format!("spec.backend.llm.models[{i}].name"),
                CompileReason::Invalid,
                format!("model {:?} is listed twice", m.name),
            ));
            continue;
        }
        let scope = m
            .scope
            .clone()
            .unwrap_or_else(|| format!("model:{}", m.name));
        if !super::route::is_scope_token(&scope) {
            errs.push(err(
                format!("spec.backend.llm.models[{i}].scope"),
                CompileReason::InvalidScope,
                format!("{scope:?} is not one word of printable characters"),
            ));
            continue;
        }
        models.push(Model {
            name: m.name.as_str().into(),
            provider_model: m.provider_model.clone().unwrap_or_else(|| m.name.clone()),
            scope,
        });
    }
    if models.is_empty() && llm.models.is_empty() {
        errs.push(err(
            "spec.backend.llm.models".into(),
            CompileReason::Invalid,
            "at least one model is required".into(),
        ));
    }
    // Each rule's match, canonical as requests are: the API paths are decided against it.
    let mut rule_paths = HashMap::new();
    for (i, rule) in r.spec.rules.iter().enumerate() {
        let (path, prefix) = match (&rule.matches.path, &rule.matches.path_prefix) {
            (Some(p), None) => (p, false),
            (None, Some(p)) => (p, true),
            _ => continue,
        };
        if let Ok(p) = crate::target::canonical_path(path, path_options) {
            rule_paths.insert(i, (p.into_owned(), prefix));
        }
    }
    let mut prompts = HashMap::new();
    for (i, rule) in r.spec.rules.iter().enumerate() {
        let Some(p) = &rule.prompt else { continue };
        let at = format!("spec.rules[{i}].prompt");
        if !models.iter().any(|m| *m.name == *p.model) {
            errs.push(err(
                format!("{at}.model"),
                CompileReason::Invalid,
                format!("model {:?} is not one of backend.llm.models", p.model),
            ));
        }
        let mut messages = Vec::new();
        let mut used = HashSet::new();
        for (j, m) in p.messages.iter().enumerate() {
            match parse_template(&m.content) {
                Ok(pieces) => {
                    for piece in &pieces {
                        if let crate::llm::Piece::Var(name) = piece {
                            if m.role != PromptRole::User {
                                errs.push(err(
                                    format!("{at}.messages[{j}].content"),
                                    CompileReason::Invalid,
                                    format!("{{{{{name}}}}}: variables may only appear in user messages, never in system or assistant ones"),
                                ));
                            } else if !p.variables.properties.contains_key(name) {
                                errs.push(err(
                                    format!("{at}.messages[{j}].content"),
                                    CompileReason::Invalid,
                                    format!(
                                        "{{{{{name}}}}} is not declared in variables.properties"
                                    ),
                                ));
                            }
                            used.insert(name.clone());
                        }
                    }
                    messages.push((m.role, pieces));
                }
                Err(e) => errs.push(err(
                    format!("{at}.messages[{j}].content"),
                    CompileReason::Invalid,
                    e,
                )),
            }
        }
        for name in p.variables.properties.keys() {
            if !crate::llm::is_variable_name(name) {
                errs.push(err(
                    format!("{at}.variables.properties"),
                    CompileReason::Invalid,
                    format!("{name:?}: variable names are letters, digits and _"),
                ));
            }
        }
        for name in &p.variables.required {
            if !p.variables.properties.contains_key(name) {
                errs.push(err(
                    format!("{at}.variables.required"),
                    CompileReason::Invalid,
                    format!("{name:?} is required but not in properties"),
                ));
            }
        }
        let temperature = match &p.temperature {
            None => None,
            Some(t) => match t.parse::<f64>() {
                Ok(v) if (0.0..=2.0).contains(&v) => Some(v),
                _ => {
                    errs.push(err(
                        format!("{at}.temperature"),
                        CompileReason::Invalid,
                        format!("{t:?} is not a number from 0 to 2"),
                    ));
                    None
                }
            },
        };
        if !rule.matches.methods.is_empty() && !rule.matches.methods.iter().any(|m| m == "POST") {
            errs.push(err(
                format!("spec.rules[{i}].match.methods"),
                CompileReason::Invalid,
                "a prompt endpoint is called with POST; add it to methods".into(),
            ));
        }
        prompts.insert(
            i,
            Arc::new(Prompt {
                model: p.model.as_str().into(),
                messages,
                variables: p.variables.clone(),
                max_tokens: p.max_tokens,
                temperature,
            }),
        );
    }
    if errs.len() > before {
        return None;
    }
    Some(Arc::new(LlmRoute {
        provider: llm.provider,
        upstream: upstream?,
        query: llm.query.clone(),
        key_header,
        keys,
        cooldown,
        models,
        max_request_bytes: llm
            .max_request_bytes
            .map_or(DEFAULT_MAX_REQUEST_BYTES, |n| n as usize),
        prompts,
        rule_paths,
    }))
}
