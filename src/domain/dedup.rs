//! Where idempotency (dedup) records live, and how a retry finds the record its first
//! attempt left.
//!
//! Up to record format 4 a record's key is the request key alone: a hash, so every record
//! lands on a random leaf of the key space. From format 5 on the key starts with the
//! request's time (the command's `request_time_ms`), so the records of requests made close
//! in time share the newest leaves. A retry carries the same request id, hence the same time
//! and the same key. Records a cluster stored before switching to format 5 stay under their
//! untimed keys until they expire: while any may remain, the untimed-records marker (the
//! latest time one was stored) tells a lookup to try that key too, and garbage collection
//! removes the marker once no record of that age is left.

use super::format::RecordFormat;
use super::records::{self, stored_counter};
use super::{keys, StateError, StateRead, StateWrite};
use crate::proto::internal::{Command, DedupRecord};

/// The place of one command's dedup record: where a first attempt left it, or where this
/// attempt stores it.
pub struct Slot {
    /// The record's key after its tag, as the expiry index names it.
    stored_key: Vec<u8>,
}

/// The slot of `command` (none without a request key) and the record a first attempt left,
/// if any.
pub fn find(
    command: &Command,
    state: &impl StateRead,
) -> Result<Option<(Slot, Option<DedupRecord>)>, StateError> {
    if command.request_key.is_empty() {
        return Ok(None);
    }
    let format = super::format::current(state)?;
    let slot = Slot {
        stored_key: stored_key(command, format),
    };
    let mut first = records::load::<DedupRecord>(state, &keys::dedup(&slot.stored_key))?;
    if first.is_none() && slot.stored_key != command.request_key && untimed_until(state)?.is_some()
    {
        first = records::load(state, &keys::dedup(&command.request_key))?;
    }
    Ok(Some((slot, first)))
}

/// Stores the record of a command applied at `now_ms` in its slot, with its entry in the
/// expiry index.
pub fn remember(state: &mut impl StateWrite, slot: Slot, now_ms: i64, record: &DedupRecord) {
    state.put(keys::dedup_expiry(now_ms, &slot.stored_key), Vec::new());
    records::store(state, keys::dedup(&slot.stored_key), record);
}

/// The key (after the tag) of `command`'s record in `format`.
fn stored_key(command: &Command, format: RecordFormat) -> Vec<u8> {
    if format < RecordFormat::TimedRequests {
        return command.request_key.clone();
    }
    let mut key = command.request_time_ms.to_be_bytes().to_vec();
    key.extend_from_slice(&command.request_key);
    key
}

/// Called when the state moves to format 5 at `now_ms`: if it holds any dedup record (all of
/// them untimed), lookups must also try untimed keys until those records are collected.
pub fn switching_to_timed_keys(state: &mut impl StateWrite, now_ms: i64) -> Result<(), StateError> {
    if state
        .scan_prefix(&keys::dedup_expiry_prefix(), None, 1)?
        .is_empty()
    {
        return Ok(());
    }
    state.put(
        keys::untimed_dedup_until(),
        (now_ms.max(0) as u64).to_be_bytes().to_vec(),
    );
    Ok(())
}

/// The latest time a record was stored under an untimed key, while one may remain.
pub fn untimed_until(state: &impl StateRead) -> Result<Option<i64>, StateError> {
    Ok(stored_counter(state, &keys::untimed_dedup_until())?.map(|ms| ms as i64))
}

/// Forgets the untimed-records marker: every record up to its time was collected.
pub fn untimed_collected(state: &mut impl StateWrite) {
    state.delete(&keys::untimed_dedup_until());
}
