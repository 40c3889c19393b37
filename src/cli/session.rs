//! `sessiond session …`: operator commands against a running node, printing readable
//! results. Raw tokens are printed only where the operator just obtained them (create,
//! rotate).

use clap::{Subcommand, ValueEnum};

use serde_json::{json, Value};

use super::output;
use crate::proto::v1::*;

/// Session subcommands.
#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// Create a session for a user.
    Create {
        /// Tenant (may be empty).
        #[arg(long, default_value = "")]
        tenant: String,
        /// User (subject) id.
        #[arg(long)]
        user: String,
        /// Join this existing family instead of starting a new one.
        #[arg(long)]
        family: Option<String>,
        /// Absolute lifetime in ms (default: the server's).
        #[arg(long, default_value_t = 0)]
        ttl_ms: i64,
        /// Idle timeout in ms (default: the server's).
        #[arg(long, default_value_t = 0)]
        idle_timeout_ms: i64,
        /// Attribute as key=value (repeatable).
        #[arg(long = "attr", value_parser = parse_attribute)]
        attributes: Vec<(String, String)>,
        /// Do not mint an access token.
        #[arg(long)]
        no_access_token: bool,
    },
    /// Redeem a refresh token for its successor.
    Rotate {
        /// The raw refresh token.
        refresh_token: String,
        /// The renewal lease held, if any.
        #[arg(long, default_value = "")]
        lease_id: String,
    },
    /// Look a session up by id or token.
    Lookup {
        /// Tenant the session must belong to.
        #[arg(long, default_value = "")]
        tenant: String,
        /// Session id.
        #[arg(long, group = "lookup_by")]
        id: Option<String>,
        /// Raw refresh token.
        #[arg(long, group = "lookup_by")]
        refresh_token: Option<String>,
        /// Raw access token.
        #[arg(long, group = "lookup_by")]
        access_token: Option<String>,
        /// Read this node's applied state instead of confirming with the leader.
        #[arg(long)]
        local: bool,
    },
    /// Record activity on a session.
    Touch {
        /// Tenant.
        #[arg(long, default_value = "")]
        tenant: String,
        /// Session id.
        #[arg(long)]
        id: String,
    },
    /// Revoke a session, family, user or tenant.
    Revoke {
        /// Tenant.
        #[arg(long, default_value = "")]
        tenant: String,
        /// What to revoke.
        #[arg(long, value_enum)]
        scope: Scope,
        /// Session id, family id or user id (empty for a tenant).
        #[arg(long, default_value = "")]
        id: String,
        /// Why.
        #[arg(long, value_enum, default_value_t = Reason::Admin)]
        reason: Reason,
    },
    /// List a user's sessions.
    List {
        /// Tenant.
        #[arg(long, default_value = "")]
        tenant: String,
        /// User id.
        #[arg(long)]
        user: String,
        /// Include revoked and expired sessions.
        #[arg(long)]
        all: bool,
    },
    /// Count active sessions of a user or a tenant.
    Count {
        /// Tenant.
        #[arg(long, default_value = "")]
        tenant: String,
        /// User id (empty: the whole tenant).
        #[arg(long, default_value = "")]
        user: String,
    },
}

/// Revocation scope on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Scope {
    /// One session.
    Session,
    /// A family (login lineage).
    Family,
    /// All of a user's sessions in the tenant.
    User,
    /// Every session of the tenant.
    Tenant,
}

/// Revocation reason on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Reason {
    /// The user logged out.
    Logout,
    /// An administrator revoked it.
    Admin,
    /// The password or another credential changed.
    CredentialChange,
    /// The account was deleted.
    AccountDeleted,
}

fn parse_attribute(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| "expected key=value".to_owned())
}

/// What a command prints: JSON (`--json`) or text.
struct Report {
    json: Value,
    text: String,
}

/// An outcome enum's name without its prefix (`ROTATED`).
fn outcome_name(name: &str) -> String {
    [
        "CREATE_SESSION_OUTCOME_",
        "ROTATE_OUTCOME_",
        "LOOKUP_OUTCOME_",
        "TOUCH_OUTCOME_",
    ]
    .iter()
    .find_map(|p| name.strip_prefix(p))
    .unwrap_or(name)
    .to_owned()
}

/// The report of an answer carrying an outcome, tokens and a session.
fn answer(
    outcome: &str,
    tokens: Option<(&str, &str, i64)>,
    session: Option<&Session>,
    extra: Value,
    now: i64,
) -> Report {
    let outcome = outcome_name(outcome);
    let mut json = json!({ "outcome": outcome });
    let mut text = format!("outcome:       {outcome}\n");
    if let Some((refresh, access, access_expires_at_ms)) = tokens {
        if !refresh.is_empty() {
            json["refresh_token"] = json!(refresh);
            text.push_str(&format!("refresh token: {refresh}\n"));
        }
        if !access.is_empty() {
            json["access_token"] = json!(access);
            json["access_token_expires_at"] = json!(output::rfc3339(access_expires_at_ms));
            json["access_token_expires_at_ms"] = json!(access_expires_at_ms);
            text.push_str(&format!(
                "access token:  {access}\n  expires:     {}\n",
                output::when(access_expires_at_ms, now)
            ));
        }
    }
    if let Value::Object(fields) = extra {
        for (k, v) in fields {
            text.push_str(&format!(
                "{:<14} {}\n",
                format!("{}:", k.replace('_', " ")),
                v
            ));
            json[k] = v;
        }
    }
    if let Some(s) = session {
        json["session"] = output::session_json(s);
        text.push_str(&output::session_text(s, now));
    }
    Report { json, text }
}

