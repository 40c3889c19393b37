//! AcquireRenewalLease: a short exclusive claim on a session's renewal. The holder of a live
//! lease renews it (same lease id, new expiry); anyone else is told who holds it.

use super::sessions;
use super::{query, StateError, StateWrite};
use crate::proto::internal::{command_result, AcquireLease, LeaseRecord, LeaseResult};
use crate::proto::v1::{LeaseOutcome, SessionStatus};

/// Applies an AcquireLease command stamped `now_ms`.
pub fn apply(
    command: &AcquireLease,
    now_ms: i64,
    state: &mut impl StateWrite,
) -> Result<command_result::Kind, StateError> {
    let result = |outcome: LeaseOutcome, lease: Option<LeaseRecord>| {
        Ok(command_result::Kind::AcquireLease(LeaseResult {
            outcome: outcome as i32,
            lease,
        }))
    };
    let Some(mut session) = sessions::load(state, command.session_id.as_bytes())?
        .filter(|s| s.tenant == command.tenant)
    else {
        return result(LeaseOutcome::SessionMissing, None);
    };
    match query::status_at(&session, now_ms) {
        SessionStatus::Revoked => return result(LeaseOutcome::Revoked, None),
        SessionStatus::Expired => return result(LeaseOutcome::Expired, None),
        _ => {}
    }
    let live = session.lease.as_ref().filter(|l| l.expires_at_ms > now_ms);
    let lease = match live {
        Some(l) if l.holder != command.holder => {
            return result(
                LeaseOutcome::Held,
                Some(LeaseRecord {
                    lease_id: String::new(),
                    holder: l.holder.clone(),
                    expires_at_ms: l.expires_at_ms,
                }),
            )
        }
        Some(l) => LeaseRecord {
            expires_at_ms: command.expires_at_ms,
            ..l.clone()
        },
        None => LeaseRecord {
            lease_id: command.lease_id.clone(),
            holder: command.holder.clone(),
            expires_at_ms: command.expires_at_ms,
        },
    };
    session.lease = Some(lease.clone());
    sessions::update(state, sessions::effective_expiry(&session), &session)?;
    result(LeaseOutcome::Acquired, Some(lease))
}
