//! AcquireRenewalLease: claim a session's renewal for a short time, so that one of many
//! service instances proceeds with a refresh while the others wait.

use super::authority::{now_ms, unexpected_result, Authority, Idempotency};
use super::{convert, validate};
use crate::proto::internal::{command, command_result, AcquireLease};
use crate::proto::v1::{AcquireRenewalLeaseRequest, AcquireRenewalLeaseResponse};
use crate::token::{self, Fingerprint, IdKind};
use crate::Error;

/// The operation name in AcquireRenewalLease's idempotency keys.
const OPERATION: &str = "AcquireRenewalLease";

/// Handles one AcquireRenewalLease request.
pub async fn handle(
    authority: &Authority,
    request: AcquireRenewalLeaseRequest,
) -> Result<AcquireRenewalLeaseResponse, Error> {
    let policy = &authority.config().sessions;
    validate::tenant("tenant", &request.tenant)?;
    validate::id("session_id", IdKind::Session, &request.session_id)?;
    validate::name("holder", &request.holder)?;
    let ttl_ms = validate::ttl(
        "ttl_ms",
        request.ttl_ms,
        policy.lease_ttl_ms,
        policy.max_lease_ttl_ms,
    )?;
    validate::request_id("request_id", &request.request_id)?;
    let idempotency = Idempotency::new(
        request.tenant.as_bytes(),
        OPERATION,
        &request.request_id,
        Fingerprint::new(OPERATION)
            .text(&request.session_id)
            .text(&request.holder)
            .int(request.ttl_ms)
            .finish(),
    );

    let now = now_ms();
    let command = AcquireLease {
        tenant: request.tenant,
        session_id: request.session_id,
        holder: request.holder,
        lease_id: token::mint_id(IdKind::Lease),
        expires_at_ms: now.saturating_add(ttl_ms),
    };
    let applied = authority
        .propose_idempotent(now, idempotency, command::Kind::AcquireLease(command))
        .await?;
    match applied.result.kind {
        Some(command_result::Kind::AcquireLease(r)) => Ok(AcquireRenewalLeaseResponse {
            outcome: r.outcome,
            lease: r.lease.as_ref().map(convert::lease),
            revision: applied.revision,
        }),
        _ => Err(unexpected_result()),
    }
}
