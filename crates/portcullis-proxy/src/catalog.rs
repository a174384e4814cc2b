//! The API catalog: a read-only web page (and the JSON API behind it) listing every API a
//! reader may see, with what each rule demands, the issuers trusted, the owner, the
//! lifecycle and, for LLM routes, the OpenAPI document. Served by the controller and by
//! standalone mode on a port of its own.
//!
//! * **Who may read.** A token the TokenPolicy `--catalog-policy` accepts (signature,
//!   lifetime, revocations, sender constraints), holding `--catalog-scope` (default
//!   `catalog:read`). It comes in `Authorization`, or in an HttpOnly cookie set by the
//!   login form; the page never shows it back.
//! * **What each reader sees.** Public APIs, those of the namespaces named by its
//!   `catalog:namespace:<ns>` scopes (and shared with them), or all with `catalog:all`
//!   ([`portcullis_policy::catalog::Viewer`]).
//! * **What it never shows.** Keys, Secrets, backend URLs or credentials, revocations.
//! * **Pages.** Server-rendered HTML with one stylesheet of its own (`/style.css`), no
//!   script and no external asset; `Content-Security-Policy` allows nothing else.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use portcullis_policy::catalog::{Entry, Viewer};
use portcullis_policy::{Credentials, DenyReason, HeaderField, RequestParts, Snapshot};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info};

/// The cookie the login form sets on a loopback host (plain http in development).
pub const COOKIE: &str = "portcullis_catalog";
/// The cookie elsewhere: `__Host-` makes browsers keep it to this exact host, over https,
/// with `Path=/`, so a sibling subdomain cannot plant or shadow it (RFC 6265bis 4.1.3.2).
pub const HOST_COOKIE: &str = "__Host-portcullis_catalog";
/// Most connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 1024;
/// Longest life of one connection (a page load needs a few requests).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);

/// How the catalog authenticates its readers.
#[derive(Debug, Clone)]
pub struct CatalogOptions {
    /// The TokenPolicy (`namespace/name`) whose tokens may read.
    pub policy: String,
    /// The scope a reader's token must hold.
    pub scope: String,
}

/// Where the catalog finds the routes in force and the keys to check tokens with.
pub type SnapshotSource = Arc<dyn Fn() -> Arc<Snapshot> + Send + Sync>;

type Body = Full<Bytes>;

/// Serves the catalog on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    source: SnapshotSource,
    opts: CatalogOptions,
    mut shutdown: watch::Receiver<bool>,
) {
    let opts = Arc::new(opts);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    info!(addr = ?listener.local_addr().ok(), policy = %opts.policy, "API catalog listening");
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let (stream, _peer) = tokio::select! {
            r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
            _ = shutdown.changed() => break,
        };
        let (source, opts) = (source.clone(), opts.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req: Request<Incoming>| {
                let (source, opts) = (source.clone(), opts.clone());
                async move { Ok::<_, Infallible>(handle(req, &source, &opts).await) }
            });
            // HTTP/1.1 only (browsers behind an Ingress), each head within 10 s, and no
            // connection kept past its lifetime.
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                Ok(Err(e)) => debug!(error = %e, "catalog connection ended"),
                Err(_) => debug!("catalog connection closed at the end of its lifetime"),
                Ok(Ok(())) => {}
            }
        });
    }
}

/// Binds `addr` and serves the catalog there in the background.
pub async fn start(
    addr: SocketAddr,
    source: SnapshotSource,
    opts: CatalogOptions,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(serve(listener, source, opts, shutdown));
    Ok(local)
}

