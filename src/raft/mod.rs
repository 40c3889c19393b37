//! The Raft node: openraft wired to the sled store and the network, behind the few calls
//! the API layer needs (propose a command, wait for a linearizable read, read the applied
//! state).

mod coalesce;
mod group_commit;
pub mod lease;
pub mod network;
pub mod schedule;
pub mod transport;
mod wire;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, ForwardToLeader, RaftError};
use openraft::storage::RaftLogStorage;
use openraft::{BasicNode, Config, Raft, RaftMetrics, ServerState, SnapshotPolicy};

use coalesce::Coalescer;
use group_commit::GroupCommit;
use network::{PeerError, Peers};
use schedule::SnapshotSchedule;

use crate::proto::internal::{Command, CommandResult};
use crate::store::{Flusher, LogStore, RebuildProbe, SledOptions, StateReader, Store};
use crate::Error;

pub use crate::store::TypeConfig;

/// How to open a node.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// This node's id in the cluster.
    pub node_id: u64,
    /// Where its database and snapshots live.
    pub data_dir: PathBuf,
    /// The address other nodes reach its peer listener at: its address in the membership.
    pub advertise_addr: String,
    /// The address clients reach its client listener at (told to peers that ask).
    pub client_addr: String,
    /// The cluster's id, sent with every peer request.
    pub cluster_id: String,
    /// TLS of the connections to peers (`None`: plaintext).
    pub peer_tls: Option<tonic::transport::ClientTlsConfig>,
    /// Leader heartbeat interval.
    pub heartbeat_ms: u64,
    /// Lower bound of the randomized election timeout.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomized election timeout.
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after at least this many applied entries since the last ...
    pub snapshot_logs_since_last: u64,
    /// ... and once the log since the last holds this fraction of its file's size in bytes
    /// ([`schedule`]).
    pub snapshot_log_fraction: f64,
    /// Entries kept in the log behind a snapshot (for slow followers).
    pub max_in_snapshot_log_to_keep: u64,
    /// How the sled databases are opened (page cache, compression).
    pub sled: SledOptions,
    /// Whether the leader answers LINEARIZABLE reads from its lease ([`lease`]) when it
    /// holds one, instead of a quorum round per read.
    pub lease_reads: bool,
}

/// A command applied by the state machine.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The log index of the command: the revision of what it changed.
    pub revision: u64,
    /// What applying it produced.
    pub result: CommandResult,
}

/// A running Raft node. Cheap to clone.
#[derive(Clone)]
pub struct RaftNode {
    inner: Arc<Inner>,
}

struct Inner {
    id: u64,
    data_dir: PathBuf,
    advertise_addr: String,
    client_addr: String,
    raft: Raft<TypeConfig>,
    state: StateReader,
    flusher: Flusher,
    peers: Peers,
    /// Groups concurrent proposals into shared log entries.
    group_commit: GroupCommit,
    /// Shares confirmation rounds among concurrent linearizable reads on this node.
    linearizable_reads: Arc<Coalescer<Result<(), Error>>>,
    /// Shares quorum confirmations among concurrent read-index requests while leading.
    leader_read_indexes: Arc<Coalescer<Result<u64, Error>>>,
    /// How long a lease read may trust a quorum's acceptance (`None`: lease reads off).
    lease: Option<Duration>,
    /// The last log index this node held when it started: the floor of every read index it
    /// names as leader (see [`RaftNode::read_index_here`]).
    last_log_at_start: u64,
}

