//! Checks of the commands other nodes propose to this one (`RaftTransport/Propose`: a
//! follower forwarding a client write to the leader).
//!
//! The transport is reachable by anyone who reaches the port, so a proposed command is held
//! to the same limits as the public API: a known kind and no batch (only the leader's group
//! commit builds batches), server-minted ids and 32-byte hashes of the right form, names and
//! attributes within their sizes, deadlines within the configured lifetimes of the
//! proposer's clock, and that clock within [`MAX_PROPOSER_SKEW_MS`] of this node's. Anything
//! else gets INVALID_ARGUMENT naming the field, and nothing is written.
//!
//! The per-tenant policy a command carries (reuse grace window, session limit, GC limits and
//! retentions) is replaced with this node's own: the leader's configuration rules every
//! command it commits, whichever node received the request.

use super::validate;
use crate::config::Config;
use crate::domain::format::RecordFormat;
use crate::proto::internal::{command, Command};
use crate::proto::v1::{RevocationReason, RevokeScope};
use crate::proto::SCHEMA_VERSION;
use crate::token::IdKind;
use crate::Error;

/// Furthest a proposer's clock may be from this node's, in ms. The leader stamps its own time
/// on every entry; the proposer's only anchors the deadlines it computed.
pub const MAX_PROPOSER_SKEW_MS: i64 = 24 * 60 * 60 * 1000;
/// Bytes of a SHA-256 hash.
const HASH_BYTES: usize = 32;
/// Longest sealed token blob (a sealed refresh + access token pair is about 150 bytes).
const MAX_SEALED_BYTES: usize = 512;

/// Checks a command proposed by a peer and puts this node's policy into it.
pub fn check(config: &Config, command: &mut Command, now_ms: i64) -> Result<(), Error> {
    if command.schema_version != SCHEMA_VERSION {
        return Err(Error::invalid(
            "command.schema_version",
            format!("must be {SCHEMA_VERSION}"),
        ));
    }
    if command.now_ms.abs_diff(now_ms) > MAX_PROPOSER_SKEW_MS.unsigned_abs() {
        return Err(Error::invalid(
            "command.now_ms",
            "too far from the leader's clock",
        ));
    }
    if !command.request_key.is_empty() && command.request_key.len() != HASH_BYTES {
        return Err(Error::invalid("command.request_key", "must be 32 bytes"));
    }
    let now = command.now_ms;
    let policy = &config.sessions;
    match &mut command.kind {
        None => return Err(Error::invalid("command.kind", "must be set")),
        Some(command::Kind::Batch(_)) => {
            return Err(Error::invalid("command.kind", "a batch cannot be proposed"))
        }
        Some(command::Kind::CreateSession(c)) => {
            validate::tenant("command.create_session.tenant", &c.tenant)?;
            validate::name("command.create_session.user_id", &c.user_id)?;
            validate::id(
                "command.create_session.session_id",
                IdKind::Session,
                &c.session_id,
            )?;
            validate::id(
                "command.create_session.family_id",
                IdKind::Family,
                &c.family_id,
            )?;
            let ttl = c.expires_at_ms.saturating_sub(now);
            lifetime(
                "command.create_session.expires_at_ms",
                ttl,
                policy.max_ttl_ms,
            )?;
            if c.idle_timeout_ms != 0 {
                lifetime(
                    "command.create_session.idle_timeout_ms",
                    c.idle_timeout_ms,
                    ttl,
                )?;
            }
            validate::device_key(
                "command.create_session.device_public_key",
                &c.device_public_key,
            )?;
            validate::attributes("command.create_session.attributes", &c.attributes)?;
            hash("command.create_session.refresh_hash", &c.refresh_hash)?;
            access(
                "command.create_session.access_hash",
                &c.access_hash,
                c.access_expires_at_ms.saturating_sub(now),
                policy.max_access_token_ttl_ms,
            )?;
            sealed("command.create_session.sealed_tokens", &c.sealed_tokens)?;
            c.max_sessions_per_user = config.max_sessions_per_user(&c.tenant);
        }
        Some(command::Kind::Rotate(c)) => {
            hash("command.rotate.presented_hash", &c.presented_hash)?;
            hash("command.rotate.new_refresh_hash", &c.new_refresh_hash)?;
            access(
                "command.rotate.new_access_hash",
                &c.new_access_hash,
                c.access_expires_at_ms.saturating_sub(now),
                policy.max_access_token_ttl_ms,
            )?;
            sealed("command.rotate.sealed_successor", &c.sealed_successor)?;
            validate::optional_id("command.rotate.lease_id", IdKind::Lease, &c.lease_id)?;
            c.grace_ms = policy.reuse_grace_ms;
        }
        Some(command::Kind::AcquireLease(c)) => {
            validate::tenant("command.acquire_lease.tenant", &c.tenant)?;
            validate::id(
                "command.acquire_lease.session_id",
                IdKind::Session,
                &c.session_id,
            )?;
            validate::name("command.acquire_lease.holder", &c.holder)?;
            validate::id("command.acquire_lease.lease_id", IdKind::Lease, &c.lease_id)?;
            lifetime(
                "command.acquire_lease.expires_at_ms",
                c.expires_at_ms.saturating_sub(now),
                policy.max_lease_ttl_ms,
            )?;
        }
        Some(command::Kind::Touch(c)) => {
            validate::tenant("command.touch.tenant", &c.tenant)?;
            validate::id("command.touch.session_id", IdKind::Session, &c.session_id)?;
        }
        Some(command::Kind::Revoke(c)) => {
            validate::tenant("command.revoke.tenant", &c.tenant)?;
            revoke_target("command.revoke.scope", "command.revoke.id", c.scope, &c.id)?;
            let _: RevocationReason = validate::known_enum("command.revoke.reason", c.reason)?;
        }
        Some(command::Kind::CollectGarbage(c)) => {
            c.limit = c.limit.clamp(1, config.gc.batch_limit.max(1));
            c.dedup_retention_ms = policy.dedup_retention_ms;
            c.event_retention_ms = config.gc.event_retention_ms;
        }
        Some(command::Kind::SetRecordFormat(c)) => {
            if RecordFormat::from_number(c.format.into()).is_none() {
                return Err(Error::invalid(
                    "command.set_record_format.format",
                    "not a record format this node knows",
                ));
            }
        }
    }
    Ok(())
}