async fn handle(
    req: Request<Incoming>,
    source: &SnapshotSource,
    opts: &CatalogOptions,
) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let method = req.method().clone();
    match (&method, path.as_str()) {
        (&Method::GET, "/healthz") => return text(StatusCode::OK, "text/plain", "ok"),
        (&Method::GET, "/style.css") => {
            let mut r = text(StatusCode::OK, "text/css; charset=utf-8", STYLE);
            r.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=300"),
            );
            return r;
        }
        (&Method::POST, "/login" | "/logout") if cross_site(req.headers()) => {
            // A form posted from another site: login CSRF (signing the victim in as the
            // attacker) or a forced sign-out.
            return html(
                StatusCode::FORBIDDEN,
                &message_page("Not allowed", "Sign in from this site's own form.", false),
            );
        }
        (&Method::POST, "/login") => return login(req, source, opts).await,
        (&Method::POST, "/logout") => {
            let mut r = redirect("/");
            clear_cookie(&mut r, req.headers());
            return r;
        }
        (&Method::GET | &Method::HEAD, _) => {}
        _ => {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "method not allowed",
            );
        }
    }
    let api = path.starts_with("/api/");
    let snapshot = source();
    let viewer = match reader(req.headers(), &snapshot, opts) {
        Ok(v) => v,
        Err(refusal) => {
            let mut r = refused(refusal, api, opts);
            // A cookie that no longer signs in is dropped, so the form shows again.
            if req.headers().get(header::AUTHORIZATION).is_none() && cookie(req.headers()).is_some()
            {
                clear_cookie(&mut r, req.headers());
            }
            return r;
        }
    };
    let now = snapshot_now();
    let visible: Vec<&Entry> = snapshot
        .catalog()
        .iter()
        .filter(|e| viewer.sees(e))
        .collect();
    let find = |ns: &str, name: &str| {
        visible
            .iter()
            .copied()
            .find(|e| e.namespace == ns && e.name == name)
    };
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        [""] => {
            let filter = Filter::parse(&query);
            let shown: Vec<&Entry> = visible
                .iter()
                .copied()
                .filter(|e| filter.keeps(e))
                .collect();
            html(StatusCode::OK, &list_page(&shown, &visible, &filter, now))
        }
        ["apis", ns, name] => match find(ns, name) {
            Some(e) => html(StatusCode::OK, &detail_page(e, now)),
            None => html(
                StatusCode::NOT_FOUND,
                &message_page("Not found", "No such API, or not one you may see.", true),
            ),
        },
        ["api", "v1", "apis"] => {
            let filter = Filter::parse(&query);
            let apis: Vec<serde_json::Value> = visible
                .iter()
                .filter(|e| filter.keeps(e))
                .map(|e| summary_json(e, now))
                .collect();
            json(StatusCode::OK, &serde_json::json!({ "apis": apis }))
        }
        ["api", "v1", "apis", ns, name] => match find(ns, name) {
            Some(e) => {
                let mut v = serde_json::to_value(e).unwrap_or_default();
                v["stage"] = e.stage_at(now).into();
                json(StatusCode::OK, &v)
            }
            None => json(
                StatusCode::NOT_FOUND,
                &serde_json::json!({"error": "not_found"}),
            ),
        },
        ["api", "v1", "apis", ns, name, "openapi.json"] => {
            match find(ns, name).and_then(|e| e.openapi.as_ref()) {
                Some(doc) => json(StatusCode::OK, doc),
                None => json(
                    StatusCode::NOT_FOUND,
                    &serde_json::json!({"error": "not_found"}),
                ),
            }
        }
        _ if api => json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": "not_found"}),
        ),
        _ => html(
            StatusCode::NOT_FOUND,
            &message_page("Not found", "There is no such page.", true),
        ),
    }
}

fn snapshot_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Why a request may not read the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// No credential: 401 with the login form.
    NoCredential,
    /// A credential the policy refused: 401.
    Refused(DenyReason),
    /// A good token without the catalog scope: 403.
    NoScope,
}

/// The reader of a request: its token (from `Authorization`, else the cookie) judged by
/// the catalog's policy, holding the catalog scope.
fn reader(
    headers: &HeaderMap,
    snapshot: &Snapshot,
    opts: &CatalogOptions,
) -> Result<Viewer, Refusal> {
    let mut credentials = Credentials::from_headers(headers);
    // `Authorization` or the cookie: the routes' API-key headers are not read here.
    credentials.headers = None;
    let from_cookie;
    if !credentials.authorization.is_present() {
        let Some(token) = cookie(headers) else {
            return Err(Refusal::NoCredential);
        };
        from_cookie = format!("Bearer {token}");
        credentials.authorization = HeaderField::One(from_cookie.as_bytes());
    }
    let mut parts = RequestParts::new("GET", "catalog", "/");
    parts.credentials = credentials;
    let principal = snapshot
        .authenticate_for(&opts.policy, &parts)
        .map_err(Refusal::Refused)?;
    if !principal.has_scope(&opts.scope) {
        return Err(Refusal::NoScope);
    }
    Ok(Viewer::from_scopes(principal.scopes.iter().map(|s| &**s)))
}

