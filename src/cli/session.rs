//! `sessiond session …`: operator commands against a running node, printing readable
//! results. Raw tokens are printed only where the operator just obtained them (create,
//! rotate).

use clap::{Subcommand, ValueEnum};

use crate::client::{Client, ClientOptions};
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
        #[arg(long, group = "key")]
        id: Option<String>,
        /// Raw refresh token.
        #[arg(long, group = "key")]
        refresh_token: Option<String>,
        /// Raw access token.
        #[arg(long, group = "key")]
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

/// Runs one session subcommand against `endpoint` (one URL, or several separated by
/// commas: any nodes of a cluster) and prints the result.
pub async fn run(
    endpoint: &str,
    options: &ClientOptions,
    command: SessionCommand,
) -> anyhow::Result<()> {
    let urls: Vec<String> = endpoint.split(',').map(|u| u.trim().to_owned()).collect();
    let client = if urls.len() == 1 {
        Client::connect_with(&urls[0], options).await?
    } else {
        Client::for_cluster_with(&urls, options)?
    };
    match command {
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
            println!("outcome:       {:?}", r.outcome());
            print_tokens(
                &r.refresh_token,
                &r.access_token,
                r.access_token_expires_at_ms,
            );
            for evicted in &r.evicted_session_ids {
                println!("evicted:       {evicted}");
            }
            print_optional_session(r.session.as_ref());
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
            println!(
                "outcome:       {:?}{}",
                r.outcome(),
                if r.retried {
                    " (retry within grace window)"
                } else {
                    ""
                }
            );
            print_tokens(
                &r.refresh_token,
                &r.access_token,
                r.access_token_expires_at_ms,
            );
            if r.revoked_count > 0 {
                println!("revoked:       {} session(s)", r.revoked_count);
            }
            if !r.lease_holder.is_empty() {
                println!(
                    "lease holder:  {} until {}",
                    r.lease_holder, r.lease_expires_at_ms
                );
            }
            print_optional_session(r.session.as_ref());
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
            println!("outcome:       {:?} (revision {})", r.outcome(), r.revision);
            if r.refresh_token_state != 0 {
                println!("token:         {:?}", r.refresh_token_state());
            }
            print_optional_session(r.session.as_ref());
        }
        SessionCommand::Touch { tenant, id } => {
            let r = client
                .touch(TouchRequest {
                    tenant,
                    session_id: id,
                    ..Default::default()
                })
                .await?;
            println!("outcome:       {:?}", r.outcome());
            print_optional_session(r.session.as_ref());
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
            println!(
                "revoked {} session(s) at revision {}",
                r.revoked_count, r.revision
            );
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
                    print_session(s);
                    println!();
                }
                if r.next_page_token.is_empty() {
                    break;
                }
                page_token = r.next_page_token;
            }
        }
        SessionCommand::Count { tenant, user } => {
            let r = client
                .count_sessions(CountSessionsRequest {
                    tenant,
                    user_id: user,
                    ..Default::default()
                })
                .await?;
            println!("{} active session(s)", r.active);
        }
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

fn print_tokens(refresh: &str, access: &str, access_expires_at_ms: i64) {
    if !refresh.is_empty() {
        println!("refresh token: {refresh}");
    }
    if !access.is_empty() {
        println!("access token:  {access} (expires {access_expires_at_ms})");
    }
}

fn print_optional_session(session: Option<&Session>) {
    if let Some(s) = session {
        print_session(s);
    }
}

fn print_session(s: &Session) {
    println!("session:       {}", s.session_id);
    println!("  family:      {}", s.family_id);
    println!("  tenant/user: {:?} / {}", s.tenant, s.user_id);
    println!("  status:      {:?}", s.status());
    if s.status() == SessionStatus::Revoked {
        println!(
            "  revoked:     at {} ({:?})",
            s.revoked_at_ms,
            s.revocation_reason()
        );
    }
    println!("  created:     {}", s.created_at_ms);
    println!(
        "  expires:     {} (idle timeout {} ms, last seen {})",
        s.expires_at_ms, s.idle_timeout_ms, s.last_seen_at_ms
    );
    println!("  generation:  {}", s.generation);
    for (k, v) in &s.attributes {
        println!("  attr {k}: {v}");
    }
}
