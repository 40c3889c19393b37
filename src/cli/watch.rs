//! `sessiond watch`: prints revocation events as they arrive, for operators.

use clap::Args;
use serde_json::json;

use crate::client::{Client, ClientOptions};
use crate::proto::v1::watch_revocations_response::Kind;
use crate::proto::v1::{RevocationReason, RevokeScope, WatchRevocationsRequest};

/// Flags of `sessiond watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Deliver events after this revision (0: everything retained).
    #[arg(long = "from", default_value_t = 0)]
    pub from_revision: u64,
    /// Only this tenant's events (repeatable; none: every tenant).
    #[arg(long = "tenant")]
    pub tenants: Vec<String>,
    /// Print one JSON object per line.
    #[arg(long)]
    pub json: bool,
}

/// Streams until the server ends the stream or the process is interrupted.
pub async fn run(endpoint: &str, options: &ClientOptions, args: WatchArgs) -> anyhow::Result<()> {
    let client = Client::connect_with(endpoint, options).await?;
    let mut stream = client
        .watch_revocations(WatchRevocationsRequest {
            from_revision: args.from_revision,
            tenants: args.tenants,
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
                    if args.json {
                        json!({"revision": e.revision, "tenant": e.tenant, "user_id": e.user_id,
                            "family_id": e.family_id, "session_id": e.session_id,
                            "reason": reason.as_str_name(), "scope": scope.as_str_name(),
                            "revoked_at_ms": e.revoked_at_ms})
                        .to_string()
                    } else {
                        format!(
                            "{:>8}  revoked {}  tenant {:?} user {:?} family {}  ({}, {})",
                            e.revision,
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
            Some(Kind::Progress(p)) if args.json => json!({"progress": p.revision}).to_string(),
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
                    "cut off for falling behind; resume with --from {}",
                    c.resume_from_revision
                )
            }
        };
        println!("{line}");
    }
    Ok(())
}