/// Whether the request's Host is a loopback name (development over plain http).
fn loopback(headers: &HeaderMap) -> bool {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| {
            if h.starts_with('[') {
                h.split_once(']')
                    .map_or(h, |(a, _)| a)
                    .trim_start_matches('[')
            } else {
                h.split(':').next().unwrap_or(h)
            }
        })
        .is_some_and(|h| matches!(h, "localhost" | "127.0.0.1" | "::1"))
}

/// The cookie's name for this request's host.
fn cookie_name(headers: &HeaderMap) -> &'static str {
    if loopback(headers) {
        COOKIE
    } else {
        HOST_COOKIE
    }
}

/// Sets `r` to clear the catalog cookie.
fn clear_cookie(r: &mut Response<Body>, headers: &HeaderMap) {
    let secure = if loopback(headers) { "" } else { "; Secure" };
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}",
        cookie_name(headers)
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
}

/// Whether a form POST comes from another site (`Sec-Fetch-Site`, or an `Origin` whose
/// host is not this one).
fn cross_site(headers: &HeaderMap) -> bool {
    // A browser that says where the request comes from is believed: a page cannot set
    // this header (a forbidden header name).
    match headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        Some("same-origin" | "none") => return false,
        Some(_) => return true,
        None => {}
    }
    match (
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
        headers.get(header::HOST).and_then(|v| v.to_str().ok()),
    ) {
        (None, _) => false,
        (Some(origin), Some(host)) => origin
            .split_once("://")
            .is_none_or(|(_, authority)| !authority.eq_ignore_ascii_case(host)),
        (Some(_), None) => true,
    }
}

/// The catalog cookie's token, if the request carries exactly one.
fn cookie(headers: &HeaderMap) -> Option<String> {
    let name = cookie_name(headers);
    let mut found = None;
    for v in headers.get_all(header::COOKIE) {
        for pair in v.to_str().ok()?.split(';') {
            if let Some((k, val)) = pair.trim().split_once('=')
                && k == name
                && !val.is_empty()
            {
                if found.is_some() {
                    return None;
                }
                found = Some(val.to_owned());
            }
        }
    }
    found
}

async fn login(
    req: Request<Incoming>,
    source: &SnapshotSource,
    opts: &CatalogOptions,
) -> Response<Body> {
    let name = cookie_name(req.headers());
    let loopback = loopback(req.headers());
    let body = match tokio::time::timeout(
        Duration::from_secs(10),
        Limited::new(req.into_body(), 64 * 1024).collect(),
    )
    .await
    {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(_)) => {
            return html(
                StatusCode::PAYLOAD_TOO_LARGE,
                &message_page("Too large", "The form is too large.", false),
            );
        }
        Err(_) => {
            return html(
                StatusCode::REQUEST_TIMEOUT,
                &message_page("Too slow", "The form took too long to arrive.", false),
            );
        }
    };
    let token = form_urlencoded::parse(&body)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    // A token is one line of base64url and dots (or an API key): anything else cannot go
    // into a cookie, and is refused like a bad token.
    if token.is_empty()
        || !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.~+/=".contains(&b))
    {
        return html(
            StatusCode::UNAUTHORIZED,
            &login_page(Some("That is not a token.")),
        );
    }
    let snapshot = source();
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) {
        headers.insert(header::AUTHORIZATION, v);
    }
    match reader(&headers, &snapshot, opts) {
        Ok(_) => {}
        Err(Refusal::NoScope) => {
            return html(
                StatusCode::FORBIDDEN,
                &login_page(Some(&format!(
                    "This token is valid but does not hold the {} scope.",
                    opts.scope
                ))),
            );
        }
        Err(_) => {
            return html(
                StatusCode::UNAUTHORIZED,
                &login_page(Some("This token was not accepted.")),
            );
        }
    }
    let secure = if loopback { "" } else { "; Secure" };
    let mut r = redirect("/");
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{name}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age=28800{secure}"
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

