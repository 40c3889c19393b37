//! Touch: record activity on a session, which extends its sliding (idle) expiry. A session
//! that a linearizable read proves missing is answered SESSION_MISSING without a log entry.

use super::authority::{now_ms, unexpected_result, Authority, Idempotency};
use super::{convert, validate};
use crate::domain::absence;
use crate::proto::internal::{command, command_result, Touch};
use crate::proto::v1::TouchOutcome;
use crate::proto::v1::{TouchRequest, TouchResponse};
use crate::token::{Fingerprint, IdKind};
use crate::Error;

/// Handles one Touch request.
pub async fn handle(authority: &Authority, request: TouchRequest) -> Result<TouchResponse, Error> {
    validate::tenant("tenant", &request.tenant)?;
    validate::id("session_id", IdKind::Session, &request.session_id)?;
    validate::request_id("request_id", &request.request_id)?;
    if let Some(revision) = authority
        .proven_absent(|state| {
            absence::session_missing(state, &request.tenant, &request.session_id)
        })
        .await?
    {
        return Ok(TouchResponse {
            outcome: TouchOutcome::SessionMissing as i32,
            revision,
            ..Default::default()
        });
    }
    let idempotency = Idempotency::new(
        request.tenant.as_bytes(),
        "Touch",
        &request.request_id,
        Fingerprint::new("Touch").text(&request.session_id).finish(),
    );
    let now = now_ms();
    let command = Touch {
        tenant: request.tenant,
        session_id: request.session_id,
    };
    let applied = authority
        .propose_idempotent(now, idempotency, command::Kind::Touch(command))
        .await?;
    match applied.result.kind {
        Some(command_result::Kind::Touch(r)) => Ok(TouchResponse {
            outcome: r.outcome,
            session: convert::optional_session(r.session.as_ref(), now),
            revision: applied.revision,
        }),
        _ => Err(unexpected_result()),
    }
}
