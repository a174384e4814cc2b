//! `portcullis controller`, `portcullis proxy` and `portcullis revoke`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use kube::{Api, ResourceExt};
use portcullis_api::{Revocation, TokenPolicy};
use portcullis_controller::{Metrics, ProxyAuth, ProxyRegistry, Publisher, cluster, push};
use sha2::{Digest, Sha256};

/// `portcullis controller`.
#[derive(clap::Args, Debug)]
pub struct ControllerArgs {
    /// Address of the push endpoint (config streams, /healthz, /readyz): proxies only.
    #[arg(long, default_value = "0.0.0.0:9800")]
    pub listen: SocketAddr,
    /// Address of the metrics endpoint (/metrics, /healthz, /readyz): Prometheus.
    #[arg(long, default_value = "0.0.0.0:9801")]
    pub metrics_listen: SocketAddr,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "portcullis-controller")]
    pub lease_name: String,
    /// This replica's identity in the Lease (the pod name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Lease duration: a standby takes over this long after the leader stops renewing.
    #[arg(long, default_value = "10s", value_parser = crate::duration)]
    pub lease_duration: Duration,
    /// ServiceAccounts (`namespace/name`) whose tokens (audience `portcullis`, checked by
    /// TokenReview) may subscribe. Repeatable.
    #[arg(long = "allow-service-account")]
    pub allow_service_accounts: Vec<String>,
    /// Outside a cluster: a file holding the shared token proxies present instead.
    #[arg(long, conflicts_with = "allow_service_accounts")]
    pub proxy_token_file: Option<PathBuf>,
    /// How often the leader prunes revocations past their expiresAt.
    #[arg(long, default_value = "30s", value_parser = crate::duration)]
    pub prune_interval: Duration,
    /// Heartbeat interval on config streams.
    #[arg(long, default_value = "5s", value_parser = crate::duration)]
    pub heartbeat: Duration,
    /// This replica's push endpoint as the other replicas reach it, e.g.
    /// http://$(POD_IP):9800: advertised in the Lease while leading, so replicas that do
    /// not lead can relay their proxies' quota leases. Without it, only proxies connected
    /// to the leader can lease budgets and rate limits.
    #[arg(long, env = "PORTCULLIS_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// The ConfigMap (in the Lease's namespace) the leader checkpoints the quota ledger to.
    #[arg(long, default_value = "portcullis-quota-ledger")]
    pub quota_configmap: String,
    /// Serve the push endpoint over TLS with this certificate chain (PEM), re-read when
    /// the file changes (a renewed certificate takes effect without a restart). Config
    /// streams carry keys, revocations and introspection credentials: proxies then
    /// connect to https://... and verify it with --controller-ca.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// With --tls-cert: require every proxy to present a client certificate issued by a
    /// CA of this bundle (mutual TLS), besides its ServiceAccount token.
    #[arg(long, requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Serve the push endpoint as plain h2c, without TLS. Config streams then carry key
    /// sets, revocations and introspection client secrets in cleartext: only where the
    /// network already encrypts (a service mesh with mTLS) or on loopback. Without this
    /// flag the controller refuses to start with no --tls-cert.
    #[arg(long, conflicts_with = "tls_cert")]
    pub plaintext: bool,
    /// CA bundle (PEM) that verifies the other replicas' push endpoints when this one
    /// relays quota leases to the leader at its https --advertise-url. Re-read for every
    /// relay. With --tls-client-ca, relays present --tls-cert as their client certificate.
    #[arg(long)]
    pub peer_ca: Option<PathBuf>,
    /// The name verified in the other replicas' certificates instead of the advertised
    /// URL's host, e.g. the controller Service's DNS name: advertised URLs hold pod IP
    /// addresses, which a certificate made for the Service does not list.
    #[arg(long, requires = "peer_ca")]
    pub peer_server_name: Option<String>,
    #[command(flatten)]
    pub catalog: crate::CatalogArgs,
}

