//! Read-side queries over the state. Statuses are computed at the caller's `now_ms`; tenant
//! isolation is enforced here: a record of another tenant is reported as absent.

use super::records::{counter, load};
use super::sessions::{load as load_session, user_entry_session};
use super::{keys, StateError, StateRead};
use crate::proto::internal::{AccessTokenRecord, RefreshTokenRecord, SessionRecord};
use crate::proto::v1::SessionStatus;

/// Whether `key` is a session record's (for counting sessions in a snapshot).
pub fn is_session_key(key: &[u8]) -> bool {
    key.starts_with(&keys::sessions_prefix())
}

/// The session's status as seen at `now_ms` (revoked wins over expired).
pub fn status_at(session: &SessionRecord, now_ms: i64) -> SessionStatus {
    if session.revoked {
        SessionStatus::Revoked
    } else if now_ms >= super::sessions::effective_expiry(session) {
        SessionStatus::Expired
    } else {
        SessionStatus::Active
    }
}

/// The session with this id, if it exists and belongs to `tenant`.
pub fn session_by_id(
    state: &impl StateRead,
    tenant: &str,
    session_id: &str,
) -> Result<Option<SessionRecord>, StateError> {
    Ok(load_session(state, session_id.as_bytes())?.filter(|s| s.tenant == tenant))
}

/// The tenant of the session a refresh-token hash belongs to, if this state holds both.
pub fn tenant_of_refresh_hash(
    state: &impl StateRead,
    hash: &[u8],
) -> Result<Option<String>, StateError> {
    let Some(token) = load::<RefreshTokenRecord>(state, &keys::refresh(hash))? else {
        return Ok(None);
    };
    Ok(load_session(state, token.session_id.as_bytes())?.map(|s| s.tenant))
}

/// The session a refresh-token hash belongs to (current or retired), if it belongs to
/// `tenant`, and whether the token is retired: it is when the session's current token is
/// another one (whatever the record format wrote in the token's own record).
pub fn session_by_refresh_hash(
    state: &impl StateRead,
    tenant: &str,
    hash: &[u8],
) -> Result<Option<(SessionRecord, bool)>, StateError> {
    let Some(token) = load::<RefreshTokenRecord>(state, &keys::refresh(hash))? else {
        return Ok(None);
    };
    let Some(session) = session_by_id(state, tenant, &token.session_id)? else {
        return Ok(None);
    };
    // The two records are read one after the other (the store isolates single reads only):
    // the session's current hash decides, even if the token's own record was read before
    // the rotation that retired it.
    let retired = session.current_refresh_hash != hash;
    Ok(Some((session, retired)))
}

/// The access token's record and its session (None if the session was collected). A token
/// whose session belongs to another tenant is reported as unknown.
pub fn access_token(
    state: &impl StateRead,
    tenant: &str,
    hash: &[u8],
) -> Result<Option<(AccessTokenRecord, Option<SessionRecord>)>, StateError> {
    let Some(token) = load::<AccessTokenRecord>(state, &keys::access(hash))? else {
        return Ok(None);
    };
    match load_session(state, token.session_id.as_bytes())? {
        Some(s) if s.tenant != tenant => Ok(None),
        session => Ok(Some((token, session))),
    }
}

/// One page of a user's sessions, oldest first.
pub struct SessionPage {
    /// The sessions on this page.
    pub sessions: Vec<SessionRecord>,
    /// Where the next page starts, if there is one (an opaque cursor).
    pub next_cursor: Option<Vec<u8>>,
}

/// Most index rows one page scans. A page whose rows are mostly filtered out (inactive
/// sessions, unrevoked ones) ends there, short or even empty, with a cursor to go on from.
pub const MAX_ROWS_SCANNED_PER_PAGE: usize = 4_096;

/// A page of `user_id`'s sessions in `tenant`, oldest first, starting after `cursor`;
/// inactive (revoked or expired at `now_ms`) ones only if `include_inactive`. At most
/// [`MAX_ROWS_SCANNED_PER_PAGE`] index rows are scanned.
pub fn list_user_sessions(
    state: &impl StateRead,
    tenant: &str,
    user_id: &str,
    include_inactive: bool,
    now_ms: i64,
    page_size: usize,
    cursor: Option<&[u8]>,
) -> Result<SessionPage, StateError> {
    let prefix = keys::user_sessions(tenant, user_id);
    let mut after = cursor.map(|c| [prefix.as_slice(), c].concat());
    let mut sessions = Vec::new();
    let mut scanned = 0;
    let batch = page_size.clamp(1, 256) + 1;
    loop {
        let entries = state.scan_prefix(&prefix, after.as_deref(), batch)?;
        let exhausted = entries.len() < batch;
        for (key, _) in entries {
            if scanned == MAX_ROWS_SCANNED_PER_PAGE {
                return Ok(page_ending_at(sessions, &prefix, after));
            }
            scanned += 1;
            let Some(session) = load_session(state, user_entry_session(&key)?)? else {
                after = Some(key);
                continue;
            };
            if !include_inactive && status_at(&session, now_ms) != SessionStatus::Active {
                after = Some(key);
                continue;
            }
            if sessions.len() == page_size {
                return Ok(page_ending_at(sessions, &prefix, after));
            }
            sessions.push(session);
            after = Some(key);
        }
        if exhausted {
            return Ok(SessionPage {
                sessions,
                next_cursor: None,
            });
        }
    }
}

