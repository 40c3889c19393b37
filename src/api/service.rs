//! [`Authority`]: the shared context of the handlers, and its binding to the generated
//! `SessionAuthority` tonic service. Handlers never hold a lock across `.await`: the Raft
//! node and the state reader are internally synchronized.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::limits::{Admitted, StreamLimiter};
use crate::config::Config;
use crate::domain::StateError;
use crate::proto::internal::{command, Command};
use crate::proto::v1::session_authority_server::SessionAuthority;
use crate::proto::v1::*;
use crate::proto::SCHEMA_VERSION;
use crate::raft::{Applied, RaftNode};
use crate::store::StateReader;
use crate::token;
use crate::Error;

/// What every handler needs: the Raft node and the configuration (defaults and limits).
#[derive(Clone)]
pub struct Authority {
    node: RaftNode,
    config: Arc<Config>,
    stopping: tokio::sync::watch::Receiver<bool>,
    streams: Arc<StreamLimiter>,
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
            streams: Arc::default(),
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
            ..Default::default()
        };
        self.node.propose(command).await
    }

    /// Proposes one command under an idempotency key: a retry (same key, same fingerprint)
    /// gets the first result with the first revision; the key reused with another
    /// fingerprint is FAILED_PRECONDITION naming `request_id`, and changes nothing.
    pub async fn propose_idempotent(
        &self,
        now_ms: i64,
        idempotency: Idempotency,
        kind: command::Kind,
    ) -> Result<Applied, Error> {
        let command = Command {
            schema_version: SCHEMA_VERSION,
            now_ms,
            request_key: idempotency.key,
            request_fingerprint: idempotency.fingerprint,
            kind: Some(kind),
        };
        let mut applied = self.node.propose(command).await?;
        if applied.result.request_mismatch {
            return Err(Error::Conflict(
                "request_id: already used for a request with other parameters".into(),
            ));
        }
        if applied.result.deduplicated && applied.result.first_revision != 0 {
            applied.revision = applied.result.first_revision;
        }
        Ok(applied)
    }

    /// Whether `absent` is proven on a linearizable view of the state: first checked on this
    /// node's applied state (a write that finds what it needs costs nothing more), then,
    /// when it holds there, again after a read barrier. Returns the revision of the proof.
    /// For facts that stay true once true (see [`crate::domain::absence`]), the caller may
    /// then answer without proposing anything.
    pub async fn proven_absent(
        &self,
        absent: impl Fn(&StateReader) -> Result<bool, StateError>,
    ) -> Result<Option<u64>, Error> {
        let state = self.node.state();
        if !absent(state)? {
            return Ok(None);
        }
        self.node.ensure_linearizable().await?;
        let revision = state.applied_index();
        Ok(absent(state)?.then_some(revision))
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

/// A request's idempotency key and fingerprint, or none (the client sent no request id).
#[derive(Debug, Default)]
pub struct Idempotency {
    key: Vec<u8>,
    fingerprint: Vec<u8>,
}

impl Idempotency {
    /// The key of `request_id` for `operation` in `scope` (empty `request_id`: none), bound
    /// to the request's parameters by `fingerprint` (a [`crate::token::Fingerprint`]).
    pub fn new(scope: &[u8], operation: &str, request_id: &str, fingerprint: Vec<u8>) -> Self {
        if request_id.is_empty() {
            return Idempotency::default();
        }
        Idempotency {
            key: token::request_key(scope, operation, request_id).to_vec(),
            fingerprint,
        }
    }
}

pub use crate::clock::now_ms;

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

    type WatchRevocationsStream = Admitted<super::watch::RevocationStream>;

    async fn watch_revocations(
        &self,
        request: Request<WatchRevocationsRequest>,
    ) -> Result<Response<Self::WatchRevocationsStream>, Status> {
        let slot = self.streams.admit(request.remote_addr())?;
        let stream = super::watch::watch(self, request.into_inner())?;
        Ok(Response::new(Admitted::new(stream, slot)))
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
