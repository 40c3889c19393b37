//! An in-process cluster for fault tests: nodes on free loopback ports with temporary data
//! directories, formed through the cluster admin API, with helpers to find the leader, wait
//! for convergence, partition nodes and compare replicas.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sessiond::config::Config;
use sessiond::domain::{StateEntry, StateRead};
use sessiond::proto::v1::cluster_client::ClusterClient;
use sessiond::proto::v1::*;
use tonic::transport::Channel;

use super::{test_config, TestNode};

/// Raft timing for tests on a loaded 2-core machine: generous, so that elections happen
/// only when a test causes them.
pub fn cluster_config(dir: &std::path::Path, node_id: u64, bootstrap: bool) -> Config {
    let mut config = test_config(dir);
    config.node_id = node_id;
    config.bootstrap = bootstrap;
    config.raft.heartbeat_ms = 100;
    config.raft.election_timeout_min_ms = 800;
    config.raft.election_timeout_max_ms = 1600;
    config
}

/// Nodes of one cluster, by id.
pub struct TestCluster {
    pub nodes: BTreeMap<u64, TestNode>,
    root: tempfile::TempDir,
    adjust: fn(&mut Config),
}

impl TestCluster {
    /// Starts node 1 alone, then adds and promotes nodes 2..=n.
    pub async fn start(n: u64, adjust: fn(&mut Config)) -> TestCluster {
        let root = tempfile::tempdir().unwrap();
        let mut cluster = TestCluster {
            nodes: BTreeMap::new(),
            root,
            adjust,
        };
        cluster.start_node(1, true).await;
        cluster.wait_for_leader(&[1]).await;
        for id in 2..=n {
            cluster.add_voter(id).await;
        }
        cluster
    }

    /// Starts node `id` (bootstrapping a new cluster or waiting to be added).
    pub async fn start_node(&mut self, id: u64, bootstrap: bool) {
        let dir = self.root.path().join(format!("node-{id}"));
        let mut config = cluster_config(&dir, id, bootstrap);
        (self.adjust)(&mut config);
        let node = TestNode::start(config).await;
        self.nodes.insert(id, node);
    }

    /// Starts node `id`, adds it as a learner and promotes it.
    /// Under load a learner may fall behind again between catching up and the promotion;
    /// Promote then refuses it, and the operator waits, as this does.
    pub async fn add_voter(&mut self, id: u64) {
        self.add_learner(id).await;
        let mut admin = self.admin().await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let promoted = admin
                .promote(PromoteRequest {
                    node_id: id,
                    ..Default::default()
                })
                .await;
            match promoted {
                Err(status)
                    if status.code() == tonic::Code::FailedPrecondition
                        && status.message().contains("has not caught up")
                        && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                promoted => {
                    promoted.expect("promote");
                    return;
                }
            }
        }
    }

    /// Starts node `id` and adds it as a learner (returns once it has caught up).
    pub async fn add_learner(&mut self, id: u64) {
        self.start_node(id, false).await;
        let addr = self.nodes[&id].node.peer_addr().to_string();
        let mut admin = self.admin().await;
        admin
            .add_learner(AddLearnerRequest {
                node_id: id,
                addr,
                ..Default::default()
            })
            .await
            .expect("add learner");
    }

    /// Removes node `id` from the membership, then stops it.
    pub async fn remove(&mut self, id: u64) {
        let mut admin = self.admin_excluding(id).await;
        admin
            .remove(RemoveRequest { node_id: id })
            .await
            .expect("remove");
        self.stop_node(id).await;
    }

    /// Stops node `id` (like a crash of the process, but letting it flush).
    pub async fn stop_node(&mut self, id: u64) {
        if let Some(node) = self.nodes.remove(&id) {
            node.stop().await;
        }
    }

    /// An admin client on some running node.
    pub async fn admin(&self) -> ClusterClient<Channel> {
        self.admin_excluding(0).await
    }

    async fn admin_excluding(&self, excluded: u64) -> ClusterClient<Channel> {
        let (_, node) = self
            .nodes
            .iter()
            .find(|(id, _)| **id != excluded)
            .expect("a running node");
        ClusterClient::connect(format!("http://{}", node.node.addr()))
            .await
            .expect("admin connects")
    }

    /// Waits until the running nodes among `ids` agree on one leader among them.
    pub async fn wait_for_leader(&self, ids: &[u64]) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let leaders: Vec<Option<u64>> = ids
                .iter()
                .filter_map(|id| self.nodes.get(id))
                .map(|n| n.node.node().raft().metrics().borrow().current_leader)
                .collect();
            if let Some(Some(leader)) = leaders.first() {
                if ids.contains(leader)
                    && self.nodes[leader].node.node().is_leader()
                    && leaders.iter().all(|l| *l == Some(*leader))
                {
                    return *leader;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no leader among {ids:?}: {leaders:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every running node has applied everything the leader has.
    pub async fn wait_converged(&self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        let leader = self.wait_for_leader(&ids).await;
        let target = self.nodes[&leader]
            .node
            .node()
            .raft()
            .metrics()
            .borrow()
            .last_log_index;
        for (id, node) in &self.nodes {
            node.node
                .node()
                .raft()
                .wait(Some(Duration::from_secs(30)))
                .applied_index_at_least(target, "converged")
                .await
                .unwrap_or_else(|e| panic!("node {id} did not catch up: {e}"));
        }
    }

    /// Every key and value of node `id`'s state machine.
    pub fn dump(&self, id: u64) -> Vec<StateEntry> {
        self.nodes[&id]
            .node
            .node()
            .state()
            .scan_prefix(b"", None, usize::MAX)
            .unwrap()
    }

    /// The running nodes other than `id`.
    pub fn others(&self, id: u64) -> Vec<u64> {
        self.nodes.keys().copied().filter(|o| *o != id).collect()
    }

    /// Cuts `id` off from every other node, both ways (or heals it with `false`).
    pub fn isolate(&self, id: u64, isolated: bool) {
        for (other, node) in &self.nodes {
            let peers = node.node.node().peers();
            if *other == id {
                peers.set_partitioned_from(if isolated {
                    self.others(id)
                } else {
                    Vec::new()
                });
            } else {
                peers.set_partitioned_from(if isolated { vec![id] } else { Vec::new() });
            }
        }
    }

    /// Stops every node.
    pub async fn stop(mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.stop_node(id).await;
        }
    }
}
