//! Rotate: redeem a refresh token for its successor, at most once.
//!
//! The presented hash is looked up in the token index. A current token of a live session is
//! retired and its successor (minted by the proposer) becomes current, in this one apply, so
//! no two callers can both redeem it. A retired token is either a retry within the reuse
//! grace window, answered with the successor sealed at the first rotation (only while that
//! successor is itself still current), or a replay: the whole family is revoked.
//!
//! A rotation with a request id is also remembered in a dedup record; a retry with the same
//! id gets the first answer however late it comes ([`deduplicated`]), on the same condition
//! as a grace retry: the successor must still be the session's current token.

use super::format::{self, RecordFormat};
use super::records::{add_to_counter, load, store};
use super::sessions::{self, Revocation};
use super::{keys, query, StateError, StateRead, StateWrite};
use crate::proto::internal::{
    command_result, LastRotation, RefreshTokenRecord, RevocationEvent, Rotate, RotateResult,
    SessionRecord,
};
use crate::proto::v1::{RevocationReason, RevokeScope, RotateOutcome, SessionStatus};
use crate::proto::SCHEMA_VERSION;
use crate::token::constant_time_eq;

/// Applies a Rotate command stamped `now_ms`.
pub fn apply(
    command: &Rotate,
    now_ms: i64,
    state: &mut impl StateWrite,
    events: &mut Vec<RevocationEvent>,
) -> Result<command_result::Kind, StateError> {
    let outcome = |outcome: RotateOutcome, session: Option<SessionRecord>| RotateResult {
        outcome: outcome as i32,
        session,
        ..Default::default()
    };
    let token_key = keys::refresh(&command.presented_hash);
    let Some(mut token) = load::<RefreshTokenRecord>(state, &token_key)? else {
        return Ok(wrap(outcome(RotateOutcome::InvalidToken, None)));
    };
    let Some(mut session) = sessions::load(state, token.session_id.as_bytes())? else {
        return Ok(wrap(outcome(RotateOutcome::SessionMissing, None)));
    };
    let status = query::status_at(&session, now_ms);
    if status == SessionStatus::Revoked {
        return Ok(wrap(outcome(RotateOutcome::Revoked, Some(session))));
    }

    if let Some(retired) = retirement(&token, &session, state)? {
        let within_grace = command.grace_ms > 0
            && now_ms.saturating_sub(retired.at_ms) <= command.grace_ms
            && retired.successor_is_current;
        if within_grace {
            if status == SessionStatus::Expired {
                return Ok(wrap(outcome(RotateOutcome::Expired, Some(session))));
            }
            return Ok(wrap(RotateResult {
                outcome: RotateOutcome::Rotated as i32,
                retried: true,
                sealed_successor: retired.sealed_successor,
                access_expires_at_ms: retired.successor_access_expires_at_ms,
                session: Some(session),
                ..Default::default()
            }));
        }
        return replay(&session, now_ms, state, events);
    }

    if status == SessionStatus::Expired {
        return Ok(wrap(outcome(RotateOutcome::Expired, Some(session))));
    }
    if let Some(lease) = session.lease.as_ref() {
        if lease.expires_at_ms > now_ms && !same_lease(&lease.lease_id, &command.lease_id) {
            return Ok(wrap(RotateResult {
                outcome: RotateOutcome::LeaseUnavailable as i32,
                lease_holder: lease.holder.clone(),
                lease_expires_at_ms: lease.expires_at_ms,
                session: Some(session),
                ..Default::default()
            }));
        }
    }

    let previous_expiry = sessions::effective_expiry(&session);
    let access_expires_at_ms = if command.new_access_hash.is_empty() {
        0
    } else {
        command.access_expires_at_ms.min(session.expires_at_ms)
    };
    let record_format = format::current(state)?;
    if record_format >= RecordFormat::CompactRotations {
        session.last_rotation = Some(LastRotation {
            retired_at_ms: now_ms,
            sealed_successor: command.sealed_successor.clone(),
            successor_access_expires_at_ms: access_expires_at_ms,
        });
    } else {
        token.retired = true;
        token.retired_at_ms = now_ms;
        token.successor_hash = command.new_refresh_hash.clone();
        token.sealed_successor = command.sealed_successor.clone();
        token.successor_access_expires_at_ms = access_expires_at_ms;
        store(state, token_key, &token);
    }
    let predecessor_hash = if record_format >= RecordFormat::ChainedRetirements {
        command.presented_hash.clone()
    } else {
        state.put(
            keys::retired(&session.session_id, token.generation),
            command.presented_hash.clone(),
        );
        Vec::new()
    };

    session.generation += 1;
    session.current_refresh_hash = command.new_refresh_hash.clone();
    session.last_seen_at_ms = session.last_seen_at_ms.max(now_ms);
    if session
        .lease
        .as_ref()
        .is_some_and(|l| !command.lease_id.is_empty() && same_lease(&l.lease_id, &command.lease_id))
    {
        session.lease = None;
    }
    store(
        state,
        keys::refresh(&command.new_refresh_hash),
        &RefreshTokenRecord {
            schema_version: SCHEMA_VERSION,
            session_id: session.session_id.clone(),
            generation: session.generation,
            predecessor_hash,
            ..Default::default()
        },
    );
    if !command.new_access_hash.is_empty() {
        sessions::insert_access_token(
            state,
            &command.new_access_hash,
            &session.session_id,
            access_expires_at_ms,
        );
    }
    sessions::update_in(state, previous_expiry, &session, record_format)?;
    session.last_rotation = None;
    Ok(wrap(RotateResult {
        outcome: RotateOutcome::Rotated as i32,
        access_expires_at_ms,
        session: Some(session),
        ..Default::default()
    }))
}

