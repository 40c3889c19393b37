//! In-process three- and five-node clusters under faults: leader failover during a
//! workload, a partitioned leader, and growing / shrinking the cluster while it serves.
//! Invariants checked: acknowledged writes survive (2), no refresh token is redeemed twice
//! (1), replicas that applied the same log are byte-identical (5).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::cluster::TestCluster;
use common::workload::{self, History};
use common::*;
use sessiond::client::Client;
use sessiond::proto::v1::*;

async fn clients(cluster: &TestCluster) -> workload::Clients {
    Arc::new(
        cluster
            .nodes
            .values()
            .map(|n| n.client.clone())
            .collect::<Vec<Client>>(),
    )
}

/// Invariant 5: the nodes' states are byte-identical once they applied the same log. The
/// leader keeps proposing (garbage collection every few seconds, which stamps the applied
/// time), so states taken while one node is an entry ahead are taken again; nodes that
/// applied the same index and still differ fail at the deadline, with the first key that
/// differs.
async fn assert_replicas_identical(cluster: &TestCluster) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let applied = |id: u64| cluster.nodes[&id].node.node().state().applied_index();
    loop {
        let dumps: Vec<_> = cluster
            .nodes
            .keys()
            .map(|id| (*id, applied(*id), cluster.dump(*id), applied(*id)))
            .collect();
        let (first_id, index, first, _) = &dumps[0];
        let same_index = dumps
            .iter()
            .all(|(_, before, _, after)| before == index && after == index);
        let differing = dumps[1..].iter().find(|(_, _, dump, _)| dump != first);
        let late = std::time::Instant::now() > deadline;
        match differing {
            None if same_index => return,
            None => assert!(!late, "the nodes never applied the same index at once"),
            Some(_) if !late => {}
            Some((id, _, dump, _)) => {
                let key = dump
                    .iter()
                    .zip(first.iter())
                    .find(|(a, b)| a != b)
                    .map(|(a, _)| a)
                    .or_else(|| dump.get(first.len()))
                    .map(|(key, _)| String::from_utf8_lossy(key).into_owned());
                panic!(
                    "node {id} differs from node {first_id} (applied index {index} on node \
                     {first_id}, all alike: {same_index}; {} against {} entries; first \
                     differing key {key:?})",
                    dump.len(),
                    first.len()
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Invariants 2, 1 and 5 at the end of a workload: every acknowledged write is on every
/// node, no refresh token yielded two successors, replicas are byte-identical.
async fn assert_holds_history_then_stop(cluster: TestCluster, history: &History) {
    for (id, node) in &cluster.nodes {
        workload::assert_history_present(&node.client, history, &format!("node {id}")).await;
    }
    history.assert_single_redemption();
    assert_replicas_identical(&cluster).await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_failover_keeps_every_acknowledged_write_and_single_redemption() {
    let mut cluster = TestCluster::start(3, |_| {}).await;
    let history = Arc::new(History::default());
    let (stop, tasks) = workload::start(4, clients(&cluster).await, history.clone());

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let old_leader = cluster.wait_for_leader(&[1, 2, 3]).await;
    let before = history
        .acknowledged
        .load(std::sync::atomic::Ordering::Relaxed);
    cluster.stop_node(old_leader).await;
    let survivors: Vec<u64> = cluster.nodes.keys().copied().collect();
    let new_leader = cluster.wait_for_leader(&survivors).await;
    assert_ne!(new_leader, old_leader);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    workload::finish(stop, tasks).await;
    let after = history
        .acknowledged
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(after > before, "the workload continued after the failover");
    println!("acknowledged {after} writes ({before} before the failover)");

    cluster.wait_converged().await;
    assert_holds_history_then_stop(cluster, &history).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_leader_cannot_acknowledge_and_replicas_converge_after_healing() {
    let cluster = TestCluster::start(3, |_| {}).await;
    let leader = cluster.wait_for_leader(&[1, 2, 3]).await;
    let before = cluster.nodes[&leader]
        .client
        .create_session(create_request("p", "before"))
        .await
        .unwrap();

    cluster.isolate(leader, true);
    let majority = cluster.others(leader);
    let new_leader = cluster.wait_for_leader(&majority).await;

    let cut_off = tokio::time::timeout(
        Duration::from_secs(3),
        cluster.nodes[&leader]
            .client
            .create_session(create_request("p", "lost")),
    )
    .await;
    assert!(
        !matches!(cut_off, Ok(Ok(_))),
        "a leader without a quorum acknowledged a write"
    );
    let revoked = cluster.nodes[&new_leader]
        .client
        .revoke(revoke_session(
            "p",
            &before.session.as_ref().unwrap().session_id,
        ))
        .await
        .unwrap();
    assert_eq!(revoked.revoked_count, 1);
    let during = cluster.nodes[&majority[0]]
        .client
        .create_session(create_request("p", "during"))
        .await
        .unwrap();

    cluster.isolate(leader, false);
    cluster.wait_converged().await;
    for node in cluster.nodes.values() {
        let old = node
            .client
            .lookup(lookup_by_id(
                "p",
                &before.session.as_ref().unwrap().session_id,
            ))
            .await
            .unwrap();
        assert_eq!(old.session.unwrap().status(), SessionStatus::Revoked);
        let new = node
            .client
            .lookup(lookup_by_id(
                "p",
                &during.session.as_ref().unwrap().session_id,
            ))
            .await
            .unwrap();
        assert_eq!(new.outcome(), LookupOutcome::Found);
        let lost = node
            .client
            .count_sessions(CountSessionsRequest {
                tenant: "p".into(),
                user_id: "lost".into(),
                consistency: Consistency::Local as i32,
            })
            .await
            .unwrap();
        assert_eq!(lost.active, 0, "the unacknowledged write appeared");
    }
    assert_replicas_identical(&cluster).await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grows_1_3_5_3_under_load_and_a_late_learner_catches_up_by_snapshot() {
    let mut cluster = TestCluster::start(1, |c| {
        c.raft.snapshot_logs_since_last = 50;
        c.raft.max_in_snapshot_log_to_keep = 0;
    })
    .await;
    let history = Arc::new(History::default());
    let (stop, tasks) = workload::start(3, clients(&cluster).await, history.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;

    cluster.add_voter(2).await;
    cluster.add_voter(3).await;
    let leader = cluster.wait_for_leader(&[1, 2, 3]).await;
    let purged = cluster.nodes[&leader]
        .node
        .node()
        .raft()
        .metrics()
        .borrow()
        .purged;
    assert!(
        purged.is_some(),
        "the leader purged its log after snapshots"
    );
    cluster.add_voter(4).await;
    cluster.add_voter(5).await;
    let snapshot_on_5 = cluster.nodes[&5]
        .node
        .node()
        .raft()
        .wait(Some(Duration::from_secs(20)))
        .metrics(|m| m.snapshot.is_some(), "node 5 installed a snapshot")
        .await;
    assert!(
        snapshot_on_5.is_ok(),
        "node 5 joined after the purge: it must have caught up by snapshot"
    );

    let status = cluster
        .admin()
        .await
        .status(ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let voters = status
        .members
        .iter()
        .filter(|m| m.role() == MemberRole::Voter)
        .count();
    assert_eq!(voters, 5);

    cluster.remove(4).await;
    cluster.remove(5).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    workload::finish(stop, tasks).await;

    cluster.wait_converged().await;
    let status = cluster
        .admin()
        .await
        .status(ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.members.len(), 3);
    assert_holds_history_then_stop(cluster, &history).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_are_validated_and_serialized() {
    let cluster = TestCluster::start(1, |_| {}).await;
    let mut admin = cluster.admin().await;
    let zero = admin
        .add_learner(AddLearnerRequest {
            node_id: 0,
            addr: "127.0.0.1:1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(zero.code(), tonic::Code::InvalidArgument);
    assert!(zero.message().starts_with("node_id"));
    let bad_addr = admin
        .add_learner(AddLearnerRequest {
            node_id: 7,
            addr: "nowhere".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(bad_addr.message().starts_with("addr"));
    let reused = admin
        .add_learner(AddLearnerRequest {
            node_id: 1,
            addr: "127.0.0.1:1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(reused.code(), tonic::Code::FailedPrecondition);
    let not_learner = admin
        .promote(PromoteRequest {
            node_id: 9,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(not_learner.code(), tonic::Code::FailedPrecondition);
    let last_voter = admin
        .remove(RemoveRequest { node_id: 1 })
        .await
        .unwrap_err();
    assert_eq!(last_voter.code(), tonic::Code::FailedPrecondition);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_the_whole_cluster_rides_out_a_stopped_node() {
    let mut cluster = TestCluster::start(3, |_| {}).await;
    let urls: Vec<String> = cluster
        .nodes
        .values()
        .map(|n| format!("http://{}", n.node.addr()))
        .collect();
    let client = Client::for_cluster(&urls).unwrap();
    let first = client
        .create_session(create_request("c", "u"))
        .await
        .unwrap();
    let leader = cluster.wait_for_leader(&[1, 2, 3]).await;
    assert_eq!(
        client.leader_endpoint().await,
        Some(cluster.nodes[&leader].node.addr().to_string()),
        "the client sends writes straight to the leader"
    );
    cluster.stop_node(leader).await;
    let rotated = client
        .rotate(rotate_request(&first.refresh_token))
        .await
        .unwrap();
    assert_eq!(rotated.outcome(), RotateOutcome::Rotated);
    let second = client
        .create_session(create_request("c", "u"))
        .await
        .unwrap();
    let found = client
        .lookup(lookup_by_id("c", &second.session.unwrap().session_id))
        .await
        .unwrap();
    assert_eq!(found.outcome(), LookupOutcome::Found);
    cluster.stop().await;
}
