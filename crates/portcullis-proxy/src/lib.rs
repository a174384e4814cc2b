//! The Portcullis data plane: a hyper 1 server that puts `portcullis-policy` on the wire.
//!
//! ```text
//!  client ──▶ server (h1 / h2c / TLS+ALPN h2) ──▶ Pipeline::handle
//!                                                 ├─ limits (431)
//!                                                 ├─ Snapshot::authorize (404/400/401/403)
//!                                                 ├─ forward: body filters, pooled client, per-route timeouts (502/504)
//!                                                 └─ RequestLog drop guard: metrics + access log, once
//!                                                    (at the end, when a streamed body ends, or on 499)
//!  LiveConfig (ArcSwap<Snapshot>) ◀── standalone::run (manifest dir watch) | controller stream
//!  admin port: /metrics /healthz /readyz /config
//! ```

pub mod catalog;
pub mod config;
pub mod events;
pub mod keywait;
pub mod llm;
pub mod metrics;
pub mod pipeline;
pub mod quota;
pub mod server;
pub mod standalone;
pub mod subscriber;
/// TLS termination (shared with the controller's push port).
pub use portcullis_fetch::tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use config::{ConfigInfo, LiveConfig};
pub use metrics::Metrics;
pub use pipeline::{Limits, Peer, Pipeline};
use tokio::sync::watch;

/// How to run the gateway from a manifest directory.
#[derive(Debug, Clone)]
pub struct StandaloneOptions {
    /// The directory of YAML manifests.
    pub manifests: PathBuf,
    /// Proxy listen address.
    pub listen: SocketAddr,
    /// Admin listen address (`/metrics`, `/healthz`, `/readyz`, `/config`).
    pub admin: SocketAddr,
    /// TLS certificate and key (PEM files), reloaded on change.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// With `tls`: CA certificates (PEM) client certificates are verified against (mTLS-
    /// bound tokens, RFC 8705).
    pub tls_client_ca: Option<PathBuf>,
    /// With `tls`: also take client certificates no CA issued, self-signed ones included
    /// (RFC 8705 section 2.2); only certificate-bound tokens ever use them.
    pub tls_client_any_certificate: bool,
    /// Limits against abuse.
    pub limits: Limits,
    /// Wait this long after a file change before reloading.
    pub debounce: Duration,
    /// Compile options (clock, cache size, token size limit).
    pub compile: portcullis_policy::CompileOptions,
    /// How long a request whose token has an unknown `kid` waits for refetched keys.
    pub unknown_kid_hold: Duration,
    /// Whether an unknown `kid` triggers a refetch of its key set (rate-limited per source);
    /// independent of the hold: with a zero hold the refetch is still sent.
    pub unknown_kid_refetch: bool,
    /// Body filters for the routes they choose (none by default).
    pub body_filters: Option<Arc<dyn pipeline::BodyFilters>>,
    /// Where revocations made by identity events (Back-Channel Logout) are kept across
    /// restarts; `None` keeps them in memory only.
    pub events_file: Option<PathBuf>,
    /// Serve the API catalog on this address, to readers the options name.
    pub catalog: Option<(SocketAddr, catalog::CatalogOptions)>,
}

impl StandaloneOptions {
    /// Defaults for `dir`: proxy on 127.0.0.1:8080, admin on 127.0.0.1:9901.
    pub fn new(manifests: PathBuf) -> Self {
        Self {
            manifests,
            listen: ([127, 0, 0, 1], 8080).into(),
            admin: ([127, 0, 0, 1], 9901).into(),
            tls: None,
            limits: Limits::default(),
            debounce: Duration::from_millis(50),
            compile: Default::default(),
            unknown_kid_hold: Duration::from_secs(1),
            unknown_kid_refetch: true,
            body_filters: None,
            events_file: None,
            catalog: None,
            tls_client_ca: None,
            tls_client_any_certificate: false,
        }
    }
}

/// A running gateway.
pub struct Running {
    /// Where the proxy listens.
    pub proxy_addr: SocketAddr,
    /// Where the admin endpoints listen.
    pub admin_addr: SocketAddr,
    /// The live config.
    pub config: Arc<LiveConfig>,
    /// The metrics.
    pub metrics: Metrics,
    /// Where the API catalog listens, when it is served.
    pub catalog_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
}

impl Running {
    /// Stops accepting; open connections finish their requests.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }
}

