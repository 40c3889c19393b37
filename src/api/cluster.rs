//! Cluster administration: add a learner (it catches up by log or snapshot), promote it to
//! voter, remove a node, and report the cluster's status. Any node accepts these requests; a
//! follower relays membership changes to the leader's client listener, with the caller's
//! API key if it gave one, else with this node's certificate (a node is an operator).
//!
//! Member addresses in the membership are peer addresses; the status also gives each
//! member's client address, which the member tells over the peer transport.
//!
//! Three node-local operator calls serve audits and the fault harness: a digest of the
//! applied state, and forcing a snapshot or a log purge on the node asked. Backup streams the
//! node's snapshot file, a consistent point-in-time copy of its state, a chunk at a time.
//!
//! The membership commands tell the truth: AddLearner answers once the leader has replicated
//! to the learner every entry its log held at the call (a snapshot install included), or
//! fails with DEADLINE_EXCEEDED saying how far the learner got; Promote refuses a learner
//! that has not caught up unless forced.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::auth::{audit, Principal};
use crate::domain::format::{self, RecordFormat};
use crate::domain::StateRead;
use crate::proto::internal::{command, command_result, Command, SetRecordFormat, SnapshotRecord};
use crate::proto::v1::cluster_client::ClusterClient;
use crate::proto::v1::cluster_server::Cluster;
use crate::proto::v1::{
    backup_chunk, AddLearnerRequest, BackupChunk, BackupInfo, BackupRequest, ClusterStatusRequest,
    ClusterStatusResponse, CompactRecordsRequest, CompactRecordsResponse, Member, MemberRole,
    MembershipResponse, PromoteRequest, PurgeLogRequest, PurgeLogResponse, RemoveRequest,
    StateDigestRequest, StateDigestResponse, TriggerSnapshotRequest, TriggerSnapshotResponse,
};
use crate::proto::SCHEMA_VERSION;
use crate::raft::{raft_stopped, RaftNode};
use crate::store::{backup, StateReader};
use crate::Error;

/// Entries read per page while the state is digested (bounds the memory a digest takes).
const DIGEST_PAGE: usize = 1_000;
/// Attempts at a digest during which no entry was applied, before giving up.
const DIGEST_ATTEMPTS: usize = 5;

/// How long AddLearner waits for the learner when the request does not say.
const DEFAULT_CATCH_UP_TIMEOUT: Duration = Duration::from_secs(600);

/// Bytes of the snapshot file per Backup message.
const BACKUP_CHUNK_BYTES: usize = 1024 * 1024;
/// Backup messages buffered per stream (bounds its memory to a few chunks).
const BACKUP_BUFFER: usize = 4;
/// How long a Backup waits for the snapshot it needs to be built.
const BACKUP_BUILD_TIMEOUT: Duration = Duration::from_secs(600);
/// How often a Backup waiting for a snapshot asks for a build again (a build already running
/// when it first asked may end before the index it needs).
const BACKUP_RETRIGGER: Duration = Duration::from_secs(5);

/// Most entries a learner may be behind the leader's last log index and still be promoted
/// without `force` (it must also hold the log past the leader's purge point).
pub const PROMOTE_MAX_LAG: u64 = 1_000;

/// The leader's view of node `id`'s replication: the last log index it holds, if known.
fn matched(m: &openraft::RaftMetrics<u64, BasicNode>, id: u64) -> Option<u64> {
    m.replication
        .as_ref()
        .and_then(|r| r.get(&id).copied().flatten())
        .map(|l| l.index)
}

/// The cluster administration service of one node.
#[derive(Clone)]
pub struct ClusterAdmin {
    node: RaftNode,
}

impl ClusterAdmin {
    /// The service of `node`.
    pub fn new(node: RaftNode) -> Self {
        ClusterAdmin { node }
    }

