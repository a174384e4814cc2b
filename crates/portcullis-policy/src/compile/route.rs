//! One ApiRoute -> rules in the [`RouteIndex`], or every error found in it.
//!
//! Rules are all validated before any touches the index. A rule whose match an older
//! route already claims is dropped and reported (`RuleConflict`); the route keeps the
//! rest.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use portcullis_api::{
    ApiRoute, AuthMode, EscapedSlashAction, SemicolonAction, UnderscoreHeaders, parse_duration,
};

use super::objects::Named;
use super::{CompileError, CompileOptions, CompileReason, FailedPolicy, ObjectKey};
use crate::decision::{RouteInfo, UnderscoreHeaderAction, Upstream};
use crate::index::{CompiledRule, Requirement, RouteIndex};
use crate::snapshot::CompiledPolicy;

/// An error about `r` at `path`.
fn route_error(
    r: &ApiRoute,
    path: impl Into<String>,
    reason: CompileReason,
    message: impl Into<String>,
) -> CompileError {
    CompileError {
        kind: "ApiRoute",
        namespace: r.ns(),
        name: r.name_any(),
        path: path.into(),
        message: message.into(),
        reason,
    }
}

/// The policies a route may refer to.
pub(super) struct Policies<'a> {
    /// Index in `compiled` of each policy that compiled.
    pub(super) by_name: &'a HashMap<ObjectKey, usize>,
    /// The policies left out, and why.
    pub(super) failed: &'a HashMap<ObjectKey, FailedPolicy>,
    pub(super) compiled: &'a [CompiledPolicy],
}

