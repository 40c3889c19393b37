//! The pure session domain: commands applied to an ordered key space.
//!
//! [`apply`] is the whole state machine: it reads no clock and no random source (the
//! proposer stamps the time and every freshly minted id and token hash into the command), and
//! iterates only in key order, so replicas applying the same commands hold byte-identical
//! state. Each command lives in its own module; [`sessions`] keeps the records and their
//! indexes in step; [`query`] answers reads.

pub mod absence;
mod create;
mod dedup;
pub mod events;
pub mod format;
mod gc;
mod keys;
mod lease;
pub mod query;
mod records;
mod revoke;
mod rotate;
mod sessions;
pub mod state;
pub mod time;
mod touch;

#[cfg(test)]
mod dedup_tests;
#[cfg(test)]
mod paging_tests;
#[cfg(test)]
mod tests;

use crate::proto::internal::{
    command, command_result, BatchResult, CommandBatch, CommandResult, DedupRecord, SessionRecord,
};
use crate::proto::v1::RotateOutcome;
use crate::proto::{internal::Command, SCHEMA_VERSION};
pub use state::{MemoryState, StateEntry, StateError, StateRead, StateWrite};

/// Applies one command, committed at log index `revision`, to `state`.
///
/// Deterministic: the result and every write depend only on `command`, `revision` and the
/// prior contents of `state`. Keys written by the domain never start with byte `0x00`
/// (that prefix is reserved for the store's own metadata). A command whose non-empty
/// request key was applied before changes nothing and returns the first result, marked
/// `deduplicated`, with the first revision and without events (those were emitted the first
/// time); with another request fingerprint it changes nothing and is marked
/// `request_mismatch`. The one exception is a rotation retried after its successor stopped
/// being current: it is decided anew (see [`rotate::deduplicated`]). A command is applied at
/// the later of its stamp and the latest applied time ([`time`]).
///
/// A command this binary does not understand (a newer schema version, or no kind it knows)
/// is refused with [`StateError::Unsupported`] instead of being skipped: the state machine
/// stops rather than diverge from replicas that do understand it.
pub fn apply(
    command: &Command,
    revision: u64,
    state: &mut impl StateWrite,
) -> Result<CommandResult, StateError> {
    supported(command)?;
    let mut next_event = 0;
    apply_numbering_events(command, revision, &mut next_event, state)
}

/// [`apply`], numbering the events it retains from `next_event` on (the commands of a batch
/// share one revision, so their events continue one sequence).
fn apply_numbering_events(
    command: &Command,
    revision: u64,
    next_event: &mut u32,
    state: &mut impl StateWrite,
) -> Result<CommandResult, StateError> {
    if let Some(command::Kind::Batch(batch)) = &command.kind {
        return apply_batch(batch, revision, next_event, state);
    }
    let mut slot = None;
    if let Some((found_slot, first)) = dedup::find(command, state)? {
        slot = Some(found_slot);
        if let Some(first) = first {
            if first.request_fingerprint != command.request_fingerprint {
                return Ok(CommandResult {
                    schema_version: SCHEMA_VERSION,
                    deduplicated: true,
                    request_mismatch: true,
                    ..Default::default()
                });
            }
            if let Some(result) = first_result(command, first, state)? {
                return Ok(result);
            }
            slot = None;
        }
    }
    let now = command.now_ms.max(time::applied(state)?);
    let restamped;
    let command = if now == command.now_ms {
        command
    } else {
        let mut moved = command.clone();
        time::restamp(&mut moved, now);
        restamped = moved;
        &restamped
    };
    time::record(state, now);
    let mut events = Vec::new();
    let kind = match &command.kind {
        None => return Err(unsupported(command)),
        Some(command::Kind::CreateSession(c)) => create::apply(c, now, state, &mut events)?,
        Some(command::Kind::Rotate(c)) => rotate::apply(c, now, state, &mut events)?,
        Some(command::Kind::AcquireLease(c)) => lease::apply(c, now, state)?,
        Some(command::Kind::Touch(c)) => touch::apply(c, now, state)?,
        Some(command::Kind::Revoke(c)) => revoke::apply(c, now, state, &mut events)?,
        Some(command::Kind::CollectGarbage(c)) => gc::apply(c, now, state)?,
        Some(command::Kind::SetRecordFormat(c)) => format::apply(c, now, state)?,
        Some(command::Kind::Batch(_)) => unreachable!("batches are applied above"),
    };
    events::retain(state, revision, *next_event, &events);
    *next_event = next_event.saturating_add(u32::try_from(events.len()).unwrap_or(u32::MAX));
    let result = CommandResult {
        schema_version: SCHEMA_VERSION,
        deduplicated: false,
        events,
        kind: Some(kind),
        ..Default::default()
    };
    if let Some(slot) = slot {
        dedup::remember(
            state,
            slot,
            now,
            &DedupRecord {
                schema_version: SCHEMA_VERSION,
                applied_at_ms: now,
                result: Some(remembered(&result)),
                revision,
                request_fingerprint: command.request_fingerprint.clone(),
            },
        );
    }
    Ok(result)
}

