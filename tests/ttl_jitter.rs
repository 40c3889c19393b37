//! TTL jitter: with `sessions.ttl_jitter_pct`, sessions created together get lifetimes spread
//! over the allowed share below the TTL, chosen by the proposer (the expiry is in the
//! command, so every replica stores the same one).

mod common;

use std::collections::BTreeSet;

use common::{create_request, test_config, TestNode};

#[tokio::test]
async fn lifetimes_are_spread_within_the_jitter_bound() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.sessions.ttl_jitter_pct = 20;
    let ttl = config.sessions.default_ttl_ms;
    let node = TestNode::start(config).await;
    let mut lifetimes = BTreeSet::new();
    for i in 0..40 {
        let session = node
            .client
            .create_session(create_request("j", &format!("u{i}")))
            .await
            .expect("created")
            .session
            .expect("a session");
        let lifetime = session.expires_at_ms - session.created_at_ms;
        assert!(
            (ttl - ttl / 5..=ttl).contains(&lifetime),
            "lifetime {lifetime} outside [{}, {ttl}]",
            ttl - ttl / 5
        );
        lifetimes.insert(lifetime);
    }
    assert!(
        lifetimes.len() > 30,
        "only {} distinct lifetimes",
        lifetimes.len()
    );
    node.stop().await;
}