/// How long a request waits for a leader (elected, or reachable) before UNAVAILABLE.
const LEADER_DEADLINE: Duration = Duration::from_secs(10);
/// How long a write may wait to be committed before the caller is told its outcome is
/// unknown (a leader cut off from its quorum cannot commit; a retry with the same request id
/// is safe).
const WRITE_DEADLINE: Duration = Duration::from_secs(10);
/// Deadline of each snapshot chunk RPC. The last chunk's answer waits for the whole install
/// (openraft 0.9), which takes minutes for millions of sessions; a shorter deadline makes the
/// leader restart the transfer while the first install still runs.
const SNAPSHOT_CHUNK_TIMEOUT: Duration = Duration::from_secs(600);
/// Snapshot bytes per chunk RPC (well under the peer message limit).
const SNAPSHOT_CHUNK_BYTES: u64 = 8 * 1024 * 1024;
/// Most entries per AppendEntries (each can be a group-commit batch of up to 1 MiB; the
/// network also refuses payloads above `network::MAX_APPEND_PAYLOAD_BYTES`).
const MAX_PAYLOAD_ENTRIES: u64 = 64;
/// Most log entries one check of the snapshot schedule reads to count their bytes ...
const COUNTED_PER_CHECK: usize = 4096;
/// ... and how often the schedule is checked: after a restart, the entries since the
/// snapshot (at 1M sessions, up to ~300 MB) are counted over seconds, not read at once
/// beside the cold start.
const SCHEDULE_CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// How long a node waits for the build it asked for before it asks again.
const BUILD_ASKED_AGAIN: Duration = Duration::from_secs(30);
/// How often a node asks whether its state database is due for a rebuild.
const REBUILD_PROBE_INTERVAL: Duration = Duration::from_secs(60);
/// Pause between attempts to find or reach the leader.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

impl RaftNode {
    /// Opens the node's storage under `options.data_dir` and starts Raft on it.
    pub async fn open(options: NodeOptions) -> Result<Self, Error> {
        let store = Store::open(&options.data_dir, options.sled)?;
        let config = Config {
            cluster_name: options.cluster_id.clone(),
            heartbeat_interval: options.heartbeat_ms,
            election_timeout_min: options.election_timeout_min_ms,
            election_timeout_max: options.election_timeout_max_ms,
            snapshot_policy: SnapshotPolicy::Never,
            // openraft's own purge after each build is off: [`schedule_builds`] asks for it
            // ([`purge_behind`]).
            max_in_snapshot_log_to_keep: u64::MAX,
            install_snapshot_timeout: SNAPSHOT_CHUNK_TIMEOUT.as_millis() as u64,
            snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
            max_payload_entries: MAX_PAYLOAD_ENTRIES,
            ..Default::default()
        }
        .validate()
        .map_err(|e| Error::invalid("raft", e.to_string()))?;
        let state = store.state_machine.reader();
        let rebuild_probe = store.state_machine.rebuild_probe();
        let snapshot_path = store.state_machine.current_snapshot_path();
        let log = store.log.clone();
        let last_log_at_start = log
            .clone()
            .get_log_state()
            .await
            .map_err(|e| Error::Unavailable(format!("cannot read the log: {e}")))?
            .last_log_id
            .map_or(0, |id| id.index);
        let peers = Peers::new(&options.cluster_id, options.node_id, options.peer_tls);
        let raft = Raft::new(
            options.node_id,
            Arc::new(config),
            peers.clone(),
            store.log,
            store.state_machine,
        )
        .await
        .map_err(|e| Error::Unavailable(format!("raft did not start: {e}")))?;
        tokio::spawn(schedule_builds(
            raft.clone(),
            SnapshotSchedule {
                min_entries: options.snapshot_logs_since_last,
                log_fraction: options.snapshot_log_fraction,
            },
            log,
            snapshot_path,
            rebuild_probe,
            options.max_in_snapshot_log_to_keep,
        ));
        Ok(RaftNode {
            inner: Arc::new(Inner {
                id: options.node_id,
                data_dir: options.data_dir,
                advertise_addr: options.advertise_addr,
                client_addr: options.client_addr,
                group_commit: GroupCommit::start(raft.clone()),
                raft,
                state,
                flusher: store.flusher,
                peers,
                linearizable_reads: Arc::default(),
                leader_read_indexes: Arc::default(),
                lease: options.lease_reads.then(|| {
                    lease::lease_duration(Duration::from_millis(options.election_timeout_max_ms))
                }),
                last_log_at_start,
            }),
        })
    }