/// Whether a retry of `command` (same request id and parameters) gets `first`, its first
/// result, again: a first ROTATED answer stands only while its successor is still the
/// session's current token and the session is not revoked. Then `first` is completed with
/// the successor sealed at the first rotation and the session as it is now (the result
/// says `deduplicated`; the API then unseals the successor). Otherwise (the successor was itself redeemed, or the session revoked) the
/// retry must be decided anew, exactly as a grace retry would be. Other first outcomes
/// always stand.
pub fn deduplicated(
    command: &Rotate,
    first: &mut RotateResult,
    state: &impl StateRead,
) -> Result<bool, StateError> {
    if first.outcome != RotateOutcome::Rotated as i32 {
        return Ok(true);
    }
    let Some(token) = load::<RefreshTokenRecord>(state, &keys::refresh(&command.presented_hash))?
    else {
        return Ok(false);
    };
    let Some(session) = sessions::stored(state, token.session_id.as_bytes())? else {
        return Ok(false);
    };
    if session.revoked {
        return Ok(false);
    }
    match retirement(&token, &session, state)? {
        Some(retired) if retired.successor_is_current => {
            first.sealed_successor = retired.sealed_successor;
            first.session = Some(session);
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// How a refresh token was retired, as far as a retry of its rotation needs to know.
struct Retirement {
    at_ms: i64,
    /// Whether the successor it was redeemed for is still the session's current token.
    successor_is_current: bool,
    sealed_successor: Vec<u8>,
    successor_access_expires_at_ms: i64,
}

/// The retirement of `token` (a token of `session`), or None while it is current. Formats 1
/// and 2 mark a retired token's record; format 3 leaves it as issued, so a token whose
/// generation is below its session's is retired, and only the session's last rotation (the
/// generation just before the current one) is kept for retries.
fn retirement(
    token: &RefreshTokenRecord,
    session: &SessionRecord,
    state: &impl StateRead,
) -> Result<Option<Retirement>, StateError> {
    if token.retired {
        return Ok(Some(Retirement {
            at_ms: token.retired_at_ms,
            successor_is_current: constant_time_eq(
                &token.successor_hash,
                &session.current_refresh_hash,
            ),
            sealed_successor: token.sealed_successor.clone(),
            successor_access_expires_at_ms: token.successor_access_expires_at_ms,
        }));
    }
    if token.generation >= session.generation {
        return Ok(None);
    }
    let last = if token.generation.saturating_add(1) == session.generation {
        sessions::last_rotation(state, &session.session_id)?
    } else {
        None
    };
    Ok(Some(match last {
        Some(last) => Retirement {
            at_ms: last.retired_at_ms,
            successor_is_current: true,
            sealed_successor: last.sealed_successor,
            successor_access_expires_at_ms: last.successor_access_expires_at_ms,
        },
        None => Retirement {
            at_ms: 0,
            successor_is_current: false,
            sealed_successor: Vec::new(),
            successor_access_expires_at_ms: 0,
        },
    }))
}

/// Compares lease ids (bearer capabilities) in time independent of where they differ.
fn same_lease(held: &str, presented: &str) -> bool {
    constant_time_eq(held.as_bytes(), presented.as_bytes())
}

/// A retired token presented outside the grace window: revoke the family, count the replay.
fn replay(
    session: &SessionRecord,
    now_ms: i64,
    state: &mut impl StateWrite,
    events: &mut Vec<RevocationEvent>,
) -> Result<command_result::Kind, StateError> {
    let revocation = Revocation {
        at_ms: now_ms,
        reason: RevocationReason::ReplayDetected,
        scope: RevokeScope::Family,
    };
    let revoked_count = sessions::revoke_family(state, &session.family_id, revocation, events)?;
    add_to_counter(state, keys::tenant_replays(&session.tenant), 1)?;
    add_to_counter(
        state,
        keys::user_replays(&session.tenant, &session.user_id),
        1,
    )?;
    let session = sessions::load(state, session.session_id.as_bytes())?;
    Ok(wrap(RotateResult {
        outcome: RotateOutcome::ReplayDetected as i32,
        revoked_count,
        session,
        ..Default::default()
    }))
}

fn wrap(result: RotateResult) -> command_result::Kind {
    command_result::Kind::Rotate(result)
}
