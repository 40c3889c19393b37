//! CollectGarbage: deterministic removal of what has outlived its use, oldest first and
//! bounded per command: sessions past their expiry (with their token hashes and index
//! entries; revoked ones too, since every token of theirs has expired by then; a session
//! with more token records than the command may delete goes over several commands), expired
//! access tokens, old idempotency records (and the marker of untimed ones, once none is
//! left) and revocation events past their retention.

use super::{dedup, sessions};
use super::{events, keys, StateEntry, StateError, StateWrite};
use crate::proto::internal::{command_result, CollectGarbage, GarbageResult};

/// Refresh-token records a command may delete per session of its limit: a session rotated
/// more often than the sessions collected with it is removed over several commands.
const TOKENS_PER_SESSION: usize = 8;

/// Applies a CollectGarbage command stamped `now_ms`.
pub fn apply(
    command: &CollectGarbage,
    now_ms: i64,
    state: &mut impl StateWrite,
) -> Result<command_result::Kind, StateError> {
    let limit = command.limit as usize;
    let mut removed = 0;
    let mut more = false;
    let mut token_budget = limit.saturating_mul(TOKENS_PER_SESSION);
    for (key, _) in expired(state, &keys::session_expiry_prefix(), now_ms, limit)? {
        let session_id = &key[9..];
        match sessions::load(state, session_id)? {
            Some(session) => {
                if !sessions::remove(state, &session, &mut token_budget)? {
                    more = true;
                    break;
                }
            }
            None => state.delete(&key),
        }
        removed += 1;
    }
    for (key, _) in expired(
        state,
        &keys::access_expiry_prefix(),
        now_ms,
        limit - removed,
    )? {
        state.delete(&keys::access(&key[9..]));
        state.delete(&key);
        removed += 1;
    }
    let dedup_horizon = now_ms.saturating_sub(command.dedup_retention_ms);
    for (key, _) in expired(
        state,
        &keys::dedup_expiry_prefix(),
        dedup_horizon,
        limit - removed,
    )? {
        state.delete(&keys::dedup(&key[9..]));
        state.delete(&key);
        removed += 1;
    }
    if let Some(until) = dedup::untimed_until(state)? {
        if expired(state, &keys::dedup_expiry_prefix(), until, 1)?.is_empty() {
            dedup::untimed_collected(state);
        }
    }
    if command.event_retention_ms > 0 {
        let horizon = now_ms.saturating_sub(command.event_retention_ms);
        removed += events::compact(state, horizon, limit - removed)?;
    }
    Ok(command_result::Kind::CollectGarbage(GarbageResult {
        removed: removed as u64,
        more,
    }))
}

/// Up to `limit` entries of a time-ordered index (tag, ordered time, ...) whose time is at or
/// before `horizon_ms`.
fn expired(
    state: &mut impl StateWrite,
    prefix: &[u8],
    horizon_ms: i64,
    limit: usize,
) -> Result<Vec<StateEntry>, StateError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let mut entries = state.scan_prefix(prefix, None, limit)?;
    let mut due = 0;
    for (key, _) in &entries {
        let at = keys::read_ordered_time(&key[1..])
            .ok_or_else(|| StateError::Corrupt("time index key too short".into()))?;
        if at > horizon_ms {
            break;
        }
        due += 1;
    }
    entries.truncate(due);
    Ok(entries)
}