/// `portcullis proxy`.
#[derive(clap::Args, Debug)]
pub struct ProxyArgs {
    #[command(flatten)]
    pub key_refetch: crate::KeyRefetchArgs,
    /// The controller's push endpoint, e.g. http://portcullis-controller:9800.
    #[arg(long)]
    pub controller: http::Uri,
    /// File holding the token presented to the controller (a projected ServiceAccount
    /// token with audience `portcullis`, or the shared token). Re-read on every connect.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// This proxy's name in the controller's logs.
    #[arg(long, env = "POD_NAME", default_value = "proxy")]
    pub name: String,
    /// Persist the applied config here, and serve it at start before the controller answers.
    #[arg(long)]
    pub state_file: Option<PathBuf>,
    /// CA bundle (PEM) for an https controller.
    #[arg(long)]
    pub controller_ca: Option<PathBuf>,
    /// A client certificate (PEM) for a controller that requires mutual TLS
    /// (`--tls-client-ca` there); re-read on every connect.
    #[arg(long, requires = "controller_client_key")]
    pub controller_client_cert: Option<PathBuf>,
    /// The private key (PEM) of --controller-client-cert.
    #[arg(long, requires = "controller_client_cert")]
    pub controller_client_key: Option<PathBuf>,
    /// The name verified in the controller's certificate instead of the --controller URL's
    /// host (for a controller reached by IP address, or by a name its certificate does
    /// not list).
    #[arg(long, requires = "controller_ca")]
    pub controller_server_name: Option<String>,
    /// Proxy listen address.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Admin listen address: /metrics, /healthz, /readyz, /config.
    #[arg(long, default_value = "0.0.0.0:9901")]
    pub admin: SocketAddr,
    /// TLS certificate chain (PEM).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// With --tls-cert: CA certificates (PEM) that client certificates are verified
    /// against. A client may present one (it is not required); certificate-bound tokens
    /// (`cnf.x5t#S256`, RFC 8705) are accepted only with the certificate they name.
    #[arg(long, requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// With --tls-cert: also accept client certificates that no CA of --tls-client-ca
    /// issued, self-signed ones included (RFC 8705 section 2.2,
    /// `self_signed_tls_client_auth`). The handshake still proves the client holds the
    /// certificate's key, and a certificate-bound token names the exact certificate, so
    /// binding needs no chain; nothing else trusts a client certificate.
    #[arg(long, requires = "tls_cert")]
    pub tls_client_any_certificate: bool,
    #[command(flatten)]
    pub connections: crate::ConnectionArgs,
}

/// `portcullis revoke`.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("selector").required(true).args(["jti", "subject", "key_id", "jwk_thumbprint", "token", "api_key_id"])))]
pub struct RevokeArgs {
    /// The TokenPolicy, `namespace/name`.
    #[arg(long)]
    pub policy: String,
    /// Revoke the token with this jti.
    #[arg(long)]
    pub jti: Option<String>,
    /// Revoke this subject's tokens issued before --issued-before.
    #[arg(long, requires = "issued_before")]
    pub subject: Option<String>,
    /// RFC 3339 instant, with --subject.
    #[arg(long)]
    pub issued_before: Option<String>,
    /// Revoke every token verified by the key with this key ID (the JWK's `kid`, whether
    /// or not the token names it), and every token whose header names it.
    #[arg(long)]
    pub key_id: Option<String>,
    /// Revoke every token verified by the key with this RFC 7638 JWK thumbprint (base64url
    /// SHA-256, 43 characters): names keys without a kid, such as PEM keys.
    #[arg(long, value_name = "THUMBPRINT")]
    pub jwk_thumbprint: Option<String>,
    /// `-`: read a token from stdin; only its SHA-256 (and, for a JWT, its exp as
    /// expiresAt) is stored.
    #[arg(long)]
    pub token: Option<String>,
    /// Revoke the API key with this id: the 12 characters after `pcl_` (what
    /// `portcullis apikey id` prints, and its Secret's keyId).
    #[arg(long, value_name = "ID")]
    pub api_key_id: Option<String>,
    /// RFC 3339 instant after which the entry is pruned.
    #[arg(long)]
    pub expires_at: Option<String>,
}

/// Refuses push-endpoint settings that would serve or relay in cleartext unasked, or that
/// contradict each other.
fn check_transport(args: &ControllerArgs) -> anyhow::Result<()> {
    if args.tls_cert.is_none() && !args.plaintext {
        bail!(
            "the push endpoint carries key sets, revocations and introspection client secrets: \
             serve it over TLS with --tls-cert and --tls-key, or pass --plaintext to serve \
             plain h2c (only where the network already encrypts)"
        );
    }
    if let Some(url) = &args.advertise_url {
        let https = url.starts_with("https://");
        if !https && !url.starts_with("http://") {
            bail!("--advertise-url {url}: not an http:// or https:// URL");
        }
        if https != args.tls_cert.is_some() {
            bail!(
                "--advertise-url {url}: the push endpoint is served {}, so other replicas reach it at {}://",
                if args.tls_cert.is_some() {
                    "over TLS"
                } else {
                    "as plain h2c"
                },
                if args.tls_cert.is_some() {
                    "https"
                } else {
                    "http"
                },
            );
        }
        if https && args.peer_ca.is_none() {
            bail!(
                "--advertise-url {url}: relays to the leader's https endpoint need --peer-ca \
                 (the CA bundle that issued the replicas' certificates)"
            );
        }
    }
    Ok(())
}

