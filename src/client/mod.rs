//! A typed Rust client for the session authority, used by the CLI and the tests.
//!
//! It wraps the generated tonic client: each method sends one request and returns the
//! response message or the gRPC status. Expected outcomes (REPLAY_DETECTED, NOT_FOUND, …)
//! are in the response, not in the error. Connections are reused: the client holds one
//! channel per endpoint and clones of it are cheap.
//!
//! Given several endpoints (any nodes of a cluster), a request that finds a node UNAVAILABLE
//! (down, no leader yet, cut off from its quorum) is retried on the next one; the node that
//! last answered is tried first. Any node accepts any request (followers forward writes to
//! the leader), so callers never look for the leader; but the client does, to save that
//! hop: it asks a node for the cluster status every few seconds and sends writes straight
//! to the leader when the leader's address is one of its endpoints. Retrying writes is safe:
//! every write (create, rotate, touch, renewal lease, revoke) sent without a request id gets
//! a fresh one here, reused on every retry of that call, so a retried write that had
//! committed returns its first result, revision included; a retried rotation returns the same
//! successor however late the first one committed.
//!
//! Against a cluster with TLS and authentication, give [`ClientOptions`]: the CA to trust
//! (and a client certificate) for `https://` endpoints, and/or an API key sent as
//! `authorization: Bearer <key>`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

use crate::proto::v1::cluster_client::ClusterClient;
use crate::proto::v1::session_authority_client::SessionAuthorityClient;
use crate::proto::v1::*;

/// Default endpoint of a local `sessiond serve`.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:50051";

/// Rounds through the endpoints before a request gives up.
const ROUNDS: usize = 3;
/// Pause after a round in which every endpoint was unavailable.
const ROUND_PAUSE: Duration = Duration::from_millis(200);

/// How long a learned leader is trusted before the client asks again.
const LEADER_HINT_TTL: Duration = Duration::from_secs(5);

/// How the client secures its connections and proves who it is.
#[derive(Clone, Default)]
pub struct ClientOptions {
    /// TLS for `https://` endpoints: the CA to trust and, for mTLS, a client certificate
    /// (see [`crate::tls::client_config`]).
    pub tls: Option<ClientTlsConfig>,
    /// An API key, sent with every request as `authorization: Bearer <key>`.
    pub api_key: Option<String>,
}

/// Adds the API key (if any) to every request.
#[derive(Clone)]
pub struct Credentials(Option<MetadataValue<Ascii>>);

impl Credentials {
    fn new(options: &ClientOptions) -> Self {
        Credentials(options.api_key.as_ref().and_then(|key| {
            let mut value = MetadataValue::try_from(format!("Bearer {key}")).ok()?;
            value.set_sensitive(true);
            Some(value)
        }))
    }
}

impl tonic::service::Interceptor for Credentials {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(key) = &self.0 {
            request.metadata_mut().insert("authorization", key.clone());
        }
        Ok(request)
    }
}

/// A channel to one node that sends the client's credentials.
pub type Transport = InterceptedService<Channel, Credentials>;

/// A connection to one or more sessiond nodes.
#[derive(Clone)]
pub struct Client {
    nodes: Arc<Vec<Node>>,
    preferred: Arc<AtomicUsize>,
    leader: Arc<Mutex<LeaderHint>>,
}

/// One endpoint: its session client and its address as the cluster advertises it.
struct Node {
    sessions: SessionAuthorityClient<Transport>,
    channel: Transport,
    /// `host:port` of the endpoint URL.
    addr: String,
}

/// Which endpoint the client believes leads, and when it last asked.
#[derive(Default)]
struct LeaderHint {
    index: Option<usize>,
    asked_at: Option<Instant>,
}

/// Failure to reach a node.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to {endpoint}: {source}")]
pub struct ConnectError {
    endpoint: String,
    #[source]
    source: tonic::transport::Error,
}

