//! CreateSession: a new session in a new family, or joining an existing family; enforces the
//! tenant's per-user session limit by revoking the user's oldest active sessions.

use super::format::{self, RecordFormat};
use super::records::store;
use super::sessions::{self, Revocation};
use super::{keys, query, StateError, StateWrite};
use crate::proto::internal::{
    command_result, CreateSession, CreateSessionResult, FamilyRecord, RevocationEvent,
    SessionRecord,
};
use crate::proto::v1::{CreateSessionOutcome, RevocationReason, RevokeScope, SessionStatus};
use crate::proto::SCHEMA_VERSION;

/// Most entries of a user's index one create reads to enforce the session limit.
pub const LIMIT_SCAN_ROWS: usize = 4096;

/// Applies a CreateSession command stamped `now_ms`.
pub fn apply(
    command: &CreateSession,
    now_ms: i64,
    state: &mut impl StateWrite,
    events: &mut Vec<RevocationEvent>,
) -> Result<command_result::Kind, StateError> {
    let refused = |outcome: CreateSessionOutcome| {
        Ok(command_result::Kind::CreateSession(CreateSessionResult {
            outcome: outcome as i32,
            ..Default::default()
        }))
    };
    if command.join_family {
        match sessions::family(state, &command.family_id)? {
            Some(f) if f.tenant != command.tenant || f.user_id != command.user_id => {
                return refused(CreateSessionOutcome::FamilyMissing)
            }
            None => return refused(CreateSessionOutcome::FamilyMissing),
            Some(f) if sessions::family_revoked(state, &f)? => {
                return refused(CreateSessionOutcome::FamilyRevoked)
            }
            // An implicit family keeps its record from now on: the joined session may
            // outlive its founder.
            Some(f) => sessions::keep_family_record(state, &f)?,
        }
    }
    let created_seq = sessions::next_created_seq(state)?;
    let record_format = format::current(state)?;
    let implicit = record_format != RecordFormat::Legacy
        && format::founded_family(&command.session_id).as_deref()
            == Some(command.family_id.as_str());
    if !command.join_family && !implicit {
        store(
            state,
            keys::family(&command.family_id),
            &FamilyRecord {
                schema_version: SCHEMA_VERSION,
                family_id: command.family_id.clone(),
                tenant: command.tenant.clone(),
                user_id: command.user_id.clone(),
                created_at_ms: now_ms,
                created_seq,
                ..Default::default()
            },
        );
    }

    let evicted_session_ids = enforce_limit(command, now_ms, state, events)?;
    let session = SessionRecord {
        schema_version: SCHEMA_VERSION,
        session_id: command.session_id.clone(),
        family_id: command.family_id.clone(),
        tenant: command.tenant.clone(),
        user_id: command.user_id.clone(),
        created_at_ms: now_ms,
        expires_at_ms: command.expires_at_ms,
        idle_timeout_ms: command.idle_timeout_ms,
        last_seen_at_ms: now_ms,
        device_public_key: command.device_public_key.clone(),
        attributes: command.attributes.clone(),
        current_refresh_hash: command.refresh_hash.clone(),
        created_seq,
        ..Default::default()
    };
    sessions::insert(state, &session, record_format)?;
    let access_expires_at_ms = if command.access_hash.is_empty() {
        0
    } else {
        let expires = command.access_expires_at_ms.min(session.expires_at_ms);
        sessions::insert_access_token(state, &command.access_hash, &session.session_id, expires);
        expires
    };
    Ok(command_result::Kind::CreateSession(CreateSessionResult {
        outcome: CreateSessionOutcome::Created as i32,
        session: Some(session),
        evicted_session_ids,
        sealed_tokens: command.sealed_tokens.clone(),
        access_expires_at_ms,
    }))
}

/// Revokes the user's oldest active sessions so that, with the one being created, the user
/// has at most `max_sessions_per_user`. Returns the evicted session ids.
///
/// Bounded: the user's live counter settles the common case (under the limit) without a
/// scan; otherwise only the oldest [`LIMIT_SCAN_ROWS`] entries of the user's index are
/// considered (a user far over a lowered limit is brought down over several creates).
fn enforce_limit(
    command: &CreateSession,
    now_ms: i64,
    state: &mut impl StateWrite,
    events: &mut Vec<RevocationEvent>,
) -> Result<Vec<String>, StateError> {
    let limit = command.max_sessions_per_user as usize;
    if limit == 0 {
        return Ok(Vec::new());
    }
    let live = sessions::user_live(state, &command.tenant, &command.user_id)?;
    if live < limit as u64 {
        return Ok(Vec::new());
    }
    let mut active: Vec<SessionRecord> =
        query::user_session_records(state, &command.tenant, &command.user_id, LIMIT_SCAN_ROWS)?
            .into_iter()
            .filter(|s| query::status_at(s, now_ms) == SessionStatus::Active)
            .collect();
    let excess = (active.len() + 1).saturating_sub(limit);
    let revocation = Revocation {
        at_ms: now_ms,
        reason: RevocationReason::LimitEvicted,
        scope: RevokeScope::Session,
    };
    let mut evicted = Vec::with_capacity(excess);
    for session in active.iter_mut().take(excess) {
        sessions::revoke(state, session, revocation, events)?;
        evicted.push(session.session_id.clone());
    }
    Ok(evicted)
}
