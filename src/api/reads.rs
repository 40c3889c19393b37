//! The read-only operations: Lookup, ValidateAccessToken, ListSessions, CountSessions and
//! GetAnomalyCounters. Each first honours the requested consistency (LINEARIZABLE: a
//! read-index round through the leader; LOCAL: this node's applied state as is), then
//! queries the applied state. Statuses are computed with this node's clock.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use super::authority::Authority;
use super::{convert, validate};
use crate::domain::query;
use crate::proto::v1::*;
use crate::token::{IdKind, TokenHash, TokenKind};
use crate::Error;

/// Largest page ListSessions returns.
pub const MAX_PAGE_SIZE: u32 = 500;
/// Page size when the request gives none.
pub const DEFAULT_PAGE_SIZE: u32 = 100;

/// What a Lookup searches by, once validated.
enum LookupKey {
    Session(String),
    Refresh(TokenHash),
    Access(TokenHash),
}

/// Handles one Lookup request.
pub async fn lookup(
    authority: &Authority,
    request: LookupRequest,
) -> Result<LookupResponse, Error> {
    validate::tenant("tenant", &request.tenant)?;
    let consistency = validate::consistency("consistency", request.consistency)?;
    let key = match request.key {
        None => {
            return Err(Error::invalid(
                "key",
                "one of session_id, refresh_token, access_token is required",
            ))
        }
        Some(lookup_request::Key::SessionId(id)) => {
            validate::id("session_id", IdKind::Session, &id)?;
            LookupKey::Session(id)
        }
        Some(lookup_request::Key::RefreshToken(t)) => {
            LookupKey::Refresh(validate::raw_token("refresh_token", TokenKind::Refresh, &t)?.hash())
        }
        Some(lookup_request::Key::AccessToken(t)) => {
            LookupKey::Access(validate::raw_token("access_token", TokenKind::Access, &t)?.hash())
        }
    };
    authority.read_barrier(consistency).await?;
    let state = authority.node().state();
    let revision = state.applied_index();
    let now = authority.read_now_ms();
    let tenant = &request.tenant;
    let (session, token_state) = match key {
        LookupKey::Session(id) => (query::session_by_id(state, tenant, &id)?, None),
        LookupKey::Refresh(hash) => {
            match query::session_by_refresh_hash(state, tenant, hash.as_bytes())? {
                Some((session, retired)) => {
                    let token_state = if retired {
                        RefreshTokenState::Retired
                    } else {
                        RefreshTokenState::Current
                    };
                    (Some(session), Some(token_state))
                }
                None => (None, None),
            }
        }
        LookupKey::Access(hash) => {
            let session = query::access_token(state, tenant, hash.as_bytes())?.and_then(|(_, s)| s);
            (session, None)
        }
    };
    let outcome = if session.is_some() {
        LookupOutcome::Found
    } else {
        LookupOutcome::NotFound
    };
    Ok(LookupResponse {
        outcome: outcome as i32,
        session: convert::optional_session(session.as_ref(), now),
        refresh_token_state: token_state.unwrap_or_default() as i32,
        revision,
    })
}

/// Handles one ValidateAccessToken request.
pub async fn validate_access_token(
    authority: &Authority,
    request: ValidateAccessTokenRequest,
) -> Result<ValidateAccessTokenResponse, Error> {
    validate::tenant("tenant", &request.tenant)?;
    let hash =
        validate::raw_token("access_token", TokenKind::Access, &request.access_token)?.hash();
    let consistency = validate::consistency("consistency", request.consistency)?;
    authority.read_barrier(consistency).await?;
    let state = authority.node().state();
    let revision = state.applied_index();
    let now = authority.read_now_ms();
    // A token whose session was collected has no tenant left to check it against: it is
    // unknown to every tenant (telling one tenant it exists would leak another's).
    let Some((token, Some(session))) =
        query::access_token(state, &request.tenant, hash.as_bytes())?
    else {
        return Ok(ValidateAccessTokenResponse {
            outcome: AccessTokenOutcome::Unknown as i32,
            revision,
            ..Default::default()
        });
    };
    let outcome = match query::status_at(&session, now) {
        _ if token.expires_at_ms <= now => AccessTokenOutcome::TokenExpired,
        SessionStatus::Revoked => AccessTokenOutcome::SessionRevoked,
        SessionStatus::Expired => AccessTokenOutcome::SessionExpired,
        _ => AccessTokenOutcome::Valid,
    };
    Ok(ValidateAccessTokenResponse {
        outcome: outcome as i32,
        session: Some(convert::session(&session, now)),
        access_token_expires_at_ms: token.expires_at_ms,
        revision,
    })
}

/// Handles one ListSessions request.
pub async fn list_sessions(
    authority: &Authority,
    request: ListSessionsRequest,
) -> Result<ListSessionsResponse, Error> {
    validate::tenant("tenant", &request.tenant)?;
    validate::name("user_id", &request.user_id)?;
    let (page_size, cursor) = validate::page(
        request.page_size,
        DEFAULT_PAGE_SIZE,
        MAX_PAGE_SIZE,
        &request.page_token,
    )?;
    let consistency = validate::consistency("consistency", request.consistency)?;
    authority.read_barrier(consistency).await?;
    let state = authority.node().state();
    let revision = state.applied_index();
    let now = authority.read_now_ms();
    let page = query::list_user_sessions(
        state,
        &request.tenant,
        &request.user_id,
        request.include_inactive,
        now,
        page_size as usize,
        cursor.as_deref(),
    )?;
    Ok(ListSessionsResponse {
        sessions: page
            .sessions
            .iter()
            .map(|s| convert::session(s, now))
            .collect(),
        next_page_token: page
            .next_cursor
            .map(|c| URL_SAFE_NO_PAD.encode(c))
            .unwrap_or_default(),
        revision,
    })
}

/// Handles one CountSessions request.
pub async fn count_sessions(
    authority: &Authority,
    request: CountSessionsRequest,
) -> Result<CountSessionsResponse, Error> {
    validate::tenant("tenant", &request.tenant)?;
    let user = optional_user(&request.user_id)?;
    let consistency = validate::consistency("consistency", request.consistency)?;
    authority.read_barrier(consistency).await?;
    let state = authority.node().state();
    let revision = state.applied_index();
    let active = query::count_active(state, &request.tenant, user, authority.read_now_ms())?;
    Ok(CountSessionsResponse { active, revision })
}

/// Handles one GetAnomalyCounters request.
pub async fn anomaly_counters(
    authority: &Authority,
    request: GetAnomalyCountersRequest,
) -> Result<GetAnomalyCountersResponse, Error> {
    validate::tenant("tenant", &request.tenant)?;
    let user = optional_user(&request.user_id)?;
    let consistency = validate::consistency("consistency", request.consistency)?;
    authority.read_barrier(consistency).await?;
    let state = authority.node().state();
    let revision = state.applied_index();
    let (tenant_replays, user_replays) = query::replay_counts(state, &request.tenant, user)?;
    Ok(GetAnomalyCountersResponse {
        tenant_replays,
        user_replays,
        revision,
    })
}

fn optional_user(user_id: &str) -> Result<Option<&str>, Error> {
    if user_id.is_empty() {
        Ok(None)
    } else {
        validate::name("user_id", user_id)?;
        Ok(Some(user_id))
    }
}
