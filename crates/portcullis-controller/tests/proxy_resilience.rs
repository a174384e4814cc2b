//! What a proxy does when its controller goes away, comes back behind it, or is not there
//! at all when the proxy starts: it keeps enforcing its last config, never applies an
//! older one, and serves from its state file at once.
//!
//! This is the proxy's subscriber's behaviour, tested here against the real push server
//! because the proxy crate has no dev-dependency on the controller. It belongs in
//! `crates/portcullis-proxy/tests/` once it has one.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use portcullis_controller::Publisher;

use common::{controller_on, proxy, sources, status_of, token, upstream, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_restart_stale_versions_and_state_file() {
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("proxy-state.json");
    let publisher = Arc::new(Publisher::new());
    publisher.publish(sources(up, &["victim"], 0), 50);
    let ctl = controller_on("127.0.0.1:0".parse().unwrap(), publisher).await;
    let addr = ctl.addr;
    let p = proxy(addr, Some(state.clone())).await;
    let t = token("victim");
    let ok = token("fine");
    wait_for("first config", async || {
        p.running.config.info().version == 50
    })
    .await;
    assert_eq!(status_of(&p, &t).await, StatusCode::UNAUTHORIZED);

    // The controller goes away: the proxy keeps enforcing, revocation included.
    let _ = ctl.stop.send(true);
    drop(ctl);
    wait_for("disconnect seen", async || {
        p.running.metrics.controller_connected.get() == 0
    })
    .await;
    assert_eq!(status_of(&p, &t).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status_of(&p, &ok).await, StatusCode::OK);

    // A controller comes back on the same address with an OLDER view (version 40, no
    // revocation): the proxy must not apply it.
    let stale = Arc::new(Publisher::new());
    stale.publish(sources(up, &[], 0), 40);
    let ctl2 = controller_on(addr, stale.clone()).await;
    wait_for("reconnect", async || ctl2.registry.connected() == 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(p.running.config.info().version, 50);
    assert_eq!(
        status_of(&p, &t).await,
        StatusCode::UNAUTHORIZED,
        "a stale controller un-applied a revocation"
    );

    // It catches up past the proxy's version: the proxy follows.
    stale.publish(sources(up, &["victim", "other"], 0), 60);
    wait_for("catch up", async || p.running.config.info().version == 60).await;
    assert_eq!(status_of(&p, &t).await, StatusCode::UNAUTHORIZED);

    // A proxy restarted with its state file serves at once, before any controller answers.
    let _ = ctl2.stop.send(true);
    drop(ctl2);
    p.running.shutdown();
    let nowhere: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let restarted = proxy(nowhere, Some(state)).await;
    assert_eq!(restarted.running.config.info().version, 60);
    assert!(restarted.running.config.is_loaded());
    assert_eq!(status_of(&restarted, &t).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status_of(&restarted, &ok).await, StatusCode::OK);
}
