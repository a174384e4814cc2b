//! Propagation inside one process: a revocation published -> applied by N subscribed
//! proxies (the real subscriber: HTTP/2 stream over loopback TCP, delta, compile, atomic
//! swap). Prints p50/p99 per proxy and for "every proxy has it".
//!
//! `cargo bench -p portcullis-controller --bench propagation` (PROXIES=50,500 ROUNDS=30).

use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_api::push::{SourceObject, SourceSet};
use portcullis_api::{ApiRoute, TokenPolicy};
use portcullis_controller::push::{PushState, serve};
use portcullis_controller::{Metrics, ProxyAuth, ProxyRegistry, Publisher};
use portcullis_proxy::LiveConfig;
use portcullis_proxy::subscriber::{Subscriber, SubscriberOptions};
use serde_json::json;

fn sources(revoked: usize) -> SourceSet {
    let mut set = SourceSet::default();
    let policy: TokenPolicy = serde_json::from_value(json!({
        "apiVersion": "portcullis.dev/v1alpha1", "kind": "TokenPolicy",
        "metadata": {"name": "default", "namespace": "bench"},
        "spec": {
            "issuers": [{"issuer": "https://issuer.test", "audiences": ["api"], "algorithms": ["EdDSA"],
                         "jwks": {"inline": {"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}}}],
            "revocations": (0..revoked).map(|i| json!({"jti": format!("jti-{i}")})).collect::<Vec<_>>(),
        }
    }))
    .unwrap();
    set.upsert(SourceObject::TokenPolicy(policy));
    for i in 0..20 {
        let route: ApiRoute = serde_json::from_value(json!({
            "apiVersion": "portcullis.dev/v1alpha1", "kind": "ApiRoute",
            "metadata": {"name": format!("r{i}"), "namespace": "bench"},
            "spec": {"hosts": [format!("h{i}.example.com")], "policyRef": {"name": "default"}, "backend": {"url": "http://127.0.0.1:9"},
                     "rules": [{"match": {"pathPrefix": "/"}, "requiredScopes": ["read"]}]}
        }))
        .unwrap();
        set.upsert(SourceObject::ApiRoute(route));
    }
    set
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

async fn run(proxies: usize, rounds: usize) {
    let publisher = Arc::new(Publisher::new());
    publisher.publish(sources(0), 1);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let registry = Arc::new(ProxyRegistry::default());
    let state = Arc::new(PushState {
        publisher: publisher.clone(),
        registry: registry.clone(),
        auth: ProxyAuth::shared("bench"),
        metrics: Metrics::new(),
        heartbeat: Duration::from_secs(5),
        quota: Arc::new(portcullis_controller::quota::QuotaService::new(
            Metrics::new(),
        )),
        events: Arc::new(portcullis_controller::events::EventService::new(
            None,
            &prometheus::Registry::new(),
        )),
    });
    let (_stop, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(serve(listener, state, rx));
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "bench").unwrap();
    let mut configs = Vec::new();
    for i in 0..proxies {
        let metrics = portcullis_proxy::Metrics::new();
        let config = Arc::new(LiveConfig::new(metrics.clone()));
        let opts = SubscriberOptions {
            controller: format!("http://{addr}").parse().unwrap(),
            token_file: Some(token.clone()),
            name: format!("p{i}"),
            state_file: None,
            compile: Default::default(),
            ca_file: None,
            client_cert: None,
            server_name: None,
        };
        tokio::spawn(Subscriber::new(opts, config.clone(), metrics).run());
        configs.push(config);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while registry.programmed(1).0 < proxies {
        assert!(Instant::now() < deadline, "proxies did not connect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut per_proxy = Vec::new();
    let mut all = Vec::new();
    for round in 1..=rounds {
        let t0 = Instant::now();
        let v = publisher.publish(sources(round), 0).unwrap();
        let mut seen = vec![None; proxies];
        while seen.iter().any(Option::is_none) {
            for (i, c) in configs.iter().enumerate() {
                if seen[i].is_none() && c.info().version >= v {
                    seen[i] = Some(t0.elapsed());
                }
            }
            tokio::task::yield_now().await;
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "round {round} did not propagate"
            );
        }
        let times: Vec<Duration> = seen.into_iter().flatten().collect();
        all.push(*times.iter().max().unwrap());
        per_proxy.extend(times);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "{proxies:>4} proxies, {rounds} revocations: per proxy p50 {:>8.2?} p99 {:>8.2?} | all proxies p50 {:>8.2?} p99 {:>8.2?}",
        pct(&mut per_proxy, 0.5),
        pct(&mut per_proxy, 0.99),
        pct(&mut all, 0.5),
        pct(&mut all, 0.99)
    );
}

fn main() {
    let counts: Vec<usize> = std::env::var("PROXIES")
        .unwrap_or_else(|_| "50,500".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let rounds = std::env::var("ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    for n in counts {
        rt.block_on(run(n, rounds));
    }
}
