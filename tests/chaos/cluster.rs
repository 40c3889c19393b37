//! Real `sessiond serve` processes on free loopback ports and temporary data directories,
//! their peer links through [`Proxies`], and the operator calls the harness makes (status,
//! membership, digest, snapshot, purge). Only processes started here are signalled, by pid;
//! dropping the cluster kills them all (also when a check panics).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sessiond::proto::v1::cluster_client::ClusterClient;
use sessiond::proto::v1::*;
use tonic::transport::Channel;

use crate::proxy::{LinkMode, Proxies};

/// How long one operator call may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Log entries each node keeps behind its snapshot (`raft.max_in_snapshot_log_to_keep`).
pub const KEEP: u64 = 20;

/// One node of the cluster.
pub struct Node {
    /// Address it serves clients on.
    pub addr: String,
    /// Address it serves peers on (its membership address; dialled through a proxy).
    pub peer_addr: String,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
    clock_offset_ms: i64,
    /// Whether it ever started (a node that did not is not a member).
    pub started: bool,
}

/// The processes of one schedule.
pub struct Cluster {
    bin: PathBuf,
    root: Option<tempfile::TempDir>,
    root_path: PathBuf,
    config: PathBuf,
    /// Every node id this schedule may use, voters first.
    pub nodes: BTreeMap<u64, Node>,
    /// The peer links.
    pub proxies: Proxies,
    /// Peer addresses by node id.
    addrs: BTreeMap<u64, String>,
    grace_ms: i64,
}

