//! Invariant 2 across real processes: a three-node cluster of `sessiond` binaries on free
//! loopback ports keeps serving while a follower and then the leader are killed with SIGKILL
//! and restarted on their data directories; every acknowledged write is on every node
//! afterwards, and the restarted nodes catch up.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::workload::{self, History};
use common::*;
use sessiond::proto::v1::cluster_client::ClusterClient;
use sessiond::proto::v1::*;

/// One node's configuration file and log.
struct NodeFiles {
    config: PathBuf,
    log: PathBuf,
    endpoint: String,
    peer_addr: String,
}

fn write_node_files(root: &Path, id: u64) -> NodeFiles {
    let port = free_port();
    let peer_port = free_port();
    let dir = root.join(format!("node-{id}"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("sessiond.toml");
    std::fs::write(
        &config,
        format!(
            "node_id = {id}\nlisten_addr = \"127.0.0.1:{port}\"\npeer_listen_addr = \"127.0.0.1:{peer_port}\"\ndata_dir = \"{}\"\nbootstrap = {}\n\n[raft]\nheartbeat_ms = 100\nelection_timeout_min_ms = 800\nelection_timeout_max_ms = 1600\n",
            dir.join("data").display(),
            id == 1
        ),
    )
    .unwrap();
    NodeFiles {
        config,
        log: dir.join("sessiond.log"),
        endpoint: format!("http://127.0.0.1:{port}"),
        peer_addr: format!("127.0.0.1:{peer_port}"),
    }
}

fn spawn(files: &NodeFiles) -> ServerProcess {
    ServerProcess::spawn_with(&["--config", files.config.to_str().unwrap()], &files.log)
}

async fn status(endpoint: &str) -> Option<ClusterStatusResponse> {
    let mut admin = ClusterClient::connect(endpoint.to_owned()).await.ok()?;
    Some(
        admin
            .status(ClusterStatusRequest {})
            .await
            .ok()?
            .into_inner(),
    )
}

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
        .map(|id| write_node_files(root.path(), id))
        .collect();
    let mut processes: Vec<Option<ServerProcess>> = files.iter().map(|f| Some(spawn(f))).collect();

    let mut admin = ClusterClient::connect(files[0].endpoint.clone())
        .await
        .unwrap();
    for id in [2u64, 3] {
        let addr = files[id as usize - 1].peer_addr.clone();
        admin
            .add_learner(AddLearnerRequest {
                node_id: id,
                addr,
                ..Default::default()
            })
            .await
            .unwrap();
        admin
            .promote(PromoteRequest {
                node_id: id,
                ..Default::default()
            })
            .await
            .unwrap();
    }

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
        processes[index] = Some(spawn(&files[index]));
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
