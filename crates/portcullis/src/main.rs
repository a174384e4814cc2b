//! `portcullis`: the one binary of the Portcullis gateway.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

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
    /// Request header read timeout (slowloris protection), e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = duration)]
    header_read_timeout: std::time::Duration,
    /// How long a request whose token has an unknown `kid` (from an issuer whose keys are
    /// fetched) waits for a refetch before it is refused.
    #[arg(long, default_value = "1s", value_parser = duration)]
    unknown_kid_hold: std::time::Duration,
}

pub(crate) fn duration(s: &str) -> Result<std::time::Duration, String> {
    portcullis_api::parse_duration(s)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(&cli.log_format, cli.access_log);
    match cli.command {
        Command::Crd { dir } => crd(dir),
        Command::Standalone(args) => runtime()?.block_on(standalone(args)),
        Command::Token { cmd } => token_cmd::run(cmd),
        Command::Echo(args) => runtime()?.block_on(echo::run(args)),
        Command::Controller(args) => runtime()?.block_on(cluster_cmd::controller(args)),
        Command::Proxy(args) => runtime()?.block_on(cluster_cmd::proxy(args)),
        Command::Revoke(args) => runtime()?.block_on(cluster_cmd::revoke(args)),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn init_tracing(format: &str, access_log: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if access_log {
        "info"
    } else {
        "info,portcullis::access=off"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

async fn standalone(args: StandaloneArgs) -> anyhow::Result<()> {
    let mut opts = portcullis_proxy::StandaloneOptions::new(args.manifests);
    opts.listen = args.listen;
    opts.admin = args.admin;
    opts.tls = args.tls_cert.zip(args.tls_key);
    opts.limits.header_read_timeout = args.header_read_timeout;
    opts.unknown_kid_hold = args.unknown_kid_hold;
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