    /// This node's view of the cluster.
    pub async fn status(&self) -> Result<ClusterStatusResponse, Error> {
        let raft = self.node.raft();
        let committed = raft
            .with_raft_state(|s| s.committed.map(|id| id.index))
            .await
            .map_err(raft_stopped)?;
        let m = raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let last_log_index = m.last_log_index.unwrap_or(0);
        let mut members: Vec<Member> = membership
            .nodes()
            .map(|(id, node)| {
                let matched = if *id == m.id {
                    Some(last_log_index)
                } else {
                    matched(&m, *id)
                };
                Member {
                    node_id: *id,
                    addr: node.addr.clone(),
                    role: if voters.contains(id) {
                        MemberRole::Voter
                    } else {
                        MemberRole::Learner
                    } as i32,
                    leader: m.current_leader == Some(*id),
                    matched_index: matched.unwrap_or(0),
                    lag: matched.map_or(0, |i| last_log_index.saturating_sub(i)),
                    client_addr: String::new(),
                }
            })
            .collect();
        self.fill_client_addrs(&mut members).await;
        Ok(ClusterStatusResponse {
            node_id: m.id,
            leader_id: m.current_leader.unwrap_or(0),
            term: m.current_term,
            last_log_index,
            committed_index: committed.unwrap_or(0),
            applied_index: m.last_applied.map_or(0, |id| id.index),
            snapshot_index: m.snapshot.map_or(0, |id| id.index),
            purged_index: m.purged.map_or(0, |id| id.index),
            members,
            changing: membership.get_joint_config().len() > 1,
            record_format: format::current(self.node.state())?.number(),
        })
    }

    /// Sets each member's client address: this node's own, the others' as they tell it
    /// (asked concurrently, remembered).
    async fn fill_client_addrs(&self, members: &mut [Member]) {
        let peers = self.node.peers();
        let own = self.node.node_id();
        let asked = futures::future::join_all(members.iter().map(|m| async move {
            if m.node_id == own {
                Some(self.node.client_addr().to_owned())
            } else {
                peers.client_addr(m.node_id, &m.addr).await
            }
        }))
        .await;
        for (member, addr) in members.iter_mut().zip(asked) {
            member.client_addr = addr.unwrap_or_default();
        }
    }

    /// The leader's (id, peer address) when this node does not lead, to relay a request.
    fn leader_elsewhere(&self) -> Option<(u64, String)> {
        let m = self.node.raft().metrics().borrow().clone();
        let leader = m.current_leader.filter(|id| *id != m.id)?;
        m.membership_config
            .membership()
            .get_node(&leader)
            .map(|n| (leader, n.addr.clone()))
    }

    /// A client of the leader's client listener when another node leads.
    async fn relay(&self) -> Result<Option<ClusterClient<Channel>>, Status> {
        let Some((leader, peer_addr)) = self.leader_elsewhere() else {
            return Ok(None);
        };
        let unreachable = |e: &dyn std::fmt::Display| {
            Status::unavailable(format!("cannot reach the leader (node {leader}): {e}"))
        };
        let addr = self
            .node
            .peers()
            .client_addr(leader, &peer_addr)
            .await
            .ok_or_else(|| unreachable(&"it does not tell its client address"))?;
        let tls = self.node.peers().tls();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| unreachable(&e))?
            .connect_timeout(std::time::Duration::from_secs(5));
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls).map_err(|e| unreachable(&e))?;
        }
        let channel = endpoint.connect().await.map_err(|e| unreachable(&e))?;
        Ok(Some(ClusterClient::new(channel)))
    }

    /// Refuses (FAILED_PRECONDITION) unless learner `id` holds the leader's log to within
    /// [`PROMOTE_MAX_LAG`] entries and past its purge point.
    fn caught_up(&self, id: u64) -> Result<(), Error> {
        let m = self.node.raft().metrics().borrow().clone();
        let membership = m.membership_config.membership();
        if membership.get_node(&id).is_none() || membership.voter_ids().any(|v| v == id) {
            return Err(Error::Conflict(format!(
                "node {id} is not a learner of the cluster; add it first"
            )));
        }
        let last = m.last_log_index.unwrap_or(0);
        let purged = m.purged.map_or(0, |p| p.index);
        match matched(&m, id) {
            Some(i) if i >= purged && last.saturating_sub(i) <= PROMOTE_MAX_LAG => Ok(()),
            held => Err(Error::Conflict(format!(
                "node {id} has not caught up: it holds {} of the leader's {last} entries; \
                 wait for it (cluster status) or promote with force",
                held.map_or("none".to_owned(), |i| i.to_string())
            ))),
        }
    }

    /// The snapshot a backup sends, opened, with its header: one covering index `target`
    /// (0: any), built first if the node has none that does.
    async fn snapshot_covering(
        &self,
        target: u64,
    ) -> Result<(std::fs::File, SnapshotRecord), Error> {
        let deadline = Instant::now() + BACKUP_BUILD_TIMEOUT;
        let raft = self.node.raft();
        loop {
            let dir = self.node.data_dir().to_path_buf();
            let current = tokio::task::spawn_blocking(move || backup::open_current(&dir))
                .await
                .map_err(|e| Error::Internal(format!("snapshot open task failed: {e}")))?
                .map_err(|e| Error::Internal(format!("cannot open the snapshot: {e}")))?;
            if let Some((file, header)) = current {
                if header.last_log_id.as_ref().map_or(0, |id| id.index) >= target {
                    return Ok((file, header));
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::Unavailable(format!(
                    "no snapshot covering index {target} was built within {} s",
                    BACKUP_BUILD_TIMEOUT.as_secs()
                )));
            }
            raft.trigger().snapshot().await.map_err(raft_stopped)?;
            let wait = BACKUP_RETRIGGER.min(deadline.saturating_duration_since(Instant::now()));
            let _ = raft
                .wait(Some(wait))
                .metrics(
                    |m| m.snapshot.is_some_and(|s| s.index >= target),
                    "a snapshot covers the backup's index",
                )
                .await;
        }
    }

    async fn changed(&self) -> Result<Response<MembershipResponse>, Status> {
        Ok(Response::new(MembershipResponse {
            status: Some(self.status().await?),
        }))
    }
}

