//! Retained revocation events: every event a command causes is kept under the command's
//! revision (its log index), so that stream subscribers can resume from any revision still
//! retained, and compacted after the retention window. The compaction watermark tells a
//! subscriber whose resume point is older that it must resync.

use super::records::{counter, decode, store};
use super::{keys, StateError, StateWrite};
use crate::proto::internal::RevocationEvent;

/// Retains the events caused by the command at `revision`, numbered from `first_sequence`.
pub fn retain(
    state: &mut impl StateWrite,
    revision: u64,
    first_sequence: u32,
    events: &[RevocationEvent],
) {
    for (offset, event) in events.iter().enumerate() {
        let offset = u32::try_from(offset).unwrap_or(u32::MAX);
        store(
            state,
            keys::event(revision, first_sequence.saturating_add(offset)),
            event,
        );
    }
}

/// Removes up to `limit` of the oldest events revoked at or before `horizon_ms`, raising the
/// compaction watermark to the highest revision removed. Returns how many were removed.
pub fn compact(
    state: &mut impl StateWrite,
    horizon_ms: i64,
    limit: usize,
) -> Result<usize, StateError> {
    if limit == 0 {
        return Ok(0);
    }
    let mut removed = 0;
    let mut watermark = None;
    for (key, value) in state.scan_prefix(&keys::events_prefix(), None, limit)? {
        let event: RevocationEvent = decode(&value)?;
        if event.revoked_at_ms > horizon_ms {
            break;
        }
        watermark = keys::revision_of_event(&key);
        state.delete(&key);
        removed += 1;
    }
    if let Some(revision) = watermark {
        state.put(keys::events_compacted(), revision.to_be_bytes().to_vec());
    }
    Ok(removed)
}

/// The highest revision whose events may have been compacted (0: none ever were).
pub fn compacted_through(state: &impl super::StateRead) -> Result<u64, StateError> {
    counter(state, &keys::events_compacted())
}

/// Retained events with a revision in `(after, upto]`, in revision order: about `limit` of
/// them, but always whole revisions (a page never ends inside one, so a reader that resumes
/// after the last revision of a page misses nothing).
pub fn retained_between(
    state: &impl super::StateRead,
    after: u64,
    upto: u64,
    limit: usize,
) -> Result<Vec<(u64, RevocationEvent)>, StateError> {
    let prefix = keys::events_prefix();
    let mut start = keys::event(after, u32::MAX);
    let mut out: Vec<(u64, RevocationEvent)> = Vec::new();
    loop {
        let page = state.scan_prefix(&prefix, Some(&start), limit.max(1))?;
        let full = page.len() >= limit.max(1);
        for (key, value) in page {
            let revision = keys::revision_of_event(&key)
                .ok_or_else(|| StateError::Corrupt("event key too short".into()))?;
            let past_limit = out.len() >= limit;
            let revision_changes = out.last().is_some_and(|(last, _)| *last != revision);
            if revision > upto || (past_limit && revision_changes) {
                return Ok(out);
            }
            out.push((revision, decode(&value)?));
            start = key;
        }
        if !full {
            return Ok(out);
        }
    }
}
