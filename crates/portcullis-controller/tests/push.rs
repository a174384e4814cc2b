//! The push protocol over real sockets: a real push server, real proxies (the same code as
//! `portcullis proxy`) serving real traffic to a real upstream. What the controller does:
//! full snapshot then deltas, small revocation deltas, resumption, acknowledgements and
//! their metrics, refusing unauthenticated streams.

mod common;

use std::sync::Arc;

use http::StatusCode;
use portcullis_api::push::ServerMessage;
use portcullis_controller::Publisher;

use common::{
    SHARED, controller_on, proxy, raw_subscribe, sources, status_of, token, upstream, wait_for,
};

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_snapshot_then_revocation_delta_on_every_proxy() {
    let up = upstream().await;
    let publisher = Arc::new(Publisher::new());
    publisher.publish(sources(up, &[], 0), 10);
    let ctl = controller_on("127.0.0.1:0".parse().unwrap(), publisher.clone()).await;
    let proxies = vec![
        proxy(ctl.addr, None).await,
        proxy(ctl.addr, None).await,
        proxy(ctl.addr, None).await,
    ];
    let t = token("victim");
    for p in &proxies {
        wait_for("full snapshot", async || {
            p.running.config.info().version == 10
        })
        .await;
        assert_eq!(status_of(p, &t).await, StatusCode::OK);
    }
    wait_for("acks", async || ctl.registry.programmed(10) == (3, 3)).await;

    // A revocation: every proxy refuses the token, and says so.
    let v = ctl
        .publisher
        .publish(sources(up, &["victim"], 0), 0)
        .unwrap();
    assert_eq!(v, 11);
    for p in &proxies {
        wait_for("revocation", async || {
            status_of(p, &t).await == StatusCode::UNAUTHORIZED
        })
        .await;
        assert_eq!(p.running.config.info().version, 11);
    }
    wait_for("acks of the delta", async || {
        ctl.registry.programmed(11) == (3, 3)
    })
    .await;
    // Propagation latency is labelled by what carried the version.
    let m = String::from_utf8(ctl.metrics.render()).unwrap();
    for (kind, n) in [("full", 3), ("revocation", 3)] {
        let line =
            format!("portcullis_controller_push_latency_seconds_count{{message=\"{kind}\"}} {n}");
        assert!(m.contains(&line), "{line} in:\n{m}");
    }
    let _ = ctl.stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_deltas_stay_small_and_resume_sends_only_deltas() {
    let up = upstream().await;
    let publisher = Arc::new(Publisher::new());
    publisher.publish(sources(up, &[], 300), 100);
    let ctl = controller_on("127.0.0.1:0".parse().unwrap(), publisher.clone()).await;
    publisher.publish(sources(up, &["a"], 300), 0);
    publisher.publish(sources(up, &["a", "b"], 300), 0);

    // New subscriber: one full snapshot.
    let (status, msgs) = raw_subscribe(ctl.addr, Some(&format!("Bearer {SHARED}")), None, 1).await;
    assert_eq!(status, StatusCode::OK);
    let ServerMessage::Full {
        version,
        sources: full,
    } = &msgs[0]
    else {
        panic!("expected full, got {msgs:?}")
    };
    assert_eq!((*version, full.objects.len()), (102, 302));
    let full_size = serde_json::to_vec(&msgs[0]).unwrap().len();

    // Resume from 100: two revocation-only deltas, whose size does not depend on the 301 routes.
    let (_, msgs) = raw_subscribe(ctl.addr, Some(&format!("Bearer {SHARED}")), Some(100), 2).await;
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    for (m, expect) in msgs.iter().zip([(100, 101, "a"), (101, 102, "b")]) {
        let ServerMessage::Delta {
            from,
            version,
            changes,
        } = m
        else {
            panic!("expected delta, got {m:?}")
        };
        assert_eq!((*from, *version), (expect.0, expect.1));
        assert!(changes.upserts.is_empty() && changes.deletes.is_empty());
        assert_eq!(changes.revocations.len(), 1);
        assert_eq!(
            changes.revocations[0].added[0].jti.as_deref(),
            Some(expect.2)
        );
        let size = serde_json::to_vec(m).unwrap().len();
        assert!(size < 400, "revocation delta is {size} bytes");
        assert!(size * 100 < full_size, "delta {size} vs full {full_size}");
    }
    // Resume from the current version: nothing to send.
    let (_, msgs) = raw_subscribe(ctl.addr, Some(&format!("Bearer {SHARED}")), Some(102), 1).await;
    assert!(msgs.is_empty(), "{msgs:?}");
    // Resume from a version this replica does not know (ahead of it): nothing older is sent.
    let (_, msgs) = raw_subscribe(ctl.addr, Some(&format!("Bearer {SHARED}")), Some(5000), 1).await;
    assert!(
        msgs.is_empty(),
        "a proxy ahead of the controller got {msgs:?}"
    );
    // Resume from a version older than the history: a full snapshot.
    let (_, msgs) = raw_subscribe(ctl.addr, Some(&format!("Bearer {SHARED}")), Some(7), 1).await;
    assert!(matches!(msgs[0], ServerMessage::Full { version: 102, .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_streams_are_refused() {
    let publisher = Arc::new(Publisher::new());
    publisher.publish(sources("127.0.0.1:1".parse().unwrap(), &[], 0), 1);
    let ctl = controller_on("127.0.0.1:0".parse().unwrap(), publisher).await;
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Basic cHJveHk6cHc="),
        Some(SHARED),
    ] {
        let (status, msgs) = raw_subscribe(ctl.addr, auth, None, 1).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert!(msgs.is_empty());
    }
    assert_eq!(ctl.registry.connected(), 0);
}
