//! Revoke: end a session, a family, all of a user's sessions in a tenant, or a tenant.
//! One command whatever the scope, so the revocation is atomic and has one revision; a user
//! or tenant revocation is O(1) in the state machine (a revoked-before watermark, see
//! `domain::revoke`), so it is acknowledged as fast as any write whatever its size.

use super::authority::{now_ms, unexpected_result, Authority, Idempotency};
use super::{proposal, validate};
use crate::proto::internal::{command, command_result, Revoke};
use crate::proto::v1::{RevokeRequest, RevokeResponse};
use crate::token::Fingerprint;
use crate::Error;

/// Handles one Revoke request.
pub async fn handle(
    authority: &Authority,
    request: RevokeRequest,
) -> Result<RevokeResponse, Error> {
    validate::tenant("tenant", &request.tenant)?;
    let scope = proposal::revoke_target("scope", "id", request.scope, &request.id)?;
    let reason = validate::client_reason("reason", request.reason)?;
    validate::request_id("request_id", &request.request_id)?;

    let idempotency = Idempotency::new(
        request.tenant.as_bytes(),
        "Revoke",
        &request.request_id,
        Fingerprint::new("Revoke")
            .int(scope as i64)
            .text(&request.id)
            .int(reason as i64)
            .finish(),
    );
    let command = Revoke {
        tenant: request.tenant,
        scope: scope as i32,
        id: request.id,
        reason: reason as i32,
    };
    let applied = authority
        .propose_idempotent(now_ms(), idempotency, command::Kind::Revoke(command))
        .await?;
    match applied.result.kind {
        Some(command_result::Kind::Revoke(r)) => Ok(RevokeResponse {
            revoked_count: r.revoked_count,
            revision: applied.revision,
        }),
        _ => Err(unexpected_result()),
    }
}
