//! Snapshot installs seen from outside: a revocation subscriber on a follower that catches
//! up by snapshot misses nothing; subscribers attached during a stream of revocations miss
//! nothing at the backlog-to-live handoff; a learner killed with SIGKILL at random points
//! of receiving and installing snapshots restarts and catches up with no operator; the
//! snapshot schedule waits for the log to reach its share of the snapshot's size.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::TestCluster;
use common::process::{status, NodeFiles, FAST_RAFT};
use common::*;
use sessiond::client::Client;
use sessiond::config::Config;
use sessiond::proto::v1::cluster_client::ClusterClient;
use sessiond::proto::v1::watch_revocations_response::Kind;
use sessiond::proto::v1::*;
use tonic::Streaming;

async fn subscribe(client: &Client, from_revision: u64) -> Streaming<WatchRevocationsResponse> {
    client
        .watch_revocations(WatchRevocationsRequest {
            from_revision,
            ..Default::default()
        })
        .await
        .expect("subscribed")
}

/// What one subscriber received: sessions revoked per revision, and the last progress.
#[derive(Debug, Default)]
struct Received {
    revoked: BTreeMap<u64, u64>,
    progress: u64,
    ended: Option<Kind>,
}

/// Reads `stream` until a progress message reaches `until` (or the stream ends), checking
/// that no progress message claims a revision in `expected` that was not delivered.
async fn read_until(
    stream: &mut Streaming<WatchRevocationsResponse>,
    until: u64,
    expected: Option<&BTreeMap<u64, u64>>,
    into: &mut Received,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while into.progress < until {
        let next = tokio::time::timeout_at(deadline, stream.message())
            .await
            .expect("subscriber made progress in time");
        match next.expect("stream ok").and_then(|m| m.kind) {
            Some(Kind::Events(b)) => {
                *into.revoked.entry(b.revision).or_default() += b.events.len() as u64;
            }
            Some(Kind::Progress(p)) => {
                assert!(p.revision >= into.progress, "progress went backwards");
                if let Some(expected) = expected.filter(|_| p.revision > into.progress) {
                    for (revision, count) in expected.range(into.progress + 1..=p.revision) {
                        assert_eq!(
                            into.revoked.get(revision),
                            Some(count),
                            "progress {} claims revision {revision}, not (fully) delivered",
                            p.revision
                        );
                    }
                }
                into.progress = p.revision;
            }
            Some(end) => {
                into.ended = Some(end);
                return;
            }
            None => return,
        }
    }
}

/// Creates `n` sessions through `client`; returns their ids.
async fn create_sessions(client: &Client, tenant: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let r = client
            .create_session(create_request(tenant, &format!("user-{i}")))
            .await
            .unwrap();
        ids.push(r.session.unwrap().session_id);
    }
    ids
}

