//! `Debug` for the API messages that carry raw tokens or idempotency keys (their derive is
//! switched off in `build.rs`). Secrets print as `<redacted>`, so a stray `{:?}` in a log
//! line cannot leak one.

use std::fmt;

use crate::proto::v1::{
    lookup_request, AcquireRenewalLeaseRequest, CreateSessionRequest, CreateSessionResponse,
    LookupRequest, RevokeRequest, RotateRequest, RotateResponse, TouchRequest,
    ValidateAccessTokenRequest,
};

/// What a secret prints as: whether it is set, never its value.
fn secret(value: &str) -> &'static str {
    if value.is_empty() {
        ""
    } else {
        "<redacted>"
    }
}

impl fmt::Debug for CreateSessionRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateSessionRequest")
            .field("tenant", &self.tenant)
            .field("user_id", &self.user_id)
            .field("family_id", &self.family_id)
            .field("ttl_ms", &self.ttl_ms)
            .field("idle_timeout_ms", &self.idle_timeout_ms)
            .field("access_token_ttl_ms", &self.access_token_ttl_ms)
            .field("without_access_token", &self.without_access_token)
            .field("attributes", &self.attributes.len())
            .field("request_id", &secret(&self.request_id))
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for CreateSessionResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateSessionResponse")
            .field("outcome", &self.outcome)
            .field("session", &self.session)
            .field("refresh_token", &secret(&self.refresh_token))
            .field("access_token", &secret(&self.access_token))
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for RotateRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RotateRequest")
            .field("refresh_token", &secret(&self.refresh_token))
            .field("lease_id", &secret(&self.lease_id))
            .field("access_token_ttl_ms", &self.access_token_ttl_ms)
            .field("without_access_token", &self.without_access_token)
            .field("request_id", &secret(&self.request_id))
            .finish()
    }
}

impl fmt::Debug for TouchRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TouchRequest")
            .field("tenant", &self.tenant)
            .field("session_id", &self.session_id)
            .field("request_id", &secret(&self.request_id))
            .finish()
    }
}

impl fmt::Debug for AcquireRenewalLeaseRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcquireRenewalLeaseRequest")
            .field("tenant", &self.tenant)
            .field("session_id", &self.session_id)
            .field("holder", &self.holder)
            .field("ttl_ms", &self.ttl_ms)
            .field("request_id", &secret(&self.request_id))
            .finish()
    }
}

impl fmt::Debug for RotateResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RotateResponse")
            .field("outcome", &self.outcome)
            .field("session", &self.session)
            .field("refresh_token", &secret(&self.refresh_token))
            .field("access_token", &secret(&self.access_token))
            .field("retried", &self.retried)
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for LookupRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = match &self.key {
            Some(lookup_request::Key::SessionId(id)) => format!("session_id={id}"),
            Some(lookup_request::Key::RefreshToken(_)) => "refresh_token=<redacted>".into(),
            Some(lookup_request::Key::AccessToken(_)) => "access_token=<redacted>".into(),
            None => "none".into(),
        };
        f.debug_struct("LookupRequest")
            .field("tenant", &self.tenant)
            .field("key", &key)
            .field("consistency", &self.consistency)
            .finish()
    }
}

impl fmt::Debug for ValidateAccessTokenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValidateAccessTokenRequest")
            .field("tenant", &self.tenant)
            .field("access_token", &secret(&self.access_token))
            .field("consistency", &self.consistency)
            .finish()
    }
}

impl fmt::Debug for RevokeRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RevokeRequest")
            .field("tenant", &self.tenant)
            .field("scope", &self.scope)
            .field("id", &self.id)
            .field("reason", &self.reason)
            .field("request_id", &secret(&self.request_id))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::{RawToken, TokenKind};

    #[test]
    fn debug_output_never_contains_secrets() {
        let raw = RawToken::mint(TokenKind::Refresh);
        let secret_text = raw.expose().to_owned();
        let shown = [
            format!(
                "{:?}",
                RotateRequest {
                    refresh_token: secret_text.clone(),
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                RotateResponse {
                    refresh_token: secret_text.clone(),
                    access_token: secret_text.clone(),
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                CreateSessionResponse {
                    refresh_token: secret_text.clone(),
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                LookupRequest {
                    key: Some(lookup_request::Key::RefreshToken(secret_text.clone())),
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                CreateSessionRequest {
                    request_id: secret_text.clone(),
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                TouchRequest {
                    request_id: secret_text.clone(),
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                AcquireRenewalLeaseRequest {
                    request_id: secret_text.clone(),
                    ..Default::default()
                }
            ),
        ];
        for line in shown {
            assert!(!line.contains(&secret_text), "{line}");
            assert!(line.contains("<redacted>"), "{line}");
        }
    }
}