/// A loopback port that is free now and that the kernel will not hand out as the source
/// port of an outgoing connection before the node binds it (possibly much later): it is
/// drawn below Linux's ephemeral range (32768 and up), where a port found by binding port 0
/// could be taken by any client connection meanwhile. No port is handed out twice in one
/// run: a schedule draws every node's ports before it starts any, and two draws of the same
/// free port would leave one node unable to bind.
fn free_port() -> u16 {
    use rand::Rng;
    static HANDED_OUT: std::sync::Mutex<BTreeSet<u16>> = std::sync::Mutex::new(BTreeSet::new());
    let mut rng = rand::rng();
    loop {
        let port = rng.random_range(20_000..32_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && HANDED_OUT.lock().expect("port set lock").insert(port)
        {
            return port;
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

impl Cluster {
    /// Starts nodes 1, 2 and 3 as voters: node 1 first, until it leads, then the others
    /// added through it.
    pub async fn three_voters(grace_ms: i64) -> Cluster {
        let mut cluster = Cluster::prepare(&[1, 2, 3], grace_ms).await;
        cluster.start(1);
        cluster
            .wait_leader(Duration::from_secs(20))
            .await
            .expect("leader");
        for id in [2, 3] {
            cluster.start(id);
            cluster.add_learner(1, id).await.expect("add");
            cluster.promote(1, id).await.expect("promote");
        }
        cluster
    }

    /// Prepares `ids` (ports, directories, proxies) without starting anything.
    pub async fn prepare(ids: &[u64], grace_ms: i64) -> Cluster {
        let root = tempfile::Builder::new()
            .prefix("sessiond-chaos-")
            .tempdir()
            .expect("temp dir");
        let config = root.path().join("sessiond.toml");
        let lease_reads = std::env::var("CHAOS_LEASE_READS").is_ok_and(|v| v == "1");
        std::fs::write(
            &config,
            format!(
                "[raft]\nheartbeat_ms = 100\nelection_timeout_min_ms = 800\n\
                 election_timeout_max_ms = 1600\nsnapshot_logs_since_last = 5000\n\
                 max_in_snapshot_log_to_keep = {KEEP}\nlease_reads = {lease_reads}\n\n\
                 [gc]\ninterval_ms = 5000\n\n[watch]\nprogress_interval_ms = 300\n"
            ),
        )
        .expect("config file");
        let addrs: BTreeMap<u64, String> = ids
            .iter()
            .map(|id| (*id, format!("127.0.0.1:{}", free_port())))
            .collect();
        let nodes = addrs
            .iter()
            .map(|(id, addr)| {
                let dir = root.path().join(format!("node-{id}"));
                std::fs::create_dir_all(&dir).expect("node dir");
                (
                    *id,
                    Node {
                        addr: format!("127.0.0.1:{}", free_port()),
                        peer_addr: addr.clone(),
                        data_dir: dir.join("data"),
                        log: dir.join("sessiond.log"),
                        child: None,
                        paused: false,
                        clock_offset_ms: 0,
                        started: false,
                    },
                )
            })
            .collect();
        let proxies = Proxies::start(&addrs).await;
        Cluster {
            bin: PathBuf::from(env!("CARGO_BIN_EXE_sessiond")),
            root_path: root.path().to_owned(),
            root: Some(root),
            config,
            nodes,
            proxies,
            addrs,
            grace_ms,
        }
    }

    /// Keeps the data directories and logs after the run, for a post-mortem.
    pub fn keep_files(&mut self) -> PathBuf {
        if let Some(root) = self.root.take() {
            let _ = root.keep();
        }
        self.root_path.clone()
    }

    /// The client URL of node `id`.
    pub fn url(&self, id: u64) -> String {
        format!("http://{}", self.nodes[&id].addr)
    }

    /// Starts node `id` with the same flags every time, as an operator's config would: node
    /// 1 bootstraps the cluster (a no-op once it has state), the others wait to be added.
    pub fn start(&mut self, id: u64) {
        let bootstrap = id == 1;
        let dial = self.proxies.dial_map(id, &self.addrs);
        let node = self.nodes.get_mut(&id).expect("known node");
        if node.child.is_some() {
            return;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("log file");
        let mut command = Command::new(&self.bin);
        command
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .arg("--node-id")
            .arg(id.to_string())
            .arg("--listen")
            .arg(&node.addr)
            .arg("--peer-listen")
            .arg(&node.peer_addr)
            .arg("--data-dir")
            .arg(&node.data_dir)
            .arg("--reuse-grace-ms")
            .arg(self.grace_ms.to_string())
            .arg(format!("--clock-offset-ms={}", node.clock_offset_ms))
            .env("SESSIOND_TEST_PEER_DIAL", dial)
            .env("RUST_LOG", "info,openraft=warn")
            .env("NO_COLOR", "1")
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log);
        if !bootstrap {
            command.arg("--join");
        }
        node.child = Some(command.spawn().expect("spawn sessiond"));
        node.paused = false;
        node.started = true;
    }

    /// Whether node `id`'s process is running (not exited).
    pub fn running(&mut self, id: u64) -> bool {
        let node = self.nodes.get_mut(&id).expect("known node");
        match node.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Whether node `id` has a process (running or exited) the harness did not stop.
    pub fn has_process(&self, id: u64) -> bool {
        self.nodes[&id].child.is_some()
    }

    /// SIGKILL node `id` and reap it.
    pub fn kill(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).expect("known node");
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        node.paused = false;
    }

    /// SIGSTOP (or SIGCONT) node `id`.
    pub fn pause(&mut self, id: u64, paused: bool) {
        let node = self.nodes.get_mut(&id).expect("known node");
        if let Some(child) = node.child.as_ref() {
            if node.paused != paused {
                signal(child.id(), if paused { "STOP" } else { "CONT" });
                node.paused = paused;
            }
        }
    }

    /// Node `id`'s clock offset from its next start on.
    pub fn set_clock_offset(&mut self, id: u64, offset_ms: i64) {
        self.nodes.get_mut(&id).expect("known node").clock_offset_ms = offset_ms;
    }

    /// Every paused node resumed, every link up.
    pub fn heal(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.pause(id, false);
        }
        self.proxies.heal();
    }

    /// Cuts `isolated` off from every other node (both ways).
    pub fn isolate(&self, isolated: &[u64], mode: LinkMode) {
        let rest: Vec<u64> = self
            .nodes
            .keys()
            .copied()
            .filter(|id| !isolated.contains(id))
            .collect();
        self.proxies.split(isolated, &rest, mode);
    }

    /// How many lines of node `id`'s log contain `needle`.
    pub fn log_count(&self, id: u64, needle: &str) -> usize {
        std::fs::read_to_string(&self.nodes[&id].log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// The last `lines` error lines of node `id`'s log, for a report.
    pub fn log_errors(&self, id: u64, lines: usize) -> Vec<String> {
        let text = std::fs::read_to_string(&self.nodes[&id].log).unwrap_or_default();
        let errors: Vec<String> = text
            .lines()
            .filter(|l| l.contains("ERROR") || l.starts_with("Error:") || l.contains("panicked"))
            .map(|l| format!("node {id}: {}", l.chars().take(300).collect::<String>()))
            .collect();
        errors[errors.len().saturating_sub(lines)..].to_vec()
    }

    async fn admin(&self, id: u64) -> Option<ClusterClient<Channel>> {
        self.admin_with_timeout(id, ADMIN_TIMEOUT).await
    }

    /// A cluster admin client of node `id` whose calls give up after `timeout`.
    async fn admin_with_timeout(
        &self,
        id: u64,
        timeout: Duration,
    ) -> Option<ClusterClient<Channel>> {
        let endpoint = Channel::from_shared(self.url(id))
            .ok()?
            .connect_timeout(Duration::from_secs(2))
            .timeout(timeout);
        let channel = tokio::time::timeout(Duration::from_secs(3), endpoint.connect())
            .await
            .ok()?
            .ok()?;
        Some(ClusterClient::new(channel))
    }

    /// Node `id`'s status, if it answers.
    pub async fn status(&self, id: u64) -> Option<ClusterStatusResponse> {
        let mut admin = self.admin(id).await?;
        let status = admin.status(ClusterStatusRequest {});
        Some(
            tokio::time::timeout(ADMIN_TIMEOUT, status)
                .await
                .ok()?
                .ok()?
                .into_inner(),
        )
    }

    /// The leader as one of the running nodes sees it.
    pub async fn leader(&self) -> Option<u64> {
        for id in self.nodes.keys() {
            if self.nodes[id].child.is_none() || self.nodes[id].paused {
                continue;
            }
            if let Some(s) = self.status(*id).await {
                if s.leader_id != 0 {
                    return Some(s.leader_id);
                }
            }
        }
        None
    }

    /// Waits up to `within` for a leader.
    pub async fn wait_leader(&self, within: Duration) -> Option<u64> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(l) = self.leader().await {
                return Some(l);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// Adds `id` as a learner (waiting until it caught up) through node `via`.
    pub async fn add_learner(&self, via: u64, id: u64) -> Result<(), String> {
        // The server answers (DEADLINE_EXCEEDED) before the client gives up; the channel's
        // own deadline must not be shorter (with 10 s, a learner slow to start under the
        // parallel tests made the call fail with "Timeout expired").
        let mut admin = self
            .admin_with_timeout(via, Duration::from_secs(30))
            .await
            .ok_or("admin unreachable")?;
        let request = AddLearnerRequest {
            node_id: id,
            addr: self.nodes[&id].peer_addr.clone(),
            timeout_ms: 25_000,
        };
        tokio::time::timeout(Duration::from_secs(30), admin.add_learner(request))
            .await
            .map_err(|_| "add-learner timed out".to_owned())?
            .map(|_| ())
            .map_err(|s| s.message().to_owned())
    }

    /// Makes learner `id` a voter through node `via`.
    pub async fn promote(&self, via: u64, id: u64) -> Result<(), String> {
        let mut admin = self.admin(via).await.ok_or("admin unreachable")?;
        admin
            .promote(PromoteRequest {
                node_id: id,
                force: false,
            })
            .await
            .map(|_| ())
            .map_err(|s| s.message().to_owned())
    }

    /// Removes `id` from the membership through node `via`.
    pub async fn remove(&self, via: u64, id: u64) -> Result<(), String> {
        let mut admin = self.admin(via).await.ok_or("admin unreachable")?;
        admin
            .remove(RemoveRequest { node_id: id })
            .await
            .map(|_| ())
            .map_err(|s| s.message().to_owned())
    }

    /// Node `id`'s state digest.
    pub async fn digest(&self, id: u64) -> Option<StateDigestResponse> {
        let mut admin = self.admin(id).await?;
        Some(
            admin
                .state_digest(StateDigestRequest {})
                .await
                .ok()?
                .into_inner(),
        )
    }

    /// Has node `id` build a snapshot and waits for it; returns its last index.
    pub async fn snapshot(&self, id: u64) -> Option<u64> {
        let before = self.status(id).await?.snapshot_index;
        self.admin(id)
            .await?
            .trigger_snapshot(TriggerSnapshotRequest {})
            .await
            .ok()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let s = self.status(id).await?;
            if s.snapshot_index > before {
                return Some(s.snapshot_index);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Has node `id` purge its log up to `upto`; returns the point it purges up to.
    pub async fn purge(&self, id: u64, upto: u64) -> Option<u64> {
        let answer = self
            .admin(id)
            .await?
            .purge_log(PurgeLogRequest { upto })
            .await
            .ok()?;
        Some(answer.into_inner().purging_upto)
    }

    /// Has node `id` build a snapshot, waits for it, then purges its log up to it; returns
    /// the snapshot's last index and the purge point.
    pub async fn snapshot_and_purge(&self, id: u64) -> Option<(u64, u64)> {
        let snapshot = self.snapshot(id).await?;
        Some((snapshot, self.purge(id, snapshot).await?))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.pause(id, false);
            self.kill(id);
        }
    }
}
