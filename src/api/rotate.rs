//! Rotate: redeem a refresh token for its successor.
//!
//! The proposer mints a successor and seals it under the presented raw token. If the state
//! machine finds the presented token already rotated within the grace window, it returns the
//! successor sealed at the first rotation instead, which only this caller (holding the
//! presented raw token) can open: the retry gets the same tokens, and the freshly minted ones
//! are discarded unseen.
//!
//! With a request id, the same holds however late the retry comes: the dedup record (keyed by
//! the presented token's hash and the request id) answers it with the first successor as
//! long as that successor is still current, so a rotation that committed after its caller
//! gave up never turns the caller's retry into a replay.
//!
//! A token that a linearizable read proves unknown is answered INVALID_TOKEN without a log
//! entry.

use super::authority::{now_ms, unexpected_result, Authority, Idempotency};
use super::{convert, validate};
use crate::domain::absence;
use crate::proto::internal::{command, command_result, Rotate};
use crate::proto::v1::{RotateOutcome, RotateRequest, RotateResponse};
use crate::token::{self, Fingerprint, IdKind, RawToken, TokenKind, TokenPair};
use crate::Error;

/// The Rotate command redeeming `presented` for the freshly minted `successor`, sealed under
/// the presented raw token (so a retry within `grace_ms` can get the same tokens back).
pub fn rotate_command(
    presented: &RawToken,
    successor: &TokenPair,
    access_expires_at_ms: i64,
    grace_ms: i64,
    lease_id: String,
) -> Rotate {
    Rotate {
        presented_hash: presented.hash().to_vec(),
        new_refresh_hash: successor.refresh.hash().to_vec(),
        new_access_hash: successor
            .access
            .as_ref()
            .map(|a| a.hash().to_vec())
            .unwrap_or_default(),
        access_expires_at_ms,
        sealed_successor: token::seal(presented.expose(), b"", successor),
        grace_ms,
        lease_id,
    }
}

/// The operation name in Rotate's idempotency keys.
const OPERATION: &str = "Rotate";

/// Handles one Rotate request.
pub async fn handle(
    authority: &Authority,
    request: RotateRequest,
) -> Result<RotateResponse, Error> {
    let policy = &authority.config().sessions;
    let presented =
        validate::raw_token("refresh_token", TokenKind::Refresh, &request.refresh_token)?;
    validate::optional_id("lease_id", IdKind::Lease, &request.lease_id)?;
    let access_ttl_ms = validate::ttl(
        "access_token_ttl_ms",
        request.access_token_ttl_ms,
        policy.access_token_ttl_ms,
        policy.max_access_token_ttl_ms,
    )?;
    validate::request_id("request_id", &request.request_id)?;
    let presented_hash = presented.hash();
    if let Some(revision) = authority
        .proven_absent(|state| absence::refresh_token_unknown(state, presented_hash.as_bytes()))
        .await?
    {
        return Ok(RotateResponse {
            outcome: RotateOutcome::InvalidToken as i32,
            revision,
            ..Default::default()
        });
    }
    let fingerprint = Fingerprint::new(OPERATION)
        .text(&request.lease_id)
        .int(request.access_token_ttl_ms)
        .int(i64::from(request.without_access_token))
        .finish();
    let idempotency = Idempotency::new(
        presented_hash.as_bytes(),
        OPERATION,
        &request.request_id,
        fingerprint,
    );

    let now = now_ms();
    let successor = TokenPair {
        refresh: RawToken::mint(TokenKind::Refresh),
        access: (!request.without_access_token).then(|| RawToken::mint(TokenKind::Access)),
    };
    let access_expires_at_ms = if successor.access.is_some() {
        now.saturating_add(access_ttl_ms)
    } else {
        0
    };
    let command = rotate_command(
        &presented,
        &successor,
        access_expires_at_ms,
        policy.reuse_grace_ms,
        request.lease_id,
    );
    let applied = authority
        .propose_idempotent(now, idempotency, command::Kind::Rotate(command))
        .await?;
    let result = match applied.result.kind {
        Some(command_result::Kind::Rotate(r)) => r,
        _ => return Err(unexpected_result()),
    };
    let outcome = RotateOutcome::try_from(result.outcome).unwrap_or_default();
    // The answer may repeat an earlier one: a grace-window retry, or the first answer to this
    // request id. Then the successor is the one sealed at the first rotation.
    let repeated = result.retried || applied.result.deduplicated;
    let mut response = RotateResponse {
        outcome: outcome as i32,
        session: convert::optional_session(result.session.as_ref(), now),
        retried: repeated,
        revoked_count: result.revoked_count,
        lease_holder: result.lease_holder,
        lease_expires_at_ms: result.lease_expires_at_ms,
        revision: applied.revision,
        ..Default::default()
    };
    if outcome == RotateOutcome::Rotated {
        let minted = successor.refresh.hash();
        let tokens = if repeated {
            token::unseal(presented.expose(), b"", &result.sealed_successor)
                .ok_or_else(|| Error::Internal("sealed successor does not open".into()))?
        } else {
            successor
        };
        // A retry is answered with an earlier call's successor. The first rotation may also
        // be this very command: sent again by the node after an ambiguous failure, it finds
        // its first copy applied under the caller's request id. Its successor is the one
        // minted here, and the answer is the token's first redemption.
        response.retried = tokens.refresh.hash() != minted;
        response.refresh_token = tokens.refresh.expose().to_owned();
        response.access_token = tokens
            .access
            .as_ref()
            .map(|a| a.expose().to_owned())
            .unwrap_or_default();
        response.access_token_expires_at_ms = result.access_expires_at_ms;
    }
    Ok(response)
}
