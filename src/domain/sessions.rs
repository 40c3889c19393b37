//! Session records and the indexes that follow them: every change to a session goes through
//! here, so the per-user index, the family membership, the expiry index, the token indexes
//! and the tenant's and users' live counters always agree with the records.
//!
//! Every session is read through [`load`], which applies the revoked-before watermarks of
//! its tenant and user: a bulk revocation writes one watermark (O(1)) instead of touching
//! every session, and a session it covers reads as revoked everywhere (lookups, rotation,
//! touch, leases, listings, the session limit, GC's counters).

use super::format::{self, RecordFormat};
use super::records::{add_to_counter, counter, load as load_record, store};
use super::{keys, StateError, StateRead, StateWrite};
use crate::proto::internal::{
    AccessTokenRecord, FamilyRecord, LastRotation, RefreshTokenRecord, RevocationEvent,
    SessionRecord, WatermarkRecord,
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

/// The session stored under `session_id`, with the revoked-before watermarks of its tenant
/// and user applied: a covered session that was not revoked on its own reads as revoked at
/// the watermark's time, for its reason, without a lease.
pub fn load(
    state: &impl StateRead,
    session_id: &[u8],
) -> Result<Option<SessionRecord>, StateError> {
    let Some(mut session) = stored(state, session_id)? else {
        return Ok(None);
    };
    if !session.revoked {
        if let Some(mark) = covering(
            state,
            &session.tenant,
            &session.user_id,
            session.created_seq,
        )? {
            session.revoked = true;
            session.revoked_at_ms = mark.revoked_at_ms;
            session.revocation_reason = mark.reason;
            session.lease = None;
        }
    }
    Ok(Some(session))
}

/// The session record stored under `session_id`, as written (no watermark applied), with
/// the ids a compact record leaves out filled in, and without its last rotation (see
/// [`last_rotation`]): no answer carries that.
pub fn stored(
    state: &impl StateRead,
    session_id: &[u8],
) -> Result<Option<SessionRecord>, StateError> {
    let Some(mut session) = load_record::<SessionRecord>(state, &keys::session_bytes(session_id))?
    else {
        return Ok(None);
    };
    session.last_rotation = None;
    if session.session_id.is_empty() {
        session.session_id = String::from_utf8(session_id.to_vec())
            .map_err(|_| StateError::Corrupt("a session id is not UTF-8".into()))?;
    }
    if session.family_id.is_empty() {
        session.family_id = format::founded_family(&session.session_id)
            .ok_or_else(|| StateError::Corrupt("a session record has no family".into()))?;
    }
    Ok(Some(session))
}

/// The last rotation of the session, as record formats 3 and 4 keep it in the session record
/// (None in older formats, and before the session's first rotation).
pub fn last_rotation(
    state: &impl StateRead,
    session_id: &str,
) -> Result<Option<LastRotation>, StateError> {
    Ok(
        load_record::<SessionRecord>(state, &keys::session(session_id))?
            .and_then(|s| s.last_rotation),
    )
}

/// Stores `session` in the state's record format (compact: without the session id, and
/// without the family id when the session founded it). Its stored last rotation is kept
/// unless `session` brings one: readers never see it, so writers carry it over.
fn put(state: &mut impl StateWrite, session: &SessionRecord) -> Result<(), StateError> {
    let format = format::current(state)?;
    put_keeping(state, session, format)
}

/// [`put`] in `format`, read by the caller.
fn put_keeping(
    state: &mut impl StateWrite,
    session: &SessionRecord,
    format: RecordFormat,
) -> Result<(), StateError> {
    if format >= RecordFormat::CompactRotations && session.last_rotation.is_none() {
        if let Some(kept) = last_rotation(state, &session.session_id)? {
            let whole = SessionRecord {
                last_rotation: Some(kept),
                ..session.clone()
            };
            put_in(state, &whole, format);
            return Ok(());
        }
    }
    put_in(state, session, format);
    Ok(())
}

/// [`put`] in `format`.
fn put_in(state: &mut impl StateWrite, session: &SessionRecord, format: RecordFormat) {
    let key = keys::session(&session.session_id);
    if format == RecordFormat::Legacy {
        store(state, key, session);
        return;
    }
    let founded = format::founded_family(&session.session_id);
    let compact = SessionRecord {
        session_id: String::new(),
        family_id: if founded.as_deref() == Some(session.family_id.as_str()) {
            String::new()
        } else {
            session.family_id.clone()
        },
        ..session.clone()
    };
    store(state, key, &compact);
}

/// The family `family_id`: its record, or, without one, the implicit family of its founding
/// session (compact format) while that session exists.
pub fn family(state: &impl StateRead, family_id: &str) -> Result<Option<FamilyRecord>, StateError> {
    if let Some(family) = load_record::<FamilyRecord>(state, &keys::family(family_id))? {
        return Ok(Some(family));
    }
    Ok(
        implicit_founder(state, family_id)?.map(|founder| FamilyRecord {
            schema_version: SCHEMA_VERSION,
            family_id: family_id.to_owned(),
            tenant: founder.tenant,
            user_id: founder.user_id,
            created_at_ms: founder.created_at_ms,
            created_seq: founder.created_seq,
            ..Default::default()
        }),
    )
}

/// Stores the family's record if it has none yet (an implicit family gains one when a
/// session joins it or it is revoked).
pub fn keep_family_record(
    state: &mut impl StateWrite,
    family: &FamilyRecord,
) -> Result<(), StateError> {
    let key = keys::family(&family.family_id);
    if state.get(&key)?.is_none() {
        store(state, key, family);
    }
    Ok(())
}

/// The session that founded `family_id` and is a member without a member entry, if it
/// exists: the session paired with the family id ([`format::founder`]) whose family it is.
fn implicit_founder(
    state: &impl StateRead,
    family_id: &str,
) -> Result<Option<SessionRecord>, StateError> {
    let Some(founder) = format::founder(family_id) else {
        return Ok(None);
    };
    Ok(stored(state, founder.as_bytes())?.filter(|s| s.family_id == family_id))
}

/// The ids of the family's members, in id order: its member entries and its implicit
/// founder (a legacy family's founder has both).
fn members(state: &impl StateRead, family_id: &str) -> Result<Vec<Vec<u8>>, StateError> {
    let mut ids = Vec::new();
    for (key, _) in state.scan_prefix(&keys::family_members(family_id), None, usize::MAX)? {
        ids.push(member_id(&key)?.to_vec());
    }
    if let Some(founder) = implicit_founder(state, family_id)? {
        ids.push(founder.session_id.into_bytes());
        ids.sort_unstable();
        ids.dedup();
    }
    Ok(ids)
}

/// The session id of a member entry.
fn member_id(key: &[u8]) -> Result<&[u8], StateError> {
    keys::member_of_family_entry(key)
        .ok_or_else(|| StateError::Corrupt("family member key too short".into()))
}

/// The session id of a user index entry.
pub fn user_entry_session(key: &[u8]) -> Result<&[u8], StateError> {
    keys::session_of_user_entry(key)
        .ok_or_else(|| StateError::Corrupt("user index key too short".into()))
}

/// Whether the family is revoked, on its own or by a watermark of its tenant or user.
pub fn family_revoked(state: &impl StateRead, family: &FamilyRecord) -> Result<bool, StateError> {
    Ok(family.revoked
        || covering(state, &family.tenant, &family.user_id, family.created_seq)?.is_some())
}

/// The watermark that revoked a record created at `created_seq` of this tenant and user, if
/// any (the tenant's or the user's; the earlier one when both cover it).
fn covering(
    state: &impl StateRead,
    tenant: &str,
    user_id: &str,
    created_seq: u64,
) -> Result<Option<WatermarkRecord>, StateError> {
    let covers = |mark: &WatermarkRecord| mark.seq >= created_seq;
    let by_tenant = watermark(state, &keys::tenant_watermark(tenant))?.filter(covers);
    let by_user = watermark(state, &keys::user_watermark(tenant, user_id))?.filter(covers);
    Ok(match (by_tenant, by_user) {
        (Some(t), Some(u)) => Some(if t.seq <= u.seq { t } else { u }),
        (t, u) => t.or(u),
    })
}

/// The watermark stored at `key`, if any.
pub fn watermark(
    state: &impl StateRead,
    key: &[u8],
) -> Result<Option<WatermarkRecord>, StateError> {
    load_record(state, key)
}

/// The next creation position (counting every session ever created), recorded as used.
pub fn next_created_seq(state: &mut impl StateWrite) -> Result<u64, StateError> {
    let seq = counter(state, &keys::created())?.saturating_add(1);
    state.put(keys::created(), seq.to_be_bytes().to_vec());
    Ok(seq)
}

/// The position of the last session created (what a watermark set now covers).
pub fn last_created_seq(state: &impl StateRead) -> Result<u64, StateError> {
    counter(state, &keys::created())
}

/// The tenant's epoch for per-user counters: it changes whenever the tenant's watermark
/// moves, which zeroes every user's counter of the tenant at once.
fn tenant_epoch(state: &impl StateRead, tenant: &str) -> Result<u64, StateError> {
    Ok(watermark(state, &keys::tenant_watermark(tenant))?.map_or(0, |m| m.seq.saturating_add(1)))
}

/// How many of the user's sessions are neither revoked nor collected (expired but not yet
/// collected ones included).
pub fn user_live(state: &impl StateRead, tenant: &str, user_id: &str) -> Result<u64, StateError> {
    let Some(bytes) = state.get(&keys::user_live(tenant, user_id))? else {
        return Ok(0);
    };
    let (count, epoch) = bytes
        .get(..16)
        .map(|b| {
            let (c, e) = b.split_at(8);
            (
                u64::from_be_bytes(c.try_into().unwrap_or_default()),
                u64::from_be_bytes(e.try_into().unwrap_or_default()),
            )
        })
        .ok_or_else(|| StateError::Corrupt("user counter is not 16 bytes".into()))?;
    Ok(if epoch == tenant_epoch(state, tenant)? {
        count
    } else {
        0
    })
}

/// Sets the user's live counter (a zero count is not stored).
pub fn set_user_live(
    state: &mut impl StateWrite,
    tenant: &str,
    user_id: &str,
    count: u64,
) -> Result<(), StateError> {
    let key = keys::user_live(tenant, user_id);
    if count == 0 {
        state.delete(&key);
        return Ok(());
    }
    let epoch = tenant_epoch(state, tenant)?;
    state.put(key, [count.to_be_bytes(), epoch.to_be_bytes()].concat());
    Ok(())
}

/// Adds `delta` to the live counters of the session's tenant and user.
fn add_live(
    state: &mut impl StateWrite,
    session: &SessionRecord,
    delta: i64,
) -> Result<(), StateError> {
    add_to_counter(state, keys::tenant_live(&session.tenant), delta)?;
    let count = user_live(state, &session.tenant, &session.user_id)?.saturating_add_signed(delta);
    set_user_live(state, &session.tenant, &session.user_id, count)
}

/// Stores a new session with its indexes and current refresh-token hash, in the state's
/// record `format`.
pub fn insert(
    state: &mut impl StateWrite,
    session: &SessionRecord,
    format: RecordFormat,
) -> Result<(), StateError> {
    let legacy = format == RecordFormat::Legacy;
    let index_value = || {
        if legacy {
            session.session_id.as_bytes().to_vec()
        } else {
            Vec::new()
        }
    };
    state.put(
        keys::user_session(
            &session.tenant,
            &session.user_id,
            session.created_at_ms,
            &session.session_id,
        ),
        index_value(),
    );
    let founder =
        format::founded_family(&session.session_id).as_deref() == Some(&session.family_id);
    if legacy || !founder {
        state.put(
            keys::family_member(&session.family_id, &session.session_id),
            index_value(),
        );
    }
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
    put_in(state, session, format);
    add_live(state, session, 1)
}

/// Stores a changed session, moving its expiry-index entry if its expiry moved from
/// `previous_expiry`.
pub fn update(
    state: &mut impl StateWrite,
    previous_expiry: i64,
    session: &SessionRecord,
) -> Result<(), StateError> {
    let format = format::current(state)?;
    update_in(state, previous_expiry, session, format)
}

/// [`update`] in the state's record `format`, which the caller has read already.
pub fn update_in(
    state: &mut impl StateWrite,
    previous_expiry: i64,
    session: &SessionRecord,
    format: RecordFormat,
) -> Result<(), StateError> {
    let expiry = effective_expiry(session);
    if expiry != previous_expiry {
        state.delete(&keys::session_expiry(previous_expiry, &session.session_id));
        state.put(
            keys::session_expiry(expiry, &session.session_id),
            Vec::new(),
        );
    }
    put_keeping(state, session, format)
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
    put(state, session)?;
    add_live(state, session, -1)?;
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
    if let Some(mut family) = family(state, family_id)? {
        if !family.revoked {
            family.revoked = true;
            family.revoked_at_ms = revocation.at_ms;
            family.revocation_reason = revocation.reason as i32;
            store(state, keys::family(family_id), &family);
        }
    }
    let mut revoked = 0;
    for session_id in members(state, family_id)? {
        if let Some(mut session) = load(state, &session_id)? {
            if revoke(state, &mut session, revocation, events)? {
                revoked += 1;
            }
        }
    }
    Ok(revoked)
}

/// Deletes the refresh-token record of `hash`, a token of `session_id`, and those of the
/// predecessors it names one after another (format 4; a record written by an older format
/// names none, and the retired-token index holds the rest), at most `budget` of them (the
/// budget shrinks by those deleted). The hash of the newest record left, if any is.
fn remove_token_chain(
    state: &mut impl StateWrite,
    session_id: &str,
    hash: &[u8],
    budget: &mut usize,
) -> Result<Option<Vec<u8>>, StateError> {
    let mut hash = hash.to_vec();
    loop {
        let key = keys::refresh(&hash);
        let Some(token) = load_record::<RefreshTokenRecord>(state, &key)? else {
            return Ok(None);
        };
        if token.session_id != session_id {
            return Ok(None);
        }
        if *budget == 0 {
            return Ok(Some(hash));
        }
        state.delete(&key);
        *budget -= 1;
        if token.predecessor_hash.is_empty() {
            return Ok(None);
        }
        hash = token.predecessor_hash;
    }
}

/// Deletes a session (as read by [`load`]) with everything that points to it; deletes its
/// family with its last member. At most `budget` of its refresh-token records go in one call
/// (the budget shrinks by those deleted), so that a session rotated many times does not make
/// one command's work unbounded: with more left, the session stays, its record naming the
/// newest token left as its current one (it is expired: its tokens redeem nothing either
/// way), and a later call goes on. True when the session is gone.
pub fn remove(
    state: &mut impl StateWrite,
    session: &SessionRecord,
    budget: &mut usize,
) -> Result<bool, StateError> {
    let id = &session.session_id;
    if let Some(left) = remove_token_chain(state, id, &session.current_refresh_hash, budget)? {
        let trimmed = SessionRecord {
            current_refresh_hash: left,
            ..session.clone()
        };
        put(state, &trimmed)?;
        return Ok(false);
    }
    let retired = state.scan_prefix(&keys::retired_of(id), None, budget.saturating_add(1))?;
    let more = retired.len() > *budget;
    for (key, hash) in retired.into_iter().take(*budget) {
        state.delete(&keys::refresh(&hash));
        state.delete(&key);
        *budget -= 1;
    }
    if more {
        return Ok(false);
    }
    state.delete(&keys::session(id));
    state.delete(&keys::user_session(
        &session.tenant,
        &session.user_id,
        session.created_at_ms,
        id,
    ));
    state.delete(&keys::session_expiry(effective_expiry(session), id));
    state.delete(&keys::family_member(&session.family_id, id));
    let members = keys::family_members(&session.family_id);
    if state.scan_prefix(&members, None, 1)?.is_empty()
        && implicit_founder(state, &session.family_id)?.is_none()
    {
        state.delete(&keys::family(&session.family_id));
    }
    if !session.revoked {
        add_live(state, session, -1)?;
    }
    Ok(true)
}