/// A page that the next one continues after `last` (a full key under `prefix`).
fn page_ending_at(
    sessions: Vec<SessionRecord>,
    prefix: &[u8],
    last: Option<Vec<u8>>,
) -> SessionPage {
    SessionPage {
        sessions,
        next_cursor: last.map(|key| key[prefix.len()..].to_vec()),
    }
}

/// The session records of the oldest `limit` entries of a user's index, oldest first.
pub fn user_session_records(
    state: &impl StateRead,
    tenant: &str,
    user_id: &str,
    limit: usize,
) -> Result<Vec<SessionRecord>, StateError> {
    let mut sessions = Vec::new();
    for (key, _) in state.scan_prefix(&keys::user_sessions(tenant, user_id), None, limit)? {
        if let Some(session) = load_session(state, user_entry_session(&key)?)? {
            sessions.push(session);
        }
    }
    Ok(sessions)
}

/// Active sessions of a user (exact at `now_ms`), or of the whole tenant when `user_id` is
/// None (revoked excluded; expired but uncollected sessions included).
pub fn count_active(
    state: &impl StateRead,
    tenant: &str,
    user_id: Option<&str>,
    now_ms: i64,
) -> Result<u64, StateError> {
    match user_id {
        None => counter(state, &keys::tenant_live(tenant)),
        Some(user_id) => Ok(user_session_records(state, tenant, user_id, usize::MAX)?
            .iter()
            .filter(|s| status_at(s, now_ms) == SessionStatus::Active)
            .count() as u64),
    }
}

/// The live-session counters (sessions neither revoked nor collected) of the first `limit`
/// tenants in name order, for metrics.
pub fn live_sessions_per_tenant(
    state: &impl StateRead,
    limit: usize,
) -> Result<Vec<(String, u64)>, StateError> {
    let mut counts = Vec::new();
    for (key, _) in state.scan_prefix(&keys::tenant_live_prefix(), None, limit)? {
        if let Some(tenant) = keys::tenant_of_live(&key) {
            let live = counter(state, &key)?;
            counts.push((tenant, live));
        }
    }
    Ok(counts)
}

/// Replay anomalies detected: (tenant total, the user's total or 0).
pub fn replay_counts(
    state: &impl StateRead,
    tenant: &str,
    user_id: Option<&str>,
) -> Result<(u64, u64), StateError> {
    let tenant_total = counter(state, &keys::tenant_replays(tenant))?;
    let user_total = match user_id {
        Some(user_id) => counter(state, &keys::user_replays(tenant, user_id))?,
        None => 0,
    };
    Ok((tenant_total, user_total))
}

/// One page of a tenant's revoked sessions that have not expired at `now_ms`, in index order.
/// At most [`MAX_ROWS_SCANNED_PER_PAGE`] index rows are scanned.
pub fn revoked_sessions(
    state: &impl StateRead,
    tenant: &str,
    now_ms: i64,
    page_size: usize,
    cursor: Option<&[u8]>,
) -> Result<SessionPage, StateError> {
    let prefix = keys::tenant_sessions(tenant);
    let mut after = cursor.map(|c| [prefix.as_slice(), c].concat());
    let mut sessions = Vec::new();
    let mut scanned = 0;
    let batch = page_size.clamp(1, 1024);
    loop {
        let entries = state.scan_prefix(&prefix, after.as_deref(), batch)?;
        let exhausted = entries.len() < batch;
        for (key, _) in entries {
            if scanned == MAX_ROWS_SCANNED_PER_PAGE {
                return Ok(page_ending_at(sessions, &prefix, after));
            }
            scanned += 1;
            let session = load_session(state, user_entry_session(&key)?)?;
            after = Some(key);
            let Some(session) = session else {
                continue;
            };
            if session.revoked && super::sessions::effective_expiry(&session) > now_ms {
                sessions.push(session);
                if sessions.len() == page_size {
                    return Ok(page_ending_at(sessions, &prefix, after));
                }
            }
        }
        if exhausted {
            return Ok(SessionPage {
                sessions,
                next_cursor: None,
            });
        }
    }
}