pub async fn controller(args: ControllerArgs) -> anyhow::Result<()> {
    check_transport(&args)?;
    let catalog = args.catalog.options()?;
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (KUBECONFIG or in-cluster config)")?;
    let auth = match (
        &args.proxy_token_file,
        args.allow_service_accounts.is_empty(),
    ) {
        (Some(f), _) => {
            let t =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            if t.trim().is_empty() {
                bail!("{} is empty", f.display());
            }
            ProxyAuth::shared(&t)
        }
        (None, false) => {
            ProxyAuth::token_review(client.clone(), args.allow_service_accounts.clone())
        }
        (None, true) => bail!(
            "say who may subscribe: --allow-service-account NS/NAME (in a cluster) or --proxy-token-file FILE"
        ),
    };
    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("portcullis-controller-{}", std::process::id()));
    let metrics = Metrics::new();
    let publisher = Arc::new(Publisher::new());
    let registry = Arc::new(ProxyRegistry::default());
    let quota = portcullis_controller::quota::QuotaService::new(metrics.clone());
    let quota = Arc::new(match &args.peer_ca {
        Some(ca) => quota.with_peer_tls(portcullis_controller::quota::PeerTls {
            ca: ca.clone(),
            client_cert: args
                .tls_client_ca
                .as_ref()
                .and(args.tls_cert.clone().zip(args.tls_key.clone())),
            server_name: args.peer_server_name.clone(),
        }),
        // Serving TLS: never relay a proxy's token to a plain http URL a Lease names.
        None if args.tls_cert.is_some() => quota.https_only(),
        None => quota,
    });
    let (shutdown_tx, shutdown) = tokio::sync::watch::channel(false);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let metrics_listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("binding {}", args.metrics_listen))?;
    let events = Arc::new(portcullis_controller::events::EventService::new(
        Some(client.clone()),
        metrics.registry(),
    ));
    let state = Arc::new(push::PushState {
        publisher: publisher.clone(),
        registry: registry.clone(),
        auth,
        metrics: metrics.clone(),
        heartbeat: args.heartbeat,
        quota: quota.clone(),
        events: events.clone(),
    });
    eprintln!(
        "portcullis controller {identity}: push endpoint on {}, metrics on {}",
        listener.local_addr()?,
        metrics_listener.local_addr()?
    );
    let server = match args.tls_cert.clone().zip(args.tls_key.clone()) {
        Some((cert, key)) => {
            let acceptor = portcullis_proxy::tls::acceptor_requiring_clients(
                cert,
                key,
                args.tls_client_ca.clone(),
            )
            .context("the push endpoint's TLS certificate")?;
            tokio::spawn(push::serve_tls(
                listener,
                state.clone(),
                shutdown.clone(),
                acceptor,
            ))
        }
        None => tokio::spawn(push::serve(listener, state.clone(), shutdown.clone())),
    };
    tokio::spawn(push::serve_metrics(
        metrics_listener,
        state,
        shutdown.clone(),
    ));
    if let Some((addr, catalog_opts)) = catalog {
        // The routes and policies published to proxies, with the key sets fetched:
        // compiled again when the published version changes.
        let publisher = publisher.clone();
        let compiled: std::sync::Mutex<Option<(u64, Arc<portcullis_policy::Snapshot>)>> =
            std::sync::Mutex::default();
        let source: portcullis_proxy::catalog::SnapshotSource = Arc::new(move || {
            let (version, sources) = publisher.current();
            let mut c = compiled.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((v, s)) = &*c
                && *v == version
            {
                return s.clone();
            }
            let out = portcullis_policy::compile_sources(
                &portcullis_policy::CompileOptions::default(),
                &sources,
                None,
            );
            let mut snapshot = out.snapshot;
            // Verified tokens and seen DPoP proofs carry over where the trust settings
            // did not change.
            if let Some((_, previous)) = &*c {
                snapshot.inherit_caches(previous);
            }
            let s = Arc::new(snapshot);
            *c = Some((version, s.clone()));
            s
        });
        let at = portcullis_proxy::catalog::start(addr, source, catalog_opts, shutdown.clone())
            .await
            .with_context(|| format!("binding the catalog on {addr}"))?;
        eprintln!("portcullis controller {identity}: API catalog on {at}");
    }
    let opts = cluster::ControllerOptions {
        lease_namespace: args.lease_namespace,
        lease_name: args.lease_name,
        identity,
        lease_duration: args.lease_duration,
        prune_interval: args.prune_interval,
        advertise_url: args.advertise_url,
        quota_configmap: args.quota_configmap,
        ..Default::default()
    };
    let ctl = tokio::spawn(cluster::run(
        client, opts, publisher, registry, metrics, quota, events, shutdown,
    ));
    crate::shutdown_signal().await;
    let _ = shutdown_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = ctl.await;
        let _ = server.await;
    })
    .await;
    Ok(())
}

