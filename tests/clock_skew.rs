//! Clocks: three real processes, the leader on time, one follower an hour ahead and one an
//! hour behind (the test-only `clock_offset_ms`). Requests reach the skewed followers,
//! which forward their writes. The leader stamps the time every command is applied with, so:
//! the reuse grace window is neither shortened nor lengthened by the node a retry reaches,
//! a session created through the slow node is not born expired (nor collected early), a
//! lookup on the fast node does not report a live session expired, and an event proposed by
//! the fast node does not hold up compaction for an hour.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::process::{add_voters, status, NodeFiles};
use common::*;
use sessiond::client::Client;
use sessiond::proto::v1::watch_revocations_response::Kind;
use sessiond::proto::v1::*;

const HOUR_MS: i64 = 3_600_000;
const GRACE_MS: u64 = 3_000;

/// Starts node `id` with its clock shifted by `offset_ms`; returns it and its files.
fn start(root: &Path, id: u64, offset_ms: i64) -> (ServerProcess, NodeFiles) {
    let tail = format!(
        "clock_offset_ms = {offset_ms}\n\n[sessions]\nreuse_grace_ms = {GRACE_MS}\n\n\
         [gc]\ninterval_ms = 300\nevent_retention_ms = 2000\n\n\
         [raft]\nheartbeat_ms = 100\nelection_timeout_min_ms = 2000\nelection_timeout_max_ms = 4000\n"
    );
    let files = NodeFiles::write(root, id, &tail);
    (files.spawn(), files)
}

async fn leader_id(endpoint: &str) -> u64 {
    status(endpoint).await.unwrap().leader_id
}

async fn create(client: &Client, ttl_ms: i64) -> (Session, String) {
    let mut request = create_request("t", "u");
    request.ttl_ms = ttl_ms;
    let r = client.create_session(request).await.unwrap();
    (r.session.unwrap(), r.refresh_token)
}

async fn rotate(client: &Client, token: &str) -> RotateResponse {
    client.rotate(rotate_request(token)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_skewed_node_decides_no_time() {
    let root = tempfile::tempdir().unwrap();
    let (p1, on_time) = start(root.path(), 1, 0);
    let (p2, ahead) = start(root.path(), 2, HOUR_MS);
    let (p3, behind) = start(root.path(), 3, -HOUR_MS);
    add_voters(&on_time.endpoint, &[(2, &ahead), (3, &behind)]).await;
    let (on_time, ahead, behind) = (on_time.endpoint, ahead.endpoint, behind.endpoint);
    let (c1, c_ahead, c_behind) = (
        connect(&on_time).await,
        connect(&ahead).await,
        connect(&behind).await,
    );

    // Grace not shortened: rotated through the slow node, retried at once through the fast
    // one, the retry gets the same successor (with the proposers' clocks it was 2 h later:
    // a replay, and the family revoked).
    let (_, token) = create(&c_behind, 0).await;
    let first = rotate(&c_behind, &token).await;
    assert_eq!(first.outcome(), RotateOutcome::Rotated);
    let retry = rotate(&c_ahead, &token).await;
    assert_eq!(
        retry.outcome(),
        RotateOutcome::Rotated,
        "a retry is not a replay"
    );
    assert!(retry.retried);
    assert_eq!(retry.refresh_token, first.refresh_token);

    // Grace not lengthened: rotated through the fast node, presented again after the window
    // through the slow one, it is a replay (with the proposers' clocks it was 2 h earlier).
    let (_, token) = create(&c_ahead, 0).await;
    assert_eq!(
        rotate(&c_ahead, &token).await.outcome(),
        RotateOutcome::Rotated
    );
    tokio::time::sleep(Duration::from_millis(GRACE_MS + 1_000)).await;
    assert_eq!(
        rotate(&c_behind, &token).await.outcome(),
        RotateOutcome::ReplayDetected
    );

    // Not born expired, not collected early: 30 minutes of life asked through the slow node
    // (its clock would have made the deadline 30 minutes in the past).
    let (short, _) = create(&c_behind, HOUR_MS / 2).await;
    tokio::time::sleep(Duration::from_secs(2)).await; // several GC rounds
    for client in [&c1, &c_ahead, &c_behind] {
        let found = client
            .lookup(lookup_by_id("t", &short.session_id))
            .await
            .unwrap();
        assert_eq!(found.outcome(), LookupOutcome::Found, "collected early");
        assert_eq!(
            found.session.unwrap().status(),
            SessionStatus::Active,
            "reported expired early"
        );
    }

    // Compaction not held up: an event proposed through the fast node is compacted after
    // the retention (2 s), with every event after it.
    let revoke = |id: &str| RevokeRequest {
        tenant: "t".into(),
        scope: RevokeScope::Session as i32,
        id: id.into(),
        reason: RevocationReason::Admin as i32,
        request_id: String::new(),
    };
    let (a, _) = create(&c1, 0).await;
    let (b, _) = create(&c1, 0).await;
    c_ahead.revoke(revoke(&a.session_id)).await.unwrap();
    let last = c1.revoke(revoke(&b.session_id)).await.unwrap().revision;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut stream = c1
            .watch_revocations(WatchRevocationsRequest::default())
            .await
            .unwrap();
        if let Some(Kind::ResyncRequired(r)) = stream.message().await.unwrap().and_then(|m| m.kind)
        {
            if r.compacted_through >= last {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "an event proposed by the fast node stalled compaction"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    assert_eq!(
        leader_id(&on_time).await,
        1,
        "the on-time node led throughout"
    );
    for p in [p1, p2, p3] {
        p.terminate();
    }
}
