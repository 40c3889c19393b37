//! `sessiond cluster …`: grow, shrink and inspect a running cluster. Any node accepts these
//! commands (followers relay membership changes to the leader).

use std::time::Duration;

use clap::Subcommand;
use serde_json::json;

use crate::client::{connect_transport, Transport};
use crate::proto::v1::cluster_client::ClusterClient;
use crate::proto::v1::{
    AddLearnerRequest, ClusterStatusRequest, ClusterStatusResponse, CompactRecordsRequest,
    MemberRole, PromoteRequest, PurgeLogRequest, RemoveRequest, StateDigestRequest,
    TriggerSnapshotRequest,
};

/// Cluster subcommands.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Add a node as a learner; returns once it holds the leader's log as of the call
    /// (printing its progress meanwhile), or fails after --timeout.
    AddLearner {
        /// The new node's id (never reused).
        node_id: u64,
        /// The new node's peer address (its peer listener), host:port.
        addr: String,
        /// Seconds to wait for the learner to catch up.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Make a learner a voter (refused while it has not caught up, unless --force).
    Promote {
        /// The learner's id.
        node_id: u64,
        /// Promote even a learner that has not caught up.
        #[arg(long)]
        force: bool,
    },
    /// Remove a node (voter or learner); stop it afterwards.
    Remove {
        /// The node's id.
        node_id: u64,
    },
    /// Members, roles, leader, term, indexes and replication lag.
    Status,
    /// The digest of the answering node's applied state and the index it covers.
    Digest,
    /// Make the answering node build a snapshot now.
    Snapshot,
    /// Make the answering node purge its log up to an index its snapshot covers.
    PurgeLog {
        /// The last log index to purge.
        upto: u64,
    },
    /// Move the cluster to the newest record format (once every node runs this version).
    CompactRecords,
}

/// How often add-learner reports the learner's progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Connects to the first of `target`'s comma-separated endpoints that answers, with its
/// TLS and credentials.
pub async fn connect_any(target: &super::Target) -> anyhow::Result<Transport> {
    let options = target.connect.options()?;
    let mut failures = Vec::new();
    for endpoint in super::endpoint_list(&target.endpoint) {
        match connect_transport(&endpoint, &options).await {
            Ok(transport) => return Ok(transport),
            Err(e) => failures.push(e.to_string()),
        }
    }
    Err(super::Unreachable(failures.join("; ")).into())
}

/// Adds the learner, printing its progress (to stderr) while the call waits.
async fn add_learner(
    client: &mut ClusterClient<Transport>,
    request: AddLearnerRequest,
    quiet: bool,
) -> anyhow::Result<Option<ClusterStatusResponse>> {
    let id = request.node_id;
    let mut watcher = client.clone();
    let added = client.add_learner(request);
    tokio::pin!(added);
    let mut ticker = tokio::time::interval(PROGRESS_EVERY);
    ticker.tick().await;
    loop {
        tokio::select! {
            done = &mut added => return Ok(done?.into_inner().status),
            _ = ticker.tick() => {
                if quiet {
                    continue;
                }
                if let Ok(s) = watcher.status(ClusterStatusRequest {}).await {
                    let s = s.into_inner();
                    match s.members.iter().find(|m| m.node_id == id) {
                        Some(m) if m.matched_index > 0 => eprintln!(
                            "node {id} catching up: holds {} of {} entries",
                            m.matched_index, s.last_log_index
                        ),
                        _ => eprintln!("node {id} catching up (receiving the log or a snapshot)"),
                    }
                }
            }
        }
    }
}

