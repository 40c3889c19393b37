//! Touch: record activity, which moves the session's idle deadline.

use super::sessions;
use super::{query, StateError, StateWrite};
use crate::proto::internal::{command_result, SessionRecord, Touch, TouchResult};
use crate::proto::v1::{SessionStatus, TouchOutcome};

/// Applies a Touch command stamped `now_ms`.
pub fn apply(
    command: &Touch,
    now_ms: i64,
    state: &mut impl StateWrite,
) -> Result<command_result::Kind, StateError> {
    let result = |outcome: TouchOutcome, session: Option<SessionRecord>| {
        Ok(command_result::Kind::Touch(TouchResult {
            outcome: outcome as i32,
            session,
        }))
    };
    let Some(mut session) = sessions::load(state, command.session_id.as_bytes())?
        .filter(|s| s.tenant == command.tenant)
    else {
        return result(TouchOutcome::SessionMissing, None);
    };
    match query::status_at(&session, now_ms) {
        SessionStatus::Revoked => return result(TouchOutcome::Revoked, Some(session)),
        SessionStatus::Expired => return result(TouchOutcome::Expired, Some(session)),
        _ => {}
    }
    let previous_expiry = sessions::effective_expiry(&session);
    session.last_seen_at_ms = session.last_seen_at_ms.max(now_ms);
    sessions::update(state, previous_expiry, &session)?;
    result(TouchOutcome::Touched, Some(session))
}
