//! `portcullis`: the one binary of the Portcullis gateway.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// mimalloc: per-thread free lists and no global lock on the request path, where glibc
/// malloc/free took 11% of the proxy's samples under load (issue 14's profile).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod apikey_cmd;
mod cluster_cmd;
mod echo;
mod token_cmd;

/// Portcullis: a Kubernetes-native API gateway that makes bearer tokens safe to reuse.
#[derive(Parser, Debug)]
#[command(name = "portcullis", version, about)]
struct Cli {
    /// Write an access log line per request (target `portcullis::access`). Off by default:
    /// metrics count every decision; turn it on (or set RUST_LOG) to see each request.
    #[arg(long, global = true, env = "PORTCULLIS_ACCESS_LOG")]
    access_log: bool,
    /// Log format: `text` for people, `json` for log pipelines.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"], env = "PORTCULLIS_LOG_FORMAT")]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the ApiRoute and TokenPolicy CRDs as YAML (or write them, one file each, to --dir).
    Crd {
        /// Write `apiroutes.portcullis.dev.yaml` and `tokenpolicies.portcullis.dev.yaml` here
        /// instead of printing.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Run the gateway from a directory of manifests, without a cluster.
    Standalone(StandaloneArgs),
    /// Print the OpenAPI 3.1 document of the AI gateway (LLM routes and prompt endpoints)
    /// that a directory of manifests serves; the admin port serves the same document as
    /// /openapi.json. Problems in the manifests go to stderr (exit status 1).
    Openapi {
        /// Directory of YAML manifests (ApiRoute, TokenPolicy, Secret).
        #[arg(long)]
        manifests: PathBuf,
    },
    /// Mint (dev keys only) and inspect tokens.
    Token {
        #[command(subcommand)]
        cmd: token_cmd::TokenCommand,
    },
    /// A tiny upstream that echoes requests as JSON (and streams SSE on /events): for the
    /// quickstart and tests.
    Echo(echo::EchoArgs),
    /// Run the controller: watch ApiRoutes and TokenPolicies, write status, push config to proxies.
    Controller(cluster_cmd::ControllerArgs),
    /// Run a proxy that takes its config from the controller.
    Proxy(cluster_cmd::ProxyArgs),
    /// Add a revocation to a TokenPolicy in the cluster.
    Revoke(cluster_cmd::RevokeArgs),
    /// Create API keys (the Secrets TokenPolicies select) and identify a key by its id.
    Apikey {
        #[command(subcommand)]
        cmd: apikey_cmd::ApiKeyCommand,
    },
}

/// The API catalog's flags (`standalone` and `controller`).
#[derive(clap::Args, Debug, Clone)]
pub struct CatalogArgs {
    /// Serve the API catalog (a read-only web page and its JSON API under /api/v1) on this
    /// address, e.g. 0.0.0.0:9802: every API a reader may see, what each rule demands,
    /// the trusted issuers, owner, lifecycle, and the OpenAPI documents. Plain HTTP: put
    /// TLS in front (an Ingress). Needs --catalog-policy.
    #[arg(long, requires = "catalog_policy")]
    pub catalog_listen: Option<std::net::SocketAddr>,
    /// The TokenPolicy (`namespace/name`) whose tokens may read the catalog.
    #[arg(long, requires = "catalog_listen")]
    pub catalog_policy: Option<String>,
    /// The scope a reader's token must hold. Readers see public APIs, those of the
    /// namespaces their `catalog:namespace:<ns>` scopes name (and shared with them), or
    /// every API with `catalog:all`.
    #[arg(long, default_value = "catalog:read")]
    pub catalog_scope: String,
}

impl CatalogArgs {
    /// The catalog's address and options, when it is asked for.
    pub fn options(
        &self,
    ) -> anyhow::Result<
        Option<(
            std::net::SocketAddr,
            portcullis_proxy::catalog::CatalogOptions,
        )>,
    > {
        let (Some(addr), Some(policy)) = (self.catalog_listen, self.catalog_policy.clone()) else {
            return Ok(None);
        };
        let valid = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        };
        match policy.split_once('/') {
            Some((ns, name)) if valid(ns) && valid(name) => {}
            _ => anyhow::bail!(
                "--catalog-policy {policy:?}: expected namespace/name of a TokenPolicy"
            ),
        }
        if self.catalog_scope.is_empty() || self.catalog_scope.contains(char::is_whitespace) {
            anyhow::bail!(
                "--catalog-scope {:?}: one scope, without spaces",
                self.catalog_scope
            );
        }
        Ok(Some((
            addr,
            portcullis_proxy::catalog::CatalogOptions {
                policy,
                scope: self.catalog_scope.clone(),
            },
        )))
    }
}