/// Errors starting the gateway.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not bind.
    #[error(transparent)]
    Bind(#[from] std::io::Error),
    /// The TLS certificate or key is unusable.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The identity-event file cannot be read.
    #[error("identity events: {0}")]
    Events(String),
}

/// Binds both ports and serves them: the proxy port through `pipeline`, whose `config`
/// something else keeps current.
/// The TLS acceptor of the proxy port, if it serves TLS.
fn tls_acceptor(
    tls: Option<&(PathBuf, PathBuf)>,
    client_ca: Option<&PathBuf>,
    any_client_certificate: bool,
) -> Result<Option<tokio_rustls::TlsAcceptor>, StartError> {
    Ok(match tls {
        Some((cert, key)) if any_client_certificate => {
            Some(tls::acceptor_with_any_client_certificate(
                cert.clone(),
                key.clone(),
                client_ca.cloned(),
            )?)
        }
        Some((cert, key)) => Some(tls::acceptor_with_clients(
            cert.clone(),
            key.clone(),
            client_ca.cloned(),
        )?),
        None => None,
    })
}

async fn serve(
    pipeline: Pipeline,
    config: Arc<LiveConfig>,
    metrics: Metrics,
    listen: SocketAddr,
    admin: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> Result<Running, StartError> {
    let proxy = server::bind(listen).await?;
    let admin = server::bind(admin).await?;
    let proxy_addr = proxy.local_addr()?;
    let admin_addr = admin.local_addr()?;
    let (shutdown, rx) = watch::channel(false);
    let pipeline = Arc::new(pipeline);
    tokio::spawn(server::serve_proxy(
        proxy,
        pipeline,
        tls,
        metrics.clone(),
        rx.clone(),
    ));
    tokio::spawn(server::serve_admin(
        admin,
        config.clone(),
        metrics.clone(),
        rx,
    ));
    Ok(Running {
        proxy_addr,
        admin_addr,
        config,
        metrics,
        catalog_addr: None,
        shutdown,
    })
}

/// Starts the standalone gateway: loads the manifests, binds both ports, watches the
/// directory. Returns once listening.
pub async fn start_standalone(opts: StandaloneOptions) -> Result<Running, StartError> {
    let metrics = Metrics::new();
    let config = Arc::new(LiveConfig::new(metrics.clone()));
    // Standalone mode fetches remote key sets itself.
    let fetcher = portcullis_fetch::KeyFetcher::new(
        Arc::new(portcullis_fetch::HttpClient::default()),
        metrics.registry(),
    );
    // Watch before the first load, so no edit falls between the two.
    let watch = standalone::DirWatch::new(&opts.manifests);
    // Load synchronously first so the proxy never serves before its config.
    let events = Arc::new(match &opts.events_file {
        Some(f) => events::LocalEvents::with_file(f.clone()).map_err(StartError::Events)?,
        None => events::LocalEvents::default(),
    });
    let mut manifests = standalone::ManifestDir::new(opts.manifests.clone(), opts.compile.clone())
        .with_fetcher(fetcher.clone())
        .with_events(events.clone());
    standalone::apply(&mut manifests, &config, &metrics);
    // Give the first fetches of remote key sets a moment, so routes on those policies are
    // served from the first request rather than after the first fetch.
    let first_fetch = async {
        let mut changes = fetcher.subscribe();
        while fetcher
            .states()
            .values()
            .any(|s| s.result == portcullis_fetch::FetchResult::Pending)
        {
            if changes.changed().await.is_err() {
                break;
            }
        }
    };
    if !fetcher.states().is_empty() {
        let _ = tokio::time::timeout(Duration::from_secs(5), first_fetch).await;
        standalone::apply(&mut manifests, &config, &metrics);
    } else {
        drop(first_fetch);
    }
    let sink = Arc::new(FetcherRefetch(fetcher));
    let keys =
        keywait::KeyWaiter::new(sink, opts.unknown_kid_hold).with_refetch(opts.unknown_kid_refetch);
    let mut pipeline = Pipeline::new(config.clone(), metrics.clone(), opts.limits.clone())
        .with_key_waiter(Arc::new(keys))
        .with_events(Arc::new(events.clone()));
    if let Some(filters) = opts.body_filters.clone() {
        pipeline = pipeline.with_body_filters(filters);
    }
    tokio::spawn(pipeline.quota_client().run());
    // Shared Signals streams this process drives (poll delivery, verification).
    tokio::spawn(portcullis_fetch::ssf::run(
        Arc::new(events::StandaloneSsf {
            config: config.clone(),
            events: events.clone(),
            metrics: metrics.clone(),
        }),
        Arc::new(portcullis_fetch::HttpClient::default()),
    ));
    let running = serve(
        pipeline,
        config.clone(),
        metrics.clone(),
        opts.listen,
        opts.admin,
        tls_acceptor(
            opts.tls.as_ref(),
            opts.tls_client_ca.as_ref(),
            opts.tls_client_any_certificate,
        )?,
    )
    .await?;
    let mut running = running;
    if let Some((addr, catalog_opts)) = opts.catalog.clone() {
        let live = config.clone();
        running.catalog_addr = Some(
            catalog::start(
                addr,
                Arc::new(move || live.load()),
                catalog_opts,
                running.shutdown.subscribe(),
            )
            .await?,
        );
    }
    tokio::spawn(standalone::run_watch(
        watch,
        manifests,
        config,
        metrics,
        opts.debounce,
    ));
    tracing::info!(proxy_addr = %running.proxy_addr, admin_addr = %running.admin_addr, manifests = %opts.manifests.display(), "portcullis standalone listening");
    Ok(running)
}

/// Standalone refetches go straight to the in-process fetcher, which rate-limits them and
/// reports whether each brought new keys.
struct FetcherRefetch(Arc<portcullis_fetch::KeyFetcher>);

impl keywait::RefetchSink for FetcherRefetch {
    fn request(&self, url: &str) -> bool {
        self.0.request_refetch(url)
    }

    fn request_tracked(&self, url: &str) -> Option<keywait::RefetchReport> {
        let done = self.0.request_refetch_reported(url)?;
        Some(keywait::RefetchReport::new(async move {
            match done.await {
                Ok(true) => keywait::RefetchOutcome::NewKeys,
                // The same keys, a failed fetch, or a source that went away.
                Ok(false) | Err(_) => keywait::RefetchOutcome::Unchanged,
            }
        }))
    }
}

/// How to run a proxy fed by the controller.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// Proxy listen address.
    pub listen: SocketAddr,
    /// Admin listen address.
    pub admin: SocketAddr,
    /// TLS certificate and key (PEM files), reloaded on change.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// With `tls`: CA certificates (PEM) client certificates are verified against (mTLS-
    /// bound tokens, RFC 8705).
    pub tls_client_ca: Option<PathBuf>,
    /// With `tls`: also take client certificates no CA issued, self-signed ones included
    /// (RFC 8705 section 2.2); only certificate-bound tokens ever use them.
    pub tls_client_any_certificate: bool,
    /// Limits against abuse.
    pub limits: Limits,
    /// The controller subscription.
    pub subscriber: subscriber::SubscriberOptions,
    /// How long a request whose token has an unknown `kid` waits for refetched keys.
    pub unknown_kid_hold: Duration,
    /// Ask the controller to refetch a key set when a token's `kid` is not in it
    /// (independent of the hold).
    pub unknown_kid_refetch: bool,
}