/// What a dedup record keeps of a first result: what a retry cannot read back from the
/// state (outcome, sealed tokens, evicted ids, expiries), without the events (emitted the
/// first time) and with its session reduced to the id, since [`first_result`] answers with
/// the session as it is now (a rotation's session entirely: [`rotate::deduplicated`] reads
/// it anew). A whole session copy would be most of the record, kept for every create.
fn remembered(result: &CommandResult) -> CommandResult {
    let mut first = CommandResult {
        events: Vec::new(),
        ..result.clone()
    };
    let session = match &mut first.kind {
        Some(command_result::Kind::CreateSession(r)) => &mut r.session,
        Some(command_result::Kind::Touch(r)) => &mut r.session,
        Some(command_result::Kind::Rotate(r)) if r.outcome == RotateOutcome::Rotated as i32 => {
            r.session = None;
            return first;
        }
        _ => return first,
    };
    if let Some(recorded) = session.as_mut() {
        *recorded = SessionRecord {
            session_id: std::mem::take(&mut recorded.session_id),
            ..Default::default()
        };
    }
    first
}

/// The answer to a retry of an applied request (same key, same fingerprint): the first
/// result, marked `deduplicated` and carrying the first revision, with the session as it is
/// now (a session revoked since is not shown as active). None when the request must be
/// decided anew: a rotation whose successor is no longer current (see
/// [`rotate::deduplicated`]). A record written before [`remembered`] holds a whole session
/// copy: it is answered the same way. A session collected since (it expired) is shown by
/// its id alone, which reads as expired.
fn first_result(
    command: &Command,
    first: DedupRecord,
    state: &impl StateRead,
) -> Result<Option<CommandResult>, StateError> {
    let mut result = CommandResult {
        deduplicated: true,
        first_revision: first.revision,
        ..first.result.unwrap_or_default()
    };
    let session = match (&command.kind, &mut result.kind) {
        (Some(command::Kind::Rotate(c)), Some(command_result::Kind::Rotate(r))) => {
            return Ok(rotate::deduplicated(c, r, state)?.then_some(result));
        }
        (_, Some(command_result::Kind::CreateSession(r))) => &mut r.session,
        (_, Some(command_result::Kind::Touch(r))) => &mut r.session,
        _ => return Ok(Some(result)),
    };
    if let Some(recorded) = session.as_mut() {
        if let Some(now) = sessions::stored(state, recorded.session_id.as_bytes())? {
            *recorded = now;
        }
    }
    Ok(Some(result))
}

/// Refuses a command (or a command of a batch) this binary cannot apply faithfully.
fn supported(command: &Command) -> Result<(), StateError> {
    if command.schema_version > SCHEMA_VERSION || command.kind.is_none() {
        return Err(unsupported(command));
    }
    if let Some(command::Kind::Batch(batch)) = &command.kind {
        batch.commands.iter().try_for_each(supported)?;
    }
    Ok(())
}

/// The error for a command this binary does not understand.
fn unsupported(command: &Command) -> StateError {
    StateError::Unsupported(format!(
        "command with schema version {} and {} (this binary applies schema versions up to \
         {SCHEMA_VERSION}); upgrade this node before applying further entries",
        command.schema_version,
        if command.kind.is_some() {
            "a known kind"
        } else {
            "a kind unknown to this binary"
        }
    ))
}

/// Applies the commands of a batch in order at one revision.
fn apply_batch(
    batch: &CommandBatch,
    revision: u64,
    next_event: &mut u32,
    state: &mut impl StateWrite,
) -> Result<CommandResult, StateError> {
    let mut results = Vec::with_capacity(batch.commands.len());
    let mut events = Vec::new();
    for command in &batch.commands {
        let result = apply_numbering_events(command, revision, next_event, state)?;
        events.extend(result.events.iter().cloned());
        results.push(result);
    }
    Ok(CommandResult {
        schema_version: SCHEMA_VERSION,
        deduplicated: false,
        events,
        kind: Some(command_result::Kind::Batch(BatchResult { results })),
        ..Default::default()
    })
}
