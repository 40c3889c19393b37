//! The node-to-node gRPC service: Raft RPCs into the local openraft instance, and the
//! requests followers forward to this node while it leads.

use std::sync::Arc;

use openraft::error::{InstallSnapshotError, RaftError};
use tonic::{Request, Response, Status};

use super::{wire, RaftNode};
use crate::proto::internal::raft_transport_server::RaftTransport;
use crate::proto::internal::{
    AppendEntriesMessage, AppendEntriesReply, Command, ProposeMessage, ProposeReply,
    ReadIndexMessage, ReadIndexReply, SnapshotChunkMessage, SnapshotChunkReply, VoteMessage,
    VoteReply,
};
use crate::Error;

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
        let response = self.node.raft().vote(rpc).await.map_err(raft_failed)?;
        Ok(Response::new(wire::vote_reply(&response)))
    }

    async fn install_snapshot(
        &self,
        request: Request<SnapshotChunkMessage>,
    ) -> Result<Response<SnapshotChunkReply>, Status> {
        let rpc = wire::snapshot_chunk_request(request.into_inner()).map_err(bad_message)?;
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
}
