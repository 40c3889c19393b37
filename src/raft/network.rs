//! The Raft network over gRPC: one pooled, reused channel per peer address, request
//! timeouts from openraft's RPC options, and a partition switch that cuts this node off from
//! chosen peers (for fault tests without root). The same peer pool carries the requests a
//! follower forwards to its leader (a client write, a read index).
//!
//! Peers talk to each other's peer listener only: over TLS with this node's certificate when
//! the cluster uses TLS, and with the cluster id and this node's id in the metadata of every
//! request (see [`PEER_CLUSTER_METADATA`]), which the receiver checks.

// openraft's RPC error types are large by design, and they are what its traits return.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use prost::Message;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

use super::lease::LeaseTracker;
use super::{wire, TypeConfig};
use crate::metrics::SnapshotTransfer;
use crate::proto::internal::raft_transport_client::RaftTransportClient;
use crate::proto::internal::{
    AppendEntriesMessage, Command, CommandResult, DescribeMessage, ProposeMessage, ReadIndexMessage,
};

/// Largest message between nodes (appends and snapshot chunks).
pub const MAX_PEER_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Metadata key of the cluster id every peer request carries.
pub const PEER_CLUSTER_METADATA: &str = "sessiond-cluster";
/// Metadata key of the sending node's id every peer request carries.
pub const PEER_NODE_METADATA: &str = "sessiond-node";
/// Largest AppendEntries payload sent at once (more than one entry): a larger range is
/// refused with `PayloadTooLarge`, and openraft retries at once with fewer entries. It also
/// keeps each catch-up RPC well inside its deadline (the heartbeat interval).
pub const MAX_APPEND_PAYLOAD_BYTES: usize = 2 * 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a peer may take to say where its clients reach it.
const DESCRIBE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a failed attempt to ask a peer its client address is remembered.
const DESCRIBE_RETRY: Duration = Duration::from_secs(5);
/// Test-only: `peer=dial,…` pairs of addresses; a peer advertised at `peer` is dialled at
/// `dial` (the fault harness puts a fault-injecting proxy there).
const PEER_DIAL_ENV: &str = "SESSIOND_TEST_PEER_DIAL";

/// The address to dial for a peer advertised at `addr`: itself, unless [`PEER_DIAL_ENV`]
/// maps it elsewhere.
fn dial_addr(addr: &str) -> String {
    static MAP: OnceLock<HashMap<String, String>> = OnceLock::new();
    let map = MAP.get_or_init(|| {
        std::env::var(PEER_DIAL_ENV)
            .unwrap_or_default()
            .split(',')
            .filter_map(|pair| pair.split_once('='))
            .map(|(peer, dial)| (peer.trim().to_owned(), dial.trim().to_owned()))
            .collect()
    });
    map.get(addr).cloned().unwrap_or_else(|| addr.to_owned())
}

/// The connections to this node's peers, shared by Raft replication and forwarding.
#[derive(Clone)]
pub struct Peers {
    inner: Arc<PeersInner>,
}

struct PeersInner {
    cluster_id: MetadataValue<tonic::metadata::Ascii>,
    node_id: MetadataValue<tonic::metadata::Ascii>,
    tls: RwLock<Option<ClientTlsConfig>>,
    channels: Mutex<HashMap<String, Channel>>,
    blocked: RwLock<BTreeSet<u64>>,
    /// Client addresses of peers by (id, peer address): the answer, or when asking failed.
    client_addrs: Mutex<HashMap<(u64, String), Result<String, Instant>>>,
    /// Which AppendEntries the peers accepted, for lease reads.
    lease: LeaseTracker,
}

/// Why a request to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The peer cannot be reached (down, partitioned, not listening).
    #[error("peer {0} unreachable: {1}")]
    Unreachable(u64, String),
    /// The peer did not answer within the request's deadline (busy, or its link stalls).
    #[error("peer {0} did not answer in time: {1}")]
    TimedOut(u64, String),
    /// The peer answered with an error.
    #[error("peer {0} refused: {1}")]
    Refused(u64, Status),
}