    /// Makes this node a one-voter cluster if it has never been part of one (no vote, no
    /// log) and answers true; does nothing and answers false otherwise.
    pub async fn initialize_single_if_new(&self) -> Result<bool, Error> {
        let raft = &self.inner.raft;
        if raft.is_initialized().await.map_err(raft_stopped)? {
            return Ok(false);
        }
        let members = BTreeMap::from([(self.inner.id, BasicNode::new(&self.inner.advertise_addr))]);
        match raft.initialize(members).await {
            Ok(()) => Ok(true),
            Err(RaftError::APIError(e)) => Err(Error::Internal(format!("initialize: {e}"))),
            Err(RaftError::Fatal(e)) => Err(raft_stopped(e)),
        }
    }

    /// Replicates and applies one command, wherever the leader is: on this node if it leads,
    /// otherwise forwarded to the leader. A forwarded command without a request key gets a
    /// fresh one, so that re-sending it after an ambiguous failure (to the next leader, or
    /// here once this node leads) cannot apply it twice; the answer is then the command's
    /// own ([`own_answer`]).
    pub async fn propose(&self, mut command: Command) -> Result<Applied, Error> {
        let node_keyed = command.request_key.is_empty();
        let deadline = Instant::now() + LEADER_DEADLINE;
        loop {
            let attempt = self.propose_here(command.clone()).await;
            let leader = match self.leader_after(attempt, deadline).await? {
                Here::Done(done) => return done.map(|applied| own_answer(applied, node_keyed)),
                Here::Forward(id, addr) => (id, addr),
                Here::Retry => continue,
            };
            if node_keyed && command.request_key.is_empty() {
                command.request_key = rand::random::<[u8; 32]>().to_vec();
                command.request_time_ms = command.now_ms.max(0) as u64;
            }
            match self
                .inner
                .peers
                .propose(leader.0, &leader.1, command.clone())
                .await
            {
                Ok((revision, result)) => {
                    return Ok(own_answer(Applied { revision, result }, node_keyed));
                }
                Err(PeerError::Refused(_, status))
                    if status.code() == tonic::Code::InvalidArgument =>
                {
                    return Err(Error::Internal(format!(
                        "leader refused a command: {}",
                        status.message()
                    )));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "forwarding to the leader failed; retrying");
                    self.pause_before_retry(deadline, "the leader cannot be reached")
                        .await?;
                }
            }
        }
    }

    /// Proposes `command` to the local Raft instance only (this node must lead), grouped
    /// with concurrent proposals into one log entry.
    pub async fn propose_here(&self, command: Command) -> Result<Applied, Error> {
        self.inner.group_commit.propose(command).await
    }

    /// Waits until this node's applied state includes every write committed before the call:
    /// the leader confirms its leadership with a quorum and names a read index, and this
    /// node waits until it has applied that far. Concurrent calls share one confirmation
    /// round that starts after all of them arrived.
    pub async fn ensure_linearizable(&self) -> Result<(), Error> {
        let node = self.clone();
        self.inner
            .linearizable_reads
            .join(move || {
                let node = node.clone();
                async move { node.confirm_read_index_and_catch_up().await }
            })
            .await
            .unwrap_or_else(|| Err(Error::Internal("read confirmation task failed".into())))
    }

    /// One confirmation round of [`RaftNode::ensure_linearizable`].
    async fn confirm_read_index_and_catch_up(&self) -> Result<(), Error> {
        let deadline = Instant::now() + LEADER_DEADLINE;
        loop {
            let (id, addr) = match self.other_leader() {
                Some(leader) => leader,
                None => {
                    let attempt = self.read_index_here().await;
                    match self.leader_after(attempt, deadline).await? {
                        Here::Done(done) => return done.map(|_| ()),
                        Here::Forward(id, addr) => (id, addr),
                        Here::Retry => continue,
                    }
                }
            };
            match self.inner.peers.read_index(id, &addr).await {
                Ok(index) => {
                    let wait = deadline.saturating_duration_since(Instant::now());
                    return self
                        .inner
                        .raft
                        .wait(Some(wait))
                        .applied_index_at_least(Some(index), "read index applied")
                        .await
                        .map(|_| ())
                        .map_err(|e| Error::Unavailable(format!("not caught up: {e}")));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "read index from the leader failed; retrying");
                    self.pause_before_retry(deadline, "the leader cannot be reached")
                        .await?;
                }
            }
        }
    }

    /// Sorts out an attempt made on this node: answered (with a result or an error other than
    /// "not the leader"), to be forwarded to the other leader it names, or (no other leader
    /// known) to be made again after a pause, unless `deadline` is too near.
    async fn leader_after<T>(
        &self,
        attempt: Result<T, Error>,
        deadline: Instant,
    ) -> Result<Here<T>, Error> {
        match attempt {
            Err(Error::NotLeader {
                leader_id: Some(id),
                leader_addr: Some(addr),
            }) if id != self.inner.id => Ok(Here::Forward(id, addr)),
            Err(Error::NotLeader { .. }) => {
                self.pause_before_retry(deadline, "no leader is known")
                    .await?;
                Ok(Here::Retry)
            }
            done => Ok(Here::Done(done)),
        }
    }

    /// The leader this node's Raft metrics name, with its peer address, when that is another
    /// node: a follower then asks it for the read index at once, without first asking its
    /// own Raft core (two rounds through it that end in "forward to the leader"). Metrics
    /// may lag a change of leader; the node asked must still prove that it leads, so a
    /// stale answer here costs a retry, never a stale read.
    fn other_leader(&self) -> Option<(u64, String)> {
        let metrics = self.inner.raft.metrics();
        let metrics = metrics.borrow();
        let leader = metrics.current_leader.filter(|l| *l != self.inner.id)?;
        let node = metrics.membership_config.membership().get_node(&leader)?;
        Some((leader, node.addr.clone()))
    }

    /// As leader: confirms leadership with a quorum, waits until the read index is applied
    /// here, and returns it. Concurrent calls share one quorum round that starts after all
    /// of them arrived.
    ///
    /// The read index is never below the last log index this node held when it started. A
    /// leader that restarts before another is elected resumes leading in its old term
    /// (openraft 0.9), and then names as read index the larger of the first entry of that
    /// term and the commit index it restarted with, which may be behind entries it
    /// committed, and whose writes it acknowledged, before it stopped; a read there would
    /// miss them (chaos seed 5800: a refresh token issued just before the leader was killed
    /// was then refused as unknown). Every entry it committed is in its log, so waiting until
    /// that log is applied closes the gap; a leader elected later proposes an entry past it.
    pub async fn read_index_here(&self) -> Result<u64, Error> {
        let node = self.clone();
        let index = self
            .inner
            .leader_read_indexes
            .join(move || {
                let node = node.clone();
                async move { node.confirm_leadership().await }
            })
            .await
            .unwrap_or_else(|| {
                Err(Error::Internal(
                    "leadership confirmation task failed".into(),
                ))
            })?;
        let floor = self.inner.last_log_at_start;
        if index >= floor {
            return Ok(index);
        }
        self.inner
            .raft
            .wait(Some(LEADER_DEADLINE))
            .applied_index_at_least(Some(floor), "log held at start applied")
            .await
            .map(|_| floor)
            .map_err(|e| Error::Unavailable(format!("not caught up: {e}")))
    }

    /// One quorum round of [`RaftNode::read_index_here`], or none while this node holds a
    /// lease.
    async fn confirm_leadership(&self) -> Result<u64, Error> {
        if let Some(index) = self.lease_read_index().await {
            crate::metrics::READ_CONFIRMATIONS
                .with_label_values(&["lease"])
                .inc();
            let wait = self.inner.raft.wait(Some(LEADER_DEADLINE));
            return wait
                .applied_index_at_least(Some(index), "lease read index applied")
                .await
                .map(|_| index)
                .map_err(|e| Error::Unavailable(format!("not caught up: {e}")));
        }
        crate::metrics::READ_CONFIRMATIONS
            .with_label_values(&["quorum"])
            .inc();
        let confirmed =
            tokio::time::timeout(LEADER_DEADLINE, self.inner.raft.ensure_linearizable())
                .await
                .map_err(|_| {
                    Error::Unavailable("leadership not confirmed by a quorum in time".into())
                })?;
        match confirmed {
            Ok(read_log_id) => Ok(index(read_log_id)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => Err(not_leader(f)),
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => {
                Err(Error::Unavailable(format!("no quorum: {e}")))
            }
            Err(RaftError::Fatal(e)) => Err(raft_stopped(e)),
        }
    }

    /// The read index of a lease read: the commit index, if lease reads are on, this node
    /// leads (seen by the Raft core itself, not from its metrics), has committed an entry of
    /// its own term, and a quorum's acceptances still cover now ([`lease`]).
    async fn lease_read_index(&self) -> Option<u64> {
        let lease = self.inner.lease?;
        let id = self.inner.id;
        let leading = self
            .inner
            .raft
            .with_raft_state(move |st| {
                let vote = *st.vote_ref();
                let leads = st.server_state == ServerState::Leader
                    && vote.is_committed()
                    && vote.leader_id().voted_for() == Some(id);
                let committed = st
                    .committed
                    .filter(|c| leads && c.leader_id.term == vote.leader_id().get_term())?;
                let membership = st.membership_state.effective().membership();
                Some((vote, membership.get_joint_config().clone(), committed.index))
            })
            .await
            .ok()??;
        let (vote, configs, committed) = leading;
        let now = Instant::now();
        let until = self
            .inner
            .peers
            .lease()
            .valid_until(&vote, id, &configs, now, lease)?;
        (until > now).then_some(committed)
    }

    async fn pause_before_retry(&self, deadline: Instant, why: &str) -> Result<(), Error> {
        if Instant::now() + RETRY_PAUSE > deadline {
            return Err(Error::Unavailable(why.to_owned()));
        }
        tokio::time::sleep(RETRY_PAUSE).await;
        Ok(())
    }

    /// Asks Raft to purge the log up to `upto`, no further than the snapshot's last index;
    /// returns the index the log is purged up to once that is done: at least what was purged
    /// already (0: nothing is, and nothing can be yet).
    pub async fn purge_log(&self, upto: u64) -> Result<u64, Error> {
        let (snapshot, purged) = snapshot_and_purged(&self.inner.raft.metrics().borrow());
        let point = upto.min(snapshot);
        if point > purged {
            self.inner
                .raft
                .trigger()
                .purge_log(point)
                .await
                .map_err(raft_stopped)?;
        }
        Ok(point.max(purged))
    }

    /// The connections to peers (and the partition switch of fault tests).
    pub fn peers(&self) -> &Peers {
        &self.inner.peers
    }

    /// The applied state, for queries.
    pub fn state(&self) -> &StateReader {
        &self.inner.state
    }

    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.inner.id
    }

    /// Where this node's database and snapshots live.
    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    /// The address clients reach this node at.
    pub fn client_addr(&self) -> &str {
        &self.inner.client_addr
    }

    /// Whether this node currently believes it leads.
    pub fn is_leader(&self) -> bool {
        self.inner.raft.metrics().borrow().current_leader == Some(self.inner.id)
    }

    /// The underlying openraft handle (metrics, membership changes).
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.inner.raft
    }

    /// Stops Raft and makes everything written so far durable.
    pub async fn shutdown(&self) -> Result<(), Error> {
        self.inner
            .raft
            .shutdown()
            .await
            .map_err(|e| Error::Internal(format!("raft shutdown: {e}")))?;
        tokio::time::timeout(Duration::from_secs(10), self.inner.flusher.flush())
            .await
            .map_err(|_| Error::Unavailable("final flush timed out".into()))?
            .map_err(Error::Unavailable)?;
        self.inner.state.flush().await.map_err(Error::Unavailable)
    }
}

