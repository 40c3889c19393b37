//! [`Authority`]: the shared context of the handlers, and its binding to the generated
//! `SessionAuthority` tonic service. Handlers never hold a lock across `.await`: the Raft
//! node and the state reader are internally synchronized.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::config::Config;
use crate::proto::internal::{command, Command};
use crate::proto::v1::session_authority_server::SessionAuthority;
use crate::proto::v1::*;
use crate::proto::SCHEMA_VERSION;
use crate::raft::{Applied, RaftNode};
use crate::Error;

/// What every handler needs: the Raft node and the configuration (defaults and limits).
#[derive(Clone)]
pub struct Authority {
    node: RaftNode,
    config: Arc<Config>,
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl Authority {
    /// A service over `node`, applying `config`'s defaults and limits; long-lived streams
    /// end when `stopping` turns true.
    pub fn new(
        node: RaftNode,
        config: Arc<Config>,
        stopping: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        Authority {
            node,
            config,
            stopping,
        }
    }

    /// Turns true when the node begins to stop.
    pub fn stopping(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stopping.clone()
    }

    /// The Raft node this service proposes to and reads from.
    pub fn node(&self) -> &RaftNode {
        &self.node
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Proposes one command stamped with `now_ms`; `request_key` is the hashed idempotency
    /// key or empty.
    pub async fn propose(
        &self,
        now_ms: i64,
        request_key: Vec<u8>,
        kind: command::Kind,
    ) -> Result<Applied, Error> {
        let command = Command {
            schema_version: SCHEMA_VERSION,
            now_ms,
            request_key,
            kind: Some(kind),
        };
        self.node.propose(command).await
    }

    /// The time a read is answered at: this node's clock held to cluster time, i.e. never
    /// before the latest time the leader stamped on an entry this node applied, and at most
    /// one GC interval (the longest an idle leader goes without stamping an entry) plus
    /// [`READ_CLOCK_SLACK_MS`] after it. A node whose clock runs ahead or behind therefore
    /// reports no live session expired early and no expired one alive for long.
    pub fn read_now_ms(&self) -> Result<i64, Error> {
        let wall = crate::clock::now_ms();
        let stamped = crate::domain::time::applied(self.node.state())?;
        if stamped == 0 {
            return Ok(wall);
        }
        let lead = i64::try_from(self.config.gc.interval_ms)
            .unwrap_or(i64::MAX)
            .saturating_add(READ_CLOCK_SLACK_MS);
        Ok(wall.clamp(stamped, stamped.saturating_add(lead)))
    }

    /// Waits until this node's applied state reflects every write acknowledged before the
    /// call, when `consistency` asks for it.
    pub async fn read_barrier(&self, consistency: Consistency) -> Result<(), Error> {
        match consistency {
            Consistency::Local => Ok(()),
            _ => self.node.ensure_linearizable().await,
        }
    }
}

pub use crate::clock::now_ms;

/// How far past the last stamped time (beyond one GC interval) a read's clock may run.
pub const READ_CLOCK_SLACK_MS: i64 = 2_000;

fn reply<T>(result: Result<T, Error>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl SessionAuthority for Authority {
    async fn create_session(
        &self,
        request: Request<CreateSessionRequest>,
    ) -> Result<Response<CreateSessionResponse>, Status> {
        reply(super::create::handle(self, request.into_inner()).await)
    }

    async fn rotate(
        &self,
        request: Request<RotateRequest>,
    ) -> Result<Response<RotateResponse>, Status> {
        reply(super::rotate::handle(self, request.into_inner()).await)
    }

    async fn acquire_renewal_lease(
        &self,
        request: Request<AcquireRenewalLeaseRequest>,
    ) -> Result<Response<AcquireRenewalLeaseResponse>, Status> {
        reply(super::lease::handle(self, request.into_inner()).await)
    }

    async fn lookup(
        &self,
        request: Request<LookupRequest>,
    ) -> Result<Response<LookupResponse>, Status> {
        reply(super::reads::lookup(self, request.into_inner()).await)
    }

    async fn validate_access_token(
        &self,
        request: Request<ValidateAccessTokenRequest>,
    ) -> Result<Response<ValidateAccessTokenResponse>, Status> {
        reply(super::reads::validate_access_token(self, request.into_inner()).await)
    }

    async fn touch(
        &self,
        request: Request<TouchRequest>,
    ) -> Result<Response<TouchResponse>, Status> {
        reply(super::touch::handle(self, request.into_inner()).await)
    }

    async fn revoke(
        &self,
        request: Request<RevokeRequest>,
    ) -> Result<Response<RevokeResponse>, Status> {
        reply(super::revoke::handle(self, request.into_inner()).await)
    }

    async fn list_sessions(
        &self,
        request: Request<ListSessionsRequest>,
    ) -> Result<Response<ListSessionsResponse>, Status> {
        reply(super::reads::list_sessions(self, request.into_inner()).await)
    }

    async fn count_sessions(
        &self,
        request: Request<CountSessionsRequest>,
    ) -> Result<Response<CountSessionsResponse>, Status> {
        reply(super::reads::count_sessions(self, request.into_inner()).await)
    }

    type WatchRevocationsStream = super::watch::RevocationStream;

    async fn watch_revocations(
        &self,
        request: Request<WatchRevocationsRequest>,
    ) -> Result<Response<Self::WatchRevocationsStream>, Status> {
        reply(super::watch::watch(self, request.into_inner()))
    }

    async fn list_revoked(
        &self,
        request: Request<ListRevokedRequest>,
    ) -> Result<Response<ListRevokedResponse>, Status> {
        reply(super::watch::list_revoked(self, request.into_inner()).await)
    }

    async fn get_anomaly_counters(
        &self,
        request: Request<GetAnomalyCountersRequest>,
    ) -> Result<Response<GetAnomalyCountersResponse>, Status> {
        reply(super::reads::anomaly_counters(self, request.into_inner()).await)
    }
}
