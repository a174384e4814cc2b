//! The API catalog's data: for every ApiRoute in force, what it serves, what each rule
//! demands of a token, which issuers its policy trusts, who owns it, where it is in its
//! life and who may see it. Built with the snapshot from the routes that compiled.
//!
//! It holds no secret and no key material: issuer URLs, audiences and binding modes only,
//! never keys, Secrets, backend credentials, revocations or API keys.

use portcullis_api::{ApiRoute, AuthMode, CatalogVisibility, LifecycleStage, TokenPolicy};
use serde::Serialize;

/// One API in the catalog.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// `namespace/name`.
    pub id: String,
    /// The ApiRoute's namespace: its team.
    pub namespace: String,
    /// The ApiRoute's name.
    pub name: String,
    /// `spec.description`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `spec.tags`.
    pub tags: Vec<String>,
    /// `spec.owner.team`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_team: Option<String>,
    /// `spec.owner.contact`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_contact: Option<String>,
    /// Who sees it.
    pub visibility: &'static str,
    /// With `Namespaces` visibility: the other namespaces that see it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shared_with: Vec<String>,
    /// `http`, `llm` or `mcp`.
    pub kind: &'static str,
    /// Host names.
    pub hosts: Vec<String>,
    /// The rules, as written (paths as matched).
    pub rules: Vec<Rule>,
    /// The TokenPolicy (`namespace/name`).
    pub policy: String,
    /// The issuers the policy trusts.
    pub issuers: Vec<Issuer>,
    /// Whether the policy also takes API keys.
    pub api_keys: bool,
    /// The lifecycle as written (the stage in effect is [`Entry::stage_at`]).
    pub lifecycle: Lifecycle,
    /// An MCP route's resource URI.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mcp_resource: Option<String>,
    /// The OpenAPI document of an LLM route (its API and prompt endpoints).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub openapi: Option<serde_json::Value>,
    /// The lifecycle as written, for the stage in effect.
    #[serde(skip)]
    spec_lifecycle: portcullis_api::Lifecycle,
    /// Lower-cased text searched by [`Entry::matches`].
    #[serde(skip)]
    haystack: String,
}

/// One rule of an API.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// Methods; empty means any.
    pub methods: Vec<String>,
    /// The path, or the prefix.
    pub path: String,
    /// Whether `path` is a prefix.
    pub prefix: bool,
    /// `auth: none`: no token needed.
    pub public: bool,
    /// Scopes a token must all hold.
    pub required_scopes: Vec<String>,
    /// Scopes a token must hold one of.
    pub any_scopes: Vec<String>,
}

/// An issuer a policy trusts, as the catalog shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Issuer {
    /// `iss`.
    pub issuer: String,
    /// Audiences a token must name one of.
    pub audiences: Vec<String>,
    /// Whether its opaque tokens are introspected.
    pub introspection: bool,
    /// DPoP mode (`Off`, `Optional`, `Required`).
    pub dpop: &'static str,
    /// Certificate binding mode (`Off`, `Optional`, `Required`).
    pub certificate_bound: &'static str,
}

/// An API's lifecycle, as written.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Lifecycle {
    /// The stage written in the spec.
    pub stage: &'static str,
    /// `deprecatedAt`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deprecated_at: Option<String>,
    /// `sunsetAt`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sunset_at: Option<String>,
    /// `successor`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub successor: Option<String>,
    /// The scope a Draft needs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preview_scope: Option<String>,
}

impl Entry {
    /// The stage in effect at `now`: `Retired` once past `sunsetAt`.
    pub fn stage_at(&self, now: i64) -> &'static str {
        self.spec_lifecycle.stage_at(now).as_str()
    }

    /// Whether free text `q` (case-insensitive, every word) occurs in the name,
    /// description, tags, scopes, hosts or owner.
    pub fn matches(&self, q: &str) -> bool {
        q.split_whitespace()
            .all(|w| self.haystack.contains(&w.to_lowercase()))
    }

    /// Whether the API carries `tag`.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }

    /// Whether a rule of the API demands `scope`.
    pub fn demands_scope(&self, scope: &str) -> bool {
        self.rules.iter().any(|r| {
            r.required_scopes.iter().any(|s| s == scope) || r.any_scopes.iter().any(|s| s == scope)
        })
    }
}