/// Starts a proxy that takes its config from the controller: serves the persisted state
/// (if any) at once, and the controller's config as soon as it arrives.
pub async fn start_proxy(opts: ProxyOptions) -> Result<Running, StartError> {
    let metrics = Metrics::new();
    let config = Arc::new(LiveConfig::new(metrics.clone()));
    let sub = subscriber::Subscriber::new(opts.subscriber.clone(), config.clone(), metrics.clone());
    let keys = Arc::new(
        keywait::KeyWaiter::new(Arc::new(sub.refetch_sink()), opts.unknown_kid_hold)
            .with_refetch(opts.unknown_kid_refetch),
    );
    let pipeline = Pipeline::new(config.clone(), metrics.clone(), opts.limits.clone())
        .with_key_waiter(keys)
        .with_lease_backend(Arc::new(sub.leases()))
        .with_events(Arc::new(sub.events()));
    tokio::spawn(pipeline.quota_client().run());
    let running = serve(
        pipeline,
        config,
        metrics,
        opts.listen,
        opts.admin,
        tls_acceptor(
            opts.tls.as_ref(),
            opts.tls_client_ca.as_ref(),
            opts.tls_client_any_certificate,
        )?,
    )
    .await?;
    tokio::spawn(sub.run());
    tracing::info!(proxy_addr = %running.proxy_addr, admin_addr = %running.admin_addr, controller = %opts.subscriber.controller, "portcullis proxy listening");
    Ok(running)
}
