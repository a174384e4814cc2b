//! `portcullis proxy --controller URL`: subscribes to the controller's config stream
//! (protocol in `portcullis_api::push`), compiles what it receives with the same compiler
//! the controller runs, swaps the snapshot in atomically and acknowledges the version.
//!
//! * The controller gone: the last good snapshot keeps serving; reconnects back off
//!   exponentially with full jitter (100 ms to 10 s).
//! * Versions only go up: a message not above the version in force is ignored, so a
//!   reconnect or an older replica can never un-apply a revocation.
//! * A delta is applied to the sources in place, and a revocation-only one patches the
//!   snapshot in force instead of compiling everything again
//!   ([`portcullis_policy::compile_sources`]): its cost does not grow with the routes.
//! * With `--state-file`, every applied config is persisted (written to a temporary file
//!   and renamed) by a writer thread, off the stream's read loop and the request path; a
//!   burst of configs arriving during a write is written once, as the newest. A restarted
//!   proxy serves the persisted config before it reconnects.
//! * The bearer token is re-read from its file on every connect: projected ServiceAccount
//!   tokens rotate.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_api::push::{Changes, ProxyMessage, STREAM_PATH, ServerMessage, SourceSet};
use portcullis_policy::{
    CompileError, CompileOptions, PreviousCompile, Snapshot, SourceChanges, compile_sources,
};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::config::LiveConfig;
use crate::metrics::Metrics;

/// How to subscribe.
#[derive(Debug, Clone)]
pub struct SubscriberOptions {
    /// The controller's push endpoint, `http://host:port` (h2c) or `https://...` (h2).
    pub controller: Uri,
    /// A file holding the bearer token (a projected ServiceAccount token in a cluster).
    pub token_file: Option<PathBuf>,
    /// This proxy's name (pod name), for the controller's logs.
    pub name: String,
    /// Where to persist the applied config.
    pub state_file: Option<PathBuf>,
    /// Compile options (clock, cache sizes).
    pub compile: CompileOptions,
    /// Extra CA certificates (PEM) for an https controller.
    pub ca_file: Option<PathBuf>,
    /// A client certificate and key (PEM) for a controller that requires mutual TLS;
    /// re-read on every connect, so a renewed pair is used from the next connection.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// The name verified in the controller's certificate, instead of the URL's host (for a
    /// controller reached by IP address, or by a name its certificate does not list).
    pub server_name: Option<String>,
}

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Could not connect.
    #[error("connecting to the controller: {0}")]
    Connect(String),
    /// The controller refused the stream.
    #[error("the controller refused the stream: {0}")]
    Refused(StatusCode),
    /// The stream broke.
    #[error("stream broken: {0}")]
    Broken(String),
    /// A delta did not apply: resubscribe from our version.
    #[error("out of sync: {0}")]
    OutOfSync(String),
}

/// The proxy's side of the stream.
pub struct Subscriber {
    opts: SubscriberOptions,
    /// `opts.compile` as the stream's sources need it (no CEL pass: the API server ran it).
    compile: CompileOptions,
    config: Arc<LiveConfig>,
    metrics: Metrics,
    version: u64,
    /// The sources in force. Shared with the state writer while it serializes them, so a
    /// delta arriving then copies them once; otherwise they are changed in place.
    sources: Arc<SourceSet>,
    /// The snapshot compiled from `sources`, as put in force, and the errors its compile
    /// reported: what the next revocation-only delta patches.
    compiled: Option<(Arc<Snapshot>, Vec<CompileError>)>,
    /// Writes the state file, when there is one.
    state: Option<Arc<StateWriter>>,
    last_contact: Arc<std::sync::Mutex<Option<Instant>>>,
    outgoing: Arc<std::sync::Mutex<Option<mpsc::Sender<Bytes>>>>,
    /// Quota leases waiting for the controller's grant.
    leases: Arc<crate::quota::ControllerLeases>,
    /// Identity events waiting for the controller's answer.
    events: Arc<crate::events::ControllerEvents>,
}

/// Sends refetch requests to the controller over the stream that is up, if any.
#[derive(Clone)]
pub struct ControllerRefetch {
    outgoing: Arc<std::sync::Mutex<Option<mpsc::Sender<Bytes>>>>,
}

impl crate::keywait::RefetchSink for ControllerRefetch {
    fn request(&self, url: &str) -> bool {
        send_message(
            &self.outgoing,
            &ProxyMessage::Refetch {
                url: url.to_owned(),
            },
        )
    }
}

