//! The gateway cache contract on a three-node cluster: after a revocation is acknowledged,
//! a cache attached to any node reports the session revoked within a bounded time; replay
//! detection revokes the family in every cache; unknown sessions fall back to the authority
//! and are cached.

mod common;

use std::time::{Duration, Instant};

use common::cluster::TestCluster;
use common::*;
use sessiond::gateway::{GatewayCache, GatewayConfig};
use sessiond::proto::v1::*;

/// Polls `cache` until `session_id` is cached as revoked; returns how long that took.
async fn until_revoked(cache: &GatewayCache, tenant: &str, session_id: &str) -> Duration {
    let start = Instant::now();
    loop {
        if cache
            .cached(tenant, session_id)
            .is_some_and(|c| c.is_revoked())
        {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{session_id} never marked revoked"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn caches_on_every_node_learn_revocations_within_milliseconds() {
    let cluster = TestCluster::start(3, |c| c.sessions.reuse_grace_ms = 0).await;
    let caches: Vec<(GatewayCache, tokio::task::JoinHandle<()>)> = cluster
        .nodes
        .values()
        .map(|n| {
            let cache = GatewayCache::new(n.client.clone(), GatewayConfig::default());
            let follower = cache.follow(n.client.clone());
            (cache, follower)
        })
        .collect();
    let client = cluster.nodes[&1].client.clone();

    // Lookups fall back to the authority once, then hit; unknown ids are cached as such.
    let web = client
        .create_session(create_request("g", "alice"))
        .await
        .unwrap();
    let web_session = web.session.clone().unwrap();
    for (cache, _) in &caches {
        let first = cache.lookup("g", &web_session.session_id).await.unwrap();
        assert_eq!(
            first.session.as_ref().unwrap().status(),
            SessionStatus::Active
        );
        cache.lookup("g", &web_session.session_id).await.unwrap();
        let unknown = cache
            .lookup("g", "sid_AAAAAAAAAAAAAAAAAAAAAA")
            .await
            .unwrap();
        assert!(unknown.session.is_none());
        cache
            .lookup("g", "sid_AAAAAAAAAAAAAAAAAAAAAA")
            .await
            .unwrap();
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses), (2, 2), "{stats:?}");
    }

    // An acknowledged revocation reaches every cache.
    let revoked = client
        .revoke(RevokeRequest {
            tenant: "g".into(),
            scope: RevokeScope::Session as i32,
            id: web_session.session_id.clone(),
            reason: RevocationReason::Logout as i32,
            request_id: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(revoked.revoked_count, 1);
    for (i, (cache, _)) in caches.iter().enumerate() {
        let delay = until_revoked(cache, "g", &web_session.session_id).await;
        println!(
            "cache on node {}: revocation visible {delay:?} after the ack",
            i + 1
        );
        assert!(cache.stats().events_applied >= 1);
    }

    // A replayed refresh token revokes the whole family in every cache.
    let login = client
        .create_session(create_request("g", "bob"))
        .await
        .unwrap();
    let family = login.session.clone().unwrap().family_id;
    let device = client
        .create_session(CreateSessionRequest {
            family_id: family.clone(),
            ..create_request("g", "bob")
        })
        .await
        .unwrap();
    for (cache, _) in &caches {
        let s = cache
            .lookup("g", &device.session.as_ref().unwrap().session_id)
            .await
            .unwrap();
        assert!(!s.is_revoked());
    }
    let rotated = client
        .rotate(rotate_request(&login.refresh_token))
        .await
        .unwrap();
    assert_eq!(rotated.outcome(), RotateOutcome::Rotated);
    let replay = cluster.nodes[&2]
        .client
        .rotate(rotate_request(&login.refresh_token))
        .await
        .unwrap();
    assert_eq!(replay.outcome(), RotateOutcome::ReplayDetected);
    for (i, (cache, _)) in caches.iter().enumerate() {
        for s in [&login, &device] {
            let id = &s.session.as_ref().unwrap().session_id;
            let delay = until_revoked(cache, "g", id).await;
            println!(
                "cache on node {}: replay revocation of {id} visible after {delay:?}",
                i + 1
            );
        }
    }
    for (_, follower) in caches {
        follower.abort();
    }
    cluster.stop().await;
}
