//! Copies the node's state into gauges: Raft's term, leader and indexes every second,
//! replication lag per follower (on the leader), and every ten seconds the data directory's
//! size, the snapshots' size and the live sessions of the largest tenants.

use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{IntGauge, IntGaugeVec};
use tokio::sync::watch;

use super::{gauge, gauge_vec};
use crate::domain::query::live_sessions_per_tenant;
use crate::raft::RaftNode;

/// How often Raft's state is copied.
const INTERVAL: Duration = Duration::from_secs(1);
/// Every how many intervals the disk and per-tenant gauges are refreshed.
const SLOW_EVERY: u64 = 10;
/// Tenants labelled by name (the largest); the rest are summed under [`OTHER_TENANTS`].
const MAX_TENANT_LABELS: usize = 20;
/// Tenants whose counters one refresh reads.
const MAX_TENANTS_SCANNED: usize = 100_000;
/// The label of every tenant beyond [`MAX_TENANT_LABELS`].
const OTHER_TENANTS: &str = "_other";

/// Raft gauges, by name.
struct RaftGauges {
    term: IntGauge,
    leader: IntGauge,
    is_leader: IntGauge,
    last_log: IntGauge,
    committed: IntGauge,
    applied: IntGauge,
    snapshot: IntGauge,
    purged: IntGauge,
    quorum_ack_ms: IntGauge,
    matched: IntGaugeVec,
    lag: IntGaugeVec,
    serving: IntGauge,
}

static RAFT: LazyLock<RaftGauges> = LazyLock::new(|| RaftGauges {
    term: gauge("sessiond_raft_term", "Current Raft term"),
    leader: gauge("sessiond_raft_leader_id", "Known leader id (0: none)"),
    is_leader: gauge("sessiond_raft_is_leader", "1 while this node leads"),
    last_log: gauge("sessiond_raft_last_log_index", "Last log index appended"),
    committed: gauge("sessiond_raft_committed_index", "Last log index committed"),
    applied: gauge("sessiond_raft_applied_index", "Last log index applied"),
    snapshot: gauge(
        "sessiond_raft_snapshot_index",
        "Last log index in the snapshot",
    ),
    purged: gauge("sessiond_raft_purged_index", "Last log index purged"),
    quorum_ack_ms: gauge(
        "sessiond_raft_leader_quorum_ack_age_ms",
        "On the leader: ms since a quorum last acknowledged it",
    ),
    matched: gauge_vec(
        "sessiond_raft_replication_matched_index",
        "On the leader: last log index known replicated to each member",
        &["node_id"],
    ),
    lag: gauge_vec(
        "sessiond_raft_replication_lag",
        "On the leader: entries each member is behind the leader's last log index",
        &["node_id"],
    ),
    serving: gauge(
        "sessiond_health_serving",
        "1 while the node reports SERVING",
    ),
});

static STORAGE_BYTES: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "sessiond_storage_bytes",
        "Bytes under the data directory (log, state, snapshots)",
    )
});

static SNAPSHOT_BYTES: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "sessiond_snapshot_bytes",
        "Bytes under the data directory's snapshots/",
    )
});

static LIVE_SESSIONS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "sessiond_sessions_live",
        "Sessions neither revoked nor collected, for the largest tenants (others: _other)",
        &["tenant"],
    )
});

fn index(i: Option<u64>) -> i64 {
    i.map_or(0, |i| i64::try_from(i).unwrap_or(i64::MAX))
}

/// Copies Raft's state, then (every [`SLOW_EVERY`] rounds) the disk and tenant gauges, until
/// `stopped` turns true. `serving` is the health verdict.
pub async fn run(
    node: RaftNode,
    data_dir: PathBuf,
    serving: watch::Receiver<crate::health::Verdict>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut round = 0u64;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        sample_raft(&node).await;
        RAFT.serving.set(i64::from(serving.borrow().is_serving()));
        if round % SLOW_EVERY == 0 {
            sample_disk_and_tenants(&node, &data_dir).await;
        }
        round += 1;
    }
}

async fn sample_raft(node: &RaftNode) {
    let raft = node.raft();
    let committed = raft
        .with_raft_state(|s| s.committed.map(|id| id.index))
        .await
        .ok()
        .flatten();
    let m = raft.metrics().borrow().clone();
    let g = &*RAFT;
    g.term.set(index(Some(m.current_term)));
    g.leader.set(index(m.current_leader));
    g.is_leader.set(i64::from(m.current_leader == Some(m.id)));
    g.last_log.set(index(m.last_log_index));
    g.committed.set(index(committed));
    g.applied.set(index(m.last_applied.map(|id| id.index)));
    g.snapshot.set(index(m.snapshot.map(|id| id.index)));
    g.purged.set(index(m.purged.map(|id| id.index)));
    g.quorum_ack_ms.set(index(m.millis_since_quorum_ack));
    g.matched.reset();
    g.lag.reset();
    let last = m.last_log_index.unwrap_or(0);
    for (id, matched) in m.replication.iter().flatten() {
        let label = id.to_string();
        let matched = matched.map_or(0, |l| l.index);
        g.matched
            .with_label_values(&[&label])
            .set(index(Some(matched)));
        g.lag
            .with_label_values(&[&label])
            .set(index(Some(last.saturating_sub(matched))));
    }
}

async fn sample_disk_and_tenants(node: &RaftNode, data_dir: &Path) {
    let dir = data_dir.to_path_buf();
    let state = node.state().clone();
    let sampled = tokio::task::spawn_blocking(move || {
        let sizes = (dir_bytes(&dir), dir_bytes(&dir.join("snapshots")));
        let tenants = live_sessions_per_tenant(&state, MAX_TENANTS_SCANNED).unwrap_or_default();
        (sizes, tenants)
    })
    .await;
    let Ok(((storage, snapshots), mut tenants)) = sampled else {
        return;
    };
    STORAGE_BYTES.set(index(Some(storage)));
    SNAPSHOT_BYTES.set(index(Some(snapshots)));
    tenants.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    LIVE_SESSIONS.reset();
    let others: u64 = tenants.iter().skip(MAX_TENANT_LABELS).map(|t| t.1).sum();
    for (tenant, live) in tenants.iter().take(MAX_TENANT_LABELS) {
        LIVE_SESSIONS
            .with_label_values(&[tenant.as_str()])
            .set(index(Some(*live)));
    }
    if tenants.len() > MAX_TENANT_LABELS {
        LIVE_SESSIONS
            .with_label_values(&[OTHER_TENANTS])
            .set(index(Some(others)));
    }
}

/// Bytes of the regular files under `dir` (0 when it does not exist).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}
