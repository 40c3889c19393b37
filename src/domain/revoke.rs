//! Revoke: one session, a family, all of a user's sessions in a tenant, or a whole tenant,
//! atomically in one command. Already revoked sessions are not counted again.
//!
//! A session or family revocation touches its sessions (a family is bounded by its members).
//! A user or tenant revocation is O(1) whatever its size: it moves the user's (tenant's)
//! revoked-before watermark to the last session created so far, takes the revoked count from
//! the live counters, and emits one scoped event. Every read of a session applies the
//! watermarks (`sessions::load`), so the covered sessions read as revoked at once; sessions
//! created later are not covered.

use super::records::store;
use super::sessions::{self, Revocation};
use super::{keys, StateError, StateWrite};
use crate::proto::internal::{
    command_result, RevocationEvent, Revoke, RevokeResult, WatermarkRecord,
};
use crate::proto::v1::{RevocationReason, RevokeScope};
use crate::proto::SCHEMA_VERSION;

/// Applies a Revoke command stamped `now_ms`.
pub fn apply(
    command: &Revoke,
    now_ms: i64,
    state: &mut impl StateWrite,
    events: &mut Vec<RevocationEvent>,
) -> Result<command_result::Kind, StateError> {
    let scope = RevokeScope::try_from(command.scope).unwrap_or_default();
    let revocation = Revocation {
        at_ms: now_ms,
        reason: RevocationReason::try_from(command.reason).unwrap_or_default(),
        scope,
    };
    let revoked_count = match scope {
        RevokeScope::Unspecified => 0,
        RevokeScope::Session => {
            match sessions::load(state, command.id.as_bytes())?
                .filter(|s| s.tenant == command.tenant)
            {
                Some(mut session) => {
                    u64::from(sessions::revoke(state, &mut session, revocation, events)?)
                }
                None => 0,
            }
        }
        RevokeScope::Family => {
            let family_tenant = sessions::family(state, &command.id)?.map(|f| f.tenant);
            if family_tenant.as_deref() == Some(command.tenant.as_str()) {
                sessions::revoke_family(state, &command.id, revocation, events)?
            } else {
                0
            }
        }
        RevokeScope::User => revoke_scope(
            state,
            &command.tenant,
            Some(&command.id),
            revocation,
            events,
        )?,
        RevokeScope::Tenant => revoke_scope(state, &command.tenant, None, revocation, events)?,
    };
    Ok(command_result::Kind::Revoke(RevokeResult { revoked_count }))
}

/// Revokes every session created so far of `user_id` in `tenant` (of the whole tenant when
/// None) by moving its watermark; returns how many were live. One scoped event is emitted
/// when any was.
fn revoke_scope(
    state: &mut impl StateWrite,
    tenant: &str,
    user_id: Option<&str>,
    revocation: Revocation,
    events: &mut Vec<RevocationEvent>,
) -> Result<u64, StateError> {
    let live_key = keys::tenant_live(tenant);
    let tenant_live = super::records::counter(state, &live_key)?;
    let (mark_key, revoked) = match user_id {
        Some(user_id) => {
            let user_live = sessions::user_live(state, tenant, user_id)?;
            sessions::set_user_live(state, tenant, user_id, 0)?;
            let rest = tenant_live.saturating_sub(user_live);
            state.put(live_key, rest.to_be_bytes().to_vec());
            (keys::user_watermark(tenant, user_id), user_live)
        }
        None => {
            state.put(live_key, 0u64.to_be_bytes().to_vec());
            (keys::tenant_watermark(tenant), tenant_live)
        }
    };
    let seq = sessions::last_created_seq(state)?;
    let unchanged = sessions::watermark(state, &mark_key)?.is_some_and(|m| m.seq >= seq);
    if !unchanged {
        store(
            state,
            mark_key,
            &WatermarkRecord {
                schema_version: SCHEMA_VERSION,
                seq,
                revoked_at_ms: revocation.at_ms,
                reason: revocation.reason as i32,
            },
        );
    }
    if revoked > 0 {
        events.push(RevocationEvent {
            tenant: tenant.to_owned(),
            user_id: user_id.unwrap_or_default().to_owned(),
            reason: revocation.reason as i32,
            revoked_at_ms: revocation.at_ms,
            scope: revocation.scope as i32,
            ..Default::default()
        });
    }
    Ok(revoked)
}
