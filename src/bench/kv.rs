//! The session model shared by the etcd and Redis stores, so that both hold the same bytes
//! and do the same work per operation.
//!
//! A session is two keys: the session record,
//! `"{hash}|{session_id}|{user}|{created_at_ms}|{expires_at_ms}"` (about 130 bytes) where
//! `hash` is the SHA-256 (hex) of the current refresh token, and the token index, from that
//! hash to the session id. Ids and tokens are minted as sessiond mints them (same
//! entropy, same length).
//!
//! Neither store can rewrite part of a value inside a one-round-trip compare-and-swap the way
//! sessiond's state machine does, so a rotation states the whole current record and the
//! whole successor. The client knows the hash (from the token it holds); the fixed rest of
//! the record, set at creation, is remembered by the [`Ledger`] shared by the store's clones.
//! That is client-side bookkeeping, outside any round trip: the server still does one
//! atomic compare-and-swap per rotation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use super::store::{Held, OpError};
use crate::token::{mint_id, IdKind, RawToken, TokenKind};

/// Lifetime written into a new session's record.
const SESSION_TTL_MS: u128 = 24 * 3_600_000;

/// A session about to be created: what to store, and what to hand back once stored.
pub struct NewSession {
    /// The session as the caller will hold it.
    pub held: Held,
    /// The session record to store under the session key.
    pub record: String,
    /// The hash of the first refresh token (the token index key's suffix).
    pub token_hash: String,
    fixed: Arc<str>,
}

/// A rotation of a held session: the record to compare, the successor record, and the
/// token index keys to swap.
pub struct Rotation {
    /// The session with its successor token, to return once the swap succeeded.
    pub next: Held,
    /// The record as it must be for the presented token to be current.
    pub expected_record: String,
    /// The record with the successor's hash.
    pub next_record: String,
    /// The hash of the presented (retiring) token.
    pub old_hash: String,
    /// The hash of the successor token.
    pub new_hash: String,
}

/// Mints a session for `user_id`: a fresh id, a first refresh token and its record.
pub fn draft(user_id: &str) -> NewSession {
    let created_at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let session_id = mint_id(IdKind::Session);
    let expires_at_ms = created_at_ms + SESSION_TTL_MS;
    let fixed: Arc<str> = format!("{session_id}|{user_id}|{created_at_ms}|{expires_at_ms}").into();
    let token = RawToken::mint(TokenKind::Refresh);
    let token_hash = hex_hash(&token);
    NewSession {
        record: record(&token_hash, &fixed),
        held: Held {
            session_id,
            refresh_token: token.expose().to_owned(),
        },
        token_hash,
        fixed,
    }
}

/// The fixed part of the records of the sessions this client created, by session id.
/// An entry lives until the session is revoked through this client; clones share them.
#[derive(Clone, Default)]
pub struct Ledger {
    fixed: Arc<Mutex<HashMap<String, Arc<str>>>>,
}

impl Ledger {
    /// Remembers a session the store accepted.
    pub fn remember(&self, session: &NewSession) {
        self.lock()
            .insert(session.held.session_id.clone(), session.fixed.clone());
    }

    /// Plans the rotation of `held` to a freshly minted successor token. A session this
    /// client did not create (or has revoked) is `not_found`.
    pub fn rotation(&self, held: &Held) -> Result<Rotation, OpError> {
        let fixed = self
            .lock()
            .get(&held.session_id)
            .cloned()
            .ok_or_else(|| OpError::Outcome("not_found".into()))?;
        let old_hash = presented_hash(held)?;
        let successor = RawToken::mint(TokenKind::Refresh);
        let new_hash = hex_hash(&successor);
        Ok(Rotation {
            next: Held {
                session_id: held.session_id.clone(),
                refresh_token: successor.expose().to_owned(),
            },
            expected_record: record(&old_hash, &fixed),
            next_record: record(&new_hash, &fixed),
            old_hash,
            new_hash,
        })
    }

    /// Forgets a revoked session.
    pub fn forget(&self, session_id: &str) {
        self.lock().remove(session_id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<str>>> {
        self.fixed.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The hash (hex) of the refresh token `held` presents; a token not in sessiond's format is
/// `invalid_token`.
pub fn presented_hash(held: &Held) -> Result<String, OpError> {
    RawToken::parse(TokenKind::Refresh, &held.refresh_token)
        .map(|token| hex_hash(&token))
        .map_err(|_| OpError::Outcome("invalid_token".into()))
}

fn hex_hash(token: &RawToken) -> String {
    token
        .hash()
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn record(hash: &str, fixed: &str) -> String {
    format!("{hash}|{fixed}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_expects_the_current_record_and_keeps_its_fixed_part() {
        let ledger = Ledger::default();
        let created = draft("user-1");
        assert!(ledger.rotation(&created.held).is_err());
        ledger.remember(&created);
        let first = ledger.rotation(&created.held).unwrap();
        assert_eq!(first.expected_record, created.record);
        assert_eq!(first.old_hash, created.token_hash);
        let second = ledger.rotation(&first.next).unwrap();
        assert_eq!(second.expected_record, first.next_record);
        assert_eq!(second.old_hash, first.new_hash);
        assert!(created.record.ends_with(&first.next_record[64..]));
        assert!((100..=200).contains(&created.record.len()));
        ledger.forget(&created.held.session_id);
        assert!(matches!(
            ledger.rotation(&first.next),
            Err(OpError::Outcome(kind)) if kind == "not_found"
        ));
    }
}
