//! A typed Rust client for the session authority, used by the CLI and the tests.
//!
//! It wraps the generated tonic client: each method sends one request and returns the
//! response message or the gRPC status. Expected outcomes (REPLAY_DETECTED, NOT_FOUND, …)
//! are in the response, not in the error. Connections are reused: the client holds one
//! channel and clones of it are cheap.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic::Status;

use crate::proto::v1::session_authority_client::SessionAuthorityClient;
use crate::proto::v1::*;

/// Default endpoint of a local `sessiond serve`.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:50051";

/// A connection to one sessiond node.
#[derive(Clone)]
pub struct Client {
    inner: SessionAuthorityClient<Channel>,
}

/// Failure to reach a node.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to {endpoint}: {source}")]
pub struct ConnectError {
    endpoint: String,
    #[source]
    source: tonic::transport::Error,
}

macro_rules! unary {
    ($(#[$doc:meta])* $name:ident, $request:ty, $response:ty) => {
        $(#[$doc])*
        pub async fn $name(&self, request: $request) -> Result<$response, Status> {
            let mut inner = self.inner.clone();
            inner.$name(request).await.map(tonic::Response::into_inner)
        }
    };
}

impl Client {
    /// Connects to `endpoint` (e.g. `http://127.0.0.1:50051`).
    pub async fn connect(endpoint: &str) -> Result<Self, ConnectError> {
        let wrap = |source| ConnectError {
            endpoint: endpoint.to_owned(),
            source,
        };
        let channel = Endpoint::from_shared(endpoint.to_owned())
            .map_err(wrap)?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(wrap)?;
        Ok(Client {
            inner: SessionAuthorityClient::new(channel).max_decoding_message_size(16 * 1024 * 1024),
        })
    }

    unary!(
        /// Starts a session; the response carries the raw tokens once.
        create_session, CreateSessionRequest, CreateSessionResponse
    );
    unary!(
        /// Redeems a refresh token.
        rotate, RotateRequest, RotateResponse
    );
    unary!(
        /// Claims a session's renewal lease.
        acquire_renewal_lease, AcquireRenewalLeaseRequest, AcquireRenewalLeaseResponse
    );
    unary!(
        /// Reads a session by id or token.
        lookup, LookupRequest, LookupResponse
    );
    unary!(
        /// Checks an access token.
        validate_access_token, ValidateAccessTokenRequest, ValidateAccessTokenResponse
    );
    unary!(
        /// Extends a session's idle expiry.
        touch, TouchRequest, TouchResponse
    );
    unary!(
        /// Revokes by scope.
        revoke, RevokeRequest, RevokeResponse
    );
    unary!(
        /// Lists a user's sessions.
        list_sessions, ListSessionsRequest, ListSessionsResponse
    );
    unary!(
        /// Counts active sessions.
        count_sessions, CountSessionsRequest, CountSessionsResponse
    );
    unary!(
        /// Reads replay counters.
        get_anomaly_counters, GetAnomalyCountersRequest, GetAnomalyCountersResponse
    );
}