/// Compiles one route into `index`. On success, returns non-fatal errors (rules dropped
/// because an earlier route already claims the same match).
pub(super) fn compile_route(
    options: &CompileOptions,
    r: &ApiRoute,
    policies: &Policies<'_>,
    secrets: &super::objects::SecretIndex<'_>,
    index: &mut RouteIndex,
) -> Result<Vec<CompileError>, Vec<CompileError>> {
    let ns = r.ns();
    let spec = &r.spec;
    let mut errs = Vec::new();
    if let Some(rules) = &options.spec_rules {
        for v in (rules.api_route)(r) {
            errs.push(route_error(r, v.path, CompileReason::Invalid, v.message));
        }
        if !errs.is_empty() {
            return Err(errs);
        }
    }
    check_hosts(r, &mut errs);
    let policy = resolve_policy(r, policies, &mut errs);
    let timeout = |field: &str,
                   v: Option<&String>,
                   default: Duration,
                   errs: &mut Vec<CompileError>| match v {
        None => default,
        Some(v) => parse_duration(v).unwrap_or_else(|e| {
            errs.push(route_error(
                r,
                format!("spec.timeouts.{field}"),
                CompileReason::InvalidDuration,
                e,
            ));
            default
        }),
    };
    let t = spec.timeouts.clone().unwrap_or_default();
    let connect_timeout = timeout(
        "connect",
        t.connect.as_ref(),
        options.connect_timeout,
        &mut errs,
    );
    let request_timeout = timeout(
        "request",
        t.request.as_ref(),
        options.request_timeout,
        &mut errs,
    );

    let norm = spec.path_normalization.clone().unwrap_or_default();
    let path_options = crate::target::PathOptions {
        merge_slashes: norm.merge_slashes.unwrap_or(true),
        escaped_slashes: match norm.escaped_slashes.unwrap_or_default() {
            EscapedSlashAction::Reject => crate::target::EscapedSlashes::Reject,
            EscapedSlashAction::Keep => crate::target::EscapedSlashes::Keep,
            EscapedSlashAction::Decode => crate::target::EscapedSlashes::Decode,
        },
        semicolons: match norm.semicolons.unwrap_or_default() {
            SemicolonAction::Reject => crate::target::Semicolons::Reject,
            SemicolonAction::Keep => crate::target::Semicolons::Keep,
        },
    };
    let underscore_headers = match spec.headers_with_underscores.unwrap_or_default() {
        UnderscoreHeaders::Drop => UnderscoreHeaderAction::Drop,
        UnderscoreHeaders::Reject => UnderscoreHeaderAction::Reject,
    };

    let llm = super::llm::compile_llm(
        r,
        secrets,
        &path_options,
        &|path, reason, message| route_error(r, path, reason, message),
        &mut errs,
    );
    let upstream = match &llm {
        Some(l) => Some(l.upstream.clone()),
        None if r.spec.backend.llm.is_some() => None,
        None => match upstream(r) {
            Ok(u) => Some(Arc::new(u)),
            Err(e) => {
                errs.push(route_error(
                    r,
                    "spec.backend",
                    CompileReason::InvalidBackend,
                    e,
                ));
                None
            }
        },
    };
    let mcp = compile_mcp(r, policy.map(|p| &policies.compiled[p]), secrets, &mut errs);
    let lifecycle = match spec
        .lifecycle
        .as_ref()
        .map(crate::route::CompiledLifecycle::compile)
    {
        None | Some(Ok(None)) => None,
        Some(Ok(Some(l))) => Some(Arc::new(l)),
        Some(Err((field, message))) => {
            errs.push(route_error(
                r,
                format!("spec.lifecycle.{field}"),
                CompileReason::Invalid,
                message,
            ));
            None
        }
    };
    let draft = lifecycle
        .as_ref()
        .is_some_and(|l| l.stage == portcullis_api::LifecycleStage::Draft);
    // Rules: validate everything before touching the index.
    let mut pending = Vec::new();
    let id: Arc<str> = format!("{ns}/{}", r.name_any()).into();
    for (i, rule) in spec.rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        let (path, is_prefix) = match (&rule.matches.path, &rule.matches.path_prefix) {
            (Some(p), None) => (p.clone(), false),
            (None, Some(p)) => (p.clone(), true),
            _ => {
                errs.push(route_error(
                    r,
                    format!("{at}.match"),
                    CompileReason::Invalid,
                    "exactly one of path or pathPrefix is required",
                ));
                continue;
            }
        };
        // Rules are written in the same canonical form requests are matched in.
        let path = match crate::target::canonical_path(&path, &path_options) {
            Ok(p) => p.into_owned(),
            Err(e) => {
                errs.push(route_error(
                    r,
                    format!("{at}.match"),
                    CompileReason::Invalid,
                    format!("{path:?} cannot be matched: {e}"),
                ));
                continue;
            }
        };
        let mut methods = Vec::new();
        for (j, m) in rule.matches.methods.iter().enumerate() {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                errs.push(route_error(
                    r,
                    format!("{at}.match.methods[{j}]"),
                    CompileReason::Invalid,
                    format!("{m:?} is not an upper-case HTTP method"),
                ));
            }
            methods.push(Box::<str>::from(m.as_str()));
        }
        let all = scopes(r, &at, "requiredScopes", &rule.required_scopes, &mut errs);
        let any = scopes(r, &at, "anyScopes", &rule.any_scopes, &mut errs);
        let requirement = match rule.auth.unwrap_or_default() {
            AuthMode::None if !all.is_empty() || !any.is_empty() => {
                errs.push(route_error(
                    r,
                    format!("{at}.auth"),
                    CompileReason::Invalid,
                    "a rule with auth: none is public and cannot also demand requiredScopes or anyScopes",
                ));
                continue;
            }
            // A draft answers only preview tokens: a public rule would answer anyone.
            AuthMode::None if draft => {
                errs.push(route_error(
                    r,
                    format!("{at}.auth"),
                    CompileReason::Invalid,
                    "a Draft route answers only tokens with the preview scope: it cannot have auth: none rules",
                ));
                continue;
            }
            AuthMode::None => Requirement::Public,
            AuthMode::Required => Requirement::Token {
                policy: policy.unwrap_or(usize::MAX),
                all,
                any,
            },
        };
        if rule.prompt.is_some() && r.spec.backend.llm.is_none() {
            errs.push(route_error(
                r,
                format!("{at}.prompt"),
                CompileReason::Invalid,
                "a prompt needs an llm backend (spec.backend.llm)",
            ));
            continue;
        }
        let (Some(policy), Some(upstream)) = (policy, upstream.clone()) else {
            continue;
        };
        pending.push(PendingRule {
            i,
            path,
            is_prefix,
            rule: CompiledRule {
                info: RouteInfo {
                    id: id.clone(),
                    rule: i,
                    upstream,
                    pass_authorization: spec.pass_authorization,
                    connect_timeout,
                    request_timeout,
                    forwarded_header_names: policies.compiled[policy]
                        .forwarded_header_names
                        .clone(),
                    path_options,
                    underscore_headers,
                    llm: llm.clone(),
                    quotas: policies.compiled[policy].quotas.clone(),
                    mcp: mcp.clone(),
                    serves_mcp_metadata: false,
                    require_tls: spec.require_tls,
                    lifecycle: lifecycle.clone(),
                },
                methods: methods.into(),
                requirement,
            },
            quiet: false,
        });
    }
    // MCP: the metadata document, public, at its well-known paths (the path-suffixed one
    // first; the bare one only where no other rule claims it).
    if let (Some(m), Some(first)) = (&mcp, pending.first().map(|p| p.rule.info.clone())) {
        for (k, path) in m.metadata_paths.iter().enumerate() {
            let mut info = first.clone();
            info.serves_mcp_metadata = true;
            pending.push(PendingRule {
                i: usize::MAX,
                path: path.clone(),
                is_prefix: false,
                rule: CompiledRule {
                    info,
                    methods: vec![Box::from("GET"), Box::from("HEAD")].into(),
                    requirement: Requirement::Public,
                },
                quiet: k > 0,
            });
        }
    }
    if spec.rules.is_empty() {
        errs.push(route_error(
            r,
            "spec.rules",
            CompileReason::Invalid,
            "at least one rule is required: a route without rules answers nothing",
        ));
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    Ok(insert(r, pending, index))
}