pub async fn proxy(args: ProxyArgs) -> anyhow::Result<()> {
    let opts = portcullis_proxy::ProxyOptions {
        unknown_kid_hold: args.key_refetch.unknown_kid_hold,
        unknown_kid_refetch: args.key_refetch.unknown_kid_refetch,
        listen: args.listen,
        admin: args.admin,
        tls: args.tls_cert.zip(args.tls_key),
        tls_client_ca: args.tls_client_ca,
        tls_client_any_certificate: args.tls_client_any_certificate,
        limits: {
            let mut limits = portcullis_proxy::Limits::default();
            args.connections.apply(&mut limits);
            limits
        },
        subscriber: portcullis_proxy::subscriber::SubscriberOptions {
            controller: args.controller,
            token_file: args.token_file,
            name: args.name,
            state_file: args.state_file,
            compile: Default::default(),
            ca_file: args.controller_ca,
            client_cert: args.controller_client_cert.zip(args.controller_client_key),
            server_name: args.controller_server_name,
        },
    };
    let running = portcullis_proxy::start_proxy(opts).await?;
    eprintln!(
        "portcullis proxy: traffic on {}, admin on {}",
        running.proxy_addr, running.admin_addr
    );
    crate::shutdown_signal().await;
    running.shutdown();
    Ok(())
}

/// Builds the revocation entry from the arguments (stdin for `--token -`).
fn revocation(args: &RevokeArgs, stdin: impl std::io::Read) -> anyhow::Result<Revocation> {
    let mut r = Revocation {
        expires_at: args.expires_at.clone(),
        ..Default::default()
    };
    if let Some(jti) = &args.jti {
        r.jti = Some(jti.clone());
    } else if let Some(sub) = &args.subject {
        r.subject = Some(sub.clone());
        r.issued_before = args.issued_before.clone();
    } else if let Some(kid) = &args.key_id {
        r.key_id = Some(kid.clone());
    } else if let Some(t) = &args.jwk_thumbprint {
        use base64::Engine;
        let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(t);
        if t.len() != 43 || !decoded.is_ok_and(|d| d.len() == 32) {
            bail!(
                "--jwk-thumbprint must be an RFC 7638 thumbprint: the base64url SHA-256 of the key, 43 characters without padding"
            );
        }
        r.jwk_thumbprint = Some(t.clone());
    } else if let Some(id) = &args.api_key_id {
        r.api_key_id = Some(api_key_id(id)?);
    } else if let Some(t) = &args.token {
        if t != "-" {
            bail!(
                "--token takes `-` and reads the token from stdin, so it never lands in shell history"
            );
        }
        let mut token = String::new();
        let mut stdin = stdin;
        stdin
            .read_to_string(&mut token)
            .context("reading the token from stdin")?;
        let token = token.trim();
        let token = token.strip_prefix("Bearer ").unwrap_or(token);
        if token.is_empty() {
            bail!("no token on stdin");
        }
        r.token_sha256 = Some(hex_sha256(token));
        if r.expires_at.is_none()
            && let Some(exp) = jwt_exp(token)
        {
            r.expires_at = k8s_openapi::jiff::Timestamp::from_second(exp)
                .ok()
                .map(|t| t.to_string());
        }
    }
    for (field, value) in [
        ("issuedBefore", &r.issued_before),
        ("expiresAt", &r.expires_at),
    ] {
        if let Some(v) = value
            && v.parse::<k8s_openapi::jiff::Timestamp>().is_err()
        {
            bail!("{field} must be an RFC 3339 time such as 2026-01-31T12:00:00Z, not {v:?}");
        }
    }
    for v in portcullis_api::validate::token_policy(&TokenPolicy::new(
        "x",
        portcullis_api::TokenPolicySpec {
            issuers: vec![],
            scope_claim: None,
            clock_skew: None,
            max_token_lifetime: None,
            required_claims: vec![],
            forward_claims: Default::default(),
            api_keys: None,
            revocations: vec![r.clone()],
            identity_events: None,
            llm_budgets: vec![],
            rate_limits: vec![],
        },
    )) {
        if v.path.contains("revocations") {
            bail!("{v}");
        }
    }
    Ok(r)
}

