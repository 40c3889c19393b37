//! How the command line prints: times as RFC 3339 UTC with a relative age ("in 14m",
//! "3d ago"), sessions as text or JSON, and the exit code of an error.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use crate::proto::v1::{RevocationReason, Session, SessionStatus};

/// `ms` (epoch milliseconds) as RFC 3339 UTC, or "-" for 0 (never set).
pub fn rfc3339(ms: i64) -> String {
    if ms == 0 {
        return "-".into();
    }
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// How far `ms` is from `now_ms`: "in 14m", "3d ago", "now".
pub fn relative(ms: i64, now_ms: i64) -> String {
    let delta = ms.saturating_sub(now_ms);
    let secs = delta.unsigned_abs() / 1000;
    let amount = match secs {
        0 => return "now".into(),
        s if s < 60 => format!("{s}s"),
        s if s < 3_600 => format!("{}m", s / 60),
        s if s < 48 * 3_600 => format!("{}h", s / 3_600),
        s => format!("{}d", s / 86_400),
    };
    if delta > 0 {
        format!("in {amount}")
    } else {
        format!("{amount} ago")
    }
}

/// `ms` for people: RFC 3339 UTC and the relative age, or "-" for 0.
pub fn when(ms: i64, now_ms: i64) -> String {
    if ms == 0 {
        return "-".into();
    }
    format!("{} ({})", rfc3339(ms), relative(ms, now_ms))
}

/// The name of a revocation reason, without its prefix (`LOGOUT`).
fn reason(r: RevocationReason) -> &'static str {
    r.as_str_name()
        .strip_prefix("REVOCATION_REASON_")
        .unwrap_or("UNSPECIFIED")
}

/// The name of a session status, without its prefix (`ACTIVE`).
fn status(s: SessionStatus) -> &'static str {
    s.as_str_name()
        .strip_prefix("SESSION_STATUS_")
        .unwrap_or("UNSPECIFIED")
}

/// A session as JSON: every field, times both in ms and RFC 3339.
pub fn session_json(s: &Session) -> Value {
    json!({
        "session_id": s.session_id,
        "family_id": s.family_id,
        "tenant": s.tenant,
        "user_id": s.user_id,
        "status": status(s.status()),
        "created_at": rfc3339(s.created_at_ms),
        "created_at_ms": s.created_at_ms,
        "expires_at": rfc3339(s.expires_at_ms),
        "expires_at_ms": s.expires_at_ms,
        "idle_timeout_ms": s.idle_timeout_ms,
        "last_seen_at": rfc3339(s.last_seen_at_ms),
        "last_seen_at_ms": s.last_seen_at_ms,
        "revoked_at": rfc3339(s.revoked_at_ms),
        "revoked_at_ms": s.revoked_at_ms,
        "revocation_reason": reason(s.revocation_reason()),
        "generation": s.generation,
        "attributes": s.attributes,
    })
}

/// A session as indented text for people.
pub fn session_text(s: &Session, now_ms: i64) -> String {
    let mut out = format!(
        "session:       {}\n  family:      {}\n  tenant/user: {:?} / {}\n  status:      {}\n",
        s.session_id,
        s.family_id,
        s.tenant,
        s.user_id,
        status(s.status())
    );
    if s.status() == SessionStatus::Revoked {
        out.push_str(&format!(
            "  revoked:     {} ({})\n",
            when(s.revoked_at_ms, now_ms),
            reason(s.revocation_reason())
        ));
    }
    out.push_str(&format!(
        "  created:     {}\n  expires:     {}\n  last seen:   {}\n",
        when(s.created_at_ms, now_ms),
        when(s.expires_at_ms, now_ms),
        when(s.last_seen_at_ms, now_ms)
    ));
    if s.idle_timeout_ms > 0 {
        out.push_str(&format!("  idle after:  {} ms\n", s.idle_timeout_ms));
    }
    out.push_str(&format!("  generation:  {}\n", s.generation));
    for (k, v) in &s.attributes {
        out.push_str(&format!("  attr {k}: {v}\n"));
    }
    out
}

/// The process exit code for an error (documented in the README): 2 invalid argument,
/// 3 no node reachable or unavailable, 4 timed out, 5 refused by the cluster's state, 1
/// anything else.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if let Some(status) = cause.downcast_ref::<tonic::Status>() {
            return match status.code() {
                tonic::Code::InvalidArgument => 2,
                tonic::Code::Unavailable => 3,
                tonic::Code::DeadlineExceeded => 4,
                tonic::Code::FailedPrecondition => 5,
                _ => 1,
            };
        }
        if let Some(crate::Error::InvalidArgument { .. }) = cause.downcast_ref::<crate::Error>() {
            return 2;
        }
        if cause.is::<super::Unreachable>()
            || cause.is::<crate::client::ConnectError>()
            || cause.is::<tonic::transport::Error>()
        {
            return 3;
        }
    }
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc_with_a_relative_age() {
        let now = 1_700_000_000_000;
        assert_eq!(rfc3339(now), "2023-11-14T22:13:20.000Z");
        assert_eq!(relative(now + 14 * 60_000 + 5_000, now), "in 14m");
        assert_eq!(relative(now - 3 * 86_400_000 - 1, now), "3d ago");
        assert_eq!(relative(now - 30_000, now), "30s ago");
        assert_eq!(relative(now + 5 * 3_600_000, now), "in 5h");
        assert_eq!(relative(now + 400, now), "now");
        assert_eq!(when(0, now), "-");
        assert_eq!(when(now + 60_000, now), "2023-11-14T22:14:20.000Z (in 1m)");
    }

    #[test]
    fn errors_map_to_documented_exit_codes() {
        let code = |s: tonic::Status| exit_code(&anyhow::Error::new(s));
        assert_eq!(code(tonic::Status::invalid_argument("x")), 2);
        assert_eq!(code(tonic::Status::unavailable("x")), 3);
        assert_eq!(code(tonic::Status::deadline_exceeded("x")), 4);
        assert_eq!(code(tonic::Status::failed_precondition("x")), 5);
        assert_eq!(code(tonic::Status::internal("x")), 1);
        assert_eq!(
            exit_code(&anyhow::Error::new(super::super::Unreachable("a".into()))),
            3
        );
        assert_eq!(exit_code(&anyhow::anyhow!("other")), 1);
        assert_eq!(
            exit_code(&anyhow::Error::new(crate::Error::invalid("from", "x"))),
            2
        );
    }
}