/// Who looks at the catalog: from the scopes of their token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Viewer {
    /// `catalog:all`: every API.
    pub all: bool,
    /// The namespaces (teams) of `catalog:namespace:<ns>` scopes.
    pub namespaces: Vec<String>,
}

impl Viewer {
    /// The viewer a token's scopes make.
    pub fn from_scopes<'a>(scopes: impl IntoIterator<Item = &'a str>) -> Self {
        let mut v = Viewer::default();
        for s in scopes {
            if s == "catalog:all" {
                v.all = true;
            } else if let Some(ns) = s.strip_prefix("catalog:namespace:")
                && !ns.is_empty()
            {
                v.namespaces.push(ns.to_owned());
            }
        }
        v
    }

    /// Whether this viewer may see `e`: public APIs to every reader; private ones to
    /// their namespace; shared ones to their namespace and the listed ones.
    pub fn sees(&self, e: &Entry) -> bool {
        let member = |ns: &str| self.namespaces.iter().any(|n| n == ns);
        let team = self.all
            || member(&e.namespace)
            || (e.visibility == "Namespaces" && e.shared_with.iter().any(|n| member(n)));
        // A draft is not announced to the whole cluster: only its own and sharing teams.
        team || (e.visibility == "Public" && e.lifecycle.stage != LifecycleStage::Draft.as_str())
    }
}