fn refused(refusal: Refusal, api: bool, opts: &CatalogOptions) -> Response<Body> {
    let (status, code, message) = match refusal {
        Refusal::NoCredential => (
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a token is required".to_owned(),
        ),
        Refusal::Refused(r) => (
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            r.description().to_owned(),
        ),
        Refusal::NoScope => (
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            format!("the token does not hold the {} scope", opts.scope),
        ),
    };
    let mut r = if api {
        json(
            status,
            &serde_json::json!({"error": code, "error_description": message}),
        )
    } else if refusal == Refusal::NoScope {
        html(
            status,
            &message_page(
                "Not allowed",
                &format!("Your token does not hold the {} scope.", opts.scope),
                false,
            ),
        )
    } else {
        let note = matches!(refusal, Refusal::Refused(_))
            .then_some("Your token was not accepted; sign in again.");
        html(status, &login_page(note))
    };
    let challenge = match refusal {
        Refusal::NoCredential => "Bearer realm=\"portcullis-catalog\"".to_owned(),
        _ => format!("Bearer realm=\"portcullis-catalog\", error=\"{code}\""),
    };
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

/// The list's search: free text, a tag, a scope.
#[derive(Debug, Default)]
struct Filter {
    q: String,
    tag: String,
    scope: String,
}

impl Filter {
    fn parse(query: &str) -> Self {
        let mut f = Filter::default();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let v = v.trim().chars().take(200).collect::<String>();
            match &*k {
                "q" => f.q = v,
                "tag" => f.tag = v,
                "scope" => f.scope = v,
                _ => {}
            }
        }
        f
    }

    fn keeps(&self, e: &Entry) -> bool {
        (self.q.is_empty() || e.matches(&self.q))
            && (self.tag.is_empty() || e.has_tag(&self.tag))
            && (self.scope.is_empty() || e.demands_scope(&self.scope))
    }

    fn is_empty(&self) -> bool {
        self.q.is_empty() && self.tag.is_empty() && self.scope.is_empty()
    }
}

fn summary_json(e: &Entry, now: i64) -> serde_json::Value {
    let scopes: std::collections::BTreeSet<&str> = e
        .rules
        .iter()
        .flat_map(|r| r.required_scopes.iter().chain(&r.any_scopes))
        .map(String::as_str)
        .collect();
    serde_json::json!({
        "id": e.id,
        "namespace": e.namespace,
        "name": e.name,
        "description": e.description,
        "tags": e.tags,
        "kind": e.kind,
        "hosts": e.hosts,
        "scopes": scopes,
        "stage": e.stage_at(now),
        "sunsetAt": e.lifecycle.sunset_at,
        "successor": e.lifecycle.successor,
        "ownerTeam": e.owner_team,
        "visibility": e.visibility,
        "href": format!("/apis/{}/{}", e.namespace, e.name),
    })
}

// --- HTML ---------------------------------------------------------------------------------

/// Escapes text for HTML element content and double-quoted attributes.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A query-string value.
fn q(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn layout(title: &str, signed_in: bool, body: &str) -> String {
    let logout = if signed_in {
        r#"<form method="post" action="/logout" class="logout"><button type="submit">Sign out</button></form>"#
    } else {
        ""
    };
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · Portcullis API catalog</title>
<link rel="stylesheet" href="/style.css">
</head>
<body>
<header class="bar"><a class="brand" href="/">Portcullis API catalog</a>{logout}</header>
<main id="main">
{body}
</main>
</body>
</html>
"#,
        title = esc(title),
    )
}

