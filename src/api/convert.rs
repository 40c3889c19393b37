//! Stored records into API messages. The session's status is computed at read time, so a
//! record stored as active is reported EXPIRED once its expiry has passed.

use crate::domain::query;
use crate::proto::internal::{LeaseRecord, SessionRecord};
use crate::proto::v1::{RenewalLease, Session};

/// The API view of a stored session as seen at `now_ms`.
pub fn session(record: &SessionRecord, now_ms: i64) -> Session {
    Session {
        session_id: record.session_id.clone(),
        family_id: record.family_id.clone(),
        tenant: record.tenant.clone(),
        user_id: record.user_id.clone(),
        created_at_ms: record.created_at_ms,
        expires_at_ms: record.expires_at_ms,
        idle_timeout_ms: record.idle_timeout_ms,
        last_seen_at_ms: record.last_seen_at_ms,
        status: query::status_at(record, now_ms) as i32,
        revoked_at_ms: record.revoked_at_ms,
        revocation_reason: record.revocation_reason,
        generation: record.generation,
        device_public_key: record.device_public_key.clone(),
        attributes: record.attributes.clone(),
    }
}

/// The API view of an optional stored session.
pub fn optional_session(record: Option<&SessionRecord>, now_ms: i64) -> Option<Session> {
    record.map(|r| session(r, now_ms))
}

/// The API view of a renewal lease.
pub fn lease(record: &LeaseRecord) -> RenewalLease {
    RenewalLease {
        lease_id: record.lease_id.clone(),
        holder: record.holder.clone(),
        expires_at_ms: record.expires_at_ms,
    }
}
