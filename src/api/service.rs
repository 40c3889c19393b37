//! The binding of [`Authority`] to the generated `SessionAuthority` tonic service: each RPC
//! calls its handler module. Handlers never hold a lock across `.await`: the Raft node and
//! the state reader are internally synchronized.
//!
//! The binding also enforces the caller's tenant scope (its role was checked by
//! `auth::layer` before): a request naming a tenant outside the [`Principal`]'s tenants is
//! PERMISSION_DENIED before its handler runs, a Rotate is checked against the tenant of the
//! presented token's session, and a stream without a tenant filter is limited to the
//! principal's tenants.

use tonic::{Request, Response, Status};

use super::authority::Authority;
use super::limits::Admitted;
use crate::auth::{audit, Principal};
use crate::domain::query;
use crate::proto::v1::session_authority_server::SessionAuthority;
use crate::proto::v1::*;
use crate::token::TokenKind;
use crate::Error;

impl Authority {
    /// The caller of `request` and the request message, once the caller may act in the
    /// tenant the message names and the tenant is within its request rate.
    fn scoped<T>(
        &self,
        request: Request<T>,
        tenant: impl Fn(&T) -> &str,
    ) -> Result<(Principal, T), Status> {
        let principal = Principal::of(&request)?.clone();
        let tenant = tenant(request.get_ref());
        principal.check_tenant(tenant)?;
        self.tenants().admit(tenant)?;
        Ok((principal, request.into_inner()))
    }

    /// Counts a rotation against the rate of the presented token's tenant, when this node
    /// knows the token (an unknown one is answered without a consensus round: see
    /// [`crate::domain::absence`]).
    fn admit_rotation(&self, request: &RotateRequest) -> Result<(), Status> {
        if self.tenants().is_unlimited() {
            return Ok(()); // no rate to count against: no read on the hot path
        }
        let Ok(token) =
            super::validate::raw_token("refresh_token", TokenKind::Refresh, &request.refresh_token)
        else {
            return Ok(()); // the handler answers INVALID_ARGUMENT
        };
        let tenant = query::tenant_of_refresh_hash(self.node().state(), token.hash().as_bytes())
            .map_err(Error::from)?;
        match tenant {
            Some(tenant) => self.tenants().admit(&tenant),
            None => Ok(()),
        }
    }

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
                if query::session_by_refresh_hash(
                    authority.node().state(),
                    tenant,
                    hash.as_bytes(),
                )?
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
        self.node().ensure_linearizable().await?;
        if in_scope(self)? {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "principal '{}' may not rotate this token: its session is in none of its tenants",
            principal.name
        )))
    }
}

fn reply<T>(result: Result<T, Error>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl SessionAuthority for Authority {
    async fn create_session(
        &self,
        request: Request<CreateSessionRequest>,
    ) -> Result<Response<CreateSessionResponse>, Status> {
        let (_, request) = self.scoped(request, |r| &r.tenant)?;
        reply(super::create::handle(self, request).await)
    }

    async fn rotate(
        &self,
        request: Request<RotateRequest>,
    ) -> Result<Response<RotateResponse>, Status> {
        let principal = Principal::of(&request)?.clone();
        self.check_rotate_scope(&principal, request.get_ref())
            .await?;
        self.admit_rotation(request.get_ref())?;
        reply(super::rotate::handle(self, request.into_inner()).await)
    }

    async fn acquire_renewal_lease(
        &self,
        request: Request<AcquireRenewalLeaseRequest>,
    ) -> Result<Response<AcquireRenewalLeaseResponse>, Status> {
        let (_, request) = self.scoped(request, |r| &r.tenant)?;
        reply(super::lease::handle(self, request).await)
    }

    async fn lookup(
        &self,
        request: Request<LookupRequest>,
    ) -> Result<Response<LookupResponse>, Status> {
        let (_, request) = self.scoped(request, |r| &r.tenant)?;
        reply(super::reads::lookup(self, request).await)
    }

    async fn validate_access_token(
        &self,
        request: Request<ValidateAccessTokenRequest>,
    ) -> Result<Response<ValidateAccessTokenResponse>, Status> {
        let (_, request) = self.scoped(request, |r| &r.tenant)?;
        reply(super::reads::validate_access_token(self, request).await)
    }

    async fn touch(
        &self,
        request: Request<TouchRequest>,
    ) -> Result<Response<TouchResponse>, Status> {
        let (_, request) = self.scoped(request, |r| &r.tenant)?;
        reply(super::touch::handle(self, request).await)
    }

    async fn revoke(
        &self,
        request: Request<RevokeRequest>,
    ) -> Result<Response<RevokeResponse>, Status> {
        let (principal, request) = self.scoped(request, |r| &r.tenant)?;
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
        let (_, request) = self.scoped(request, |r| &r.tenant)?;
        reply(super::reads::list_sessions(self, request).await)
    }

    async fn count_sessions(
        &self,
        request: Request<CountSessionsRequest>,
    ) -> Result<Response<CountSessionsResponse>, Status> {
        let (_, request) = self.scoped(request, |r| &r.tenant)?;
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
        let slot = self.streams().admit(remote)?;
        let stream = super::watch::watch(self, request)?;
        Ok(Response::new(Admitted::new(stream, slot)))
    }

    async fn list_revoked(
        &self,
        request: Request<ListRevokedRequest>,
    ) -> Result<Response<ListRevokedResponse>, Status> {
        let (_, request) = self.scoped(request, |r| &r.tenant)?;
        reply(super::watch::list_revoked(self, request).await)
    }

    async fn get_anomaly_counters(
        &self,
        request: Request<GetAnomalyCountersRequest>,
    ) -> Result<Response<GetAnomalyCountersResponse>, Status> {
        let (_, request) = self.scoped(request, |r| &r.tenant)?;
        reply(super::reads::anomaly_counters(self, request).await)
    }
}
