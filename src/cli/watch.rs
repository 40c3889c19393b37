//! `sessiond watch`: prints revocation events as they arrive, for operators.

use clap::Args;
use serde_json::json;

use super::output::rfc3339;
use crate::proto::v1::watch_revocations_response::Kind;
use crate::proto::v1::{RevocationReason, RevokeScope, WatchRevocationsRequest};

/// Flags of `sessiond watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Deliver events after this revision (0: everything retained).
    #[arg(long = "from", default_value_t = 0)]
    pub from_revision: u64,
    /// Resume inside revision `--from` at this event sequence (as a CUT_OFF message says).
    #[arg(long = "from-sequence", default_value_t = 0)]
    pub from_sequence: u32,
    /// Only this tenant's events (repeatable; none: every tenant).
    #[arg(long = "tenant")]
    pub tenants: Vec<String>,
}

/// Streams until the server ends the stream or the process is interrupted; with `--json`,
/// one JSON object per line.
pub async fn run(target: &super::Target, args: WatchArgs) -> anyhow::Result<()> {
    let json = target.json;
    let client = super::client(target).await?;
    let mut stream = client
        .watch_revocations(WatchRevocationsRequest {
            from_revision: args.from_revision,
            tenants: args.tenants,
            from_sequence: args.from_sequence,
        })
        .await?;
    while let Some(message) = stream.message().await? {
        let line = match message.kind {
            Some(Kind::Events(batch)) => batch
                .events
                .iter()
                .map(|e| {
                    let reason = RevocationReason::try_from(e.reason).unwrap_or_default();
                    let scope = RevokeScope::try_from(e.scope).unwrap_or_default();
                    if json {
                        json!({"revision": e.revision, "tenant": e.tenant, "user_id": e.user_id,
                            "family_id": e.family_id, "session_id": e.session_id,
                            "reason": reason.as_str_name(), "scope": scope.as_str_name(),
                            "revoked_at": rfc3339(e.revoked_at_ms),
                            "sequence": e.sequence,
                            "revoked_at_ms": e.revoked_at_ms})
                        .to_string()
                    } else if e.session_id.is_empty() {
                        format!(
                            "{:>8}  revoked every session of {} {:?} user {:?} created before  ({})",
                            e.revision,
                            scope.as_str_name(),
                            e.tenant,
                            e.user_id,
                            reason.as_str_name(),
                        )
                    } else {
                        format!(
                            "{:>8}  {}  revoked {}  tenant {:?} user {:?} family {}  ({}, {})",
                            e.revision,
                            rfc3339(e.revoked_at_ms),
                            e.session_id,
                            e.tenant,
                            e.user_id,
                            e.family_id,
                            reason.as_str_name(),
                            scope.as_str_name()
                        )
                    }
                })
                .collect::<Vec<_>>()
                .join("\n"),
            Some(Kind::Progress(p)) if json => json!({"progress": p.revision}).to_string(),
            Some(Kind::Progress(_)) | None => continue,
            Some(Kind::ResyncRequired(r)) => {
                anyhow::bail!(
                    "events up to revision {} were compacted; resync (current revision {})",
                    r.compacted_through,
                    r.current_revision
                )
            }
            Some(Kind::CutOff(c)) => {
                anyhow::bail!(
                    "cut off for falling behind; resume with --from {} --from-sequence {}",
                    c.resume_from_revision,
                    c.resume_from_sequence
                )
            }
        };
        println!("{line}");
    }
    Ok(())
}