/// The last index of this node's snapshot and of its purged log (0: none), from `m`.
fn snapshot_and_purged(m: &RaftMetrics<u64, BasicNode>) -> (u64, u64) {
    (index(m.snapshot), index(m.purged))
}

/// The index of `id` (0: none).
fn index(id: Option<openraft::LogId<u64>>) -> u64 {
    id.map_or(0, |id| id.index)
}

/// Where the log behind a snapshot ending at `snapshot` is purged, keeping `keep` entries;
/// `None` while that is no further than `purged` (or the last point asked).
///
/// sessiond asks for this purge itself, through the same call as an operator's purge,
/// instead of leaving it to openraft's policy: openraft 0.9 sets its policy point after each
/// build without looking at a point still pending (an operator's purge waiting for a
/// replication that uses those entries), and a lower one moved it backwards (a debug
/// assertion in `update_purge_upto`; the Raft core stopped). Asked through
/// `trigger().purge_log`, a lower point is ignored.
fn purge_behind(snapshot: u64, keep: u64, purged: u64) -> Option<u64> {
    Some(snapshot.saturating_sub(keep)).filter(|point| *point > purged)
}

/// The answer to a command [`RaftNode::propose`] sent: when this node keyed it
/// (`node_keyed`) and a re-sent copy found the first one applied, the first result is this
/// command's own answer, not the repeat of an earlier call that `deduplicated` tells the
/// API about (a rotation marked retried, a create's tokens unsealed), and its revision is
/// the first copy's.
fn own_answer(mut applied: Applied, node_keyed: bool) -> Applied {
    if node_keyed && applied.result.deduplicated {
        applied.result.deduplicated = false;
        if applied.result.first_revision != 0 {
            applied.revision = applied.result.first_revision;
        }
    }
    applied
}