/// A rule that passed every check, waiting to go into the index.
struct PendingRule {
    i: usize,
    path: String,
    is_prefix: bool,
    rule: CompiledRule,
    /// A conflict drops it without a report (the bare MCP metadata path, which another
    /// MCP route on the host may hold).
    quiet: bool,
}

/// Puts the rules into the index. Conflicts: an earlier route keeps the match; this rule is
/// dropped and reported.
fn insert(r: &ApiRoute, pending: Vec<PendingRule>, index: &mut RouteIndex) -> Vec<CompileError> {
    let hosts = &r.spec.hosts;
    let mut warnings = Vec::new();
    for p in pending {
        let mut conflict = None;
        for host in hosts {
            if let Some(existing) =
                index
                    .host_mut(host)
                    .conflict(&p.path, p.is_prefix, &p.rule.methods)
            {
                conflict = Some((host.clone(), existing.info.id.clone(), existing.info.rule));
                break;
            }
        }
        if let Some((host, other, other_rule)) = conflict {
            if p.quiet {
                continue;
            }
            let field = if p.i == usize::MAX {
                "spec.mcp.resource".to_owned()
            } else {
                format!("spec.rules[{}].match", p.i)
            };
            warnings.push(route_error(
                r,
                field,
                CompileReason::RuleConflict,
                format!(
                    "host {host} path {} is already claimed by ApiRoute {other} rule {other_rule}; this rule is ignored",
                    p.path
                ),
            ));
            continue;
        }
        let rule = Arc::new(p.rule);
        for host in hosts {
            index
                .host_mut(host)
                .insert(&p.path, p.is_prefix, rule.clone());
        }
        index.rules += 1;
    }
    warnings
}

/// `spec.hosts`: at least one, each a lowercase DNS name, optionally `*.`-prefixed.
fn check_hosts(r: &ApiRoute, errs: &mut Vec<CompileError>) {
    if r.spec.hosts.is_empty() {
        errs.push(route_error(
            r,
            "spec.hosts",
            CompileReason::Invalid,
            "at least one host is required",
        ));
    }
    for (i, h) in r.spec.hosts.iter().enumerate() {
        let bare = h.strip_prefix("*.").unwrap_or(h);
        if bare.is_empty()
            || bare.contains(['*', ':', '/'])
            || h.bytes().any(|b| b.is_ascii_uppercase())
        {
            errs.push(route_error(
                r,
                format!("spec.hosts[{i}]"),
                CompileReason::Invalid,
                format!("{h:?} must be a lowercase DNS name, optionally starting with '*.'"),
            ));
        }
    }
}