/// Checks an `--api-key-id`: 12 base62 characters. A whole key is refused with a hint, so
/// it is not passed around (and kept in shell history) any further.
fn api_key_id(id: &str) -> anyhow::Result<String> {
    use portcullis_policy::apikey;
    if apikey::ApiKey::looks_like(id) {
        bail!(
            "--api-key-id takes the key's id, not the key: `portcullis apikey id -` reads the key from stdin and prints its id"
        );
    }
    if id.len() != apikey::ID_LEN || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        bail!(
            "--api-key-id must be {} letters and digits (the characters after {} in the key), not {id:?}",
            apikey::ID_LEN,
            apikey::PREFIX
        );
    }
    Ok(id.to_owned())
}

fn hex_sha256(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The `exp` of a JWT, read without trusting it (it only bounds how long the entry lives).
fn jwt_exp(token: &str) -> Option<i64> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()?
        .get("exp")?
        .as_i64()
}

pub async fn revoke(args: RevokeArgs) -> anyhow::Result<()> {
    let (ns, name) = args
        .policy
        .split_once('/')
        .context("--policy is namespace/name")?;
    let entry = revocation(&args, std::io::stdin())?;
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let api: Api<TokenPolicy> = Api::namespaced(client.clone(), ns);
    let policy = api
        .get(name)
        .await
        .with_context(|| format!("reading TokenPolicy {ns}/{name}"))?;
    if policy.spec.revocations.contains(&entry) {
        eprintln!("already revoked in TokenPolicy {ns}/{name}");
        return Ok(());
    }
    // An append, not a server-side apply: `spec.revocations` is an atomic list, and an
    // apply would take the whole list over from whoever wrote it (kubectl users).
    let ops = if policy.spec.revocations.is_empty() {
        serde_json::json!([
            {"op": "test", "path": "/metadata/resourceVersion", "value": policy.resource_version()},
            {"op": "add", "path": "/spec/revocations", "value": [entry]},
        ])
    } else {
        serde_json::json!([{"op": "add", "path": "/spec/revocations/-", "value": entry}])
    };
    let req = http::Request::patch(format!(
        "/apis/portcullis.dev/v1alpha1/namespaces/{ns}/tokenpolicies/{name}"
    ))
    .header(http::header::CONTENT_TYPE, "application/json-patch+json")
    .body(serde_json::to_vec(&ops)?)?;
    let _: serde_json::Value = client
        .request(req)
        .await
        .with_context(|| format!("patching TokenPolicy {ns}/{name}"))?;
    let what = entry
        .jti
        .as_ref()
        .map(|j| format!("jti {j}"))
        .or(entry
            .token_sha256
            .as_ref()
            .map(|h| format!("token sha256:{}", &h[..12])))
        .or(entry.subject.as_ref().map(|s| format!("subject {s}")))
        .or(entry.key_id.as_ref().map(|k| format!("key {k}")))
        .or(entry
            .jwk_thumbprint
            .as_ref()
            .map(|t| format!("key with thumbprint {t}")))
        .or(entry.api_key_id.as_ref().map(|k| format!("API key {k}")))
        .unwrap_or_default();
    eprintln!(
        "revoked {what} in TokenPolicy {ns}/{name}{}",
        entry
            .expires_at
            .as_ref()
            .map(|e| format!(" (until {e})"))
            .unwrap_or_default()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> RevokeArgs {
        RevokeArgs {
            policy: "shop/default".into(),
            jti: None,
            subject: None,
            issued_before: None,
            key_id: None,
            jwk_thumbprint: None,
            token: Some("-".into()),
            api_key_id: None,
            expires_at: None,
        }
    }

    #[test]
    fn token_from_stdin_stores_only_its_hash_and_exp() {
        use base64::Engine;
        let b = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let token = format!(
            "{}.{}.c2ln",
            b(r#"{"alg":"RS256"}"#),
            b(r#"{"exp":1900000000,"sub":"a"}"#)
        );
        let r = revocation(&args(), format!("{token}\n").as_bytes()).unwrap();
        assert_eq!(r.token_sha256.as_deref(), Some(hex_sha256(&token).as_str()));
        assert_eq!(r.expires_at.as_deref(), Some("2030-03-17T17:46:40Z"));
        let stored = serde_json::to_string(&r).unwrap();
        assert!(
            !stored.contains(&token[..20]),
            "the token itself must not be stored"
        );
    }

    #[test]
    fn opaque_token_has_no_expiry_and_bad_input_is_refused() {
        let r = revocation(&args(), "opaque-token-value".as_bytes()).unwrap();
        assert!(r.expires_at.is_none() && r.token_sha256.is_some());
        assert!(revocation(&args(), "".as_bytes()).is_err());
        let mut a = args();
        a.token = Some("abc".into());
        assert!(revocation(&a, "".as_bytes()).is_err());
        let mut a = args();
        a.token = None;
        a.subject = Some("alice".into());
        a.issued_before = Some("yesterday".into());
        let e = revocation(&a, "".as_bytes()).unwrap_err().to_string();
        assert!(e.contains("issuedBefore must be an RFC 3339 time"), "{e}");
    }

    #[test]
    fn jwk_thumbprint_is_checked_and_stored() {
        // RFC 7638 section 3.1's example key.
        let mut a = args();
        a.token = None;
        a.jwk_thumbprint = Some("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs".into());
        let r = revocation(&a, "".as_bytes()).unwrap();
        assert_eq!(r.jwk_thumbprint, a.jwk_thumbprint);
        assert!(r.token_sha256.is_none() && r.key_id.is_none());
        for bad in [
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9X",
            "NzbLsXh8uDCcd+6MNwXF4W/7noWXFZAfHkxZsRGC9Xs",
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs=",
            // The last character carries two unused bits: this one sets them.
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xt",
        ] {
            a.jwk_thumbprint = Some(bad.into());
            assert!(revocation(&a, "".as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn api_key_id_is_checked_and_stored() {
        let mut a = args();
        a.token = None;
        a.api_key_id = Some("3fZk9QxW2bLm".into());
        let r = revocation(&a, "".as_bytes()).unwrap();
        assert_eq!(r.api_key_id.as_deref(), Some("3fZk9QxW2bLm"));
        assert!(r.token_sha256.is_none() && r.key_id.is_none() && r.jti.is_none());
        let stored = serde_json::to_value(&r).unwrap();
        assert_eq!(stored["apiKeyId"], "3fZk9QxW2bLm");

        for bad in [
            "3fZk9QxW2bL",
            "3fZk9QxW2bLmX",
            "3fZk9QxW-bLm",
            "3fZk9QxW2bL\u{e9}",
            "",
        ] {
            a.api_key_id = Some(bad.into());
            let e = revocation(&a, "".as_bytes()).unwrap_err().to_string();
            assert!(e.contains("12 letters and digits"), "{bad}: {e}");
        }
        // A whole key is refused with a pointer to `apikey id`.
        let key = portcullis_policy::apikey::generate(&[9u8; 128]).unwrap();
        a.api_key_id = Some(key);
        let e = revocation(&a, "".as_bytes()).unwrap_err().to_string();
        assert!(e.contains("portcullis apikey id"), "{e}");
    }

    #[test]
    fn revoke_takes_exactly_one_selector() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            revoke: RevokeArgs,
        }
        let parsed = Cli::try_parse_from([
            "revoke",
            "--policy",
            "shop/p",
            "--api-key-id",
            "3fZk9QxW2bLm",
        ])
        .unwrap();
        assert_eq!(parsed.revoke.api_key_id.as_deref(), Some("3fZk9QxW2bLm"));
        assert!(
            Cli::try_parse_from([
                "revoke",
                "--policy",
                "shop/p",
                "--api-key-id",
                "3fZk9QxW2bLm",
                "--jti",
                "j"
            ])
            .is_err()
        );
        assert!(Cli::try_parse_from(["revoke", "--policy", "shop/p"]).is_err());
    }
}