impl Peers {
    /// The peer pool of node `node_id` of cluster `cluster_id`, connecting with `tls` (or in
    /// plaintext).
    pub fn new(cluster_id: &str, node_id: u64, tls: Option<ClientTlsConfig>) -> Self {
        Peers {
            inner: Arc::new(PeersInner {
                cluster_id: MetadataValue::try_from(cluster_id)
                    .unwrap_or_else(|_| MetadataValue::from_static("invalid")),
                node_id: MetadataValue::from(node_id),
                tls: RwLock::new(tls),
                channels: Mutex::default(),
                blocked: RwLock::default(),
                client_addrs: Mutex::default(),
                lease: LeaseTracker::default(),
            }),
        }
    }

    /// Replaces the TLS settings (after a certificate rotation): connections opened from now
    /// on use them.
    pub fn set_tls(&self, tls: ClientTlsConfig) {
        if let Ok(mut current) = self.inner.tls.write() {
            *current = Some(tls);
        }
        if let Ok(mut channels) = self.inner.channels.lock() {
            channels.clear();
        }
    }

    /// The TLS settings of this node's outgoing connections, if the cluster uses TLS.
    pub fn tls(&self) -> Option<ClientTlsConfig> {
        self.inner.tls.read().ok().and_then(|t| t.clone())
    }

    /// A request carrying the cluster id and this node's id.
    fn request<T>(&self, message: T, timeout: Duration) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(timeout);
        let metadata = request.metadata_mut();
        metadata.insert(PEER_CLUSTER_METADATA, self.inner.cluster_id.clone());
        metadata.insert(PEER_NODE_METADATA, self.inner.node_id.clone());
        request
    }

    /// The AppendEntries the peers accepted from this node, for lease reads.
    pub fn lease(&self) -> &LeaseTracker {
        &self.inner.lease
    }

    /// Cuts (or, with an empty set, restores) this node's links to `peers`: every request to
    /// them fails as unreachable.
    pub fn set_partitioned_from(&self, peers: impl IntoIterator<Item = u64>) {
        if let Ok(mut blocked) = self.inner.blocked.write() {
            *blocked = peers.into_iter().collect();
        }
    }

    fn is_blocked(&self, target: u64) -> bool {
        self.inner
            .blocked
            .read()
            .map(|b| b.contains(&target))
            .unwrap_or(false)
    }

    /// A client on the (pooled) channel to `addr`, unless `target` is partitioned away.
    fn client(&self, target: u64, addr: &str) -> Result<RaftTransportClient<Channel>, PeerError> {
        if self.is_blocked(target) {
            return Err(PeerError::Unreachable(target, "partitioned".into()));
        }
        let mut channels = self
            .inner
            .channels
            .lock()
            .map_err(|_| PeerError::Unreachable(target, "peer pool poisoned".into()))?;
        let channel = match channels.get(addr) {
            Some(channel) => channel.clone(),
            None => {
                let tls = self.tls();
                let scheme = if tls.is_some() { "https" } else { "http" };
                let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", dial_addr(addr)))
                    .map_err(|e| PeerError::Unreachable(target, e.to_string()))?
                    .connect_timeout(CONNECT_TIMEOUT)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(10));
                if let Some(tls) = tls {
                    endpoint = endpoint
                        .tls_config(tls)
                        .map_err(|e| PeerError::Unreachable(target, e.to_string()))?;
                }
                let channel = endpoint.connect_lazy();
                channels.insert(addr.to_owned(), channel.clone());
                channel
            }
        };
        Ok(RaftTransportClient::new(channel)
            .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES))
    }

    /// Has the leader `target` at `addr` apply `command`.
    pub async fn propose(
        &self,
        target: u64,
        addr: &str,
        command: Command,
    ) -> Result<(u64, CommandResult), PeerError> {
        let mut client = self.client(target, addr)?;
        let request = self.request(
            ProposeMessage {
                command: Some(command),
            },
            FORWARD_TIMEOUT,
        );
        let reply = client
            .propose(request)
            .await
            .map_err(|s| status_error(target, s))?
            .into_inner();
        Ok((reply.revision, reply.result.unwrap_or_default()))
    }

    /// Asks the leader `target` at `addr` for a read index.
    pub async fn read_index(&self, target: u64, addr: &str) -> Result<u64, PeerError> {
        let mut client = self.client(target, addr)?;
        let request = self.request(ReadIndexMessage {}, FORWARD_TIMEOUT);
        Ok(client
            .read_index(request)
            .await
            .map_err(|s| status_error(target, s))?
            .into_inner()
            .index)
    }

    /// The client address of peer `target` at `peer_addr`, asked once and remembered (a
    /// failed attempt is retried after a few seconds); `None` if it cannot be asked now.
    pub async fn client_addr(&self, target: u64, peer_addr: &str) -> Option<String> {
        let key = (target, peer_addr.to_owned());
        if let Ok(known) = self.inner.client_addrs.lock() {
            match known.get(&key) {
                Some(Ok(addr)) => return Some(addr.clone()),
                Some(Err(at)) if at.elapsed() < DESCRIBE_RETRY => return None,
                _ => {}
            }
        }
        let asked = async {
            let mut client = self.client(target, peer_addr)?;
            let reply = client
                .describe(self.request(DescribeMessage {}, DESCRIBE_TIMEOUT))
                .await
                .map_err(|s| status_error(target, s))?
                .into_inner();
            if reply.node_id != target {
                return Err(PeerError::Refused(
                    target,
                    Status::failed_precondition("another node answers at this address"),
                ));
            }
            Ok(reply.client_addr)
        }
        .await;
        let answer = asked.map_err(|e| {
            tracing::debug!(error = %e, "cannot ask a peer for its client address");
            Instant::now()
        });
        if let Ok(mut known) = self.inner.client_addrs.lock() {
            known.insert(key, answer.clone());
        }
        answer.ok()
    }
}

