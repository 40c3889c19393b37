//! Cluster time: the time a command is applied with.
//!
//! The leader stamps every entry with its clock, and [`apply`](super::apply) never lets time
//! go back: a command is applied at the later of its stamp and the latest time any command
//! was applied with (kept in the state), so time is monotonic across entries and leader
//! changes whatever the clocks do. The absolute deadlines a proposer computed from its own
//! clock (session, access-token and lease expiries) move with the stamp ([`restamp`]), so
//! a proposer's skew changes no lifetime.

use super::records::counter;
use super::{keys, StateError, StateRead, StateWrite};
use crate::proto::internal::{command, Command};

/// The latest time a command was applied with (0 before the first).
pub fn applied(state: &impl StateRead) -> Result<i64, StateError> {
    Ok(counter(state, &keys::applied_time())? as i64)
}

/// Records `now_ms` as the latest applied time (callers never pass an earlier one).
pub fn record(state: &mut impl StateWrite, now_ms: i64) {
    let value = now_ms.max(0) as u64;
    state.put(keys::applied_time(), value.to_be_bytes().to_vec());
}

/// Moves the command (and every command of a batch) to time `now_ms`: its own clock and
/// every absolute deadline derived from it shift by the same amount.
pub fn restamp(command: &mut Command, now_ms: i64) {
    let shift = now_ms.saturating_sub(command.now_ms);
    command.now_ms = now_ms;
    let moved = |at: &mut i64| {
        if *at != 0 {
            *at = at.saturating_add(shift);
        }
    };
    match &mut command.kind {
        Some(command::Kind::CreateSession(c)) => {
            moved(&mut c.expires_at_ms);
            moved(&mut c.access_expires_at_ms);
        }
        Some(command::Kind::Rotate(c)) => moved(&mut c.access_expires_at_ms),
        Some(command::Kind::AcquireLease(c)) => moved(&mut c.expires_at_ms),
        Some(command::Kind::Batch(batch)) => {
            for inner in &mut batch.commands {
                restamp(inner, now_ms);
            }
        }
        Some(
            command::Kind::Touch(_)
            | command::Kind::Revoke(_)
            | command::Kind::CollectGarbage(_)
            | command::Kind::SetRecordFormat(_),
        )
        | None => {}
    }
}