/// A write method that gives the request a fresh request id when it has none, so that every
/// retry of the call carries the same one.
macro_rules! idempotent {
    ($(#[$doc:meta])* $name:ident, $request:ty, $response:ty) => {
        $(#[$doc])*
        pub async fn $name(&self, mut request: $request) -> Result<$response, Status> {
            if request.request_id.is_empty() {
                request.request_id = fresh_request_id();
            }
            self.write(request, |mut node, request| async move {
                node.$name(request).await.map(tonic::Response::into_inner)
            })
            .await
        }
    };
}

macro_rules! unary {
    ($(#[$doc:meta])* $name:ident, $request:ty, $response:ty) => {
        unary!($(#[$doc])* $name, $request, $response, call);
    };
    ($(#[$doc:meta])* $name:ident, $request:ty, $response:ty, $route:ident) => {
        $(#[$doc])*
        pub async fn $name(&self, request: $request) -> Result<$response, Status> {
            self.$route(request, |mut node, request| async move {
                node.$name(request).await.map(tonic::Response::into_inner)
            })
            .await
        }
    };
}

fn endpoint(url: &str, options: &ClientOptions) -> Result<Endpoint, ConnectError> {
    let failed = |source| ConnectError {
        endpoint: url.to_owned(),
        source,
    };
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(failed)?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    match &options.tls {
        Some(tls) => endpoint.tls_config(tls.clone()).map_err(failed),
        None => Ok(endpoint),
    }
}

fn node(url: &str, channel: Channel, options: &ClientOptions) -> Node {
    let addr = url.split_once("://").map_or(url, |(_, rest)| rest);
    let channel = InterceptedService::new(channel, Credentials::new(options));
    Node {
        sessions: SessionAuthorityClient::new(channel.clone())
            .max_decoding_message_size(16 * 1024 * 1024),
        channel,
        addr: addr.trim_end_matches('/').to_owned(),
    }
}

/// A connected channel to `url` that sends the credentials of `options`, for the other
/// services' generated clients (e.g. cluster administration).
pub async fn connect_transport(
    url: &str,
    options: &ClientOptions,
) -> Result<Transport, ConnectError> {
    let channel = endpoint(url, options)?
        .connect()
        .await
        .map_err(|source| ConnectError {
            endpoint: url.to_owned(),
            source,
        })?;
    Ok(InterceptedService::new(channel, Credentials::new(options)))
}

/// A fresh request id for a write the caller sent without one: a UUIDv7, whose time lets
/// the cluster keep the dedup records of requests made close in time together.
fn fresh_request_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

impl Client {
    /// Connects to `endpoint` (e.g. `http://127.0.0.1:50051`), failing if it is not up.
    pub async fn connect(url: &str) -> Result<Self, ConnectError> {
        Self::connect_with(url, &ClientOptions::default()).await
    }

    /// A client of every node in `urls`, connecting lazily (a node that is down now is
    /// tried again later).
    pub fn for_cluster(urls: &[String]) -> Result<Self, ConnectError> {
        Self::for_cluster_with(urls, &ClientOptions::default())
    }

    /// [`Client::connect`] with TLS and credentials.
    pub async fn connect_with(url: &str, options: &ClientOptions) -> Result<Self, ConnectError> {
        let channel = endpoint(url, options)?
            .connect()
            .await
            .map_err(|source| ConnectError {
                endpoint: url.to_owned(),
                source,
            })?;
        Ok(Client {
            nodes: Arc::new(vec![node(url, channel, options)]),
            preferred: Arc::new(AtomicUsize::new(0)),
            leader: Arc::default(),
        })
    }

    /// [`Client::for_cluster`] with TLS and credentials.
    pub fn for_cluster_with(
        urls: &[String],
        options: &ClientOptions,
    ) -> Result<Self, ConnectError> {
        let nodes = urls
            .iter()
            .map(|u| endpoint(u, options).map(|e| node(u, e.connect_lazy(), options)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Client {
            nodes: Arc::new(nodes),
            preferred: Arc::new(AtomicUsize::new(0)),
            leader: Arc::default(),
        })
    }

    /// The endpoint believed to lead, asking a node for the cluster status when the last
    /// answer is older than [`LEADER_HINT_TTL`]. `None` with one endpoint, or when the leader
    /// is not among the endpoints or unknown.
    async fn leader_index(&self) -> Option<usize> {
        if self.nodes.len() < 2 {
            return None;
        }
        {
            let mut hint = self.leader.lock().expect("leader hint lock");
            if hint
                .asked_at
                .is_some_and(|at| at.elapsed() < LEADER_HINT_TTL)
            {
                return hint.index;
            }
            hint.asked_at = Some(Instant::now());
        }
        let asked = &self.nodes[self.preferred.load(Ordering::Relaxed) % self.nodes.len()];
        let status = ClusterClient::new(asked.channel.clone())
            .status(ClusterStatusRequest {})
            .await
            .ok()?
            .into_inner();
        let index = status.members.iter().find(|m| m.leader).and_then(|leader| {
            let addr = if leader.client_addr.is_empty() {
                &leader.addr
            } else {
                &leader.client_addr
            };
            self.nodes.iter().position(|n| &n.addr == addr)
        });
        self.leader.lock().expect("leader hint lock").index = index;
        index
    }

    /// The endpoint (`host:port`) writes are sent to directly: the leader, when this client
    /// has several endpoints and the leader is one of them.
    pub async fn leader_endpoint(&self) -> Option<String> {
        let index = self.leader_index().await?;
        Some(self.nodes[index].addr.clone())
    }

    /// Sends a write to the leader when it is known, else (or if the leader is unavailable)
    /// as any other request.
    async fn write<Req, Resp, F, Fut>(&self, request: Req, send: F) -> Result<Resp, Status>
    where
        Req: Clone,
        F: Fn(SessionAuthorityClient<Transport>, Req) -> Fut,
        Fut: std::future::Future<Output = Result<Resp, Status>>,
    {
        if let Some(leader) = self.leader_index().await {
            match send(self.nodes[leader].sessions.clone(), request.clone()).await {
                Err(status) if status.code() == Code::Unavailable => {
                    *self.leader.lock().expect("leader hint lock") = LeaderHint::default();
                }
                answered => return answered,
            }
        }
        self.call(request, send).await
    }

    /// Sends `request` to the preferred node, moving on to the next on UNAVAILABLE.
    async fn call<Req, Resp, F, Fut>(&self, request: Req, send: F) -> Result<Resp, Status>
    where
        Req: Clone,
        F: Fn(SessionAuthorityClient<Transport>, Req) -> Fut,
        Fut: std::future::Future<Output = Result<Resp, Status>>,
    {
        let count = self.nodes.len();
        let first = self.preferred.load(Ordering::Relaxed);
        let mut last = Status::unavailable("no endpoints");
        for attempt in 0..count * ROUNDS {
            let index = (first + attempt) % count;
            match send(self.nodes[index].sessions.clone(), request.clone()).await {
                Err(status) if status.code() == Code::Unavailable => {
                    last = status;
                    if (attempt + 1) % count == 0 {
                        tokio::time::sleep(ROUND_PAUSE).await;
                    }
                }
                answered => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return answered;
                }
            }
        }
        Err(last)
    }

    idempotent!(
        /// Starts a session; the response carries the raw tokens once. Without a request
        /// id, one is generated so that a retry cannot create a second session.
        create_session, CreateSessionRequest, CreateSessionResponse
    );
    idempotent!(
        /// Revokes by scope. Without a request id, one is generated so that a retry after a
        /// lost answer reports the first count and revision.
        revoke, RevokeRequest, RevokeResponse
    );
    idempotent!(
        /// Redeems a refresh token. Without a request id, one is generated so that a retry
        /// after a lost answer gets the same successor, never REPLAY_DETECTED.
        rotate, RotateRequest, RotateResponse
    );
    idempotent!(
        /// Claims a session's renewal lease (a retry gets the first answer).
        acquire_renewal_lease, AcquireRenewalLeaseRequest, AcquireRenewalLeaseResponse
    );
    idempotent!(
        /// Extends a session's idle expiry (a retry gets the first answer).
        touch, TouchRequest, TouchResponse
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
        /// Lists a user's sessions.
        list_sessions, ListSessionsRequest, ListSessionsResponse
    );
    unary!(
        /// Counts active sessions.
        count_sessions, CountSessionsRequest, CountSessionsResponse
    );
    unary!(
        /// Lists a tenant's revoked, unexpired sessions (to rebuild a deny list).
        list_revoked, ListRevokedRequest, ListRevokedResponse
    );

    /// Opens a revocation stream on the first node that accepts it.
    pub async fn watch_revocations(
        &self,
        request: WatchRevocationsRequest,
    ) -> Result<tonic::Streaming<WatchRevocationsResponse>, Status> {
        self.call(request, |mut node, request| async move {
            node.watch_revocations(request)
                .await
                .map(tonic::Response::into_inner)
        })
        .await
    }

    unary!(
        /// Reads replay counters.
        get_anomaly_counters, GetAnomalyCountersRequest, GetAnomalyCountersResponse
    );
}
