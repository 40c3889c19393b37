//! Session records and the indexes that follow them: every change to a session goes through
//! here, so the per-user index, the family membership, the expiry index, the token indexes
//! and the tenant's live counter always agree with the records.

use super::records::{add_to_counter, load, store};
use super::{keys, StateError, StateWrite};
use crate::proto::internal::{
    AccessTokenRecord, FamilyRecord, RefreshTokenRecord, RevocationEvent, SessionRecord,
};
use crate::proto::v1::{RevocationReason, RevokeScope};
use crate::proto::SCHEMA_VERSION;

/// When the session stops being usable unless touched: the earlier of its absolute expiry
/// and its idle deadline.
pub fn effective_expiry(session: &SessionRecord) -> i64 {
    if session.idle_timeout_ms > 0 {
        session.expires_at_ms.min(
            session
                .last_seen_at_ms
                .saturating_add(session.idle_timeout_ms),
        )
    } else {
        session.expires_at_ms
    }
}

/// Stores a new session with its indexes and current refresh-token hash.
pub fn insert(state: &mut impl StateWrite, session: &SessionRecord) -> Result<(), StateError> {
    state.put(
        keys::user_session(
            &session.tenant,
            &session.user_id,
            session.created_at_ms,
            &session.session_id,
        ),
        session.session_id.as_bytes().to_vec(),
    );
    state.put(
        keys::family_member(&session.family_id, &session.session_id),
        session.session_id.as_bytes().to_vec(),
    );
    state.put(
        keys::session_expiry(effective_expiry(session), &session.session_id),
        Vec::new(),
    );
    store(
        state,
        keys::refresh(&session.current_refresh_hash),
        &RefreshTokenRecord {
            schema_version: SCHEMA_VERSION,
            session_id: session.session_id.clone(),
            generation: session.generation,
            ..Default::default()
        },
    );
    store(state, keys::session(&session.session_id), session);
    add_to_counter(state, keys::tenant_live(&session.tenant), 1)
}

/// Stores a changed session, moving its expiry-index entry if its expiry moved from
/// `previous_expiry`.
pub fn update(state: &mut impl StateWrite, previous_expiry: i64, session: &SessionRecord) {
    let expiry = effective_expiry(session);
    if expiry != previous_expiry {
        state.delete(&keys::session_expiry(previous_expiry, &session.session_id));
        state.put(
            keys::session_expiry(expiry, &session.session_id),
            Vec::new(),
        );
    }
    store(state, keys::session(&session.session_id), session);
}

/// Indexes an access token of `session_id` (its expiry capped at the session's).
pub fn insert_access_token(
    state: &mut impl StateWrite,
    hash: &[u8],
    session_id: &str,
    expires_at_ms: i64,
) {
    state.put(keys::access_expiry(expires_at_ms, hash), Vec::new());
    store(
        state,
        keys::access(hash),
        &AccessTokenRecord {
            schema_version: SCHEMA_VERSION,
            session_id: session_id.to_owned(),
            expires_at_ms,
        },
    );
}

/// Why and when a revocation happens, as stamped on every session it revokes.
#[derive(Debug, Clone, Copy)]
pub struct Revocation {
    /// The command's clock.
    pub at_ms: i64,
    /// Why.
    pub reason: RevocationReason,
    /// The scope of the request that caused it.
    pub scope: RevokeScope,
}

/// Revokes `session` unless it already is, recording the event. Returns whether it changed.
pub fn revoke(
    state: &mut impl StateWrite,
    session: &mut SessionRecord,
    revocation: Revocation,
    events: &mut Vec<RevocationEvent>,
) -> Result<bool, StateError> {
    if session.revoked {
        return Ok(false);
    }
    session.revoked = true;
    session.revoked_at_ms = revocation.at_ms;
    session.revocation_reason = revocation.reason as i32;
    session.lease = None;
    store(state, keys::session(&session.session_id), session);
    add_to_counter(state, keys::tenant_live(&session.tenant), -1)?;
    events.push(RevocationEvent {
        tenant: session.tenant.clone(),
        user_id: session.user_id.clone(),
        family_id: session.family_id.clone(),
        session_id: session.session_id.clone(),
        reason: revocation.reason as i32,
        revoked_at_ms: revocation.at_ms,
        scope: revocation.scope as i32,
    });
    Ok(true)
}

/// Marks the family revoked (no session may join it any more) and revokes every member.
/// Returns how many sessions this revoked.
pub fn revoke_family(
    state: &mut impl StateWrite,
    family_id: &str,
    revocation: Revocation,
    events: &mut Vec<RevocationEvent>,
) -> Result<u64, StateError> {
    let family_key = keys::family(family_id);
    if let Some(mut family) = load::<FamilyRecord>(state, &family_key)? {
        if !family.revoked {
            family.revoked = true;
            family.revoked_at_ms = revocation.at_ms;
            family.revocation_reason = revocation.reason as i32;
            store(state, family_key, &family);
        }
    }
    let members = state.scan_prefix(&keys::family_members(family_id), None, usize::MAX)?;
    let mut revoked = 0;
    for (_, session_id) in members {
        if let Some(mut session) = load::<SessionRecord>(state, &keys::session_bytes(&session_id))?
        {
            if revoke(state, &mut session, revocation, events)? {
                revoked += 1;
            }
        }
    }
    Ok(revoked)
}

/// Deletes a session with everything that points to it; deletes its family with its last
/// member.
pub fn remove(state: &mut impl StateWrite, session: &SessionRecord) -> Result<(), StateError> {
    let id = &session.session_id;
    state.delete(&keys::session(id));
    state.delete(&keys::user_session(
        &session.tenant,
        &session.user_id,
        session.created_at_ms,
        id,
    ));
    state.delete(&keys::session_expiry(effective_expiry(session), id));
    state.delete(&keys::refresh(&session.current_refresh_hash));
    for (key, hash) in state.scan_prefix(&keys::retired_of(id), None, usize::MAX)? {
        state.delete(&keys::refresh(&hash));
        state.delete(&key);
    }
    state.delete(&keys::family_member(&session.family_id, id));
    let members = keys::family_members(&session.family_id);
    if state.scan_prefix(&members, None, 1)?.is_empty() {
        state.delete(&keys::family(&session.family_id));
    }
    if !session.revoked {
        add_to_counter(state, keys::tenant_live(&session.tenant), -1)?;
    }
    Ok(())
}