/// Sends `info`, then the `file`'s bytes in chunks, on `tx`; stops early if the receiver
/// goes away.
async fn send_backup(
    file: std::fs::File,
    info: BackupInfo,
    tx: mpsc::Sender<Result<BackupChunk, Status>>,
) {
    let chunk = |kind| Ok(BackupChunk { kind: Some(kind) });
    let total = info.total_bytes;
    if tx
        .send(chunk(backup_chunk::Kind::Info(info)))
        .await
        .is_err()
    {
        return;
    }
    let mut file = tokio::fs::File::from_std(file);
    let mut sent = 0u64;
    while sent < total {
        let want = BACKUP_CHUNK_BYTES.min((total - sent) as usize);
        let mut data = Vec::with_capacity(want);
        let read = (&mut file).take(want as u64).read_to_end(&mut data).await;
        let message = match read {
            Ok(0) => Err(Status::internal("the snapshot file ended early")),
            Ok(n) => {
                sent += n as u64;
                chunk(backup_chunk::Kind::Data(data))
            }
            Err(e) => {
                tracing::error!(error = %e, "reading the snapshot for a backup failed");
                Err(Status::internal("cannot read the snapshot"))
            }
        };
        let failed = message.is_err();
        if tx.send(message).await.is_err() || failed {
            return;
        }
    }
}

/// The SHA-256 of every key and value of `state` in key order (each length-prefixed), with
/// the number of keys, read page by page.
fn digest_of(state: &StateReader) -> Result<([u8; 32], u64), Error> {
    let mut hasher = Sha256::new();
    let mut keys = 0u64;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = state.scan_prefix(b"", after.as_deref(), DIGEST_PAGE)?;
        for (key, value) in &page {
            hasher.update((key.len() as u64).to_be_bytes());
            hasher.update(key);
            hasher.update((value.len() as u64).to_be_bytes());
            hasher.update(value);
        }
        keys += page.len() as u64;
        let full = page.len() == DIGEST_PAGE;
        match page.into_iter().last() {
            Some((key, _)) if full => after = Some(key),
            _ => return Ok((hasher.finalize().into(), keys)),
        }
    }
}

/// A digest of `state` taken while no entry was applied: the applied index, the digest and
/// the number of keys.
fn stable_digest(state: &StateReader) -> Result<(u64, [u8; 32], u64), Error> {
    for _ in 0..DIGEST_ATTEMPTS {
        let before = state.applied_index();
        let (digest, keys) = digest_of(state)?;
        if state.applied_index() == before {
            return Ok((before, digest, keys));
        }
    }
    Err(Error::Unavailable(
        "entries kept being applied during the digest; retry when the node is quiet".into(),
    ))
}

fn membership_failed(e: RaftError<u64, ClientWriteError<u64, BasicNode>>) -> Error {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => Error::NotLeader {
            leader_id: f.leader_id,
            leader_addr: f.leader_node.map(|n| n.addr),
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => match c {
            ChangeMembershipError::InProgress(_) => Error::Conflict(
                "another membership change is in progress; retry when it ends".into(),
            ),
            ChangeMembershipError::EmptyMembership(_) => {
                Error::Conflict("the cluster cannot be left without voters".into())
            }
            ChangeMembershipError::LearnerNotFound(l) => Error::Conflict(format!(
                "node {} is not a learner of the cluster; add it first",
                l.node_id
            )),
        },
        RaftError::Fatal(f) => raft_stopped(f),
    }
}

