//! Read-side queries over the state. SKELETON: signatures are the contract.

use super::{StateError, StateRead};
use crate::proto::internal::{AccessTokenRecord, RefreshTokenRecord, SessionRecord};
use crate::proto::v1::SessionStatus;

/// The session's status as seen at `now_ms` (revoked wins over expired).
pub fn status_at(session: &SessionRecord, now_ms: i64) -> SessionStatus {
    let _ = (session, now_ms);
    todo!()
}

/// The session with this id, if it exists and belongs to `tenant`.
pub fn session_by_id(
    state: &impl StateRead,
    tenant: &str,
    session_id: &str,
) -> Result<Option<SessionRecord>, StateError> {
    let _ = (state, tenant, session_id);
    todo!()
}

/// The session a refresh-token hash belongs to (current or retired), if it belongs to
/// `tenant`, with the token's index record.
pub fn session_by_refresh_hash(
    state: &impl StateRead,
    tenant: &str,
    hash: &[u8],
) -> Result<Option<(SessionRecord, RefreshTokenRecord)>, StateError> {
    let _ = (state, tenant, hash);
    todo!()
}

/// The access token's record and its session (None if the session is gone or belongs to
/// another tenant).
pub fn access_token(
    state: &impl StateRead,
    tenant: &str,
    hash: &[u8],
) -> Result<Option<(AccessTokenRecord, Option<SessionRecord>)>, StateError> {
    let _ = (state, tenant, hash);
    todo!()
}

/// One page of a user's sessions, oldest first.
pub struct SessionPage {
    /// The sessions on this page.
    pub sessions: Vec<SessionRecord>,
    /// Where the next page starts, if there is one (an opaque cursor).
    pub next_cursor: Option<Vec<u8>>,
}

/// A page of `user_id`'s sessions in `tenant`, oldest first, starting after `cursor`;
/// inactive (revoked or expired at `now_ms`) ones only if `include_inactive`.
pub fn list_user_sessions(
    state: &impl StateRead,
    tenant: &str,
    user_id: &str,
    include_inactive: bool,
    now_ms: i64,
    page_size: usize,
    cursor: Option<&[u8]>,
) -> Result<SessionPage, StateError> {
    let _ = (
        state,
        tenant,
        user_id,
        include_inactive,
        now_ms,
        page_size,
        cursor,
    );
    todo!()
}

/// Active sessions of a user (exact at `now_ms`), or of the whole tenant when `user_id` is
/// None (revoked excluded; expired but uncollected sessions included).
pub fn count_active(
    state: &impl StateRead,
    tenant: &str,
    user_id: Option<&str>,
    now_ms: i64,
) -> Result<u64, StateError> {
    let _ = (state, tenant, user_id, now_ms);
    todo!()
}

/// Replay anomalies detected: (tenant total, the user's total or 0).
pub fn replay_counts(
    state: &impl StateRead,
    tenant: &str,
    user_id: Option<&str>,
) -> Result<(u64, u64), StateError> {
    let _ = (state, tenant, user_id);
    todo!()
}
