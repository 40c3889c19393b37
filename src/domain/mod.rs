//! The pure session domain: commands applied to an ordered key space.
//!
//! [`apply`] is the whole state machine: it reads no clock and no random source (the
//! proposer stamps the time and every freshly minted id and token hash into the command), and
//! iterates only in key order, so replicas applying the same commands hold byte-identical
//! state. Each command lives in its own module; [`sessions`] keeps the records and their
//! indexes in step; [`query`] answers reads.

mod create;
pub mod events;
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
mod tests;

use crate::proto::internal::{
    command, command_result, BatchResult, CommandBatch, CommandResult, DedupRecord,
};
use crate::proto::{internal::Command, SCHEMA_VERSION};
pub use state::{MemoryState, StateEntry, StateError, StateRead, StateWrite};

/// Applies one command, committed at log index `revision`, to `state`.
///
/// Deterministic: the result and every write depend only on `command`, `revision` and the
/// prior contents of `state`. Keys written by the domain never start with byte `0x00`
/// (that prefix is reserved for the store's own metadata). A command whose non-empty
/// request key was applied before changes nothing and returns the first result, marked
/// `deduplicated` and without events (those were emitted the first time). A command is
/// applied at the later of its stamp and the latest applied time ([`time`]).
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
    let dedup_key = (!command.request_key.is_empty()).then(|| keys::dedup(&command.request_key));
    if let Some(key) = &dedup_key {
        if let Some(first) = records::load::<DedupRecord>(state, key)? {
            return Ok(CommandResult {
                deduplicated: true,
                ..first.result.unwrap_or_default()
            });
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
        Some(command::Kind::Batch(_)) => unreachable!("batches are applied above"),
    };
    events::retain(state, revision, *next_event, &events);
    *next_event = next_event.saturating_add(u32::try_from(events.len()).unwrap_or(u32::MAX));
    let result = CommandResult {
        schema_version: SCHEMA_VERSION,
        deduplicated: false,
        events,
        kind: Some(kind),
    };
    if let Some(key) = dedup_key {
        let first = CommandResult {
            events: Vec::new(),
            ..result.clone()
        };
        records::store(
            state,
            key,
            &DedupRecord {
                schema_version: SCHEMA_VERSION,
                applied_at_ms: now,
                result: Some(first),
            },
        );
        state.put(keys::dedup_expiry(now, &command.request_key), Vec::new());
    }
    Ok(result)
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
    })
}
