//! [`Authority`]: the shared context of the handlers, and its binding to the generated
//! `SessionAuthority` tonic service. Handlers never hold a lock across `.await`: the Raft
//! node and the state reader are internally synchronized.
//!
//! The binding also enforces the caller's tenant scope (its role was checked by
//! `auth::layer` before): a request naming a tenant outside the [`Principal`]'s tenants is
//! PERMISSION_DENIED before its handler runs, a Rotate is checked against the tenant of the
//! presented token's session, and a stream without a tenant filter is limited to the
//! principal's tenants.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::limits::{Admitted, StreamLimiter};
use crate::auth::{audit, Principal};
use crate::config::Config;
use crate::domain::{query, StateError};
use crate::proto::internal::{command, Command};
use crate::proto::v1::session_authority_server::SessionAuthority;
use crate::proto::v1::*;
use crate::proto::SCHEMA_VERSION;
use crate::raft::{Applied, RaftNode};
use crate::store::StateReader;
use crate::token::{self, TokenKind};
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

/// The caller of `request` and the request message, once the caller may act in the tenant
/// the message names.
fn scoped<T>(request: Request<T>, tenant: impl Fn(&T) -> &str) -> Result<(Principal, T), Status> {
    let principal = Principal::of(&request)?.clone();
    principal.check_tenant(tenant(request.get_ref()))?;
    Ok((principal, request.into_inner()))
}

impl Authority {
    /// PERMISSION_DENIED unless `principal` may act in the tenant of the session the
    /// presented refresh token belongs to. This node's applied state is asked first; a token
    /// not found there (not yet replicated here) is looked up again after a linearizable
    /// barrier. A token found in none of the principal's tenants is refused (the rotation
    /// would be INVALID_TOKEN or in another tenant).
    async fn check_rotate_scope(
        &self,
        principal: &Principal,
        request: &RotateRequest,
    ) -> Result<(), Status> {
        let Some(tenants) = principal.limited_tenants() else {
            return Ok(());
        };
        let Ok(token) =
            super::validate::raw_token("refresh_token", TokenKind::Refresh, &request.refresh_token)
        else {
            return Ok(()); // the handler answers INVALID_ARGUMENT
        };
        let hash = token.hash();
        let in_scope = |authority: &Authority| -> Result<bool, Error> {
            for tenant in tenants {
                if query::session_by_refresh_hash(authority.node.state(), tenant, hash.as_bytes())?
                    .is_some()
                {
                    return Ok(true);
                }
            }
            Ok(false)
        };
        if in_scope(self)? {
            return Ok(());
        }
        self.node.ensure_linearizable().await?;
        if in_scope(self)? {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "principal '{}' may not rotate this token: its session is in none of its tenants",
            principal.name
        )))
    }
}

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
        let (_, request) = scoped(request, |r| &r.tenant)?;
        reply(super::create::handle(self, request).await)
    }

    async fn rotate(
        &self,
        request: Request<RotateRequest>,
    ) -> Result<Response<RotateResponse>, Status> {
        let principal = Principal::of(&request)?.clone();
        self.check_rotate_scope(&principal, request.get_ref())
            .await?;
        reply(super::rotate::handle(self, request.into_inner()).await)
    }

    async fn acquire_renewal_lease(
        &self,
        request: Request<AcquireRenewalLeaseRequest>,
    ) -> Result<Response<AcquireRenewalLeaseResponse>, Status> {
        let (_, request) = scoped(request, |r| &r.tenant)?;
        reply(super::lease::handle(self, request).await)
    }

    async fn lookup(
        &self,
        request: Request<LookupRequest>,
    ) -> Result<Response<LookupResponse>, Status> {
        let (_, request) = scoped(request, |r| &r.tenant)?;
        reply(super::reads::lookup(self, request).await)
    }

    async fn validate_access_token(
        &self,
        request: Request<ValidateAccessTokenRequest>,
    ) -> Result<Response<ValidateAccessTokenResponse>, Status> {
        let (_, request) = scoped(request, |r| &r.tenant)?;
        reply(super::reads::validate_access_token(self, request).await)
    }

    async fn touch(
        &self,
        request: Request<TouchRequest>,
    ) -> Result<Response<TouchResponse>, Status> {
        let (_, request) = scoped(request, |r| &r.tenant)?;
        reply(super::touch::handle(self, request).await)
    }

    async fn revoke(
        &self,
        request: Request<RevokeRequest>,
    ) -> Result<Response<RevokeResponse>, Status> {
        let (principal, request) = scoped(request, |r| &r.tenant)?;
        let scope = RevokeScope::try_from(request.scope).unwrap_or_default();
        let (tenant, user) = (request.tenant.clone(), request.id.clone());
        let revoked = super::revoke::handle(self, request).await;
        if let (Ok(r), RevokeScope::User | RevokeScope::Tenant) = (&revoked, scope) {
            let scope = if scope == RevokeScope::User {
                "user"
            } else {
                "tenant"
            };
            audit::bulk_revocation(
                &principal,
                &tenant,
                scope,
                &user,
                r.revoked_count,
                r.revision,
            );
        }
        reply(revoked)
    }

    async fn list_sessions(
        &self,
        request: Request<ListSessionsRequest>,
    ) -> Result<Response<ListSessionsResponse>, Status> {
        let (_, request) = scoped(request, |r| &r.tenant)?;
        reply(super::reads::list_sessions(self, request).await)
    }

    async fn count_sessions(
        &self,
        request: Request<CountSessionsRequest>,
    ) -> Result<Response<CountSessionsResponse>, Status> {
        let (_, request) = scoped(request, |r| &r.tenant)?;
        reply(super::reads::count_sessions(self, request).await)
    }

    type WatchRevocationsStream = Admitted<super::watch::RevocationStream>;

    async fn watch_revocations(
        &self,
        request: Request<WatchRevocationsRequest>,
    ) -> Result<Response<Self::WatchRevocationsStream>, Status> {
        let principal = Principal::of(&request)?.clone();
        let remote = request.remote_addr();
        let mut request = request.into_inner();
        if let Some(allowed) = principal.limited_tenants() {
            if request.tenants.is_empty() {
                request.tenants = allowed.iter().cloned().collect();
            }
            for tenant in &request.tenants {
                principal.check_tenant(tenant)?;
            }
        }
        let slot = self.streams.admit(remote)?;
        let stream = super::watch::watch(self, request)?;
        Ok(Response::new(Admitted::new(stream, slot)))
    }

    async fn list_revoked(
        &self,
        request: Request<ListRevokedRequest>,
    ) -> Result<Response<ListRevokedResponse>, Status> {
        let (_, request) = scoped(request, |r| &r.tenant)?;
        reply(super::watch::list_revoked(self, request).await)
    }

    async fn get_anomaly_counters(
        &self,
        request: Request<GetAnomalyCountersRequest>,
    ) -> Result<Response<GetAnomalyCountersResponse>, Status> {
        let (_, request) = scoped(request, |r| &r.tenant)?;
        reply(super::reads::anomaly_counters(self, request).await)
    }
}
