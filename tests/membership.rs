//! Membership commands tell the truth: AddLearner answers only once the learner holds the
//! leader's log as of the call (here by installing a snapshot, the log having been purged),
//! fails with DEADLINE_EXCEEDED when the learner cannot catch up, and Promote refuses a
//! learner that has not caught up unless forced.

mod common;

use std::time::{Duration, Instant};

use sessiond::config::Config;
use sessiond::proto::v1::*;

use common::cluster::TestCluster;
use common::create_request;

/// Snapshots every 50 entries, keeping no log behind them: a late learner needs a snapshot.
fn purge_early(c: &mut Config) {
    c.raft.snapshot_logs_since_last = 50;
    c.raft.max_in_snapshot_log_to_keep = 0;
}

/// Creates `n` sessions through node 1; returns the last session id.
async fn write(cluster: &TestCluster, n: usize) -> String {
    let mut last = String::new();
    for i in 0..n {
        last = cluster.nodes[&1]
            .client
            .create_session(create_request("m", &format!("user-{i}")))
            .await
            .expect("created")
            .session
            .expect("a session")
            .session_id;
    }
    last
}

/// Node 1's last log index, after waiting until it has purged its log behind a snapshot.
async fn purged_leader_log(cluster: &TestCluster) -> u64 {
    let raft = cluster.nodes[&1].node.node().raft();
    raft.wait(Some(Duration::from_secs(30)))
        .metrics(|m| m.purged.is_some(), "the leader purged its log")
        .await
        .expect("node 1 purged its log behind a snapshot");
    let last = raft.metrics().borrow().last_log_index.unwrap_or(0);
    last
}

fn member(status: &ClusterStatusResponse, id: u64) -> Member {
    status
        .members
        .iter()
        .find(|m| m.node_id == id)
        .cloned()
        .unwrap_or_else(|| panic!("node {id} is not a member: {status:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn add_learner_returns_once_the_learner_installed_a_snapshot_and_holds_the_log() {
    let mut cluster = TestCluster::start(1, purge_early).await;
    let last_session = write(&cluster, 200).await;
    let target = purged_leader_log(&cluster).await;

    cluster.start_node(2, false).await;
    let addr = cluster.nodes[&2].node.peer_addr().to_string();
    let status = cluster
        .admin()
        .await
        .add_learner(AddLearnerRequest {
            node_id: 2,
            addr,
            ..Default::default()
        })
        .await
        .expect("the learner catches up")
        .into_inner()
        .status
        .expect("a status");

    // At the answer, not later: the leader has replicated everything it had at the call.
    let learner = member(&status, 2);
    assert_eq!(learner.role(), MemberRole::Learner);
    assert!(
        learner.matched_index >= target,
        "answered with node 2 at {} of {target}",
        learner.matched_index
    );
    let on_learner = cluster.nodes[&2]
        .node
        .node()
        .raft()
        .metrics()
        .borrow()
        .clone();
    assert!(
        on_learner.snapshot.is_some(),
        "node 2 joined after the purge: it must have installed a snapshot"
    );
    assert!(on_learner.last_log_index.unwrap_or(0) >= target);

    // What it holds is the data: the last session written before the call, read locally.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = cluster.nodes[&2]
            .client
            .lookup(LookupRequest {
                tenant: "m".into(),
                key: Some(lookup_request::Key::SessionId(last_session.clone())),
                consistency: Consistency::Local as i32,
            })
            .await
            .expect("lookup answers");
        if found.outcome() == LookupOutcome::Found {
            break;
        }
        assert!(Instant::now() < deadline, "node 2 never applied the data");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.stop().await;
}

/// Starts node `id` cut off from the others (the partition switch isolates one node at a
/// time) and checks that adding it as a learner times out with a clear error.
async fn add_cut_off_learner(
    cluster: &mut TestCluster,
    admin: &mut cluster_client::ClusterClient<tonic::transport::Channel>,
    id: u64,
) {
    cluster.start_node(id, false).await;
    cluster.isolate(id, true);
    let addr = cluster.nodes[&id].node.peer_addr().to_string();
    let started = Instant::now();
    let timed_out = admin
        .add_learner(AddLearnerRequest {
            node_id: id,
            addr,
            timeout_ms: 2_000,
        })
        .await
        .expect_err("an unreachable learner cannot catch up");
    assert_eq!(timed_out.code(), tonic::Code::DeadlineExceeded);
    assert!(
        timed_out.message().contains("has not caught up"),
        "{}",
        timed_out.message()
    );
    assert!(started.elapsed() >= Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_learner_that_cannot_catch_up_times_out_and_is_promoted_only_when_caught_up_or_forced() {
    let mut cluster = TestCluster::start(1, purge_early).await;
    write(&cluster, 120).await;
    purged_leader_log(&cluster).await;
    let mut admin = cluster.admin().await;

    add_cut_off_learner(&mut cluster, &mut admin, 2).await;
    let status = admin
        .status(ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(member(&status, 2).role(), MemberRole::Learner);

    let refused = admin
        .promote(PromoteRequest {
            node_id: 2,
            force: false,
        })
        .await
        .expect_err("a learner without the data is not promoted");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("has not caught up"),
        "{}",
        refused.message()
    );

    // Healed, node 2 catches up and is promoted without force.
    cluster.isolate(2, false);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match admin
            .promote(PromoteRequest {
                node_id: 2,
                force: false,
            })
            .await
        {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
                assert!(Instant::now() < deadline, "node 2 never caught up: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    // Cut off, node 3 is promoted only when forced (voters 1 and 2 keep a quorum).
    add_cut_off_learner(&mut cluster, &mut admin, 3).await;
    let forced = admin
        .promote(PromoteRequest {
            node_id: 3,
            force: true,
        })
        .await
        .expect("forced promotion")
        .into_inner()
        .status
        .expect("a status");
    assert_eq!(member(&forced, 3).role(), MemberRole::Voter);
    cluster.isolate(3, false);
    cluster.wait_converged().await;
    cluster.stop().await;
}
