//! Retained revocation events: every event a command causes is kept under the command's
//! revision (its log index), so that stream subscribers can resume from any revision still
//! retained, and compacted after the retention window. The compaction watermark tells a
//! subscriber whose resume point is older that it must resync.

use super::records::{counter, decode, store};
use super::{keys, StateEntry, StateError, StateWrite};
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
        let (key, value) = compaction_watermark(revision);
        state.put(key, value);
    }
    Ok(removed)
}

/// Whether `key` belongs to the event history: a retained event or the compaction watermark.
pub fn is_history_key(key: &[u8]) -> bool {
    key.starts_with(&keys::events_prefix()) || key == keys::events_compacted().as_slice()
}

/// The entry that records events up to `revision` as compacted.
pub fn compaction_watermark(revision: u64) -> StateEntry {
    (keys::events_compacted(), revision.to_be_bytes().to_vec())
}

/// The highest revision whose events may have been compacted (0: none ever were).
pub fn compacted_through(state: &impl super::StateRead) -> Result<u64, StateError> {
    counter(state, &keys::events_compacted())
}

/// A position in the event sequence: every event before it was delivered. `sequence` 0
/// means revision `revision` was delivered whole; otherwise the events of `revision` with a
/// sequence below it were (a revision split over several messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    /// The last revision (partly) delivered.
    pub revision: u64,
    /// 0, or the next sequence of `revision` owed.
    pub sequence: u32,
}

impl Position {
    /// Whether the event `sequence` of `revision` comes after this position.
    pub fn owes(&self, revision: u64, sequence: u32) -> bool {
        revision > self.revision
            || (revision == self.revision && self.sequence > 0 && sequence >= self.sequence)
    }

    /// The position right after the event `sequence` of `revision`; `complete` when it was the
    /// revision's last.
    pub fn after(revision: u64, sequence: u32, complete: bool) -> Self {
        Position {
            revision,
            sequence: if complete {
                0
            } else {
                sequence.saturating_add(1)
            },
        }
    }

    /// The key every owed event sorts strictly after.
    fn start_after(&self) -> Vec<u8> {
        match self.sequence {
            0 => keys::event(self.revision, u32::MAX),
            next => keys::event(self.revision, next - 1),
        }
    }
}

/// One retained event with its place: revision and sequence within the revision.
pub type Retained = (u64, u32, RevocationEvent);

/// Up to `limit` retained events after `from` with a revision at or below `upto`, in order.
/// A page may end inside a revision: the next page starts at the position after its last
/// event, so a reader that resumes there misses and repeats nothing.
pub fn retained_after(
    state: &impl super::StateRead,
    from: Position,
    upto: u64,
    limit: usize,
) -> Result<Vec<Retained>, StateError> {
    let page = state.scan_prefix(
        &keys::events_prefix(),
        Some(&from.start_after()),
        limit.max(1),
    )?;
    let mut out = Vec::with_capacity(page.len());
    for (key, value) in page {
        let (revision, sequence) = keys::position_of_event(&key)
            .ok_or_else(|| StateError::Corrupt("event key too short".into()))?;
        if revision > upto {
            break;
        }
        out.push((revision, sequence, decode(&value)?));
    }
    Ok(out)
}