fn not_leader(f: ForwardToLeader<u64, BasicNode>) -> Error {
    Error::NotLeader {
        leader_id: f.leader_id,
        leader_addr: f.leader_node.map(|n| n.addr),
    }
}

/// What became of an attempt made on this node ([`RaftNode::leader_after`]).
enum Here<T> {
    /// Answered here.
    Done(Result<T, Error>),
    /// Another node leads: its id and peer address.
    Forward(u64, String),
    /// No other leader is known yet; try again.
    Retry,
}

/// What a request gets once Raft has stopped on this node (on a fatal error, such as a full
/// disk, or at shutdown). The cause is an operator's matter: it goes to the log (openraft logs
/// it when its core stops), not to the caller.
pub fn raft_stopped(e: impl std::fmt::Display) -> Error {
    tracing::debug!(error = %e, "request refused: raft has stopped");
    Error::Unavailable(RAFT_STOPPED.into())
}

/// The message of [`raft_stopped`].
const RAFT_STOPPED: &str = "raft has stopped on this node (its log says why); try another node";

/// Asks Raft for snapshot builds: when the log since the last snapshot is due for one by
/// `schedule` (checked every [`SCHEDULE_CHECK_INTERVAL`]), and when `probe` says the state
/// database is due for a rebuild (a rebuild follows a build: after a load, writes may stay
/// too slow for the log to call for a build for a long time). Once a snapshot is there, asks
/// for the purge of the log behind it but for `keep` entries ([`purge_behind`]). Ends when
/// Raft stops.
async fn schedule_builds(
    raft: Raft<TypeConfig>,
    schedule: SnapshotSchedule,
    log: LogStore,
    snapshot_path: PathBuf,
    mut probe: RebuildProbe,
    keep: u64,
) {
    let mut metrics = raft.metrics();
    let mut rebuild_ticker = tokio::time::interval(REBUILD_PROBE_INTERVAL);
    rebuild_ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut log_ticker = tokio::time::interval(SCHEDULE_CHECK_INTERVAL);
    log_ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The snapshot index a build was last asked for after, and when: Raft ignores a request
    // while a build runs, so one is asked for again only if no snapshot came of it.
    let mut asked: Option<(u64, Instant)> = None;
    // The last purge point asked for.
    let mut purge_asked = 0;
    loop {
        tokio::select! {
            _ = rebuild_ticker.tick() => {
                // Two file metadata reads and 16 bytes of the snapshot file: cheap inline.
                if !probe.due() {
                    continue;
                }
                tracing::info!(
                    "snapshot build asked for: the state database is due for a rebuild"
                );
            }
            _ = log_ticker.tick() => {
                let (applied, snapshot) = {
                    let m = metrics.borrow();
                    (index(m.last_applied), index(m.snapshot))
                };
                let just_asked = asked
                    .is_some_and(|(at, when)| at == snapshot && when.elapsed() < BUILD_ASKED_AGAIN);
                if just_asked || !log_due(schedule, &log, &snapshot_path, snapshot, applied).await
                {
                    continue;
                }
                asked = Some((snapshot, Instant::now()));
            }
            changed = metrics.changed() => {
                if changed.is_err() {
                    return;
                }
                let (snapshot, purged) = snapshot_and_purged(&metrics.borrow());
                if let Some(point) = purge_behind(snapshot, keep, purged.max(purge_asked)) {
                    purge_asked = point;
                    if raft.trigger().purge_log(point).await.is_err() {
                        return;
                    }
                }
                continue;
            }
        }
        if raft.trigger().snapshot().await.is_err() {
            return;
        }
    }
}

