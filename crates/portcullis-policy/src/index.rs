//! The route index: host -> rules, looked up without scanning routes.
//!
//! Hosts: an exact name first, then the `*.` wildcard of its parent domain (one label).
//! Paths: an exact-path table, then prefixes tried from the longest segment boundary of the
//! request path down to `/`. Each lookup is a handful of hash probes whatever the number
//! of routes. Within one key, rules naming the method beat rules for every method, and
//! ties go to the earlier route (oldest, then `namespace/name`) and earlier rule.

use std::collections::HashMap;

/// Hash maps for the index. Keys come from config only; requests merely look them up, so a
/// fast unkeyed-quality hash is safe here (no attacker chooses what is inserted), and it
/// is several times cheaper than SipHash on the hot path.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
use std::sync::Arc;

use crate::route::RouteInfo;

/// What a matched rule demands.
#[derive(Debug, Clone)]
pub(crate) enum Requirement {
    /// `auth: none`.
    Public,
    /// A valid token of `policy`, holding every `all` scope and one of `any` (if any).
    Token {
        policy: usize,
        all: Box<[Box<str>]>,
        any: Box<[Box<str>]>,
    },
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub(crate) struct CompiledRule {
    pub(crate) info: RouteInfo,
    /// Upper-case methods; empty means all.
    pub(crate) methods: Box<[Box<str>]>,
    pub(crate) requirement: Requirement,
}

impl CompiledRule {
    fn accepts(&self, method: &str) -> bool {
        self.methods.is_empty() || self.methods.iter().any(|m| **m == *method)
    }
}

/// Rules sharing one path key, most specific first.
#[derive(Debug, Default, Clone)]
struct Candidates(Vec<Arc<CompiledRule>>);

impl Candidates {
    fn find(&self, method: &str) -> Option<&Arc<CompiledRule>> {
        self.0.iter().find(|r| r.accepts(method))
    }
}

/// The rules of one host.
#[derive(Debug, Default, Clone)]
pub(crate) struct HostRules {
    exact: FastMap<Box<str>, Candidates>,
    prefix: FastMap<Box<str>, Candidates>,
}

impl HostRules {
    pub(crate) fn insert(&mut self, path: &str, is_prefix: bool, rule: Arc<CompiledRule>) {
        let table = if is_prefix {
            &mut self.prefix
        } else {
            &mut self.exact
        };
        let list = &mut table
            .entry(normalize_prefix(path, is_prefix).into())
            .or_default()
            .0;
        // Stable: method-specific rules before catch-alls, otherwise insertion order
        // (routes arrive sorted oldest first).
        let pos = if rule.methods.is_empty() {
            list.len()
        } else {
            list.iter()
                .position(|r| r.methods.is_empty())
                .unwrap_or(list.len())
        };
        list.insert(pos, rule);
    }

    fn lookup(&self, path: &str, method: &str) -> Option<&Arc<CompiledRule>> {
        if let Some(r) = self.exact.get(path).and_then(|c| c.find(method)) {
            return Some(r);
        }
        // Prefixes on segment boundaries, longest first: /a/b/c, /a/b, /a, /
        let mut end = path.len();
        loop {
            let candidate = &path[..end];
            let key = if candidate.is_empty() { "/" } else { candidate };
            if let Some(r) = self.prefix.get(key).and_then(|c| c.find(method)) {
                return Some(r);
            }
            if candidate.is_empty() {
                return None;
            }
            end = candidate.rfind('/')?;
        }
    }

    /// Whether the same match already exists (same path key and same method set).
    pub(crate) fn conflict(
        &self,
        path: &str,
        is_prefix: bool,
        methods: &[Box<str>],
    ) -> Option<&Arc<CompiledRule>> {
        let table = if is_prefix { &self.prefix } else { &self.exact };
        table
            .get(normalize_prefix(path, is_prefix))
            .and_then(|c| c.0.iter().find(|r| same_methods(&r.methods, methods)))
    }
}

fn same_methods(a: &[Box<str>], b: &[Box<str>]) -> bool {
    a.len() == b.len() && a.iter().all(|m| b.contains(m))
}

/// `/orders/` as a prefix means the same as `/orders`.
fn normalize_prefix(path: &str, is_prefix: bool) -> &str {
    if is_prefix && path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    }
}

/// Host -> rules.
#[derive(Debug, Default, Clone)]
pub(crate) struct RouteIndex {
    exact: FastMap<Box<str>, HostRules>,
    /// `*.example.com` stored under `example.com`.
    wildcard: FastMap<Box<str>, HostRules>,
    pub(crate) rules: usize,
}

impl RouteIndex {
    pub(crate) fn host_mut(&mut self, host: &str) -> &mut HostRules {
        match host.strip_prefix("*.") {
            Some(parent) => self.wildcard.entry(parent.into()).or_default(),
            None => self.exact.entry(host.into()).or_default(),
        }
    }

    /// Finds the rule for a request. `host` may carry a port and any case.
    pub(crate) fn lookup(
        &self,
        host: &str,
        path: &str,
        method: &str,
    ) -> Option<&Arc<CompiledRule>> {
        let host = strip_port(host);
        let lowered;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = host.to_ascii_lowercase();
            lowered.as_str()
        } else {
            host
        };
        let host = host.strip_suffix('.').unwrap_or(host);
        if let Some(r) = self.exact.get(host).and_then(|h| h.lookup(path, method)) {
            return Some(r);
        }
        // `*.` stands for exactly one label, and a label is never empty
        // (RFC 1035 §2.3.1): `.example.com` is not under `*.example.com`.
        let (label, parent) = host.split_once('.')?;
        if label.is_empty() {
            return None;
        }
        self.wildcard.get(parent)?.lookup(path, method)
    }

    pub(crate) fn hosts(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return host
            .split_once(']')
            .map(|(h, _)| &host[..h.len() + 1])
            .unwrap_or(host);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}
