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
}

/// `portcullis proxy`.
#[derive(clap::Args, Debug)]
pub struct ProxyArgs {
    /// How long a request whose token has an unknown `kid` (from an issuer whose keys are
    /// fetched) waits for the controller to refetch before it is refused.
    #[arg(long, default_value = "1s", value_parser = crate::duration)]
    pub unknown_kid_hold: std::time::Duration,
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
}

/// `portcullis revoke`.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("selector").required(true).args(["jti", "subject", "key_id", "token"])))]
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
    /// Revoke every token signed with this key ID.
    #[arg(long)]
    pub key_id: Option<String>,
    /// `-`: read a token from stdin; only its SHA-256 (and, for a JWT, its exp as
    /// expiresAt) is stored.
    #[arg(long)]
    pub token: Option<String>,
    /// RFC 3339 instant after which the entry is pruned.
    #[arg(long)]
    pub expires_at: Option<String>,
}

pub async fn controller(args: ControllerArgs) -> anyhow::Result<()> {
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
    let (shutdown_tx, shutdown) = tokio::sync::watch::channel(false);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let metrics_listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("binding {}", args.metrics_listen))?;
    let state = Arc::new(push::PushState {
        publisher: publisher.clone(),
        registry: registry.clone(),
        auth,
        metrics: metrics.clone(),
        heartbeat: args.heartbeat,
    });
    eprintln!(
        "portcullis controller {identity}: push endpoint on {}, metrics on {}",
        listener.local_addr()?,
        metrics_listener.local_addr()?
    );
    let server = tokio::spawn(push::serve(listener, state.clone(), shutdown.clone()));
    tokio::spawn(push::serve_metrics(
        metrics_listener,
        state,
        shutdown.clone(),
    ));
    let opts = cluster::ControllerOptions {
        lease_namespace: args.lease_namespace,
        lease_name: args.lease_name,
        identity,
        lease_duration: args.lease_duration,
        prune_interval: args.prune_interval,
        ..Default::default()
    };
    let ctl = tokio::spawn(cluster::run(
        client, opts, publisher, registry, metrics, shutdown,
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
        unknown_kid_hold: args.unknown_kid_hold,
        listen: args.listen,
        admin: args.admin,
        tls: args.tls_cert.zip(args.tls_key),
        limits: Default::default(),
        subscriber: portcullis_proxy::subscriber::SubscriberOptions {
            controller: args.controller,
            token_file: args.token_file,
            name: args.name,
            state_file: args.state_file,
            compile: Default::default(),
            ca_file: args.controller_ca,
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
            revocations: vec![r.clone()],
        },
    )) {
        if v.path.contains("revocations") {
            bail!("{v}");
        }
    }
    Ok(r)
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
            token: Some("-".into()),
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
}