/// The scope of a revocation and the id it names: a session or family id, a user id, or
/// nothing for a whole tenant.
pub fn revoke_target(
    scope_field: &'static str,
    id_field: &'static str,
    scope: i32,
    id: &str,
) -> Result<RevokeScope, Error> {
    let scope: RevokeScope = validate::known_enum(scope_field, scope)?;
    match scope {
        RevokeScope::Unspecified => return Err(Error::invalid(scope_field, "must be set")),
        RevokeScope::Session => validate::id(id_field, IdKind::Session, id)?,
        RevokeScope::Family => validate::id(id_field, IdKind::Family, id)?,
        RevokeScope::User => validate::name(id_field, id)?,
        RevokeScope::Tenant if !id.is_empty() => {
            return Err(Error::invalid(id_field, "must be empty for scope TENANT"))
        }
        RevokeScope::Tenant => {}
    }
    Ok(scope)
}

/// A lifetime measured from the proposer's clock: at least the API's minimum, at most `max`.
fn lifetime(field: &'static str, ms: i64, max: i64) -> Result<(), Error> {
    if !(validate::MIN_TTL_MS..=max.max(validate::MIN_TTL_MS)).contains(&ms) {
        return Err(Error::invalid(field, "lifetime out of range"));
    }
    Ok(())
}

/// A SHA-256 hash.
fn hash(field: &'static str, bytes: &[u8]) -> Result<(), Error> {
    if bytes.len() != HASH_BYTES {
        return Err(Error::invalid(field, "must be 32 bytes"));
    }
    Ok(())
}

/// An optional access-token hash with its lifetime.
fn access(field: &'static str, bytes: &[u8], ttl_ms: i64, max_ms: i64) -> Result<(), Error> {
    if bytes.is_empty() {
        return Ok(());
    }
    hash(field, bytes)?;
    lifetime(field, ttl_ms, max_ms)
}

/// A sealed token blob: bounded.
fn sealed(field: &'static str, bytes: &[u8]) -> Result<(), Error> {
    if bytes.len() > MAX_SEALED_BYTES {
        return Err(Error::invalid(
            field,
            format!("longer than {MAX_SEALED_BYTES} bytes"),
        ));
    }
    Ok(())
}