/// Whether `schedule` calls for a build with the entries after the snapshot at
/// `snapshot_path` (ending at `snapshot`) through `applied`; the log is read (in a blocking
/// thread) only once the entry count alone would call for one.
async fn log_due(
    schedule: SnapshotSchedule,
    log: &LogStore,
    snapshot_path: &Path,
    snapshot: u64,
    applied: u64,
) -> bool {
    let entries_since = applied.saturating_sub(snapshot);
    if entries_since < schedule.min_entries {
        return false;
    }
    let snapshot_bytes = std::fs::metadata(snapshot_path).map_or(0, |m| m.len());
    let log = log.clone();
    let counted = tokio::task::spawn_blocking(move || {
        log.bytes_between(snapshot, applied, COUNTED_PER_CHECK)
    })
    .await;
    match counted {
        Ok(Ok(Some(log_bytes))) => schedule.due(entries_since, log_bytes, snapshot_bytes),
        Ok(Ok(None)) => false,
        Ok(Err(e)) => {
            tracing::warn!(
                error = %e,
                "log not readable for the snapshot schedule: the entry count decides"
            );
            true
        }
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::{purge_behind, raft_stopped, Error};

    #[test]
    fn a_stopped_raft_keeps_its_cause_out_of_the_answer() {
        let cause = "when Write Apply(LogId { index: 3410 }): No space left on device";
        match raft_stopped(cause) {
            Error::Unavailable(message) => {
                assert!(message.contains("raft has stopped"), "{message}");
                assert!(!message.contains("3410") && !message.contains("space"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_purge_behind_a_snapshot_keeps_its_entries_and_only_moves_forward() {
        assert_eq!(purge_behind(500, 20, 0), Some(480));
        assert_eq!(purge_behind(500, 0, 0), Some(500));
        assert_eq!(purge_behind(500, 20, 480), None);
        assert_eq!(purge_behind(500, 20, 490), None);
        assert_eq!(purge_behind(10, 20, 0), None);
        assert_eq!(purge_behind(0, 0, 0), None);
    }
}
