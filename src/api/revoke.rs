//! Revoke: end a session, a family, all of a user's sessions in a tenant, or a tenant.
//! One command whatever the scope, so the revocation is atomic and has one revision.

use super::create::mismatched;
use super::service::{now_ms, Authority, Idempotency};
use super::validate;
use crate::proto::internal::{command, command_result, Revoke};
use crate::proto::v1::{RevokeRequest, RevokeResponse, RevokeScope};
use crate::token::{Fingerprint, IdKind};
use crate::Error;

/// Handles one Revoke request.
pub async fn handle(
    authority: &Authority,
    request: RevokeRequest,
) -> Result<RevokeResponse, Error> {
    validate::tenant("tenant", &request.tenant)?;
    let scope: RevokeScope = validate::known_enum("scope", request.scope)?;
    match scope {
        RevokeScope::Unspecified => return Err(Error::invalid("scope", "must be set")),
        RevokeScope::Session => validate::id("id", IdKind::Session, &request.id)?,
        RevokeScope::Family => validate::id("id", IdKind::Family, &request.id)?,
        RevokeScope::User => validate::name("id", &request.id)?,
        RevokeScope::Tenant if !request.id.is_empty() => {
            return Err(Error::invalid("id", "must be empty for scope TENANT"))
        }
        RevokeScope::Tenant => {}
    }
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
        _ => Err(mismatched(applied.result.deduplicated)),
    }
}
