//! The pure session domain: commands applied to an ordered key space.
//!
//! SKELETON: the domain helper replaces the `todo!()` bodies; signatures are the contract.

pub mod query;
pub mod state;

use crate::proto::internal::{Command, CommandResult};
pub use state::{MemoryState, StateEntry, StateError, StateRead, StateWrite};

/// Applies one command, committed at log index `revision`, to `state`.
///
/// Deterministic: the result and every write depend only on `command`, `revision` and the
/// prior contents of `state`. Keys written by the domain never start with byte `0x00`
/// (that prefix is reserved for the store's own metadata).
pub fn apply(
    command: &Command,
    revision: u64,
    state: &mut impl StateWrite,
) -> Result<CommandResult, StateError> {
    let _ = (command, revision, state);
    todo!()
}
