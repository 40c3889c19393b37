//! CreateSession: validate, mint the session id, family id and raw tokens, propose, answer.
//!
//! With a request id, the raw tokens are sealed under it (bound to the request's
//! fingerprint) and kept with the dedup record, so a retry after a lost response with the
//! same parameters gets the very same tokens back, the first revision, and the session as it
//! is now (nothing is created twice). The same id with other parameters opens nothing: it is
//! FAILED_PRECONDITION.
//!
//! With `sessions.ttl_jitter_pct`, the proposer shortens each lifetime by a random share (so
//! sessions created together do not all expire together); the chosen expiry travels in the
//! command, so every replica applies the same value.

use super::authority::{now_ms, unexpected_result, Authority, Idempotency};
use super::{convert, validate};
use crate::domain::format::founded_family;
use crate::proto::internal::{command, command_result, CommandResult, CreateSession};
use crate::proto::v1::{CreateSessionOutcome, CreateSessionRequest, CreateSessionResponse};
use crate::token::{self, Fingerprint, IdKind, RawToken, TokenKind, TokenPair};
use crate::Error;

/// Handles one CreateSession request.
pub async fn handle(
    authority: &Authority,
    request: CreateSessionRequest,
) -> Result<CreateSessionResponse, Error> {
    let policy = &authority.config().sessions;
    validate::tenant("tenant", &request.tenant)?;
    validate::name("user_id", &request.user_id)?;
    validate::optional_id("family_id", IdKind::Family, &request.family_id)?;
    let ttl_ms = validate::ttl(
        "ttl_ms",
        request.ttl_ms,
        policy.default_ttl_ms,
        policy.max_ttl_ms,
    )?;
    let idle_timeout_ms = match request.idle_timeout_ms {
        0 => policy.default_idle_timeout_ms.min(ttl_ms),
        v => validate::ttl("idle_timeout_ms", v, 0, ttl_ms)?,
    };
    let access_ttl_ms = validate::ttl(
        "access_token_ttl_ms",
        request.access_token_ttl_ms,
        policy.access_token_ttl_ms,
        policy.max_access_token_ttl_ms,
    )?;
    validate::device_key("device_public_key", &request.device_public_key)?;
    validate::attributes("attributes", &request.attributes)?;
    validate::request_id("request_id", &request.request_id)?;

    let now = now_ms();
    let tokens = TokenPair {
        refresh: RawToken::mint(TokenKind::Refresh),
        access: (!request.without_access_token).then(|| RawToken::mint(TokenKind::Access)),
    };
    let fingerprint = fingerprint(&request);
    let sealed_tokens = if request.request_id.is_empty() {
        Vec::new()
    } else {
        token::seal(&request.request_id, &fingerprint, &tokens)
    };
    let idempotency = Idempotency::new(
        request.tenant.as_bytes(),
        OPERATION,
        &request.request_id,
        fingerprint.clone(),
    );
    let join_family = !request.family_id.is_empty();
    let session_id = token::mint_id(IdKind::Session);
    let family_id = if join_family {
        request.family_id.clone()
    } else {
        founded_family(&session_id)
            .ok_or_else(|| Error::Internal("a minted session id has no family pair".into()))?
    };
    let command = CreateSession {
        session_id,
        family_id,
        join_family,
        tenant: request.tenant.clone(),
        user_id: request.user_id.clone(),
        expires_at_ms: now.saturating_add(jittered(
            ttl_ms,
            policy.ttl_jitter_pct,
            &mut rand::rng(),
        )),
        idle_timeout_ms,
        device_public_key: request.device_public_key,
        attributes: request.attributes,
        refresh_hash: tokens.refresh.hash().to_vec(),
        access_hash: tokens
            .access
            .as_ref()
            .map(|a| a.hash().to_vec())
            .unwrap_or_default(),
        access_expires_at_ms: if tokens.access.is_some() {
            now.saturating_add(access_ttl_ms)
        } else {
            0
        },
        max_sessions_per_user: authority.config().max_sessions_per_user(&request.tenant),
        sealed_tokens,
    };
    let applied = authority
        .propose_idempotent(now, idempotency, command::Kind::CreateSession(command))
        .await?;
    let deduplicated = applied.result.deduplicated;
    let result = expect_create(applied.result)?;
    let outcome = CreateSessionOutcome::try_from(result.outcome).unwrap_or_default();
    if outcome != CreateSessionOutcome::Created {
        return Ok(CreateSessionResponse {
            outcome: outcome as i32,
            revision: applied.revision,
            ..Default::default()
        });
    }
    let tokens = if deduplicated {
        token::unseal(&request.request_id, &fingerprint, &result.sealed_tokens).ok_or_else(
            || Error::Internal("sealed tokens of a deduplicated create do not open".into()),
        )?
    } else {
        tokens
    };
    Ok(CreateSessionResponse {
        outcome: outcome as i32,
        session: convert::optional_session(result.session.as_ref(), now),
        refresh_token: tokens.refresh.expose().to_owned(),
        access_token: tokens
            .access
            .as_ref()
            .map(|a| a.expose().to_owned())
            .unwrap_or_default(),
        access_token_expires_at_ms: result.access_expires_at_ms,
        evicted_session_ids: result.evicted_session_ids,
        revision: applied.revision,
    })
}

/// The operation name in CreateSession's idempotency keys.
const OPERATION: &str = "CreateSession";

/// The fingerprint of a create's parameters, as the client sent them.
fn fingerprint(request: &CreateSessionRequest) -> Vec<u8> {
    let mut f = Fingerprint::new(OPERATION)
        .text(&request.tenant)
        .text(&request.user_id)
        .text(&request.family_id)
        .int(request.ttl_ms)
        .int(request.idle_timeout_ms)
        .int(request.access_token_ttl_ms)
        .int(i64::from(request.without_access_token))
        .bytes(&request.device_public_key)
        .int(request.attributes.len() as i64);
    for (key, value) in &request.attributes {
        f = f.text(key).text(value);
    }
    f.finish()
}

/// `ttl_ms` shortened by a random 0..=`pct` percent (never below 1 ms).
fn jittered(ttl_ms: i64, pct: u32, rng: &mut impl rand::Rng) -> i64 {
    let most = ttl_ms.saturating_mul(i64::from(pct)) / 100;
    if most <= 0 {
        return ttl_ms;
    }
    (ttl_ms - rng.random_range(0..=most)).max(1)
}

fn expect_create(
    result: CommandResult,
) -> Result<crate::proto::internal::CreateSessionResult, Error> {
    match result.kind {
        Some(command_result::Kind::CreateSession(r)) => Ok(r),
        _ => Err(unexpected_result()),
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::jittered;

    #[test]
    fn jitter_shortens_lifetimes_within_the_bound_and_spreads_them() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let ttl = 3_600_000;
        let lifetimes: Vec<i64> = (0..200).map(|_| jittered(ttl, 10, &mut rng)).collect();
        assert!(lifetimes.iter().all(|l| (ttl - ttl / 10..=ttl).contains(l)));
        let distinct: std::collections::BTreeSet<_> = lifetimes.iter().collect();
        assert!(
            distinct.len() > 150,
            "{} distinct lifetimes",
            distinct.len()
        );
        assert_eq!(jittered(ttl, 0, &mut rng), ttl);
        assert!((3..=5).contains(&jittered(5, 50, &mut rng)));
    }
}