fn status_error(target: u64, status: Status) -> PeerError {
    match status.code() {
        Code::Unavailable | Code::Unknown => {
            PeerError::Unreachable(target, status.message().to_owned())
        }
        Code::DeadlineExceeded | Code::Cancelled => {
            PeerError::TimedOut(target, status.message().to_owned())
        }
        _ => PeerError::Refused(target, status),
    }
}

/// openraft stops replicating to a peer for [`PeerLink::backoff`] after an `Unreachable`
/// error, and retries at its next heartbeat or entry after any other. A peer that only
/// answered late (busy building a snapshot on shared cores, say) is not unreachable: with
/// the backoff, every AppendEntries over its deadline (the heartbeat interval) stopped
/// replication to that follower for 500 ms, and with both followers late, commits stopped
/// (three nodes building at once during a 1M-session load: 1,391 such timeouts in 13
/// minutes, creates p99.9 364 ms, worst 923 ms).
impl<E: std::error::Error> From<PeerError> for RPCError<u64, BasicNode, E> {
    fn from(e: PeerError) -> Self {
        match e {
            PeerError::Unreachable(..) => RPCError::Unreachable(Unreachable::new(&e)),
            PeerError::TimedOut(..) | PeerError::Refused(..) => {
                RPCError::Network(NetworkError::new(&e))
            }
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for Peers {
    type Network = PeerLink;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Self::Network {
        PeerLink {
            peers: self.clone(),
            target,
            addr: node.addr.clone(),
            transfer: SnapshotTransfer::default(),
        }
    }
}

/// Raft's view of one peer.
pub struct PeerLink {
    peers: Peers,
    target: u64,
    addr: String,
    /// The snapshot being sent to the peer, timed for the metrics.
    transfer: SnapshotTransfer,
}

type RpcResult<T, E = RaftError<u64>> = Result<T, RPCError<u64, BasicNode, E>>;

fn undecodable<E: std::error::Error>(
    e: crate::store::codec::CodecError,
) -> RPCError<u64, BasicNode, E> {
    RPCError::Network(NetworkError::new(&e))
}

impl PeerLink {
    fn request<T>(&self, message: T, option: &RPCOption) -> tonic::Request<T> {
        self.peers.request(message, option.hard_ttl())
    }
}

/// `None` if `message` fits in `budget` bytes or carries a single entry (always sent, so a
/// follower can make progress); otherwise how many leading entries fit (at least one).
fn entries_fitting(message: &AppendEntriesMessage, budget: usize) -> Option<u64> {
    if message.entries.len() <= 1 || message.encoded_len() <= budget {
        return None;
    }
    let mut used = message.encoded_len()
        - message
            .entries
            .iter()
            .map(|e| prost::length_delimiter_len(e.encoded_len()) + 1 + e.encoded_len())
            .sum::<usize>();
    let fitting = message
        .entries
        .iter()
        .take_while(|e| {
            used += prost::length_delimiter_len(e.encoded_len()) + 1 + e.encoded_len();
            used <= budget
        })
        .count();
    Some(fitting.max(1) as u64)
}

impl RaftNetwork<TypeConfig> for PeerLink {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>> {
        let message = wire::append_entries_message(&rpc);
        if let Some(fitting) = entries_fitting(&message, MAX_APPEND_PAYLOAD_BYTES) {
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(fitting),
            ));
        }
        let mut client = self.peers.client(self.target, &self.addr)?;
        let request = self.request(message, &option);
        let sent_at = Instant::now();
        let reply = client
            .append_entries(request)
            .await
            .map_err(|s| status_error(self.target, s))?;
        let response = wire::append_entries_response(reply.get_ref()).map_err(undecodable)?;
        if !matches!(response, AppendEntriesResponse::HigherVote(_)) {
            self.peers.lease().accepted(self.target, &rpc.vote, sent_at);
        }
        Ok(response)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>> {
        let mut client = self.peers.client(self.target, &self.addr)?;
        let request = self.request(wire::snapshot_chunk_message(&rpc), &option);
        let reply = client
            .install_snapshot(request)
            .await
            .map_err(|s| status_error(self.target, s))?;
        self.transfer
            .chunk("send", rpc.offset, rpc.data.len(), rpc.done);
        wire::snapshot_chunk_response(reply.get_ref()).map_err(undecodable)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>> {
        let mut client = self.peers.client(self.target, &self.addr)?;
        let request = self.request(wire::vote_message(&rpc), &option);
        let reply = client
            .vote(request)
            .await
            .map_err(|s| status_error(self.target, s))?;
        wire::vote_response(reply.get_ref()).map_err(undecodable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::internal::LogEntryRecord;

    fn rpc_error(status: Status) -> RPCError<u64, BasicNode, RaftError<u64>> {
        status_error(2, status).into()
    }

    #[test]
    fn only_a_peer_that_cannot_be_reached_gets_the_backoff() {
        assert!(matches!(
            rpc_error(Status::unavailable("connection refused")),
            RPCError::Unreachable(_)
        ));
        for late in [
            Status::cancelled("Timeout expired"),
            Status::deadline_exceeded("deadline"),
        ] {
            assert!(matches!(rpc_error(late), RPCError::Network(_)));
        }
        assert!(matches!(
            rpc_error(Status::permission_denied("not a member")),
            RPCError::Network(_)
        ));
    }

    fn message_with_entries(sizes: &[usize]) -> AppendEntriesMessage {
        AppendEntriesMessage {
            entries: sizes
                .iter()
                .map(|n| LogEntryRecord {
                    payload: Some(crate::proto::internal::log_entry_record::Payload::Command(
                        vec![7; *n],
                    )),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn an_oversized_append_is_refused_with_the_number_of_entries_that_fit() {
        let budget = 10_000;
        assert_eq!(
            entries_fitting(&message_with_entries(&[4_000; 2]), budget),
            None
        );
        assert_eq!(
            entries_fitting(&message_with_entries(&[50_000]), budget),
            None
        );
        assert_eq!(
            entries_fitting(&message_with_entries(&[4_000; 5]), budget),
            Some(2)
        );
        assert_eq!(
            entries_fitting(&message_with_entries(&[20_000, 10]), budget),
            Some(1)
        );
        let fitting = entries_fitting(&message_with_entries(&[1_000; 40]), budget).unwrap();
        let sent = message_with_entries(&vec![1_000; fitting as usize]);
        assert!(sent.encoded_len() <= budget);
        let one_more = message_with_entries(&vec![1_000; fitting as usize + 1]);
        assert!(one_more.encoded_len() > budget);
    }
}
