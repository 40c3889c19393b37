//! The sessiond side of the benchmark: [`SessionStore`] over the real gRPC [`Client`].

use tonic::Status;

use super::store::{Held, OpError, ReadConsistency, SessionStore};
use crate::client::{Client, ClientOptions};
use crate::proto::v1::{
    lookup_request, Consistency, CreateSessionOutcome, CreateSessionRequest, LookupOutcome,
    LookupRequest, RevocationReason, RevokeRequest, RevokeScope, RotateOutcome, RotateRequest,
};

/// sessiond driven through the Rust client (which fails over between endpoints).
#[derive(Clone)]
pub struct SessiondStore {
    client: Client,
    tenant: String,
}

impl SessiondStore {
    /// A store that creates its sessions in `tenant`, over `client`.
    pub fn new(client: Client, tenant: &str) -> Self {
        SessiondStore {
            client,
            tenant: tenant.to_owned(),
        }
    }

    /// One store per endpoint, each preferring a different node first, so that workers
    /// spread over the cluster the way etcd's balanced client does.
    pub fn spread(
        endpoints: &[String],
        options: &ClientOptions,
        tenant: &str,
    ) -> anyhow::Result<Vec<Self>> {
        (0..endpoints.len())
            .map(|first| {
                let mut order = endpoints.to_vec();
                order.rotate_left(first);
                Ok(SessiondStore::new(
                    Client::for_cluster_with(&order, options)?,
                    tenant,
                ))
            })
            .collect()
    }

    /// The client this store sends through.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

fn transport(status: Status) -> OpError {
    OpError::Transport(format!("{:?}", status.code()))
}

fn outcome(name: &str) -> OpError {
    OpError::Outcome(name.to_ascii_lowercase())
}

impl SessionStore for SessiondStore {
    async fn create(&self, user_id: &str) -> Result<Held, OpError> {
        let response = self
            .client
            .create_session(CreateSessionRequest {
                tenant: self.tenant.clone(),
                user_id: user_id.to_owned(),
                without_access_token: true,
                ..Default::default()
            })
            .await
            .map_err(transport)?;
        match (response.outcome(), response.session) {
            (CreateSessionOutcome::Created, Some(session)) => Ok(Held {
                session_id: session.session_id,
                refresh_token: response.refresh_token,
            }),
            (other, _) => Err(outcome(other.as_str_name())),
        }
    }

    async fn rotate(&self, held: &Held) -> Result<Held, OpError> {
        let response = self
            .client
            .rotate(RotateRequest {
                refresh_token: held.refresh_token.clone(),
                without_access_token: true,
                ..Default::default()
            })
            .await
            .map_err(transport)?;
        match response.outcome() {
            RotateOutcome::Rotated => Ok(Held {
                session_id: held.session_id.clone(),
                refresh_token: response.refresh_token,
            }),
            other => Err(outcome(other.as_str_name())),
        }
    }

    async fn lookup(&self, held: &Held, consistency: ReadConsistency) -> Result<(), OpError> {
        let consistency = match consistency {
            ReadConsistency::Linearizable => Consistency::Linearizable,
            ReadConsistency::Local => Consistency::Local,
        };
        let response = self
            .client
            .lookup(LookupRequest {
                tenant: self.tenant.clone(),
                key: Some(lookup_request::Key::SessionId(held.session_id.clone())),
                consistency: consistency as i32,
            })
            .await
            .map_err(transport)?;
        match response.outcome() {
            LookupOutcome::Found => Ok(()),
            other => Err(outcome(other.as_str_name())),
        }
    }

    async fn revoke(&self, held: &Held) -> Result<(), OpError> {
        let response = self
            .client
            .revoke(RevokeRequest {
                tenant: self.tenant.clone(),
                scope: RevokeScope::Session as i32,
                id: held.session_id.clone(),
                reason: RevocationReason::Logout as i32,
                request_id: String::new(),
            })
            .await
            .map_err(transport)?;
        match response.revoked_count {
            1 => Ok(()),
            _ => Err(OpError::Outcome("not_revoked".to_owned())),
        }
    }
}