/// Sends `msg` as one NDJSON line over the stream that is up, if any, without waiting:
/// false when no stream is up or its queue is full.
pub(crate) fn send_message(
    outgoing: &std::sync::Mutex<Option<mpsc::Sender<Bytes>>>,
    msg: &ProxyMessage,
) -> bool {
    let Some(tx) = outgoing.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
        return false;
    };
    let mut line = serde_json::to_vec(msg).unwrap_or_default();
    line.push(b'\n');
    tx.try_send(Bytes::from(line)).is_ok()
}

impl Subscriber {
    /// A subscriber; loads the state file, if any, and applies it at once. A write to the
    /// same file still under way in this process (a subscriber before this one) is waited
    /// for first, so the newest config persisted is the one served.
    pub fn new(opts: SubscriberOptions, config: Arc<LiveConfig>, metrics: Metrics) -> Self {
        let compile = CompileOptions {
            validate_cel: false,
            // The controller's leader polls and verifies streams: proxies only take pushes.
            stream_receiver: false,
            ..opts.compile.clone()
        };
        let outgoing: Arc<std::sync::Mutex<Option<mpsc::Sender<Bytes>>>> = Default::default();
        let mut s = Self {
            opts,
            compile,
            config,
            metrics,
            version: 0,
            sources: Arc::default(),
            compiled: None,
            state: None,
            last_contact: Default::default(),
            outgoing: outgoing.clone(),
            leases: Arc::new(crate::quota::ControllerLeases::new(outgoing.clone())),
            events: Arc::new(crate::events::ControllerEvents::new(outgoing)),
        };
        if let Some(path) = s.opts.state_file.clone() {
            let writer = StateWriter::for_path(&path);
            if !writer.flush(Duration::from_secs(10)) {
                warn!(path = %path.display(), "a write of the state file is still under way; reading it as it is");
            }
            s.state = Some(writer);
            match std::fs::read(&path).map(|b| serde_json::from_slice::<PersistedState>(&b)) {
                Ok(Ok(state)) => {
                    info!(version = state.version, path = %path.display(), "serving the persisted config until the controller answers");
                    s.apply_full(state.version, state.sources, "state-file");
                }
                Ok(Err(e)) => {
                    warn!(path = %path.display(), error = %e, "state file unreadable; ignoring it")
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "state file unreadable; ignoring it")
                }
            }
        }
        s
    }

    /// A sink for refetch requests (unknown `kid`s), sent over the controller stream.
    pub fn refetch_sink(&self) -> ControllerRefetch {
        ControllerRefetch {
            outgoing: self.outgoing.clone(),
        }
    }

    /// Identity events, applied by the controller over this subscriber's stream.
    pub fn events(&self) -> Arc<crate::events::ControllerEvents> {
        self.events.clone()
    }

    /// The quota leases, answered over this subscriber's stream.
    pub fn leases(&self) -> Arc<crate::quota::ControllerLeases> {
        self.leases.clone()
    }

    /// The version in force.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Puts a whole source set in force. Compared with the sources in force object by
    /// object, so a resent config whose only news is revocations (a reconnect) patches
    /// the snapshot rather than compiling everything.
    fn apply_full(&mut self, version: u64, sources: SourceSet, origin: &str) {
        let touched = self
            .compiled
            .is_some()
            .then(|| SourceChanges::between(&self.sources, &sources));
        self.sources = Arc::new(sources);
        self.compile(version, touched.as_ref(), origin);
    }

    /// Applies a delta to the sources in force, in place. On error the sources are left as
    /// they were and the stream must resynchronise.
    fn apply_delta(&mut self, version: u64, changes: &Changes) -> Result<(), String> {
        // A write waiting to start is superseded by this one: withdrawing it lets the
        // sources change in place rather than be copied for it.
        let withdrawn = self.state.as_ref().is_some_and(|w| w.withdraw());
        let applied = SourceChanges::apply(Arc::make_mut(&mut self.sources), changes);
        let touched = match applied {
            Ok(touched) => touched,
            Err(e) => {
                if withdrawn && let Some(w) = &self.state {
                    w.submit(self.version, self.sources.clone());
                }
                return Err(e);
            }
        };
        self.compile(version, Some(&touched), "controller");
        Ok(())
    }

    /// Compiles the sources in force (patching the previous snapshot when `touched`
    /// changed revocations only), puts the snapshot in force and hands the state to the
    /// writer.
    fn compile(&mut self, version: u64, touched: Option<&SourceChanges>, origin: &str) {
        let previous = match (touched, &self.compiled) {
            (Some(changes), Some((snapshot, errors))) => Some(PreviousCompile {
                snapshot,
                errors,
                changes,
            }),
            _ => None,
        };
        let started = Instant::now();
        let out = compile_sources(&self.compile, &self.sources, previous);
        let elapsed = started.elapsed();
        self.metrics.compile_duration.observe(elapsed.as_secs_f64());
        self.metrics
            .config_reloads
            .with_label_values(&[if out.errors.is_empty() {
                "applied"
            } else {
                "partial"
            }])
            .inc();
        debug!(
            version,
            patched = out.patched,
            micros = elapsed.as_micros() as u64,
            errors = out.errors.len(),
            "config compiled"
        );
        let messages: Vec<String> = out.errors.iter().map(ToString::to_string).collect();
        let in_force = self.config.apply(
            out.snapshot.with_version(version),
            vec![origin.to_owned()],
            messages,
        );
        self.compiled = Some((in_force, out.errors));
        self.version = version;
        // What was just read from the state file needs no writing back.
        if origin != "state-file"
            && let Some(w) = &self.state
        {
            w.submit(version, self.sources.clone());
        }
    }

    /// Runs forever: connect, stream, back off, reconnect.
    pub async fn run(mut self) {
        // Staleness: seconds since the controller was last heard from.
        let contact = self.last_contact.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let since = contact
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .unwrap_or(started);
                metrics.config_staleness.set(since.elapsed().as_secs_f64());
            }
        });
        let mut failures: u32 = 0;
        loop {
            let started = Instant::now();
            let result = self.stream_once().await;
            self.metrics.controller_connected.set(0);
            *self.outgoing.lock().unwrap_or_else(|e| e.into_inner()) = None;
            match &result {
                Err(StreamError::OutOfSync(why)) => {
                    info!(reason = %why, version = self.version, "resubscribing")
                }
                Err(e) => {
                    warn!(error = %e, version = self.version, "controller stream ended; serving the last good config")
                }
                Ok(()) => info!(version = self.version, "controller closed the stream"),
            }
            if started.elapsed() > Duration::from_secs(30)
                || matches!(result, Err(StreamError::OutOfSync(_)))
            {
                failures = 0;
            }
            let delay = backoff(failures);
            failures = failures.saturating_add(1);
            tokio::time::sleep(delay).await;
        }
    }

    fn read_token(&self) -> Option<String> {
        let path = self.opts.token_file.as_ref()?;
        match std::fs::read_to_string(path) {
            Ok(t) => Some(t.trim().to_owned()),
            Err(e) => {
                warn!(path = %path.display(), error = %e, "cannot read the credentials file for the controller");
                None
            }
        }
    }

    async fn stream_once(&mut self) -> Result<(), StreamError> {
        let uri = &self.opts.controller;
        let host = uri
            .host()
            .ok_or_else(|| StreamError::Connect("the controller URL has no host".into()))?
            .to_owned();
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        if !https && self.opts.client_cert.is_some() {
            // A client certificate for a controller reached in cleartext would be unused:
            // said, rather than silently connecting without it.
            return Err(StreamError::Connect(
                "a controller client certificate is given, but the controller URL is not https"
                    .into(),
            ));
        }
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = tokio::time::timeout(
            Duration::from_secs(5),
            TcpStream::connect((host.as_str(), port)),
        )
        .await
        .map_err(|_| StreamError::Connect("timed out".into()))?
        .map_err(|e| StreamError::Connect(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let mut sender = if https {
            let tls = self.tls_connector()?;
            let name = self
                .opts
                .server_name
                .clone()
                .unwrap_or_else(|| host.clone());
            let name = rustls::pki_types::ServerName::try_from(name)
                .map_err(|e| StreamError::Connect(e.to_string()))?;
            let stream = tls
                .connect(name, tcp)
                .await
                .map_err(|e| StreamError::Connect(e.to_string()))?;
            let (sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                    .await
                    .map_err(|e| StreamError::Connect(e.to_string()))?;
            tokio::spawn(conn);
            sender
        } else {
            let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .keep_alive_interval(Duration::from_secs(20))
                .timer(hyper_util::rt::TokioTimer::new())
                .handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| StreamError::Connect(e.to_string()))?;
            tokio::spawn(conn);
            sender
        };

        let (ack_tx, ack_rx) = mpsc::channel::<Bytes>(1024);
        let body = StreamBody::new(Box::pin(futures::stream::unfold(
            ack_rx,
            |mut rx| async move {
                rx.recv()
                    .await
                    .map(|b| (Ok::<_, std::convert::Infallible>(Frame::data(b)), rx))
            },
        )));
        let since = if self.version > 0 {
            format!("since={}&", self.version)
        } else {
            String::new()
        };
        let path = format!("{STREAM_PATH}?{since}proxy={}", self.opts.name);
        let mut req = Request::post(format!(
            "{}://{}{}",
            if https { "https" } else { "http" },
            uri.authority().map(|a| a.as_str()).unwrap_or(&host),
            path
        ))
        .header(header::CONTENT_TYPE, "application/x-ndjson");
        if let Some(token) = self.read_token() {
            req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = req
            .body(body)
            .map_err(|e| StreamError::Connect(e.to_string()))?;
        let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
            .await
            .map_err(|_| StreamError::Connect("no answer".into()))?
            .map_err(|e| StreamError::Connect(e.to_string()))?;
        if resp.status() != StatusCode::OK {
            return Err(StreamError::Refused(resp.status()));
        }
        self.metrics.controller_connected.set(1);
        *self.outgoing.lock().unwrap_or_else(|e| e.into_inner()) = Some(ack_tx.clone());
        self.touch();
        info!(controller = %uri, since = self.version, "subscribed to the controller");

        let mut body = resp.into_body();
        let mut buf: Vec<u8> = Vec::new();
        // The controller sends a heartbeat every few seconds; silence means a dead peer.
        let idle = Duration::from_secs(30);
        loop {
            let frame = match tokio::time::timeout(idle, body.frame()).await {
                Err(_) => return Err(StreamError::Broken("no heartbeat".into())),
                Ok(None) => return Ok(()),
                Ok(Some(Err(e))) => return Err(StreamError::Broken(e.to_string())),
                Ok(Some(Ok(f))) => f,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                let msg: ServerMessage = serde_json::from_slice(&line)
                    .map_err(|e| StreamError::Broken(format!("unreadable message: {e}")))?;
                self.touch();
                if let Some(applied) = self.handle(msg)? {
                    let mut ack = serde_json::to_vec(&ProxyMessage::Ack { version: applied })
                        .unwrap_or_default();
                    ack.push(b'\n');
                    let _ = ack_tx.send(Bytes::from(ack)).await;
                }
            }
            if buf.len() > 256 << 20 {
                return Err(StreamError::Broken("message too large".into()));
            }
        }
    }

    fn touch(&self) {
        *self.last_contact.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    /// Applies one message; returns the version to acknowledge.
    fn handle(&mut self, msg: ServerMessage) -> Result<Option<u64>, StreamError> {
        match msg {
            ServerMessage::Full { version, sources } => {
                if version < self.version || (version == self.version && self.version > 0) {
                    // Stale or repeated: keep what we have, but say what we enforce.
                    info!(
                        offered = version,
                        current = self.version,
                        "ignoring a config not newer than the one in force"
                    );
                    return Ok(Some(self.version));
                }
                self.apply_full(version, sources, "controller");
                Ok(Some(version))
            }
            ServerMessage::Delta {
                from,
                version,
                changes,
            } => {
                if version <= self.version {
                    return Ok(Some(self.version));
                }
                if from != self.version {
                    return Err(StreamError::OutOfSync(format!(
                        "delta from {from}, we hold {}",
                        self.version
                    )));
                }
                self.apply_delta(version, &changes)
                    .map_err(StreamError::OutOfSync)?;
                Ok(Some(version))
            }
            ServerMessage::Heartbeat { .. } => Ok(None),
            ServerMessage::Grant { id, grant } => {
                self.leases.on_grant(id, grant);
                Ok(None)
            }
            ServerMessage::Applied { id, error, replay } => {
                self.events.on_applied(id, error.map_or(Ok(replay), Err));
                Ok(None)
            }
        }
    }

    fn tls_connector(&self) -> Result<tokio_rustls::TlsConnector, StreamError> {
        let ca = self.opts.ca_file.as_deref().ok_or_else(|| {
            StreamError::Connect(
                "an https controller needs --controller-ca (the CA bundle that issued its certificate)"
                    .into(),
            )
        })?;
        let client = self
            .opts
            .client_cert
            .as_ref()
            .map(|(c, k)| (c.as_path(), k.as_path()));
        let cfg = crate::tls::client_config(ca, client, &[b"h2"])
            .map_err(|e| StreamError::Connect(e.to_string()))?;
        Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
    }
}

/// Exponential backoff with full jitter: a random delay up to 100 ms * 2^n, capped at 10 s.
fn backoff(failures: u32) -> Duration {
    let cap = Duration::from_millis(100)
        .saturating_mul(1 << failures.min(7))
        .min(Duration::from_secs(10));
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    // xorshift on the clock's nanoseconds: enough to spread reconnects.
    let mut x = nanos ^ 0x9E37_79B9_7F4A_7C15;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    let frac = (x % 1000) as u32;
    (cap * frac / 1000).max(Duration::from_millis(20))
}

mod state;
#[cfg(test)]
mod tests;

use state::{PersistedState, StateWriter};
