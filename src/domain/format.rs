//! Record formats: how a state lays out sessions, families and their indexes.
//!
//! - **Legacy** (format 1, every state written before formats existed): a session record
//!   repeats its session and family ids; every family has a record (`f`) and every member,
//!   its founder included, an entry in the family's member index (`m`); the member index and
//!   the user index hold the session id again as their value.
//! - **Compact** (format 2): a family founded by a session whose ids pair up (`sid_X` founds
//!   `fam_X`, as this version mints them) has no record and no member entry while the founder
//!   is its only member: the founder's session record says everything the family record did.
//!   The family gets its record when a session joins it or when it is revoked, and joined
//!   sessions get member entries; the founder stays implicit. Session records leave out the
//!   ids their key implies, and index entries hold no value.
//! - **Compact rotations** (format 3): format 2, and a rotation no longer rewrites the
//!   retired token's record. A token is retired when its generation is below its session's
//!   (formats 1 and 2 mark it); what a retry of the last rotation needs (when, and the
//!   successor sealed under the retired token) is kept in the session record, replaced by
//!   the next rotation. A rotation writes one record less, and every retired token stays as
//!   small as it was issued (formats 1 and 2 add its successor's hash and seal to it).
//! - **Chained retirements** (format 4): format 3, and a rotation no longer adds the retired
//!   hash to the session's retired-token index (`h`): the successor's token record names
//!   its predecessor instead, so removing a session walks that chain from its current
//!   token. A rotation writes one key less. Entries that formats 1 to 3 put in the index
//!   are still removed with their session.
//! - **Timed requests** (format 5): format 4, and an idempotency record's key starts with the
//!   request's time, so that the records of requests made close in time share leaves
//!   instead of each landing on a random one ([`super::dedup`]). A retry across the switch
//!   still finds the record its first attempt left under the untimed key.
//!
//! Reading does not depend on the format: every reader takes ids from keys, fills in what a
//! compact record leaves out, and finds a family with or without its record. So a state
//! holds records of both formats after a switch, and a node reads a legacy data directory as
//! it is. Writing depends on it, and the format is part of the replicated state (key `V`),
//! so that replicas write alike. A cluster moves to a newer format by one
//! [`SetRecordFormat`] command, which a node of an older version refuses by name (it stops
//! applying until upgraded) instead of writing records the others would not.

use super::records::counter;
use super::{keys, StateError, StateRead, StateWrite};
use crate::proto::internal::{command_result, RecordFormatResult, SetRecordFormat};
use crate::token::IdKind;

/// A record format (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RecordFormat {
    /// Format 1: every family has a record, every id is repeated in values.
    Legacy = 1,
    /// Format 2: implicit one-session families, no repeated ids.
    Compact = 2,
    /// Format 3: format 2, with retired tokens left as issued.
    CompactRotations = 3,
    /// Format 4: format 3, with each token naming its predecessor instead of an index entry.
    ChainedRetirements = 4,
    /// Format 5: format 4, with idempotency records keyed by the request's time first.
    TimedRequests = 5,
}

impl RecordFormat {
    /// The format a new cluster is created with.
    pub const NEWEST: RecordFormat = RecordFormat::TimedRequests;

    /// The format numbered `number`, if this binary knows it.
    pub fn from_number(number: u64) -> Option<Self> {
        match number {
            1 => Some(RecordFormat::Legacy),
            2 => Some(RecordFormat::Compact),
            3 => Some(RecordFormat::CompactRotations),
            4 => Some(RecordFormat::ChainedRetirements),
            5 => Some(RecordFormat::TimedRequests),
            _ => None,
        }
    }

    /// The format's number.
    pub fn number(self) -> u32 {
        self as u32
    }
}

/// The state's record format. A number this binary does not know (written by a newer
/// version) is [`StateError::Unsupported`].
pub fn current(state: &impl StateRead) -> Result<RecordFormat, StateError> {
    match counter(state, &keys::record_format())? {
        0 => Ok(RecordFormat::Legacy),
        n => RecordFormat::from_number(n).ok_or_else(|| unknown(n)),
    }
}

