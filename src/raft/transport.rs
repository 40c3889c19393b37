//! The node-to-node gRPC service: Raft RPCs into the local openraft instance, and the
//! requests followers forward to this node while it leads. It is served on the peer
//! listener only, behind [`PeerGuard`], which admits a request only from a node of this
//! cluster that is a member (or any node of this cluster while this one waits to be added).

use std::sync::Arc;

use openraft::error::{InstallSnapshotError, RaftError};
use tonic::{Request, Response, Status};

use super::network::{PEER_CLUSTER_METADATA, PEER_NODE_METADATA};
use super::{wire, RaftNode};
use crate::auth::audit;
use crate::proto::internal::raft_transport_server::RaftTransport;
use crate::proto::internal::{
    AppendEntriesMessage, AppendEntriesReply, Command, DescribeMessage, DescribeReply,
    ProposeMessage, ProposeReply, ReadIndexMessage, ReadIndexReply, SnapshotChunkMessage,
    SnapshotChunkReply, VoteMessage, VoteReply,
};
use crate::tls::{cert_identity, CertIdentity};
use crate::Error;

/// The node a peer request comes from, as [`PeerGuard`] established it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerId(pub u64);

/// Admits a peer request only if it carries this cluster's id and comes from a node of this
/// cluster that is a member (any node of the cluster while this one is in no cluster yet).
/// With TLS, the sender's id is the one its certificate names; without (the loopback
/// development mode), the one it claims.
#[derive(Clone)]
pub struct PeerGuard {
    node: RaftNode,
    cluster_id: String,
    tls: bool,
}

impl PeerGuard {
    /// The guard of `node` in cluster `cluster_id`; `tls` says whether the peer listener
    /// requires certificates (then a request without one is refused).
    pub fn new(node: RaftNode, cluster_id: &str, tls: bool) -> Self {
        PeerGuard {
            node,
            cluster_id: cluster_id.to_owned(),
            tls,
        }
    }

    fn sender(&self, request: &Request<()>) -> Result<u64, &'static str> {
        let metadata = request.metadata();
        let cluster = metadata
            .get(PEER_CLUSTER_METADATA)
            .and_then(|v| v.to_str().ok())
            .ok_or("no cluster id")?;
        if cluster != self.cluster_id {
            return Err("cluster id mismatch");
        }
        let claimed: u64 = metadata
            .get(PEER_NODE_METADATA)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or("no sender node id")?;
        if self.tls {
            let certs = request.peer_certs().ok_or("no client certificate")?;
            let leaf = certs.first().ok_or("no client certificate")?;
            match cert_identity(leaf) {
                Some(CertIdentity::Node { cluster, id }) if cluster == self.cluster_id => {
                    if id != claimed {
                        return Err("the sender's node id is not the one its certificate names");
                    }
                }
                Some(CertIdentity::Node { .. }) => {
                    return Err("the certificate is for a node of another cluster")
                }
                _ => return Err("the certificate is not a node certificate"),
            }
        }
        let metrics = self.node.raft().metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        let in_a_cluster = membership.nodes().next().is_some();
        if in_a_cluster && membership.get_node(&claimed).is_none() {
            return Err("the sender is not a member of the cluster");
        }
        Ok(claimed)
    }
}

impl tonic::service::Interceptor for PeerGuard {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        match self.sender(&request) {
            Ok(id) => {
                request.extensions_mut().insert(PeerId(id));
                Ok(request)
            }
            Err(reason) => {
                audit::peer_refused(request.remote_addr(), "RaftTransport", reason);
                Err(Status::permission_denied(format!("peer refused: {reason}")))
            }
        }
    }
}

/// PERMISSION_DENIED unless the Raft message's leader or candidate (`claimed`) is the
/// node [`PeerGuard`] admitted: a node may not speak for another.
fn check_speaks_for_itself<T>(request: &Request<T>, claimed: Option<u64>) -> Result<(), Status> {
    let sender = request.extensions().get::<PeerId>().map(|p| p.0);
    if sender.is_some() && sender == claimed {
        return Ok(());
    }
    audit::peer_refused(
        request.remote_addr(),
        "RaftTransport",
        "vote or append on behalf of another node",
    );
    Err(Status::permission_denied(
        "peer refused: a node may only vote or append as itself",
    ))
}

