//! The Raft network over gRPC: one pooled, reused channel per peer address, request
//! timeouts from openraft's RPC options, and a partition switch that cuts this node off from
//! chosen peers (for fault tests without root). The same peer pool carries the requests a
//! follower forwards to its leader (a client write, a read index).

// openraft's RPC error types are large by design, and they are what its traits return.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::{wire, TypeConfig};
use crate::proto::internal::raft_transport_client::RaftTransportClient;
use crate::proto::internal::{Command, CommandResult, ProposeMessage, ReadIndexMessage};

/// Largest message between nodes (appends and snapshot chunks).
pub const MAX_PEER_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
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
#[derive(Clone, Default)]
pub struct Peers {
    inner: Arc<PeersInner>,
}

#[derive(Default)]
struct PeersInner {
    channels: Mutex<HashMap<String, Channel>>,
    blocked: RwLock<BTreeSet<u64>>,
}

/// Why a request to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The peer cannot be reached (down, partitioned, not listening).
    #[error("peer {0} unreachable: {1}")]
    Unreachable(u64, String),
    /// The peer answered with an error.
    #[error("peer {0} refused: {1}")]
    Refused(u64, Status),
}

impl Peers {
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
                let channel = Endpoint::from_shared(format!("http://{}", dial_addr(addr)))
                    .map_err(|e| PeerError::Unreachable(target, e.to_string()))?
                    .connect_timeout(CONNECT_TIMEOUT)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(10))
                    .connect_lazy();
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
        let mut request = tonic::Request::new(ProposeMessage {
            command: Some(command),
        });
        request.set_timeout(FORWARD_TIMEOUT);
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
        let mut request = tonic::Request::new(ReadIndexMessage {});
        request.set_timeout(FORWARD_TIMEOUT);
        Ok(client
            .read_index(request)
            .await
            .map_err(|s| status_error(target, s))?
            .into_inner()
            .index)
    }
}

fn status_error(target: u64, status: Status) -> PeerError {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
            PeerError::Unreachable(target, status.message().to_owned())
        }
        _ => PeerError::Refused(target, status),
    }
}

impl<E: std::error::Error> From<PeerError> for RPCError<u64, BasicNode, E> {
    fn from(e: PeerError) -> Self {
        match e {
            PeerError::Unreachable(..) => RPCError::Unreachable(Unreachable::new(&e)),
            PeerError::Refused(..) => RPCError::Network(NetworkError::new(&e)),
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
        }
    }
}

/// Raft's view of one peer.
pub struct PeerLink {
    peers: Peers,
    target: u64,
    addr: String,
}

type RpcResult<T, E = RaftError<u64>> = Result<T, RPCError<u64, BasicNode, E>>;

fn undecodable<E: std::error::Error>(
    e: crate::store::codec::CodecError,
) -> RPCError<u64, BasicNode, E> {
    RPCError::Network(NetworkError::new(&e))
}

impl PeerLink {
    fn request<T>(&self, message: T, option: &RPCOption) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(option.hard_ttl());
        request
    }
}

impl RaftNetwork<TypeConfig> for PeerLink {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>> {
        let mut client = self.peers.client(self.target, &self.addr)?;
        let request = self.request(wire::append_entries_message(&rpc), &option);
        let reply = client
            .append_entries(request)
            .await
            .map_err(|s| status_error(self.target, s))?;
        wire::append_entries_response(reply.get_ref()).map_err(undecodable)
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