/// Applies a SetRecordFormat command stamped `now_ms`: the state's format becomes the later
/// of its own and the one asked for.
pub fn apply(
    command: &SetRecordFormat,
    now_ms: i64,
    state: &mut impl StateWrite,
) -> Result<command_result::Kind, StateError> {
    let asked = match command.format {
        0 => None,
        n => Some(RecordFormat::from_number(u64::from(n)).ok_or_else(|| unknown(n.into()))?),
    };
    let was = current(state)?;
    let format = asked.map_or(was, |asked| asked.max(was));
    if was < RecordFormat::TimedRequests && format >= RecordFormat::TimedRequests {
        super::dedup::switching_to_timed_keys(state, now_ms)?;
    }
    if format != was {
        state.put(
            keys::record_format(),
            u64::from(format.number()).to_be_bytes().to_vec(),
        );
    }
    Ok(command_result::Kind::SetRecordFormat(RecordFormatResult {
        format: format.number(),
    }))
}

fn unknown(number: u64) -> StateError {
    StateError::Unsupported(format!(
        "record format {number} (this binary writes formats up to {}); upgrade this node",
        RecordFormat::NEWEST.number()
    ))
}

/// The id of the family a session founds when it is created without joining one: `fam_`
/// followed by the session id's random part. None for an id not of the minted form.
pub fn founded_family(session_id: &str) -> Option<String> {
    let random = session_id.strip_prefix(IdKind::Session.prefix())?;
    Some(format!("{}{random}", IdKind::Family.prefix()))
}

/// The session that founded `family_id` if its ids pair up ([`founded_family`]).
pub fn founder(family_id: &str) -> Option<String> {
    let random = family_id.strip_prefix(IdKind::Family.prefix())?;
    Some(format!("{}{random}", IdKind::Session.prefix()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::MemoryState;

    fn set(state: &mut MemoryState, format: u32) -> Result<u32, StateError> {
        match apply(&SetRecordFormat { format }, 0, state)? {
            command_result::Kind::SetRecordFormat(r) => Ok(r.format),
            other => panic!("unexpected result {other:?}"),
        }
    }

    #[test]
    fn a_state_without_a_format_is_legacy_and_formats_only_go_up() {
        let mut state = MemoryState::new();
        assert_eq!(current(&state).unwrap(), RecordFormat::Legacy);
        assert_eq!(set(&mut state, 1).unwrap(), 1);
        assert!(state.entries().is_empty(), "the legacy format needs no key");
        assert_eq!(set(&mut state, 2).unwrap(), 2);
        assert_eq!(current(&state).unwrap(), RecordFormat::Compact);
        assert_eq!(set(&mut state, 1).unwrap(), 2);
        assert_eq!(set(&mut state, 0).unwrap(), 2);
        assert_eq!(current(&state).unwrap(), RecordFormat::Compact);
        assert_eq!(set(&mut state, 3).unwrap(), 3);
        assert_eq!(set(&mut state, 2).unwrap(), 3);
        assert_eq!(current(&state).unwrap(), RecordFormat::CompactRotations);
        assert_eq!(set(&mut state, 4).unwrap(), 4);
        assert_eq!(current(&state).unwrap(), RecordFormat::ChainedRetirements);
        assert_eq!(set(&mut state, 5).unwrap(), 5);
        assert_eq!(current(&state).unwrap(), RecordFormat::TimedRequests);
    }

    #[test]
    fn an_unknown_format_is_refused_by_name_and_changes_nothing() {
        let mut state = MemoryState::new();
        match set(&mut state, 6) {
            Err(StateError::Unsupported(message)) => {
                assert!(message.starts_with("record format 6"), "{message}")
            }
            other => panic!("expected Unsupported, got {other:?}"),
        }
        assert!(state.entries().is_empty());
        state.put(keys::record_format(), 9u64.to_be_bytes().to_vec());
        assert!(matches!(current(&state), Err(StateError::Unsupported(_))));
    }

    #[test]
    fn founder_and_founded_family_pair_up_minted_ids_only() {
        let family = founded_family("sid_abc").unwrap();
        assert_eq!(family, "fam_abc");
        assert_eq!(founder(&family).as_deref(), Some("sid_abc"));
        assert_eq!(founded_family("abc"), None);
        assert_eq!(founder("sid_abc"), None);
    }
}