#[derive(clap::Args, Debug)]
struct StandaloneArgs {
    /// Directory of YAML manifests (ApiRoute, TokenPolicy, Secret), watched for changes.
    #[arg(long)]
    manifests: PathBuf,
    /// Proxy listen address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Admin listen address: /metrics, /healthz, /readyz, /config.
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin: SocketAddr,
    /// TLS certificate chain (PEM); with --tls-key, serves HTTPS (h2 and http/1.1 by ALPN).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// With --tls-cert: CA certificates (PEM) that client certificates are verified
    /// against. A client may present one (it is not required); certificate-bound tokens
    /// (`cnf.x5t#S256`, RFC 8705) are accepted only with the certificate they name.
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// With --tls-cert: also accept client certificates that no CA of --tls-client-ca
    /// issued, self-signed ones included (RFC 8705 section 2.2,
    /// `self_signed_tls_client_auth`). The handshake still proves the client holds the
    /// certificate's key, and a certificate-bound token names the exact certificate, so
    /// binding needs no chain; nothing else trusts a client certificate.
    #[arg(long, requires = "tls_cert")]
    tls_client_any_certificate: bool,
    /// Verified tokens (and introspection verdicts) cached per TokenPolicy, by the token's
    /// SHA-256. A token found there skips signature verification; revocations, lifetime and
    /// scopes are still checked on every request. Size it above the number of distinct
    /// tokens in use at once; 1 makes nearly every request verify its signature (a load
    /// test's worst case).
    #[arg(long, default_value = "10000", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10_000_000))]
    token_cache_size: usize,
    /// Where revocations made by identity events (Back-Channel Logout tokens) are kept, so
    /// a restart does not bring the tokens they revoked back. Default
    /// `<manifests>/.portcullis-identity-events.json` (not a manifest: only *.yaml and
    /// *.yml are read as manifests); `-` keeps them in memory only.
    #[arg(long)]
    events_file: Option<PathBuf>,
    #[command(flatten)]
    catalog: CatalogArgs,
    #[command(flatten)]
    key_refetch: KeyRefetchArgs,
    #[command(flatten)]
    connections: ConnectionArgs,
}

/// What the proxy does with a token whose `kid` is not among keys that are fetched (shared
/// by `standalone` and `proxy`).
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct KeyRefetchArgs {
    /// How long a request whose token has an unknown `kid` (from an issuer whose keys are
    /// fetched) waits for a refetch before it is refused; it is refused as soon as the
    /// refetch brings nothing new (standalone; in a cluster the hold bounds the wait).
    /// `0s` refuses at once (the refetch is still asked for, see --unknown-kid-refetch).
    #[arg(long, default_value = "1s", value_parser = duration)]
    pub(crate) unknown_kid_hold: std::time::Duration,
    /// Ask for a key set to be fetched again when a token's `kid` is not in it (at most once
    /// per key source per `minRefreshInterval`), so a key the issuer just rotated in is
    /// found before the next scheduled refresh. Independent of --unknown-kid-hold;
    /// `--unknown-kid-refetch=false` turns it off.
    #[arg(
        long,
        default_value_t = true,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set,
        value_name = "BOOL"
    )]
    pub(crate) unknown_kid_refetch: bool,
}

