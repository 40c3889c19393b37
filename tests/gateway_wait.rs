//! `GatewayCache::wait_for_revision` against a real node: once it returns for the revision
//! of an acknowledged revocation, every lookup through the cache reports the session revoked.

mod common;

use std::time::Duration;

use common::*;
use sessiond::gateway::{GatewayCache, GatewayConfig};
use sessiond::proto::v1::*;

#[tokio::test]
async fn after_waiting_for_the_revocation_revision_every_lookup_reflects_it() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestNode::start(test_config(dir.path())).await;
    let cache = GatewayCache::new(t.client.clone(), GatewayConfig::default());
    let follower = cache.follow(t.client.clone());
    let mut sessions = Vec::new();
    for _ in 0..3 {
        let created = t
            .client
            .create_session(create_request("acme", "alice"))
            .await
            .unwrap();
        let sid = created.session.unwrap().session_id;
        let cached = cache.lookup("acme", &sid).await.unwrap();
        assert_eq!(
            cached.session.as_ref().unwrap().status(),
            SessionStatus::Active
        );
        sessions.push(sid);
    }
    for sid in &sessions {
        let revoked = t
            .client
            .revoke(RevokeRequest {
                tenant: "acme".into(),
                scope: RevokeScope::Session as i32,
                id: sid.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        cache
            .wait_for_revision(revoked.revision, Duration::from_secs(20))
            .await
            .expect("the stream reaches the revocation");
        assert!(cache.stats().revision >= revoked.revision);
        let answer = cache.lookup("acme", sid).await.unwrap();
        assert!(
            answer.is_revoked(),
            "lookup right after the wait is revoked"
        );
    }
    assert!(
        cache
            .wait_for_revision(u64::MAX, Duration::from_millis(100))
            .await
            .is_err(),
        "a revision the cluster never reached times out"
    );
    follower.abort();
    t.stop().await;
}
