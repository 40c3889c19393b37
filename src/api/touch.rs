//! Touch: record activity on a session, which extends its sliding (idle) expiry.

use super::create::mismatched;
use super::service::{now_ms, Authority};
use super::{convert, validate};
use crate::proto::internal::{command, command_result, Touch};
use crate::proto::v1::{TouchRequest, TouchResponse};
use crate::token::IdKind;
use crate::Error;

/// Handles one Touch request.
pub async fn handle(authority: &Authority, request: TouchRequest) -> Result<TouchResponse, Error> {
    validate::tenant("tenant", &request.tenant)?;
    validate::id("session_id", IdKind::Session, &request.session_id)?;
    let now = now_ms();
    let command = Touch {
        tenant: request.tenant,
        session_id: request.session_id,
    };
    let applied = authority
        .propose(now, Vec::new(), command::Kind::Touch(command))
        .await?;
    match applied.result.kind {
        Some(command_result::Kind::Touch(r)) => Ok(TouchResponse {
            outcome: r.outcome,
            session: convert::optional_session(r.session.as_ref(), now),
            revision: applied.revision,
        }),
        _ => Err(mismatched(applied.result.deduplicated)),
    }
}