/// Bounds on client connections to the proxy port (shared by `standalone` and `proxy`).
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct ConnectionArgs {
    /// The first request head must be complete within this long of the accept (as with
    /// --first-request-timeout; the smaller wins). On a keep-alive connection each next
    /// head must be complete within --idle-timeout of the previous response.
    #[arg(long, default_value = "10s", value_parser = nonzero_duration)]
    header_read_timeout: std::time::Duration,
    /// Time from accepting a connection (after the TLS handshake, which has its own 10s
    /// bound) to its first complete request: an HTTP/1 request head, or the HTTP/2 preface,
    /// SETTINGS and first HEADERS. Slower connections are closed (slowloris protection).
    #[arg(long, default_value = "10s", value_parser = nonzero_duration)]
    first_request_timeout: std::time::Duration,
    /// A connection with no request in flight is closed after this long (keep-alive idle
    /// timeout, HTTP/1 and HTTP/2). A response still streaming counts as in flight.
    #[arg(long, default_value = "60s", value_parser = nonzero_duration)]
    idle_timeout: std::time::Duration,
    /// Most client connections open at once on the proxy port; beyond it a new connection
    /// gets `503` with `Retry-After: 1` (plain HTTP) or is closed (TLS). The admin port is
    /// not counted.
    #[arg(long, default_value = "10000", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    max_connections: usize,
    /// HTTP/2: send a PING after this much silence from the client (0s: never).
    #[arg(long, default_value = "30s", value_parser = duration)]
    http2_keep_alive_interval: std::time::Duration,
    /// HTTP/2: close the connection when a PING is not answered within this long.
    #[arg(long, default_value = "20s", value_parser = nonzero_duration)]
    http2_keep_alive_timeout: std::time::Duration,
    /// A peer (load balancer) in front of the proxy whose `Forwarded`, `X-Forwarded-For`
    /// and `X-Real-IP` headers are believed, as a CIDR (`10.0.0.0/8`) or an address;
    /// repeatable. From any other peer these headers are removed and `X-Forwarded-For` is
    /// the peer's own address. Default: none.
    #[arg(long = "trusted-proxy", value_parser = cidr)]
    trusted_proxies: Vec<ipnet::IpNet>,
    /// Threads serving the proxy port, each with its own event loop and upstream connection
    /// pool (a connection is served start to finish by the thread that accepted it).
    /// `auto`: one per CPU this process may run on. `0`: no threads of their own; the
    /// connections share the process's work-stealing runtime (slower: requests and their
    /// upstream connections wake each other across threads).
    #[arg(long, default_value = "auto", value_parser = workers)]
    workers: Workers,
    /// With TLS: send `Strict-Transport-Security: max-age=<this>` on every response, so
    /// browsers never reach this host over plain HTTP again (RFC 6797). E.g. `365d` is
    /// written `8760h`. Unset: no header.
    #[arg(long, value_parser = nonzero_duration)]
    hsts_max_age: Option<std::time::Duration>,
}

/// `--workers`: a count, or one per available CPU.
#[derive(Debug, Clone, Copy)]
enum Workers {
    Auto,
    Count(usize),
}

fn workers(s: &str) -> Result<Workers, String> {
    if s == "auto" {
        return Ok(Workers::Auto);
    }
    match s.parse::<usize>() {
        Ok(n) if n <= 1024 => Ok(Workers::Count(n)),
        _ => Err(format!(
            "{s:?} is not `auto` or a number of threads from 0 to 1024"
        )),
    }
}

/// A CIDR, or a bare address meaning just that address.
fn cidr(s: &str) -> Result<ipnet::IpNet, String> {
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{s:?} is not a CIDR (10.0.0.0/8) or an IP address"))
}

impl ConnectionArgs {
    /// Writes these bounds into `limits`.
    pub(crate) fn apply(&self, limits: &mut portcullis_proxy::Limits) {
        limits.header_read_timeout = self.header_read_timeout;
        limits.first_request_timeout = self.first_request_timeout;
        limits.idle_timeout = self.idle_timeout;
        limits.max_connections = self.max_connections;
        limits.http2_keep_alive_interval = self.http2_keep_alive_interval;
        limits.http2_keep_alive_timeout = self.http2_keep_alive_timeout;
        limits.trusted_proxies = self.trusted_proxies.clone();
        limits.hsts = self
            .hsts_max_age
            .and_then(|d| http::HeaderValue::from_str(&format!("max-age={}", d.as_secs())).ok());
        limits.workers = match self.workers {
            // The CPUs this process may use (a cgroup quota or `taskset` lowers it).
            Workers::Auto => std::thread::available_parallelism().map_or(1, |n| n.get()),
            Workers::Count(n) => n,
        };
    }
}