/// Runs one session subcommand against `target` (one URL, or several separated by commas:
/// any nodes of a cluster) and prints the result.
pub async fn run(target: &super::Target, command: SessionCommand) -> anyhow::Result<()> {
    let client = super::client(target).await?;
    let now = crate::clock::now_ms();
    let report = match command {
        SessionCommand::Create {
            tenant,
            user,
            family,
            ttl_ms,
            idle_timeout_ms,
            attributes,
            no_access_token,
        } => {
            let r = client
                .create_session(CreateSessionRequest {
                    tenant,
                    user_id: user,
                    family_id: family.unwrap_or_default(),
                    ttl_ms,
                    idle_timeout_ms,
                    without_access_token: no_access_token,
                    attributes: attributes.into_iter().collect(),
                    ..Default::default()
                })
                .await?;
            let extra = if r.evicted_session_ids.is_empty() {
                json!({})
            } else {
                json!({ "evicted": r.evicted_session_ids })
            };
            answer(
                r.outcome().as_str_name(),
                Some((
                    &r.refresh_token,
                    &r.access_token,
                    r.access_token_expires_at_ms,
                )),
                r.session.as_ref(),
                extra,
                now,
            )
        }
        SessionCommand::Rotate {
            refresh_token,
            lease_id,
        } => {
            let r = client
                .rotate(RotateRequest {
                    refresh_token,
                    lease_id,
                    ..Default::default()
                })
                .await?;
            let mut extra = json!({ "retried": r.retried });
            if r.revoked_count > 0 {
                extra["revoked_count"] = json!(r.revoked_count);
            }
            if !r.lease_holder.is_empty() {
                extra["lease_holder"] = json!(r.lease_holder);
                extra["lease_expires_at"] = json!(output::when(r.lease_expires_at_ms, now));
            }
            answer(
                r.outcome().as_str_name(),
                Some((
                    &r.refresh_token,
                    &r.access_token,
                    r.access_token_expires_at_ms,
                )),
                r.session.as_ref(),
                extra,
                now,
            )
        }
        SessionCommand::Lookup {
            tenant,
            id,
            refresh_token,
            access_token,
            local,
        } => {
            let key = match (id, refresh_token, access_token) {
                (Some(id), _, _) => lookup_request::Key::SessionId(id),
                (_, Some(t), _) => lookup_request::Key::RefreshToken(t),
                (_, _, Some(t)) => lookup_request::Key::AccessToken(t),
                _ => anyhow::bail!("give one of --id, --refresh-token, --access-token"),
            };
            let consistency = if local {
                Consistency::Local
            } else {
                Consistency::Linearizable
            };
            let r = client
                .lookup(LookupRequest {
                    tenant,
                    key: Some(key),
                    consistency: consistency as i32,
                })
                .await?;
            let mut extra = json!({ "revision": r.revision });
            if r.refresh_token_state != 0 {
                extra["token"] = json!(r.refresh_token_state().as_str_name());
            }
            answer(
                r.outcome().as_str_name(),
                None,
                r.session.as_ref(),
                extra,
                now,
            )
        }
        SessionCommand::Touch { tenant, id } => {
            let r = client
                .touch(TouchRequest {
                    tenant,
                    session_id: id,
                    ..Default::default()
                })
                .await?;
            answer(
                r.outcome().as_str_name(),
                None,
                r.session.as_ref(),
                json!({}),
                now,
            )
        }
        SessionCommand::Revoke {
            tenant,
            scope,
            id,
            reason,
        } => {
            let r = client
                .revoke(RevokeRequest {
                    tenant,
                    scope: revoke_scope(scope) as i32,
                    id,
                    reason: revocation_reason(reason) as i32,
                    request_id: String::new(),
                })
                .await?;
            Report {
                json: json!({ "revoked_count": r.revoked_count, "revision": r.revision }),
                text: format!(
                    "revoked {} session(s) at revision {}\n",
                    r.revoked_count, r.revision
                ),
            }
        }
        SessionCommand::List { tenant, user, all } => {
            let mut page_token = String::new();
            loop {
                let r = client
                    .list_sessions(ListSessionsRequest {
                        tenant: tenant.clone(),
                        user_id: user.clone(),
                        include_inactive: all,
                        page_token,
                        ..Default::default()
                    })
                    .await?;
                for s in &r.sessions {
                    if target.json {
                        // One JSON object per line, as pages arrive (no whole list in memory).
                        println!("{}", output::session_json(s));
                    } else {
                        println!("{}", output::session_text(s, now));
                    }
                }
                if r.next_page_token.is_empty() {
                    break;
                }
                page_token = r.next_page_token;
            }
            return Ok(());
        }
        SessionCommand::Count { tenant, user } => {
            let r = client
                .count_sessions(CountSessionsRequest {
                    tenant,
                    user_id: user,
                    ..Default::default()
                })
                .await?;
            Report {
                json: json!({ "active": r.active, "revision": r.revision }),
                text: format!("{} active session(s)\n", r.active),
            }
        }
    };
    if target.json {
        println!("{}", report.json);
    } else {
        print!("{}", report.text);
    }
    Ok(())
}

fn revoke_scope(scope: Scope) -> RevokeScope {
    match scope {
        Scope::Session => RevokeScope::Session,
        Scope::Family => RevokeScope::Family,
        Scope::User => RevokeScope::User,
        Scope::Tenant => RevokeScope::Tenant,
    }
}

fn revocation_reason(reason: Reason) -> RevocationReason {
    match reason {
        Reason::Logout => RevocationReason::Logout,
        Reason::Admin => RevocationReason::Admin,
        Reason::CredentialChange => RevocationReason::CredentialChange,
        Reason::AccountDeleted => RevocationReason::AccountDeleted,
    }
}