/// The index of the route's policy, or `None` with an error on `spec.policyRef.name`: not
/// found, not usable, or waiting for its first keys.
fn resolve_policy(
    r: &ApiRoute,
    policies: &Policies<'_>,
    errs: &mut Vec<CompileError>,
) -> Option<usize> {
    let ns = r.ns();
    let name = &r.spec.policy_ref.name;
    let key = (ns.clone(), name.clone());
    if let Some(i) = policies.by_name.get(&key) {
        return Some(*i);
    }
    let (reason, message) = match policies.failed.get(&key) {
        Some(f) if f.pending => (
            CompileReason::PolicyPending,
            format!("TokenPolicy {ns}/{name} is not usable yet: {}", f.why),
        ),
        Some(f) => (
            CompileReason::PolicyNotReady,
            format!("TokenPolicy {ns}/{name} is not usable: {}", f.why),
        ),
        None => (
            CompileReason::PolicyNotFound,
            format!("TokenPolicy {ns}/{name} not found"),
        ),
    };
    errs.push(route_error(r, "spec.policyRef.name", reason, message));
    None
}

/// A rule's `requiredScopes` or `anyScopes` (`field`), each one word of printable
/// characters.
/// RFC 6749 section 3.3: `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`, one word of
/// printable characters without spaces, quotes or backslashes.
pub(super) fn is_scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

fn scopes(
    r: &ApiRoute,
    at: &str,
    field: &str,
    list: &[String],
    errs: &mut Vec<CompileError>,
) -> Box<[Box<str>]> {
    for (j, s) in list.iter().enumerate() {
        if !is_scope_token(s) {
            errs.push(route_error(
                r,
                format!("{at}.{field}[{j}]"),
                CompileReason::InvalidScope,
                format!(
                    "{s:?} is not a scope: one word of printable characters, no spaces, quotes or backslashes"
                ),
            ));
        }
    }
    list.iter().map(|s| Box::from(s.as_str())).collect()
}

/// The upstream of `spec.backend`: a Service (by cluster DNS name) or a URL.
fn upstream(r: &ApiRoute) -> Result<Upstream, String> {
    let ns = r.ns();
    match (&r.spec.backend.service, &r.spec.backend.url) {
        (Some(svc), None) => format!("http://{}.{ns}.svc:{}", svc.name, svc.port)
            .parse::<http::Uri>()
            .map_err(|e| e.to_string())
            .and_then(upstream_from_uri),
        (None, Some(url)) => url
            .parse::<http::Uri>()
            .map_err(|e| e.to_string())
            .and_then(upstream_from_uri),
        _ => Err("exactly one of service, url or llm is required".into()),
    }
}

pub(super) fn upstream_from_uri(uri: http::Uri) -> Result<Upstream, String> {
    let scheme = uri.scheme().cloned().ok_or("the URL needs a scheme")?;
    if scheme != http::uri::Scheme::HTTP && scheme != http::uri::Scheme::HTTPS {
        return Err(format!("unsupported scheme {scheme}"));
    }
    let authority = uri.authority().cloned().ok_or("the URL needs a host")?;
    if uri.query().is_some() {
        return Err("the URL must not carry a query".into());
    }
    let base_path = uri.path().trim_end_matches('/').to_string();
    let host_header = http::HeaderValue::from_str(authority.as_str())
        .map_err(|_| format!("the host {authority} cannot be a Host header"))?;
    Ok(Upstream {
        scheme,
        authority,
        base_path,
        host_header,
    })
}

