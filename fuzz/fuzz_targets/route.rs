//! Route lookup: `Snapshot::canonical_target` then `Snapshot::authorize`, over a snapshot
//! with exact paths, prefixes, nested prefixes, method rules, an exact host, a wildcard
//! host (`*.example.com`, also the fallback of api.example.com), public rules, and routes
//! with relaxed path normalization (slashes unmerged + `%2F` and `;` kept; `%2F` decoded).
//!
//! Input: byte 0 picks the host (0xFF: the host is the rest up to the first `\n`), byte 1
//! the method, byte 2 the Authorization header; the rest is the raw path (lossy UTF-8).
//!
//! Invariants, for Ok(p) = canonical_target(host, method, raw):
//! - p is a fixed point: canonical_target(host, method, p) == p;
//! - p is `canonical_path(raw, opts)` for the options of the route that decides it (the
//!   defaults when none does), and meets every path invariant under those options
//!   (fuzz/src/paths.rs: RFC 3986 form, and with merged slashes and no kept `%2F`, a
//!   backend that decodes and cleans the path lands on p itself);
//! - no token here ever verifies, so Allow only on a public rule, only for a host of its
//!   route, only for a path equal to (exact) or under (prefix, on a segment boundary) the
//!   rule's path, and never under a protected prefix (`/admin`, `/public/secret`,
//!   `/priv`, `/pub/private`, or anything but `/static` on the wildcard host).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portcullis_fuzz::{ensure, fixture, paths};
use portcullis_policy::{
    Decision, EscapedSlashes, PathOptions, RequestParts, Semicolons, Snapshot, TargetError,
    canonical_path,
};

const ROUTES: &str = r#"
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {name: api, namespace: shop}
spec:
  hosts: [api.example.com]
  policyRef: {name: default}
  backend: {url: "http://127.0.0.1:9000"}
  rules:
    - match: {pathPrefix: /public}
      auth: none
    - match: {pathPrefix: /admin}
      requiredScopes: [admin]
    - match: {path: /orders, methods: [GET]}
      requiredScopes: [orders:read]
    - match: {pathPrefix: /orders, methods: [POST]}
      requiredScopes: [orders:write]
    - match: {path: /health}
      auth: none
    - match: {pathPrefix: /public/secret}
---
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {name: wild, namespace: shop}
spec:
  hosts: ["*.example.com"]
  policyRef: {name: default}
  backend: {url: "http://127.0.0.1:9001"}
  rules:
    - match: {pathPrefix: /static}
      auth: none
    - match: {pathPrefix: /}
---
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {name: files, namespace: shop}
spec:
  hosts: [files.example.com]
  policyRef: {name: default}
  backend: {url: "http://127.0.0.1:9002"}
  pathNormalization: {mergeSlashes: false, escapedSlashes: Keep, semicolons: Keep}
  rules:
    - match: {pathPrefix: /pub}
      auth: none
    - match: {pathPrefix: /priv}
    - match: {pathPrefix: /pub/private}
---
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {name: decode, namespace: shop}
spec:
  hosts: [decode.example.com]
  policyRef: {name: default}
  backend: {url: "http://127.0.0.1:9003"}
  pathNormalization: {escapedSlashes: Decode}
  rules:
    - match: {pathPrefix: /public}
      auth: none
    - match: {pathPrefix: /admin}
"#;

enum Match {
    Exact(&'static str),
    Prefix(&'static str),
}

/// (route id, host pattern, public rules by index, protected prefixes).
struct RouteModel {
    id: &'static str,
    host: &'static str,
    public: &'static [(usize, Match)],
    protected: &'static [&'static str],
}

const MODEL: &[RouteModel] = &[
    RouteModel {
        id: "shop/api",
        host: "api.example.com",
        public: &[(0, Match::Prefix("/public")), (4, Match::Exact("/health"))],
        protected: &["/admin", "/public/secret"],
    },
    RouteModel {
        id: "shop/wild",
        host: "*.example.com",
        public: &[(0, Match::Prefix("/static"))],
        protected: &[],
    },
    RouteModel {
        id: "shop/files",
        host: "files.example.com",
        public: &[(0, Match::Prefix("/pub"))],
        protected: &["/priv", "/pub/private"],
    },
    RouteModel {
        id: "shop/decode",
        host: "decode.example.com",
        public: &[(0, Match::Prefix("/public"))],
        protected: &["/admin"],
    },
];

const HOSTS: &[&str] = &[
    "api.example.com",
    "API.Example.COM:8443",
    "api.example.com.",
    "files.example.com",
    "decode.example.com",
    "x.example.com",
    "a.b.example.com",
    "example.com",
    "[::1]:8080",
    "api.example.com:",
    "api.example.com:abc",
    "*.example.com",
    "",
    "decode.example.com:80",
    "FILES.example.com.",
];
const METHODS: &[&str] = &["GET", "POST", "DELETE", "get", "PUT", "OPTIONS", ""];
const AUTH: &[Option<&str>] = &[
    None,
    Some("Bearer x.y.z"),
    Some("Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIn0."),
    Some("Basic YTpi"),
    Some("Bearer"),
];

const LENIENT: PathOptions = PathOptions {
    merge_slashes: true,
    escaped_slashes: EscapedSlashes::Keep,
    semicolons: Semicolons::Keep,
};

fn snapshot() -> &'static Snapshot {
    static S: OnceLock<Snapshot> = OnceLock::new();
    S.get_or_init(|| {
        let routes: Vec<_> = serde_yaml::Deserializer::from_str(ROUTES)
            .map(|d| serde::Deserialize::deserialize(d).expect("route parses"))
            .collect();
        fixture::build(&routes)
    })
}

