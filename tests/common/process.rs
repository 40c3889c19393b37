//! Nodes as real `sessiond` processes, each configured by a TOML file on free loopback ports:
//! writing that file, starting the process, reading its status over the cluster API, and
//! growing a cluster of them.

use std::path::{Path, PathBuf};

use sessiond::proto::v1::cluster_client::ClusterClient;
use sessiond::proto::v1::*;

use super::{free_port, ServerProcess};

/// A `[raft]` section with timers short enough for tests on a loaded machine.
pub const FAST_RAFT: &str = "[raft]\nheartbeat_ms = 100\nelection_timeout_min_ms = 800\n\
                             election_timeout_max_ms = 1600\n";

/// One node process's configuration file, log and addresses.
pub struct NodeFiles {
    /// The TOML configuration file.
    pub config: PathBuf,
    /// Where the process's output goes.
    pub log: PathBuf,
    /// The client endpoint (`http://127.0.0.1:port`).
    pub endpoint: String,
    /// The peer listener's address (the one the membership names).
    pub peer_addr: String,
}

impl NodeFiles {
    /// Writes node `id`'s configuration under `root/node-{id}`: free client and peer ports,
    /// its data directory, `bootstrap` for node 1, then `tail` (more top-level keys, then
    /// sections such as [`FAST_RAFT`]).
    pub fn write(root: &Path, id: u64, tail: &str) -> NodeFiles {
        let port = free_port();
        let peer_port = free_port();
        let dir = root.join(format!("node-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("sessiond.toml");
        std::fs::write(
            &config,
            format!(
                "node_id = {id}\nlisten_addr = \"127.0.0.1:{port}\"\n\
                 peer_listen_addr = \"127.0.0.1:{peer_port}\"\ndata_dir = \"{}\"\n\
                 bootstrap = {}\n{tail}",
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

    /// Starts `sessiond serve` on this configuration.
    pub fn spawn(&self) -> ServerProcess {
        ServerProcess::spawn_with(&["--config", self.config.to_str().unwrap()], &self.log)
    }
}

/// The node's cluster status, or `None` while it does not answer.
pub async fn status(endpoint: &str) -> Option<ClusterStatusResponse> {
    let mut admin = ClusterClient::connect(endpoint.to_owned()).await.ok()?;
    Some(
        admin
            .status(ClusterStatusRequest {})
            .await
            .ok()?
            .into_inner(),
    )
}

/// Adds each node as a learner through `endpoint`, then promotes it to voter.
pub async fn add_voters(endpoint: &str, nodes: &[(u64, &NodeFiles)]) {
    let mut admin = ClusterClient::connect(endpoint.to_owned()).await.unwrap();
    for (id, files) in nodes {
        admin
            .add_learner(AddLearnerRequest {
                node_id: *id,
                addr: files.peer_addr.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        admin
            .promote(PromoteRequest {
                node_id: *id,
                ..Default::default()
            })
            .await
            .unwrap();
    }
}