pub(crate) fn duration(s: &str) -> Result<std::time::Duration, String> {
    portcullis_api::parse_duration(s)
}

/// A duration that must not be zero (a zero timeout would cut every connection at once).
fn nonzero_duration(s: &str) -> Result<std::time::Duration, String> {
    match duration(s)? {
        d if d.is_zero() => Err(format!(
            "{s:?} is zero; give a positive duration such as 10s"
        )),
        d => Ok(d),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(&cli.log_format, cli.access_log);
    match cli.command {
        Command::Crd { dir } => crd(dir),
        Command::Openapi { manifests } => openapi(manifests),
        Command::Standalone(args) => runtime()?.block_on(standalone(args)),
        Command::Token { cmd } => token_cmd::run(cmd),
        Command::Echo(args) => runtime()?.block_on(echo::run(args)),
        Command::Controller(args) => runtime()?.block_on(cluster_cmd::controller(args)),
        Command::Proxy(args) => runtime()?.block_on(cluster_cmd::proxy(args)),
        Command::Revoke(args) => runtime()?.block_on(cluster_cmd::revoke(args)),
        Command::Apikey { cmd } => apikey_cmd::run(cmd),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn init_tracing(format: &str, access_log: bool) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let default = if access_log {
        "info"
    } else {
        "info,portcullis::access=off"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(use_color(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR"),
        ));
    if format == "json" {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

/// Colour in log lines only for a person at a terminal: the logs go to stderr, so none when
/// stderr is a file, a pipe or a log collector, and none when `NO_COLOR` is set to anything
/// but the empty string (<https://no-color.org>).
fn use_color(stderr_is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

async fn standalone(args: StandaloneArgs) -> anyhow::Result<()> {
    let events_file = match args.events_file {
        Some(f) if f.as_os_str() == "-" => None,
        Some(f) => Some(f),
        None => Some(args.manifests.join(".portcullis-identity-events.json")),
    };
    let mut opts = portcullis_proxy::StandaloneOptions::new(args.manifests);
    opts.events_file = events_file;
    opts.listen = args.listen;
    opts.admin = args.admin;
    opts.tls = args.tls_cert.zip(args.tls_key);
    opts.tls_client_ca = args.tls_client_ca;
    opts.tls_client_any_certificate = args.tls_client_any_certificate;
    opts.catalog = args.catalog.options()?;
    args.connections.apply(&mut opts.limits);
    opts.compile.cache_capacity = args.token_cache_size;
    opts.unknown_kid_hold = args.key_refetch.unknown_kid_hold;
    opts.unknown_kid_refetch = args.key_refetch.unknown_kid_refetch;
    let running = portcullis_proxy::start_standalone(opts).await?;
    eprintln!(
        "portcullis standalone: proxy on {} , admin on {} (Ctrl-C to stop)",
        running.proxy_addr, running.admin_addr
    );
    shutdown_signal().await;
    running.shutdown();
    Ok(())
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn openapi(dir: PathBuf) -> anyhow::Result<()> {
    let mut manifests = portcullis_proxy::standalone::ManifestDir::new(
        dir,
        portcullis_policy::CompileOptions::default(),
    );
    let loaded = manifests.load();
    println!(
        "{}",
        serde_json::to_string_pretty(loaded.snapshot.openapi())?
    );
    for p in &loaded.errors {
        eprintln!("{p}");
    }
    if loaded.errors.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "{} problem(s) in the manifests; routes with errors are left out of the document",
            loaded.errors.len()
        )
    }
}

fn crd(dir: Option<PathBuf>) -> anyhow::Result<()> {
    match dir {
        None => print!("{}", portcullis_api::crds_yaml()?),
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for (name, yaml) in portcullis_api::crd_files()? {
                let path = dir.join(name);
                std::fs::write(&path, yaml)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod log_color_tests {
    use super::use_color;

    #[test]
    fn color_only_on_a_terminal_without_no_color() {
        assert!(use_color(true, None));
        assert!(
            use_color(true, Some("".into())),
            "an empty NO_COLOR is unset"
        );
        assert!(!use_color(true, Some("1".into())));
        assert!(!use_color(false, None), "not a terminal");
    }
}