/// Checks a command proposed by a peer (as strictly as the public API checks requests) and
/// may put this node's policy into it; an error refuses the proposal.
pub type CommandCheck = Arc<dyn Fn(&mut Command) -> Result<(), Error> + Send + Sync>;

/// Serves this node's Raft RPCs and forwarded requests.
#[derive(Clone)]
pub struct TransportService {
    node: RaftNode,
    check: CommandCheck,
}

impl TransportService {
    /// The service of `node`, holding proposed commands to `check`.
    pub fn new(node: RaftNode, check: CommandCheck) -> Self {
        TransportService { node, check }
    }
}

fn bad_message(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("undecodable message: {e}"))
}

fn raft_failed<E: std::fmt::Display>(e: RaftError<u64, E>) -> Status {
    Status::unavailable(format!("raft: {e}"))
}

/// Errors of forwarded requests: "not the leader" is a precondition the sender acts on.
fn forwarded_failed(e: Error) -> Status {
    match e {
        Error::NotLeader { .. } => Status::failed_precondition("not the leader"),
        Error::InvalidArgument { field, reason } => {
            Status::invalid_argument(format!("{field}: {reason}"))
        }
        Error::Unavailable(m) => Status::unavailable(m),
        Error::Conflict(m) => Status::failed_precondition(m),
        Error::Storage(_) | Error::Internal(_) => Status::internal("internal error"),
    }
}

#[tonic::async_trait]
impl RaftTransport for TransportService {
    async fn append_entries(
        &self,
        request: Request<AppendEntriesMessage>,
    ) -> Result<Response<AppendEntriesReply>, Status> {
        let rpc = wire::append_entries_request(request.get_ref()).map_err(bad_message)?;
        check_speaks_for_itself(&request, rpc.vote.leader_id().voted_for())?;
        let response = self
            .node
            .raft()
            .append_entries(rpc)
            .await
            .map_err(raft_failed)?;
        Ok(Response::new(wire::append_entries_reply(&response)))
    }

    async fn vote(&self, request: Request<VoteMessage>) -> Result<Response<VoteReply>, Status> {
        let rpc = wire::vote_request(request.get_ref()).map_err(bad_message)?;
        check_speaks_for_itself(&request, rpc.vote.leader_id().voted_for())?;
        let response = self.node.raft().vote(rpc).await.map_err(raft_failed)?;
        Ok(Response::new(wire::vote_reply(&response)))
    }

    async fn install_snapshot(
        &self,
        request: Request<SnapshotChunkMessage>,
    ) -> Result<Response<SnapshotChunkReply>, Status> {
        let rpc = wire::snapshot_chunk_request(request.into_inner()).map_err(bad_message)?;
        if let Ok(mut receiving) = crate::metrics::SNAPSHOT_RECEIVING.lock() {
            receiving.chunk("receive", rpc.offset, rpc.data.len(), rpc.done);
        }
        match self.node.raft().install_snapshot(rpc).await {
            Ok(response) => Ok(Response::new(wire::snapshot_chunk_reply(&response))),
            Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(m))) => Err(
                Status::failed_precondition(format!("snapshot mismatch: {m}")),
            ),
            Err(e) => Err(raft_failed(e)),
        }
    }

    async fn propose(
        &self,
        request: Request<ProposeMessage>,
    ) -> Result<Response<ProposeReply>, Status> {
        let mut command = request
            .into_inner()
            .command
            .ok_or_else(|| Status::invalid_argument("command: must be set"))?;
        (self.check)(&mut command).map_err(forwarded_failed)?;
        let applied = self
            .node
            .propose_here(command)
            .await
            .map_err(forwarded_failed)?;
        Ok(Response::new(ProposeReply {
            revision: applied.revision,
            result: Some(applied.result),
        }))
    }

    async fn read_index(
        &self,
        _request: Request<ReadIndexMessage>,
    ) -> Result<Response<ReadIndexReply>, Status> {
        let index = self
            .node
            .read_index_here()
            .await
            .map_err(forwarded_failed)?;
        Ok(Response::new(ReadIndexReply { index }))
    }

    async fn describe(
        &self,
        _request: Request<DescribeMessage>,
    ) -> Result<Response<DescribeReply>, Status> {
        Ok(Response::new(DescribeReply {
            node_id: self.node.node_id(),
            client_addr: self.node.client_addr().to_owned(),
        }))
    }
}
