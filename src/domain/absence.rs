//! Proofs of absence: facts that let a proposer answer a write without a log entry. Each
//! holds for good once true at a linearizable read (a refresh-token hash or a session id is
//! never written again once absent: both are freshly minted), so a proposer that finds it
//! true after a read barrier can answer as the state machine would have.

use super::{keys, sessions, StateError, StateRead};

/// Whether no refresh token with this hash is known (a Rotate of it is INVALID_TOKEN).
pub fn refresh_token_unknown(state: &impl StateRead, hash: &[u8]) -> Result<bool, StateError> {
    Ok(state.get(&keys::refresh(hash))?.is_none())
}

/// Whether no session with this id exists in `tenant` (a Touch of it is SESSION_MISSING).
pub fn session_missing(
    state: &impl StateRead,
    tenant: &str,
    session_id: &str,
) -> Result<bool, StateError> {
    Ok(sessions::stored(state, session_id.as_bytes())?.is_none_or(|s| s.tenant != tenant))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{apply, MemoryState};
    use crate::proto::internal::{command, Command, CreateSession};
    use crate::token::{RawToken, TokenKind};

    #[test]
    fn absence_holds_only_for_what_was_never_written() {
        let mut state = MemoryState::new();
        let refresh = RawToken::mint(TokenKind::Refresh);
        let hash = refresh.hash().to_vec();
        assert!(refresh_token_unknown(&state, &hash).unwrap());
        assert!(session_missing(&state, "t", "sid_x").unwrap());
        let create = Command {
            now_ms: 1_000,
            kind: Some(command::Kind::CreateSession(CreateSession {
                session_id: "sid_x".into(),
                family_id: "fam_x".into(),
                tenant: "t".into(),
                user_id: "u".into(),
                expires_at_ms: 100_000,
                refresh_hash: hash.clone(),
                ..Default::default()
            })),
            ..Default::default()
        };
        apply(&create, 1, &mut state).unwrap();
        assert!(!refresh_token_unknown(&state, &hash).unwrap());
        assert!(!session_missing(&state, "t", "sid_x").unwrap());
        assert!(
            session_missing(&state, "other", "sid_x").unwrap(),
            "another tenant's session is missing to this tenant"
        );
    }
}