/// `spec.mcp`, compiled: the metadata, the per-method rules and the upstream credential.
fn compile_mcp(
    r: &ApiRoute,
    policy: Option<&CompiledPolicy>,
    secrets: &super::objects::SecretIndex<'_>,
    errs: &mut Vec<CompileError>,
) -> Option<Arc<crate::mcp::McpRoute>> {
    let spec = r.spec.mcp.as_ref()?;
    let ns = r.ns();
    if r.spec.pass_authorization {
        errs.push(route_error(
            r,
            "spec.passAuthorization",
            CompileReason::Invalid,
            "an mcp route never passes the client's token to the MCP server (token passthrough is forbidden): remove passAuthorization, or set mcp.upstreamCredential",
        ));
    }
    if r.spec.backend.llm.is_some() {
        errs.push(route_error(
            r,
            "spec.mcp",
            CompileReason::Invalid,
            "mcp and backend.llm cannot be combined",
        ));
    }
    let credential = match &spec.upstream_credential {
        None => None,
        Some(c) => {
            let at = "spec.mcp.upstreamCredential.secretRef";
            let name = &c.secret_ref.name;
            let value = secrets
                .get(&(ns.clone(), name.clone()))
                .and_then(|s| super::objects::secret_value(s, &c.secret_ref.key));
            let Some(raw) = value else {
                errs.push(route_error(
                    r,
                    at,
                    CompileReason::SecretNotFound,
                    format!(
                        "Secret {ns}/{name} or its key {:?} not found",
                        c.secret_ref.key
                    ),
                ));
                return None;
            };
            let raw = String::from_utf8_lossy(&raw).trim().to_owned();
            let header = c.header.as_deref().unwrap_or("authorization");
            let value = if header.eq_ignore_ascii_case("authorization") {
                format!("Bearer {raw}")
            } else {
                raw
            };
            match (
                http::HeaderName::from_bytes(header.to_ascii_lowercase().as_bytes()),
                http::HeaderValue::from_str(&value),
            ) {
                (Ok(n), Ok(mut v)) if !raw_is_empty(&value) => {
                    v.set_sensitive(true);
                    Some((n, v))
                }
                _ => {
                    errs.push(route_error(
                        r,
                        at,
                        CompileReason::Invalid,
                        format!(
                            "Secret {ns}/{name} key {:?} is empty or not a valid header value",
                            c.secret_ref.key
                        ),
                    ));
                    return None;
                }
            }
        }
    };
    let mut issuers: Vec<String> = policy
        .map(|p| {
            let mut v: Vec<String> = p.issuers.keys().cloned().collect();
            if let Some(i) = &p.introspection {
                v.push(i.endpoint.issuer.to_string());
            }
            v
        })
        .unwrap_or_default();
    issuers.sort();
    issuers.dedup();
    let mut scopes: Vec<String> = Vec::new();
    for rule in &r.spec.rules {
        scopes.extend(rule.required_scopes.iter().cloned());
        scopes.extend(rule.any_scopes.iter().cloned());
    }
    match crate::mcp::compile(spec, &issuers, &scopes, credential) {
        Ok(mut m) => {
            // RFC 9728 section 2: the DPoP proof algorithms the route's issuers accept, and
            // whether every one of them requires DPoP-bound tokens.
            if let Some(p) = policy
                && let Ok(mut doc) = serde_json::from_str::<serde_json::Value>(&m.metadata)
            {
                let configs: Vec<&crate::dpop::DpopConfig> = p.dpop.values().collect();
                let mut algs: Vec<String> = configs
                    .iter()
                    .flat_map(|c| c.algorithms.iter().map(|a| format!("{a:?}")))
                    .collect();
                algs.sort();
                algs.dedup();
                if !algs.is_empty() {
                    doc["dpop_signing_alg_values_supported"] = algs.into();
                    doc["dpop_bound_access_tokens_required"] =
                        (!configs.is_empty() && configs.iter().all(|c| c.required)).into();
                    m.metadata = doc.to_string().into();
                }
            }
            Some(Arc::new(m))
        }
        Err((path, message)) => {
            errs.push(route_error(r, path, CompileReason::Invalid, message));
            None
        }
    }
}

/// An `Authorization` value of only a scheme.
fn raw_is_empty(value: &str) -> bool {
    value.trim().is_empty() || value == "Bearer "
}