/// The caller's `authorization` header, to relay with its request.
fn relayed_key<T>(
    request: &Request<T>,
) -> Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> {
    request.metadata().get("authorization").cloned()
}

/// A request to relay to the leader, with the caller's `authorization` header if it had one.
fn relayed<T>(
    message: T,
    key: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(key) = key {
        request.metadata_mut().insert("authorization", key);
    }
    request
}

fn node_id(id: u64) -> Result<u64, Error> {
    if id == 0 {
        return Err(Error::invalid("node_id", "must be a positive integer"));
    }
    Ok(id)
}

#[tonic::async_trait]
impl Cluster for ClusterAdmin {
    type BackupStream = ReceiverStream<Result<BackupChunk, Status>>;

    async fn backup(
        &self,
        request: Request<BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        let principal = Principal::of(&request)?.clone();
        let target = if request.into_inner().fresh {
            self.node.ensure_linearizable().await?;
            self.node.state().applied_index()
        } else {
            0
        };
        let (file, header) = self.snapshot_covering(target).await?;
        let total_bytes = file
            .metadata()
            .map_err(|e| Error::Internal(format!("cannot read the snapshot's size: {e}")))?
            .len();
        let info = BackupInfo {
            node_id: self.node.node_id(),
            total_bytes,
            last_index: header.last_log_id.as_ref().map_or(0, |id| id.index),
            snapshot_id: header.snapshot_id,
        };
        audit::backup_started(&principal, info.last_index, total_bytes);
        let (tx, rx) = mpsc::channel(BACKUP_BUFFER);
        tokio::spawn(send_backup(file, info, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn add_learner(
        &self,
        request: Request<AddLearnerRequest>,
    ) -> Result<Response<MembershipResponse>, Status> {
        let principal = Principal::of(&request)?.clone();
        let key = relayed_key(&request);
        let r = request.into_inner();
        let id = node_id(r.node_id)?;
        if r.addr.is_empty() || r.addr.len() > 256 || !r.addr.contains(':') {
            return Err(Error::invalid("addr", "must be host:port").into());
        }
        if let Some(mut leader) = self.relay().await? {
            let addr = r.addr.clone();
            let done = leader.add_learner(relayed(r, key)).await?;
            audit::membership_changed(&principal, "add_learner", id, &addr);
            return Ok(done);
        }
        let members = self
            .node
            .raft()
            .metrics()
            .borrow()
            .membership_config
            .clone();
        if let Some(existing) = members.membership().get_node(&id) {
            if existing.addr != r.addr {
                return Err(Error::Conflict(format!(
                    "node {id} is already a member at {}; node ids are never reused",
                    existing.addr
                ))
                .into());
            }
        }
        let raft = self.node.raft();
        let at_call = raft.metrics().borrow().last_log_index.unwrap_or(0);
        let added = raft
            .add_learner(id, BasicNode::new(&r.addr), false)
            .await
            .map_err(membership_failed)?;
        audit::membership_changed(&principal, "add_learner", id, &r.addr);
        let target = at_call.max(added.log_id.index);
        tracing::info!(node_id = id, addr = %r.addr, target, "learner added; waiting for it to catch up");
        let timeout = match r.timeout_ms {
            0 => DEFAULT_CATCH_UP_TIMEOUT,
            ms => Duration::from_millis(ms),
        };
        let caught_up = raft
            .wait(Some(timeout))
            .metrics(
                |m| matched(m, id).is_some_and(|i| i >= target),
                "the learner caught up",
            )
            .await;
        if caught_up.is_err() {
            let m = raft.metrics().borrow().clone();
            let got = matched(&m, id).map_or("nothing".to_owned(), |i| format!("index {i}"));
            return Err(Status::deadline_exceeded(format!(
                "node {id} is a learner but has not caught up within {} ms: it holds {got} of \
                 the {target} entries the leader had; it keeps catching up (see cluster \
                 status); do not promote it before it has",
                timeout.as_millis()
            )));
        }
        tracing::info!(node_id = id, target, "learner caught up");
        self.changed().await
    }

    async fn promote(
        &self,
        request: Request<PromoteRequest>,
    ) -> Result<Response<MembershipResponse>, Status> {
        let principal = Principal::of(&request)?.clone();
        let key = relayed_key(&request);
        let r = request.into_inner();
        let id = node_id(r.node_id)?;
        if let Some(mut leader) = self.relay().await? {
            let done = leader.promote(relayed(r, key)).await?;
            audit::membership_changed(&principal, "promote", id, "");
            return Ok(done);
        }
        if !r.force {
            self.caught_up(id)?;
        }
        self.node
            .raft()
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(membership_failed)?;
        audit::membership_changed(&principal, "promote", id, "");
        self.changed().await
    }

    async fn remove(
        &self,
        request: Request<RemoveRequest>,
    ) -> Result<Response<MembershipResponse>, Status> {
        let principal = Principal::of(&request)?.clone();
        let key = relayed_key(&request);
        let r = request.into_inner();
        let id = node_id(r.node_id)?;
        if let Some(mut leader) = self.relay().await? {
            let done = leader.remove(relayed(r, key)).await?;
            audit::membership_changed(&principal, "remove", id, "");
            return Ok(done);
        }
        let members = self
            .node
            .raft()
            .metrics()
            .borrow()
            .membership_config
            .clone();
        let membership = members.membership();
        if membership.get_node(&id).is_none() {
            return Err(Error::Conflict(format!("node {id} is not a member")).into());
        }
        let ids = BTreeSet::from([id]);
        let change = if membership.voter_ids().any(|v| v == id) {
            ChangeMembers::RemoveVoters(ids)
        } else {
            ChangeMembers::RemoveNodes(ids)
        };
        self.node
            .raft()
            .change_membership(change, false)
            .await
            .map_err(membership_failed)?;
        audit::membership_changed(&principal, "remove", id, "");
        self.changed().await
    }

    async fn status(
        &self,
        _request: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        Ok(Response::new(ClusterAdmin::status(self).await?))
    }

    async fn state_digest(
        &self,
        _request: Request<StateDigestRequest>,
    ) -> Result<Response<StateDigestResponse>, Status> {
        let state = self.node.state().clone();
        let (applied_index, digest, keys) =
            tokio::task::spawn_blocking(move || stable_digest(&state))
                .await
                .map_err(|e| Error::Internal(format!("digest task failed: {e}")))??;
        Ok(Response::new(StateDigestResponse {
            node_id: self.node.node_id(),
            applied_index,
            digest: digest.to_vec(),
            keys,
        }))
    }

    async fn trigger_snapshot(
        &self,
        _request: Request<TriggerSnapshotRequest>,
    ) -> Result<Response<TriggerSnapshotResponse>, Status> {
        self.node
            .raft()
            .trigger()
            .snapshot()
            .await
            .map_err(raft_stopped)?;
        tracing::info!("snapshot requested by an operator");
        Ok(Response::new(TriggerSnapshotResponse {
            node_id: self.node.node_id(),
        }))
    }

    async fn compact_records(
        &self,
        request: Request<CompactRecordsRequest>,
    ) -> Result<Response<CompactRecordsResponse>, Status> {
        let principal = Principal::of(&request)?.clone();
        let response = compact_records(&self.node).await?;
        audit::record_format_set(&principal, response.record_format, response.revision);
        Ok(Response::new(response))
    }

    async fn purge_log(
        &self,
        request: Request<PurgeLogRequest>,
    ) -> Result<Response<PurgeLogResponse>, Status> {
        let upto = request.into_inner().upto;
        if upto == 0 {
            return Err(Error::invalid("upto", "must be a positive log index").into());
        }
        let purging_upto = self.node.purge_log(upto).await?;
        tracing::info!(upto, purging_upto, "log purge requested by an operator");
        Ok(Response::new(PurgeLogResponse {
            node_id: self.node.node_id(),
            purging_upto,
        }))
    }
}

/// Moves the cluster's state to the newest record format through the log (see
/// [`crate::domain::format`]); answers the format it is in afterwards and the command's
/// revision. Changes nothing on a state already there.
pub async fn compact_records(node: &RaftNode) -> Result<CompactRecordsResponse, Error> {
    let command = Command {
        schema_version: SCHEMA_VERSION,
        now_ms: crate::clock::now_ms(),
        kind: Some(command::Kind::SetRecordFormat(SetRecordFormat {
            format: RecordFormat::NEWEST.number(),
        })),
        ..Default::default()
    };
    let applied = node.propose(command).await?;
    match applied.result.kind {
        Some(command_result::Kind::SetRecordFormat(r)) => Ok(CompactRecordsResponse {
            record_format: r.format,
            revision: applied.revision,
        }),
        _ => Err(Error::Internal(
            "a record format command applied as another kind".into(),
        )),
    }
}