fn mode<T: std::fmt::Debug>(m: Option<T>, default: &'static str) -> &'static str {
    match m.map(|m| format!("{m:?}")).as_deref() {
        Some("Off") => "Off",
        Some("Optional") => "Optional",
        Some("Required") => "Required",
        _ => default,
    }
}

/// The entries of `routes` (those in force), their policies looked up in `policies`,
/// sorted by id.
pub fn entries(routes: &[&ApiRoute], policies: &[TokenPolicy]) -> Vec<Entry> {
    let mut out: Vec<Entry> = routes.iter().map(|r| entry(r, policies)).collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

fn entry(r: &ApiRoute, policies: &[TokenPolicy]) -> Entry {
    let namespace = r
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = r.metadata.name.clone().unwrap_or_default();
    let spec = &r.spec;
    let policy = policies.iter().find(|p| {
        p.metadata.namespace.as_deref().unwrap_or("default") == namespace
            && p.metadata.name.as_deref() == Some(spec.policy_ref.name.as_str())
    });
    let issuers = policy
        .map(|p| {
            p.spec
                .issuers
                .iter()
                .map(|i| Issuer {
                    issuer: i.issuer.clone(),
                    audiences: i.audiences.clone(),
                    introspection: i.introspection.is_some(),
                    dpop: mode(i.dpop.as_ref().and_then(|d| d.mode), "Optional"),
                    certificate_bound: mode(i.certificate_bound, "Optional"),
                })
                .collect()
        })
        .unwrap_or_default();
    let rules: Vec<Rule> = spec
        .rules
        .iter()
        .map(|rule| {
            let (path, prefix) = match (&rule.matches.path, &rule.matches.path_prefix) {
                (Some(p), _) => (p.clone(), false),
                (None, Some(p)) => (p.clone(), true),
                (None, None) => (String::new(), false),
            };
            Rule {
                methods: rule.matches.methods.clone(),
                path,
                prefix,
                public: rule.auth == Some(AuthMode::None),
                required_scopes: rule.required_scopes.clone(),
                any_scopes: rule.any_scopes.clone(),
            }
        })
        .collect();
    let l = spec.lifecycle.clone().unwrap_or_default();
    let stage = l.stage.unwrap_or_default();
    let catalog = spec.catalog.clone().unwrap_or_default();
    let visibility = match catalog.visibility.unwrap_or_default() {
        CatalogVisibility::Private => "Private",
        CatalogVisibility::Namespaces => "Namespaces",
        CatalogVisibility::Public => "Public",
    };
    let kind = if spec.backend.llm.is_some() {
        "llm"
    } else if spec.mcp.is_some() {
        "mcp"
    } else {
        "http"
    };
    let openapi = spec.backend.llm.is_some().then(|| {
        let mut doc = crate::openapi::document(&[r]);
        // A prompt endpoint's description is its system prompt: the route's own, not
        // for every catalog reader.
        if let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) {
            for ops in paths.values_mut().filter_map(|o| o.as_object_mut()) {
                for op in ops.values_mut().filter_map(|o| o.as_object_mut()) {
                    op.remove("description");
                }
            }
        }
        doc
    });
    let id = format!("{namespace}/{name}");
    let mut haystack = vec![
        id.clone(),
        spec.description.clone().unwrap_or_default(),
        spec.owner
            .as_ref()
            .and_then(|o| o.team.clone())
            .unwrap_or_default(),
    ];
    haystack.extend(spec.tags.iter().cloned());
    haystack.extend(spec.hosts.iter().cloned());
    for r in &rules {
        haystack.extend(r.required_scopes.iter().cloned());
        haystack.extend(r.any_scopes.iter().cloned());
    }
    Entry {
        id,
        namespace,
        name,
        description: spec.description.clone(),
        tags: spec.tags.clone(),
        owner_team: spec.owner.as_ref().and_then(|o| o.team.clone()),
        owner_contact: spec.owner.as_ref().and_then(|o| o.contact.clone()),
        visibility,
        shared_with: catalog.namespaces,
        kind,
        hosts: spec.hosts.clone(),
        rules,
        policy: format!(
            "{}/{}",
            r.metadata.namespace.as_deref().unwrap_or("default"),
            spec.policy_ref.name
        ),
        issuers,
        api_keys: policy.is_some_and(|p| p.spec.api_keys.is_some()),
        lifecycle: Lifecycle {
            stage: stage.as_str(),
            deprecated_at: l.deprecated_at.clone(),
            sunset_at: l.sunset_at.clone(),
            successor: l.successor.clone(),
            preview_scope: (stage == LifecycleStage::Draft)
                .then(|| l.preview_scope.clone().unwrap_or_else(|| "preview".into())),
        },
        mcp_resource: spec.mcp.as_ref().map(|m| m.resource.clone()),
        openapi,
        spec_lifecycle: l,
        haystack: haystack.join("\n").to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(yaml: &str) -> ApiRoute {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn visibility_private_shared_public_and_all() {
        let base = |ns: &str, name: &str, catalog: &str| {
            route(&format!(
                "apiVersion: portcullis.dev/v1alpha1\nkind: ApiRoute\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  hosts: [a.test]\n  policyRef: {{name: p}}\n  backend: {{url: 'http://127.0.0.1:9'}}\n  rules: [{{match: {{pathPrefix: /}}, requiredScopes: [orders:read]}}]\n{catalog}"
            ))
        };
        let private = base("shop", "a", "");
        let shared = base(
            "shop",
            "b",
            "  catalog: {visibility: Namespaces, namespaces: [billing]}\n",
        );
        let public = base("other", "c", "  catalog: {visibility: Public}\n");
        let e = entries(&[&private, &shared, &public], &[]);
        let ids = |v: &Viewer| -> Vec<&str> {
            e.iter()
                .filter(|x| v.sees(x))
                .map(|x| x.id.as_str())
                .collect()
        };
        let shop = Viewer::from_scopes(["catalog:read", "catalog:namespace:shop"]);
        assert_eq!(ids(&shop), ["other/c", "shop/a", "shop/b"]);
        let billing = Viewer::from_scopes(["catalog:namespace:billing"]);
        assert_eq!(ids(&billing), ["other/c", "shop/b"]);
        let nobody = Viewer::from_scopes(["catalog:read", "catalog:namespace:"]);
        assert_eq!(ids(&nobody), ["other/c"]);
        let all = Viewer::from_scopes(["catalog:all"]);
        assert_eq!(ids(&all).len(), 3);
        // A public draft: its team sees it, the rest of the cluster not yet.
        let draft = base(
            "other",
            "d",
            "  catalog: {visibility: Public}\n  lifecycle: {stage: Draft}\n",
        );
        let e2 = entries(&[&draft], &[]);
        assert!(!shop.sees(&e2[0]));
        assert!(Viewer::from_scopes(["catalog:namespace:other"]).sees(&e2[0]));
        // Search: words of the id, scopes, hosts; tags and scopes exactly.
        assert!(e[0].matches("OTHER/c"));
        assert!(e[0].matches("orders:read a.test"));
        assert!(!e[0].matches("orders:write"));
        assert!(e[0].demands_scope("orders:read") && !e[0].demands_scope("orders"));
    }
}
