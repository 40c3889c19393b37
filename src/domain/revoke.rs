//! Revoke: one session, a family, all of a user's sessions in a tenant, or a whole tenant,
//! atomically in one command. Already revoked sessions are not counted again.

use super::records::load;
use super::sessions::{self, Revocation};
use super::{keys, StateError, StateWrite};
use crate::proto::internal::{
    command_result, FamilyRecord, RevocationEvent, Revoke, RevokeResult, SessionRecord,
};
use crate::proto::v1::{RevocationReason, RevokeScope};

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
            match load::<SessionRecord>(state, &keys::session(&command.id))?
                .filter(|s| s.tenant == command.tenant)
            {
                Some(mut session) => {
                    u64::from(sessions::revoke(state, &mut session, revocation, events)?)
                }
                None => 0,
            }
        }
        RevokeScope::Family => {
            let family = load::<FamilyRecord>(state, &keys::family(&command.id))?;
            let family_tenant = family.map(|f| f.tenant);
            if family_tenant.as_deref() == Some(command.tenant.as_str()) {
                sessions::revoke_family(state, &command.id, revocation, events)?
            } else {
                0
            }
        }
        RevokeScope::User => revoke_indexed(
            state,
            &keys::user_sessions(&command.tenant, &command.id),
            revocation,
            events,
        )?,
        RevokeScope::Tenant => revoke_indexed(
            state,
            &keys::tenant_sessions(&command.tenant),
            revocation,
            events,
        )?,
    };
    Ok(command_result::Kind::Revoke(RevokeResult { revoked_count }))
}

/// Revokes every session (and its family) under a per-user index prefix.
fn revoke_indexed(
    state: &mut impl StateWrite,
    prefix: &[u8],
    revocation: Revocation,
    events: &mut Vec<RevocationEvent>,
) -> Result<u64, StateError> {
    let mut revoked = 0;
    let mut families = std::collections::BTreeSet::new();
    for (_, session_id) in state.scan_prefix(prefix, None, usize::MAX)? {
        let Some(mut session) = load::<SessionRecord>(state, &keys::session_bytes(&session_id))?
        else {
            continue;
        };
        families.insert(session.family_id.clone());
        if sessions::revoke(state, &mut session, revocation, events)? {
            revoked += 1;
        }
    }
    for family_id in families {
        revoked += sessions::revoke_family(state, &family_id, revocation, events)?;
    }
    Ok(revoked)
}