/// Lower-case, port and trailing dot removed: the host as routes name it.
fn host_key(host: &str) -> String {
    let h = if host.starts_with('[') {
        host.split_once(']')
            .map_or(host, |(h, _)| &host[..h.len() + 1])
    } else {
        match host.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        }
    };
    let h = h.to_ascii_lowercase();
    h.strip_suffix('.').map(str::to_owned).unwrap_or(h)
}

fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(parent) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
        None => host == pattern,
    }
}

fn under(path: &str, prefix: &str) -> bool {
    prefix == "/"
        || path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn check(host: &str, method: &str, auth: Option<&str>, raw: &str) {
    let s = snapshot();
    let p = match s.canonical_target(host, method, raw) {
        Ok(p) => p.into_owned(),
        Err(e) => {
            // Refused under one of the option sets a route here can ask for.
            if e != TargetError::Ambiguous {
                let sets = [
                    LENIENT,
                    PathOptions::default(),
                    PathOptions {
                        merge_slashes: false,
                        ..LENIENT
                    },
                    PathOptions {
                        escaped_slashes: EscapedSlashes::Decode,
                        ..PathOptions::default()
                    },
                ];
                assert!(
                    sets.iter().any(|o| paths::check_err(raw, o, e).is_ok()),
                    "canonical_target refused {raw:?} with {e:?}, justified under no options"
                );
            }
            return;
        }
    };
    match s.canonical_target(host, method, &p) {
        Ok(again) if again == p => {}
        other => panic!("not a fixed point: {raw:?} -> {p:?} -> {other:?} (host {host:?})"),
    }
    let mut req = RequestParts::new(method, host, &p);
    if let Some(a) = auth {
        req = req.with_authorization(a);
    }
    let d = s.authorize(&req);
    let opts = d
        .route()
        .map_or_else(PathOptions::default, |r| r.path_options);
    match canonical_path(raw, &opts) {
        Ok(q) if q == p => {}
        other => panic!(
            "decided {p:?} but {raw:?} under the deciding route's options {opts:?} is {other:?}"
        ),
    }
    ensure(paths::check_ok(raw, &opts, &p));

    let Decision::Allow(allow) = &d else {
        return;
    };
    assert!(
        allow.principal.is_none(),
        "allowed with a token: none here verifies"
    );
    let id = &*allow.route.id;
    let Some(model) = MODEL.iter().find(|m| m.id == id) else {
        panic!("allowed by unknown route {id}");
    };
    let key = host_key(host);
    assert!(
        host_matches(model.host, &key),
        "route {id} allowed host {host:?}"
    );
    let Some((_, rule)) = model.public.iter().find(|(i, _)| *i == allow.route.rule) else {
        panic!(
            "allowed without a token by non-public rule {id}[{}] for {p:?}",
            allow.route.rule
        );
    };
    let ok = match rule {
        Match::Exact(x) => p == *x,
        Match::Prefix(x) => under(&p, x),
    };
    assert!(ok, "public rule {id}[{}] allowed {p:?}", allow.route.rule);
    for prefix in model.protected {
        assert!(
            !under(&p, prefix),
            "{p:?} under protected {prefix} allowed without a token"
        );
    }
    if model.host.starts_with("*.") {
        assert!(under(&p, "/static"), "wildcard host allowed {p:?}");
    }
    // With the default or `Decode` options check_ok proved a decoding, cleaning backend
    // lands on p itself. Routes that relax normalization (mergeSlashes: false,
    // escapedSlashes: Keep) accept that a backend may not; PORTCULLIS_FUZZ_STRICT_BACKEND=1
    // holds them to the same rule: the path such a backend serves is not protected either.
    if strict_backend() {
        let served = paths::backend_clean(&paths::decode(p.as_bytes(), None));
        let served = String::from_utf8_lossy(&served);
        for prefix in model.protected {
            assert!(
                !under(&served, prefix),
                "{p:?} allowed without a token by {id}[{}]; a backend that merges slashes and \
                 decodes %2F serves it as {served:?}, under protected {prefix}",
                allow.route.rule
            );
        }
    }
}

fn strict_backend() -> bool {
    static S: OnceLock<bool> = OnceLock::new();
    *S.get_or_init(|| std::env::var_os("PORTCULLIS_FUZZ_STRICT_BACKEND").is_some())
}

fuzz_target!(|data: &[u8]| {
    let [h, m, a, rest @ ..] = data else {
        return;
    };
    let method = METHODS[usize::from(*m) % METHODS.len()];
    let auth = AUTH[usize::from(*a) % AUTH.len()];
    let text = String::from_utf8_lossy(rest);
    if *h == 0xFF {
        let (host, raw) = text.split_once('\n').unwrap_or((&text, "/"));
        check(host, method, auth, raw);
    } else {
        check(HOSTS[usize::from(*h) % HOSTS.len()], method, auth, &text);
    }
});