/// Runs one cluster command against the first answering node of `endpoints`, printing the
/// resulting status.
pub async fn run(target: &super::Target, command: ClusterCommand) -> anyhow::Result<()> {
    let json_output = target.json;
    let mut client = ClusterClient::new(connect_any(target).await?);
    let (what, status) = match command {
        ClusterCommand::Digest => {
            let d = client
                .state_digest(StateDigestRequest {})
                .await?
                .into_inner();
            let hex: String = d.digest.iter().map(|b| format!("{b:02x}")).collect();
            if json_output {
                let doc = json!({"node_id": d.node_id, "applied_index": d.applied_index,
                    "digest": hex, "keys": d.keys});
                println!("{doc}");
            } else {
                println!(
                    "node {} applied {}: {} keys, sha256 {hex}",
                    d.node_id, d.applied_index, d.keys
                );
            }
            return Ok(());
        }
        ClusterCommand::Snapshot => {
            let r = client
                .trigger_snapshot(TriggerSnapshotRequest {})
                .await?
                .into_inner();
            if json_output {
                println!(
                    "{}",
                    json!({"node_id": r.node_id, "building_snapshot": true})
                );
            } else {
                println!("node {} is building a snapshot", r.node_id);
            }
            return Ok(());
        }
        ClusterCommand::PurgeLog { upto } => {
            let r = client
                .purge_log(PurgeLogRequest { upto })
                .await?
                .into_inner();
            if json_output {
                println!(
                    "{}",
                    json!({"node_id": r.node_id, "purging_up_to": r.purging_upto})
                );
            } else if r.purging_upto == 0 {
                println!("node {}: no log entry can be purged yet", r.node_id);
            } else {
                println!(
                    "node {}: its log is purged up to {} (in the background)",
                    r.node_id, r.purging_upto
                );
            }
            return Ok(());
        }
        ClusterCommand::CompactRecords => {
            let r = client
                .compact_records(CompactRecordsRequest {})
                .await?
                .into_inner();
            if json_output {
                println!(
                    "{}",
                    json!({"record_format": r.record_format, "revision": r.revision})
                );
            } else {
                println!(
                    "the cluster writes record format {} (as of revision {})",
                    r.record_format, r.revision
                );
            }
            return Ok(());
        }
        ClusterCommand::AddLearner {
            node_id,
            addr,
            timeout,
        } => {
            let request = AddLearnerRequest {
                node_id,
                addr,
                timeout_ms: timeout.saturating_mul(1000),
            };
            let status = add_learner(&mut client, request, json_output).await?;
            (
                format!("node {node_id} added as a learner and caught up"),
                status,
            )
        }
        ClusterCommand::Promote { node_id, force } => {
            let r = client
                .promote(PromoteRequest { node_id, force })
                .await?
                .into_inner();
            (format!("node {node_id} is now a voter"), r.status)
        }
        ClusterCommand::Remove { node_id } => {
            let r = client.remove(RemoveRequest { node_id }).await?.into_inner();
            (
                format!("node {node_id} removed; it can be stopped"),
                r.status,
            )
        }
        ClusterCommand::Status => {
            let r = client.status(ClusterStatusRequest {}).await?.into_inner();
            (String::new(), Some(r))
        }
    };
    let status = status.unwrap_or_default();
    if json_output {
        println!("{}", to_json(&what, &status));
    } else {
        if !what.is_empty() {
            println!("{what}");
        }
        print!("{}", render(&status));
    }
    Ok(())
}

fn role(role: i32) -> &'static str {
    match MemberRole::try_from(role) {
        Ok(MemberRole::Voter) => "voter",
        Ok(MemberRole::Learner) => "learner",
        _ => "unknown",
    }
}

/// The status as a JSON document.
fn to_json(done: &str, s: &ClusterStatusResponse) -> serde_json::Value {
    json!({
        "done": done,
        "node_id": s.node_id,
        "leader_id": s.leader_id,
        "term": s.term,
        "last_log_index": s.last_log_index,
        "committed_index": s.committed_index,
        "applied_index": s.applied_index,
        "snapshot_index": s.snapshot_index,
        "purged_index": s.purged_index,
        "changing": s.changing,
        "record_format": s.record_format,
        "members": s.members.iter().map(|m| json!({
            "node_id": m.node_id,
            "addr": m.addr,
            "client_addr": m.client_addr,
            "role": role(m.role),
            "leader": m.leader,
            "matched_index": m.matched_index,
            "lag": m.lag,
        })).collect::<Vec<_>>(),
    })
}

/// The status as a table for people.
fn render(s: &ClusterStatusResponse) -> String {
    let leader = match s.leader_id {
        0 => "none".to_owned(),
        id => id.to_string(),
    };
    let mut out = format!(
        "answered by node {}; leader {leader}; term {}{}\n\
         log {} / committed {} / applied {} / snapshot {} / purged {}; record format {}\n",
        s.node_id,
        s.term,
        if s.changing {
            " (membership change in progress)"
        } else {
            ""
        },
        s.last_log_index,
        s.committed_index,
        s.applied_index,
        s.snapshot_index,
        s.purged_index,
        s.record_format,
    );
    out.push_str(&format!(
        "{:>6}  {:<24} {:<24} {:<8} {:>8} {:>8}\n",
        "id", "client addr", "peer addr", "role", "matched", "lag"
    ));
    for m in &s.members {
        out.push_str(&format!(
            "{:>6}  {:<24} {:<24} {:<8} {:>8} {:>8}{}\n",
            m.node_id,
            if m.client_addr.is_empty() {
                "?"
            } else {
                &m.client_addr
            },
            m.addr,
            role(m.role),
            m.matched_index,
            m.lag,
            if m.leader { "  (leader)" } else { "" }
        ));
    }
    out
}
