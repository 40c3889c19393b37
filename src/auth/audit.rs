//! The audit trail: structured events on the tracing target `sessiond::audit` for
//! membership changes, tenant- and user-wide revocations, and refused credentials. Events
//! name the principal and what it did; they never carry a key, a token or a certificate.
//! Route them apart with the target, e.g. `RUST_LOG=info,sessiond::audit=info` and a JSON
//! log collector filtering on `"target":"sessiond::audit"`.

use std::net::SocketAddr;

use super::{role_name, Principal};

/// The tracing target of audit events.
pub const TARGET: &str = "sessiond::audit";

fn role(principal: &Principal) -> &'static str {
    principal.role.map_or("open", role_name)
}

/// A call refused for want of a valid credential.
pub fn credential_refused(remote: Option<SocketAddr>, method: &str, reason: &str) {
    tracing::warn!(
        target: TARGET,
        event = "credential_refused",
        remote = remote.map(|r| r.to_string()).unwrap_or_default(),
        method,
        reason,
        "call refused: not authenticated"
    );
}

/// A call refused because the principal's role or tenants do not allow it.
pub fn permission_refused(
    remote: Option<SocketAddr>,
    method: &str,
    principal: &Principal,
    reason: &str,
) {
    tracing::warn!(
        target: TARGET,
        event = "permission_refused",
        remote = remote.map(|r| r.to_string()).unwrap_or_default(),
        method,
        principal = %principal.name,
        role = role(principal),
        reason,
        "call refused: not allowed"
    );
}

/// A peer connection or message refused (wrong cluster, not a member, not a node).
pub fn peer_refused(remote: Option<SocketAddr>, method: &str, reason: &str) {
    tracing::warn!(
        target: TARGET,
        event = "peer_refused",
        remote = remote.map(|r| r.to_string()).unwrap_or_default(),
        method,
        reason,
        "peer message refused"
    );
}

/// A membership change carried out (`action`: add_learner, promote, remove).
pub fn membership_changed(principal: &Principal, action: &str, node_id: u64, addr: &str) {
    tracing::info!(
        target: TARGET,
        event = "membership_changed",
        principal = %principal.name,
        role = role(principal),
        action,
        node_id,
        addr,
        "membership changed"
    );
}

/// The cluster moved to another record format at an operator's request.
pub fn record_format_set(principal: &Principal, record_format: u32, revision: u64) {
    tracing::info!(
        target: TARGET,
        event = "record_format_set",
        principal = %principal.name,
        role = role(principal),
        record_format,
        revision,
        "record format set"
    );
}

/// A backup of the node's state sent to an operator.
pub fn backup_started(principal: &Principal, last_index: u64, bytes: u64) {
    tracing::info!(
        target: TARGET,
        event = "backup",
        principal = %principal.name,
        role = role(principal),
        last_index,
        bytes,
        "backup started"
    );
}

/// A revocation of a whole user or tenant.
pub fn bulk_revocation(
    principal: &Principal,
    tenant: &str,
    scope: &str,
    user_id: &str,
    revoked: u64,
    revision: u64,
) {
    tracing::info!(
        target: TARGET,
        event = "bulk_revocation",
        principal = %principal.name,
        role = role(principal),
        tenant,
        scope,
        user_id,
        revoked,
        revision,
        "sessions revoked"
    );
}
