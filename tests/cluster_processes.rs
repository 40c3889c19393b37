//! Invariant 2 across real processes: a three-node cluster of `sessiond` binaries on free
//! loopback ports keeps serving while a follower and then the leader are killed with SIGKILL
//! and restarted on their data directories; every acknowledged write is on every node
//! afterwards, and the restarted nodes catch up.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::process::{add_voters, status, NodeFiles, FAST_RAFT};
use common::workload::{self, History};
use common::*;

/// The leader as seen by node 1..=3, once one is known.
async fn leader(files: &[NodeFiles]) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for f in files {
            if let Some(s) = status(&f.endpoint).await {
                if s.leader_id != 0 {
                    return s.leader_id;
                }
            }
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every node has applied the same index.
async fn converged(files: &[NodeFiles]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut applied = Vec::new();
        for f in files {
            applied.push(
                status(&f.endpoint)
                    .await
                    .map(|s| (s.applied_index, s.last_log_index)),
            );
        }
        if let Some(Some((first, _))) = applied.first() {
            if applied
                .iter()
                .all(|a| matches!(a, Some((i, l)) if i == first && l == first))
            {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "nodes did not converge: {applied:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_sigkill_of_a_follower_and_the_leader() {
    let root = tempfile::tempdir().unwrap();
    let files: Vec<NodeFiles> = (1..=3)
        .map(|id| NodeFiles::write(root.path(), id, FAST_RAFT))
        .collect();
    let mut processes: Vec<Option<ServerProcess>> = files.iter().map(|f| Some(f.spawn())).collect();

    add_voters(&files[0].endpoint, &[(2, &files[1]), (3, &files[2])]).await;

    let mut clients = Vec::new();
    for f in &files {
        clients.push(connect(&f.endpoint).await);
    }
    let history = Arc::new(History::default());
    let (stop, tasks) = workload::start(3, Arc::new(clients.clone()), history.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;

    let leader_id = leader(&files).await;
    let follower = if leader_id == 1 { 2 } else { 1 };
    for victim in [follower, leader_id] {
        let index = victim as usize - 1;
        processes[index].take().unwrap().kill9();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        processes[index] = Some(files[index].spawn());
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    workload::finish(stop, tasks).await;
    println!(
        "acknowledged {} writes, {} failed attempts",
        history
            .acknowledged
            .load(std::sync::atomic::Ordering::Relaxed),
        history.failed.load(std::sync::atomic::Ordering::Relaxed)
    );

    converged(&files).await;
    for (i, f) in files.iter().enumerate() {
        let client = connect(&f.endpoint).await;
        workload::assert_history_present(&client, &history, &format!("node {}", i + 1)).await;
    }
    history.assert_single_redemption();
    for p in processes.into_iter().flatten() {
        p.terminate();
    }
}