/// Revokes each session; returns revision → sessions revoked.
async fn revoke_each(client: &Client, tenant: &str, ids: &[String]) -> BTreeMap<u64, u64> {
    let mut revoked = BTreeMap::new();
    for id in ids {
        let r = client.revoke(revoke_session(tenant, id)).await.unwrap();
        assert_eq!(r.revoked_count, 1);
        *revoked.entry(r.revision).or_default() += 1;
    }
    revoked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscriber_on_a_lagging_follower_gets_every_revocation_across_a_snapshot_install() {
    let cluster = TestCluster::start(3, |c| {
        c.raft.snapshot_logs_since_last = 20;
        c.raft.max_in_snapshot_log_to_keep = 0;
        c.watch.progress_interval_ms = 100;
    })
    .await;
    let leader = cluster.wait_for_leader(&[1, 2, 3]).await;
    let follower = if leader == 1 { 2 } else { 1 };
    let writer = cluster.nodes[&leader].client.clone();
    let ids = create_sessions(&writer, "t", 60).await;
    let mut expected = revoke_each(&writer, "t", &ids[..5]).await;

    let mut stream = subscribe(&cluster.nodes[&follower].client, 0).await;
    let mut received = Received::default();
    let first = *expected.keys().last().unwrap();
    read_until(&mut stream, first, Some(&expected), &mut received).await;

    let follower_raft = cluster.nodes[&follower].node.node().raft().clone();
    let snapshot_before = follower_raft.metrics().borrow().snapshot;
    cluster.isolate(follower, true);
    expected.extend(revoke_each(&writer, "t", &ids[5..]).await);
    create_sessions(&writer, "t", 30).await;
    let last = *expected.keys().last().unwrap();
    let leader_raft = cluster.nodes[&leader].node.node().raft().clone();
    // Snapshots are built and the log purged behind them in the background, a little
    // after the writes.
    let purged = leader_raft
        .wait(Some(Duration::from_secs(30)))
        .metrics(
            |m| m.purged.map_or(0, |p| p.index) > first,
            "the leader purged the entries the follower misses",
        )
        .await;
    assert!(
        purged.is_ok(),
        "the leader purged the entries the follower misses (up to {first})"
    );
    cluster.isolate(follower, false);
    follower_raft
        .wait(Some(Duration::from_secs(60)))
        .metrics(
            |m| m.snapshot != snapshot_before && m.last_applied.map_or(0, |a| a.index) >= last,
            "the follower caught up by snapshot",
        )
        .await
        .expect("the follower installed a snapshot and caught up");

    read_until(&mut stream, last, Some(&expected), &mut received).await;
    match received.ended {
        None => assert_eq!(
            received.revoked, expected,
            "every revocation after the resume point, exactly once"
        ),
        Some(Kind::ResyncRequired(_)) => {}
        Some(other) => panic!("unexpected end of stream: {other:?}"),
    }
    cluster.stop().await;
}

/// Creates sessions one at a time on a one-node cluster configured by `adjust`: first
/// without pause until a snapshot covers 200 entries, then 100 more, 20 ms apart. Returns
/// how many snapshots were built during the slow part, and the index of the one before it.
async fn builds_while_the_log_grows_slowly(adjust: fn(&mut Config)) -> (usize, u64) {
    let cluster = TestCluster::start(1, adjust).await;
    let client = cluster.nodes[&1].client.clone();
    let raft = cluster.nodes[&1].node.node().raft().clone();
    let snapshot_index = || raft.metrics().borrow().snapshot.map_or(0, |s| s.index);
    let mut created = 0;
    while snapshot_index() < 200 {
        assert!(
            created < 3_000,
            "no snapshot covering 200 entries after {created} creates"
        );
        create_sessions(&client, "t", 10).await;
        created += 10;
    }
    let before = snapshot_index();
    let (mut last, mut builds) = (before, 0);
    for _ in 0..100 {
        create_sessions(&client, "t", 1).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = snapshot_index();
        if now != last {
            builds += 1;
            last = now;
        }
    }
    cluster.stop().await;
    (builds, before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_schedule_waits_for_the_log_to_reach_its_share_of_the_snapshot() {
    // Snapshots every 20 entries once the log since the last one takes 400 % of its file's
    // size: 100 creates take a fraction of what 200 sessions take in a snapshot, far from
    // due. The entry count alone builds every 20 of them.
    let (deferred, covered) = builds_while_the_log_grows_slowly(|c| {
        c.raft.snapshot_logs_since_last = 20;
        c.raft.snapshot_log_percent = 400;
    })
    .await;
    assert_eq!(
        deferred, 0,
        "a snapshot was built after 100 entries, with the last one covering {covered}"
    );
    let (by_count, _) = builds_while_the_log_grows_slowly(|c| {
        c.raft.snapshot_logs_since_last = 20;
        c.raft.snapshot_log_percent = 0;
    })
    .await;
    assert!(
        by_count >= 2,
        "without the byte rule, 100 entries built {by_count} snapshots"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribers_attached_during_a_stream_of_revocations_miss_no_revision() {
    let cluster = TestCluster::start(1, |c| c.watch.progress_interval_ms = 50).await;
    let client = cluster.nodes[&1].client.clone();
    let ids = create_sessions(&client, "t", 240).await;
    let acknowledged = Arc::new(AtomicU64::new(0));
    let revoking = {
        let (client, acknowledged) = (client.clone(), acknowledged.clone());
        tokio::spawn(async move {
            let mut revoked = BTreeMap::new();
            for id in &ids {
                let r = client.revoke(revoke_session("t", id)).await.unwrap();
                *revoked.entry(r.revision).or_default() += r.revoked_count;
                acknowledged.store(r.revision, Ordering::Release);
            }
            revoked
        })
    };
    let mut subscribers = Vec::new();
    while !revoking.is_finished() {
        let from = acknowledged.load(Ordering::Acquire);
        let mut stream = subscribe(&client, from).await;
        let mut received = Received::default();
        let until = from.max(1) + 3;
        read_until(&mut stream, until, None, &mut received).await;
        subscribers.push((from, received));
    }
    let expected = revoking.await.unwrap();
    assert!(
        subscribers.len() >= 5,
        "only {} subscribers",
        subscribers.len()
    );
    for (from, received) in &subscribers {
        assert!(received.ended.is_none(), "subscriber from {from} ended");
        let want: BTreeMap<u64, u64> = expected
            .range(from + 1..=received.progress)
            .map(|(r, n)| (*r, *n))
            .collect();
        let got: BTreeMap<u64, u64> = received
            .revoked
            .range(..=received.progress)
            .map(|(r, n)| (*r, *n))
            .collect();
        assert_eq!(got, want, "subscriber from revision {from}");
    }
    cluster.stop().await;
}

/// Fast timers, and a snapshot every 40 entries with the log purged up to it, so that a
/// node that falls behind catches up by snapshot.
fn node_files(root: &Path, id: u64) -> NodeFiles {
    let tail =
        format!("{FAST_RAFT}snapshot_logs_since_last = 40\nmax_in_snapshot_log_to_keep = 0\n");
    NodeFiles::write(root, id, &tail)
}

/// Creates sessions concurrently (one per user) until the leader purged its log past
/// `past`, so that a node behind `past` can only catch up by snapshot.
async fn write_until_purged_past(client: &Client, endpoint: &str, round: usize, past: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut batch = 0;
    loop {
        let mut tasks = Vec::new();
        for i in 0..32 {
            let c = client.clone();
            let user = format!("r{round}-b{batch}-{i}");
            tasks.push(tokio::spawn(async move {
                c.create_session(create_request("t", &user)).await.unwrap()
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        batch += 1;
        let purged = status(endpoint).await.map_or(0, |s| s.purged_index);
        if purged > past && batch >= 4 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the leader did not purge its log"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_learner_killed_at_random_points_of_snapshot_installs_recovers_on_its_own() {
    let root = tempfile::tempdir().unwrap();
    let leader_files = node_files(root.path(), 1);
    let learner_files = node_files(root.path(), 2);
    let _leader = leader_files.spawn();
    let client = connect(&leader_files.endpoint).await;
    write_until_purged_past(&client, &leader_files.endpoint, 0, 0).await;

    let mut learner = Some(learner_files.spawn());
    let mut admin = ClusterClient::connect(leader_files.endpoint.clone())
        .await
        .unwrap();
    // AddLearner answers once the learner caught up; with a 1 ms wait it answers at once
    // (DEADLINE_EXCEEDED, the learner added), and the learner catches up while it is killed.
    let added = admin
        .add_learner(AddLearnerRequest {
            node_id: 2,
            addr: learner_files.peer_addr.clone(),
            timeout_ms: 1,
        })
        .await;
    if let Err(status) = added {
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status}");
    }
    let mut learner_applied = 0;
    for round in 1..=8 {
        let delay = Duration::from_millis(rand::random_range(0..1_500));
        tokio::time::sleep(delay).await;
        if let Some(s) = status(&learner_files.endpoint).await {
            learner_applied = learner_applied.max(s.applied_index);
        }
        learner.take().unwrap().kill9();
        write_until_purged_past(&client, &leader_files.endpoint, round, learner_applied).await;
        learner = Some(learner_files.spawn());
    }

    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (Some(l), Some(s)) = (
            status(&leader_files.endpoint).await,
            status(&learner_files.endpoint).await,
        ) else {
            assert!(Instant::now() < deadline, "a node stopped answering");
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        if s.applied_index == l.applied_index && s.snapshot_index > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the learner did not catch up: leader {} learner {}",
            l.applied_index,
            s.applied_index
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let last = client
        .create_session(create_request("t", "final"))
        .await
        .unwrap();
    let on_learner = connect(&learner_files.endpoint).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = on_learner
            .lookup(LookupRequest {
                consistency: Consistency::Local as i32,
                ..lookup_by_id("t", &last.session.as_ref().unwrap().session_id)
            })
            .await
            .map(|r| r.session.is_some())
            .unwrap_or(false);
        if found {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the learner does not follow the log"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = std::fs::read_to_string(&learner_files.log).unwrap();
    let installs = log.matches("snapshot installed").count();
    let resumed = log.matches("install was interrupted").count()
        + log.matches("newer than the applied state").count();
    eprintln!("learner: {installs} snapshot installs, {resumed} resumed at start");
    assert!(
        installs >= 2,
        "the learner caught up by snapshots ({installs})"
    );
}