fn stage_badge(stage: &str) -> String {
    format!(r#"<span class="stage stage-{stage}">{stage}</span>"#)
}

fn list_page(shown: &[&Entry], visible: &[&Entry], f: &Filter, now: i64) -> String {
    let mut b = String::new();
    let _ = write!(
        b,
        r#"<h1>APIs</h1>
<form id="search" method="get" action="/" role="search">
<label for="q">Search by name, description, tag, scope or host</label>
<div class="row"><input id="q" name="q" type="search" value="{q}"><button type="submit">Search</button></div>
</form>
"#,
        q = esc(&f.q)
    );
    let mut tags: Vec<&str> = visible
        .iter()
        .flat_map(|e| e.tags.iter().map(String::as_str))
        .collect();
    tags.sort_unstable();
    tags.dedup();
    if !tags.is_empty() {
        b.push_str(r#"<nav aria-label="Tags" class="tags"><span class="label">Tags:</span> "#);
        for t in tags {
            let current = if t == f.tag {
                r#" aria-current="true""#
            } else {
                ""
            };
            let _ = write!(
                b,
                r#"<a class="tag-filter" href="/?tag={}"{current}>{}</a> "#,
                q(t),
                esc(t)
            );
        }
        b.push_str("</nav>\n");
    }
    if !f.is_empty() {
        let mut what = Vec::new();
        if !f.q.is_empty() {
            what.push(format!("“{}”", esc(&f.q)));
        }
        if !f.tag.is_empty() {
            what.push(format!("tag {}", esc(&f.tag)));
        }
        if !f.scope.is_empty() {
            what.push(format!("scope {}", esc(&f.scope)));
        }
        let _ = write!(
            b,
            r#"<p class="filter" role="status">{} of {} APIs match {}. <a href="/">Show all</a></p>"#,
            shown.len(),
            visible.len(),
            what.join(", ")
        );
    }
    if shown.is_empty() {
        b.push_str(r#"<p id="empty">No API to show.</p>"#);
    }
    b.push_str(r#"<ul id="apis">"#);
    for e in shown {
        let stage = e.stage_at(now);
        let _ = write!(
            b,
            r#"<li class="api"><div class="head"><a class="api-name" href="/apis/{ns}/{name}">{id}</a> {badge} <span class="kind">{kind}</span></div>"#,
            ns = q(&e.namespace),
            name = q(&e.name),
            id = esc(&e.id),
            badge = stage_badge(stage),
            kind = e.kind,
        );
        if let Some(d) = &e.description {
            let _ = write!(b, r#"<p class="description">{}</p>"#, esc(d));
        }
        b.push_str(r#"<p class="meta">"#);
        let _ = write!(
            b,
            r#"<span class="hosts">{}</span>"#,
            esc(&e.hosts.join(", "))
        );
        if let Some(t) = &e.owner_team {
            let _ = write!(b, r#" · <span class="owner">owned by {}</span>"#, esc(t));
        }
        for t in &e.tags {
            let _ = write!(b, r#" <span class="tag">{}</span>"#, esc(t));
        }
        b.push_str("</p></li>\n");
    }
    b.push_str("</ul>\n");
    layout("APIs", true, &b)
}

fn detail_page(e: &Entry, now: i64) -> String {
    let stage = e.stage_at(now);
    let mut b = String::new();
    let _ = write!(
        b,
        "<p class=\"crumbs\"><a href=\"/\">All APIs</a></p>\n<h1>{} {}</h1>\n",
        esc(&e.id),
        stage_badge(stage)
    );
    if matches!(stage, "deprecated" | "retired") {
        let when = match (&e.lifecycle.sunset_at, stage) {
            (Some(t), "retired") => format!("It was retired on {}.", esc(t)),
            (Some(t), _) => format!("It will stop answering on {}.", esc(t)),
            (None, "retired") => "It no longer answers (410 Gone).".to_owned(),
            (None, _) => "No sunset date has been set yet.".to_owned(),
        };
        let successor = e
            .lifecycle
            .successor
            .as_deref()
            .map(|u| format!(r#" Move to its successor: <a href="{0}">{0}</a>."#, esc(u)))
            .unwrap_or_default();
        let since = e
            .lifecycle
            .deprecated_at
            .as_deref()
            .map(|t| format!(" since {}", esc(t)))
            .unwrap_or_default();
        let _ = writeln!(
            b,
            r#"<div id="deprecation-banner" class="banner banner-{stage}" role="alert"><strong>This API is {stage}{since}.</strong> {when}{successor}</div>"#
        );
    }
    if stage == "draft" {
        let _ = write!(
            b,
            r#"<div class="banner banner-draft" role="note">This API is a draft: only tokens with the <code>{}</code> scope may call it.</div>"#,
            esc(e.lifecycle.preview_scope.as_deref().unwrap_or("preview"))
        );
    }
    if let Some(d) = &e.description {
        let _ = write!(b, r#"<p class="description">{}</p>"#, esc(d));
    }
    b.push_str(r#"<dl class="facts">"#);
    let _ = write!(b, "<dt>Hosts</dt><dd>{}</dd>", esc(&e.hosts.join(", ")));
    let _ = write!(b, "<dt>Kind</dt><dd>{}</dd>", e.kind);
    if let Some(r) = &e.mcp_resource {
        let _ = write!(b, "<dt>MCP resource</dt><dd><code>{}</code></dd>", esc(r));
    }
    let _ = write!(b, "<dt>Visibility</dt><dd>{}", e.visibility);
    if !e.shared_with.is_empty() {
        let _ = write!(b, " (shared with {})", esc(&e.shared_with.join(", ")));
    }
    b.push_str("</dd>");
    if !e.tags.is_empty() {
        b.push_str("<dt>Tags</dt><dd>");
        for t in &e.tags {
            let _ = write!(b, r#"<a class="tag" href="/?tag={}">{}</a> "#, q(t), esc(t));
        }
        b.push_str("</dd>");
    }
    if let Some(t) = &e.lifecycle.deprecated_at {
        let _ = write!(b, "<dt>Deprecated</dt><dd>{}</dd>", esc(t));
    }
    if let Some(t) = &e.lifecycle.sunset_at {
        let _ = write!(b, "<dt>Sunset</dt><dd>{}</dd>", esc(t));
    }
    b.push_str("</dl>\n");

    b.push_str(r#"<section id="owner" aria-labelledby="owner-h"><h2 id="owner-h">Owner</h2>"#);
    match (&e.owner_team, &e.owner_contact) {
        (None, None) => {
            let _ = write!(
                b,
                "<p>No owner named; the namespace is {}.</p>",
                esc(&e.namespace)
            );
        }
        (team, contact) => {
            let _ = write!(
                b,
                "<p>Team {} (namespace {}){}</p>",
                esc(team.as_deref().unwrap_or("unnamed")),
                esc(&e.namespace),
                contact
                    .as_deref()
                    .map(|c| format!(" · contact: {}", esc(c)))
                    .unwrap_or_default()
            );
        }
    }
    b.push_str("</section>\n");

    b.push_str(r#"<section aria-labelledby="rules-h"><h2 id="rules-h">What each path demands</h2>
<table id="rules"><thead><tr><th scope="col">Methods</th><th scope="col">Path</th><th scope="col">Token</th></tr></thead><tbody>"#);
    for r in &e.rules {
        let methods = if r.methods.is_empty() {
            "any".to_owned()
        } else {
            r.methods.join(", ")
        };
        let path = if r.prefix {
            format!("{}*", r.path)
        } else {
            r.path.clone()
        };
        let token = if r.public {
            "none (public)".to_owned()
        } else {
            let mut parts = Vec::new();
            if !r.required_scopes.is_empty() {
                parts.push(format!("all of {}", scope_links(&r.required_scopes)));
            }
            if !r.any_scopes.is_empty() {
                parts.push(format!("one of {}", scope_links(&r.any_scopes)));
            }
            if parts.is_empty() {
                "a valid token".to_owned()
            } else {
                parts.join("; ")
            }
        };
        let _ = write!(
            b,
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
            esc(&methods),
            esc(&path),
            token
        );
    }
    b.push_str("</tbody></table></section>\n");

    let _ = write!(
        b,
        r#"<section id="issuers" aria-labelledby="issuers-h"><h2 id="issuers-h">Trusted issuers</h2><p>Tokens are judged by the TokenPolicy <code>{}</code>.</p><ul>"#,
        esc(&e.policy)
    );
    for i in &e.issuers {
        let _ = write!(
            b,
            "<li><code class=\"issuer\">{}</code>{} · DPoP {} · certificate-bound {}{}</li>",
            esc(&i.issuer),
            if i.audiences.is_empty() {
                String::new()
            } else {
                format!(" · audience {}", esc(&i.audiences.join(", ")))
            },
            i.dpop,
            i.certificate_bound,
            if i.introspection {
                " · introspected"
            } else {
                ""
            }
        );
    }
    if e.api_keys {
        b.push_str("<li>API keys issued for this policy</li>");
    }
    if e.issuers.is_empty() && !e.api_keys {
        b.push_str("<li>none</li>");
    }
    b.push_str("</ul></section>\n");

    if let Some(doc) = &e.openapi {
        let _ = write!(
            b,
            r#"<section id="openapi" aria-labelledby="openapi-h"><h2 id="openapi-h">OpenAPI</h2><p><a href="/api/v1/apis/{}/{}/openapi.json">openapi.json</a></p>"#,
            q(&e.namespace),
            q(&e.name)
        );
        b.push_str(&render_openapi(doc));
        b.push_str("</section>\n");
    }
    layout(&e.id, true, &b)
}

fn scope_links(scopes: &[String]) -> String {
    scopes
        .iter()
        .map(|s| {
            format!(
                r#"<a class="scope" href="/?scope={}"><code>{}</code></a>"#,
                q(s),
                esc(s)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn render_openapi(doc: &serde_json::Value) -> String {
    let mut b = String::new();
    let Some(paths) = doc.get("paths").and_then(|p| p.as_object()) else {
        return b;
    };
    for (path, ops) in paths {
        let Some(ops) = ops.as_object() else { continue };
        for (method, op) in ops {
            let summary = op.get("summary").and_then(|s| s.as_str()).unwrap_or("");
            let scopes: Vec<String> = op
                .get("security")
                .and_then(|s| s.as_array())
                .into_iter()
                .flatten()
                .filter_map(|s| s.get("bearer").and_then(|b| b.as_array()))
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect();
            let _ = write!(
                b,
                r#"<div class="operation"><p><span class="method">{}</span> <code class="path">{}</code> {}</p>"#,
                esc(&method.to_uppercase()),
                esc(path),
                esc(summary)
            );
            if let Some(d) = op.get("description").and_then(|d| d.as_str()) {
                let _ = write!(b, r#"<p class="op-description">{}</p>"#, esc(d));
            }
            if !scopes.is_empty() {
                let _ = write!(b, "<p>Scopes: {}</p>", scope_links(&scopes));
            }
            if let Some(schema) = op.pointer("/requestBody/content/application~1json/schema") {
                let _ = write!(
                    b,
                    "<details><summary>Request body</summary><pre>{}</pre></details>",
                    esc(&serde_json::to_string_pretty(schema).unwrap_or_default())
                );
            }
            b.push_str("</div>\n");
        }
    }
    b
}

fn login_page(note: Option<&str>) -> String {
    let note = note
        .map(|n| format!(r#"<p class="error" role="alert">{}</p>"#, esc(n)))
        .unwrap_or_default();
    let body = format!(
        r#"<h1>Sign in</h1>
<p>The catalog shows the APIs your token may see. Paste an access token that holds the catalog scope; it is kept in an HttpOnly cookie of this site for 8 hours, and you can sign out at any time.</p>
{note}<form id="login-form" method="post" action="/login">
<label for="token">Access token</label>
<textarea id="token" name="token" rows="4" autocomplete="off" spellcheck="false" required></textarea>
<button type="submit">Sign in</button>
</form>
"#
    );
    layout("Sign in", false, &body)
}

fn message_page(title: &str, message: &str, signed_in: bool) -> String {
    layout(
        title,
        signed_in,
        &format!(
            "<h1>{}</h1><p>{}</p><p><a href=\"/\">All APIs</a></p>",
            esc(title),
            esc(message)
        ),
    )
}

// --- responses ----------------------------------------------------------------------------

const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        // `same-origin`, not `no-referrer`: the latter makes a browser send `Origin: null`
        // on the catalog's own form posts (Fetch, "append a request Origin header").
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

fn html(status: StatusCode, body: &str) -> Response<Body> {
    text(status, "text/html; charset=utf-8", body.to_owned())
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    text(
        status,
        "application/json",
        serde_json::to_string_pretty(v).unwrap_or_default(),
    )
}

fn redirect(to: &'static str) -> Response<Body> {
    let mut r = text(StatusCode::SEE_OTHER, "text/plain", "");
    r.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(to));
    r
}

const STYLE: &str = r#":root { --fg: #1b1f24; --muted: #4b5563; --line: #d0d7de; --bg: #ffffff; --accent: #0b5cad; }
* { box-sizing: border-box; }
body { margin: 0; font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); background: var(--bg); }
.bar { display: flex; justify-content: space-between; align-items: center; padding: .6rem 1.5rem; background: #16202c; }
.bar .brand { color: #fff; font-weight: 600; text-decoration: none; }
.bar button { background: transparent; color: #fff; border: 1px solid #8a99ab; border-radius: 4px; padding: .2rem .7rem; cursor: pointer; }
main { max-width: 60rem; margin: 0 auto; padding: 1rem 1.5rem 3rem; }
a { color: var(--accent); }
h1 { font-size: 1.7rem; margin: .8rem 0; }
h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid var(--line); padding-bottom: .2rem; }
label { display: block; font-weight: 600; margin-bottom: .3rem; }
.row { display: flex; gap: .5rem; }
input[type=search], textarea { flex: 1; width: 100%; padding: .45rem .6rem; font: inherit; border: 1px solid #6b7785; border-radius: 4px; }
button { font: inherit; padding: .45rem 1rem; border-radius: 4px; border: 1px solid #0b4f94; background: #0b5cad; color: #fff; cursor: pointer; }
#login-form button { margin-top: .6rem; }
.tags { margin: 1rem 0; }
.tags .label { color: var(--muted); }
.tag, .tag-filter { display: inline-block; font-size: .85rem; padding: 0 .5rem; border-radius: 999px; background: #eef2f7; color: #1f3b5a; text-decoration: none; border: 1px solid #c9d3de; }
.tag-filter[aria-current=true] { background: #0b5cad; color: #fff; }
#apis { list-style: none; padding: 0; }
.api { border: 1px solid var(--line); border-radius: 6px; padding: .8rem 1rem; margin: .7rem 0; }
.api .head { display: flex; gap: .6rem; align-items: center; flex-wrap: wrap; }
.api-name { font-weight: 600; font-size: 1.1rem; }
.kind { color: var(--muted); font-size: .85rem; }
.meta { color: var(--muted); font-size: .9rem; margin: .3rem 0 0; }
.description { margin: .4rem 0; }
.stage { font-size: .8rem; font-weight: 600; text-transform: uppercase; letter-spacing: .03em; padding: .05rem .5rem; border-radius: 4px; }
.stage-published { background: #dcf5e3; color: #14532d; }
.stage-deprecated { background: #fff1c2; color: #6b4100; }
.stage-retired { background: #fde2e1; color: #8a1c14; }
.stage-draft { background: #e8e4fb; color: #3b2a85; }
.banner { border-radius: 6px; padding: .8rem 1rem; margin: 1rem 0; border: 1px solid; }
.banner-deprecated { background: #fff8e1; border-color: #e0b100; }
.banner-retired { background: #fdecea; border-color: #d93025; }
.banner-draft { background: #f1eefc; border-color: #7c6bd6; }
.facts { display: grid; grid-template-columns: max-content 1fr; gap: .3rem 1rem; }
.facts dt { font-weight: 600; }
.facts dd { margin: 0; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; border-bottom: 1px solid var(--line); padding: .4rem .5rem; vertical-align: top; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: .9em; }
.operation { border-left: 3px solid var(--accent); padding: .2rem .8rem; margin: .8rem 0; }
.method { font-weight: 700; font-family: ui-monospace, monospace; }
pre { background: #f6f8fa; padding: .6rem; overflow: auto; border-radius: 4px; }
.error { color: #8a1c14; font-weight: 600; }
.filter { color: var(--muted); }
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_escapes_everything_a_manifest_can_hold() {
        assert_eq!(
            esc(r#"<script>alert("x")</script>&'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;"
        );
        assert_eq!(q("a b&c=d"), "a+b%26c%3Dd");
    }

    #[test]
    fn forms_posted_from_another_site_are_cross_site() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, HeaderValue::from_static(v));
            }
            m
        };
        assert!(!cross_site(&h(&[("host", "catalog.test")])));
        assert!(!cross_site(&h(&[
            ("host", "catalog.test"),
            ("origin", "https://catalog.test"),
            ("sec-fetch-site", "same-origin")
        ])));
        assert!(cross_site(&h(&[
            ("host", "catalog.test"),
            ("origin", "https://evil.test")
        ])));
        assert!(cross_site(&h(&[
            ("host", "catalog.test"),
            ("origin", "null")
        ])));
        assert!(cross_site(&h(&[
            ("host", "catalog.test"),
            ("sec-fetch-site", "same-site")
        ])));
        assert!(cross_site(&h(&[
            ("host", "catalog.test"),
            ("sec-fetch-site", "cross-site")
        ])));
        // A browser's Sec-Fetch-Site wins over an Origin of `null`.
        assert!(!cross_site(&h(&[
            ("host", "catalog.test"),
            ("origin", "null"),
            ("sec-fetch-site", "same-origin")
        ])));
    }

    #[test]
    fn the_host_cookie_is_used_off_loopback() {
        let mut h = HeaderMap::new();
        h.insert(
            header::HOST,
            HeaderValue::from_static("catalog.example.com"),
        );
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("portcullis_catalog=planted"),
        );
        assert_eq!(
            cookie(&h),
            None,
            "the unprefixed cookie is not read off loopback"
        );
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("__Host-portcullis_catalog=tok"),
        );
        assert_eq!(cookie(&h).as_deref(), Some("tok"));
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("[::1]:9802"));
        assert!(loopback(&h));
    }

    #[test]
    fn the_cookie_is_read_once_and_never_twice() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("localhost:9802"));
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; portcullis_catalog=tok; b=2"),
        );
        assert_eq!(cookie(&h).as_deref(), Some("tok"));
        h.append(
            header::COOKIE,
            HeaderValue::from_static("portcullis_catalog=other"),
        );
        assert_eq!(cookie(&h), None, "two tokens: neither");
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1"));
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("portcullis_catalog="),
        );
        assert_eq!(cookie(&h), None);
    }
}
