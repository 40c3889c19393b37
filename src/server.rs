//! Wires a node together: the Raft node on its data directory, two gRPC listeners, the
//! health watcher, the optional metrics and probe listener, the periodic garbage
//! collection, and a graceful shutdown that stops accepting requests, lets in-flight ones
//! finish, then stops Raft and flushes storage.
//!
//! The listeners:
//! - the **client listener** (`listen_addr`): the session authority, cluster administration,
//!   health and reflection (v1 and v1alpha), behind [`RpcMetricsLayer`] (RPC counts and
//!   latency) and [`AuthLayer`] (authentication and roles);
//! - the **peer listener** (`peer_listen_addr`): the Raft transport and forwarded requests
//!   only, behind [`PeerGuard`] (cluster id, node certificate, membership);
//! - the **metrics listener** (`metrics_listen`, optional): plain HTTP `/metrics`,
//!   `/healthz` and `/readyz`.
//!
//! With `tls` configured both use TLS (the peer listener always requires a node
//! certificate), and SIGHUP reloads the certificates without dropping connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

use crate::api::authority::now_ms;
use crate::api::cluster::ClusterAdmin;
use crate::api::Authority;
use crate::auth::layer::AuthLayer;
use crate::auth::Authenticator;
use crate::config::{Config, LogFormat, TlsConfig};
use crate::metrics::layer::RpcMetricsLayer;
use crate::metrics::sampler;
use crate::proto::internal::raft_transport_server::RaftTransportServer;
use crate::proto::internal::{command, command_result, CollectGarbage};
use crate::proto::v1::cluster_server::ClusterServer;
use crate::proto::v1::session_authority_server::SessionAuthorityServer;
use crate::raft::network::MAX_PEER_MESSAGE_BYTES;
use crate::raft::transport::{CommandCheck, PeerGuard, TransportService};
use crate::raft::{NodeOptions, RaftNode};
use crate::tls::{node_client_config, ServerTls};
use crate::Error;

/// How long a freshly initialized single node may take to elect itself.
const LEADER_WAIT: Duration = Duration::from_secs(10);

/// Streams a client may reset before the server has accepted them; beyond, the connection
/// is closed with GOAWAY (too_many_resets). hyper's default (20) is reached by clients that
/// time out calls to a node that was paused, which then loses all their connections.
const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 1024;

/// The services the client listener offers, as reflection lists them (the Raft transport is
/// not among them: it lives on the peer listener).
pub const CLIENT_SERVICES: &[&str] = &[
    "sessiond.v1.SessionAuthority",
    "sessiond.v1.Cluster",
    "grpc.health.v1.Health",
];

/// A node serving in the background; dropping it does not stop it, [`RunningNode::stop`]
/// does.
pub struct RunningNode {
    addr: SocketAddr,
    peer_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    node: RaftNode,
    tls: Option<NodeTls>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), Error>>,
}

/// The TLS state of a node: both listeners' configurations and its outgoing one.
struct NodeTls {
    files: TlsConfig,
    client: Arc<ServerTls>,
    peer: Arc<ServerTls>,
}

impl NodeTls {
    fn load(files: &TlsConfig) -> Result<Self, Error> {
        Ok(NodeTls {
            files: files.clone(),
            client: ServerTls::client_listener(files)?,
            peer: ServerTls::peer_listener(files)?,
        })
    }
}

impl RunningNode {
    /// The address the client listener is bound to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address the peer listener is bound to (the one to name when adding this node).
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// The address the metrics and probe listener is bound to, when enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The Raft node, for status and tests.
    pub fn node(&self) -> &RaftNode {
        &self.node
    }

    /// Reads the TLS certificate, key and CA files again: connections accepted or opened
    /// from now on use them; established ones are untouched. Does nothing without TLS; on an
    /// error the previous files stay in force.
    pub fn reload_tls(&self) -> Result<(), Error> {
        let Some(tls) = &self.tls else {
            return Ok(());
        };
        let outgoing = node_client_config(&tls.files)?;
        tls.client.reload()?;
        tls.peer.reload()?;
        self.node.peers().set_tls(outgoing);
        tracing::info!("TLS certificates reloaded");
        Ok(())
    }

    /// Stops accepting requests, waits for in-flight ones, stops Raft and flushes storage.
    pub async fn stop(self) -> Result<(), Error> {
        let _ = self.stop.send(true);
        self.wait().await
    }

    /// Waits until the node stops (after [`RunningNode::stop`] or a fatal error).
    pub async fn wait(self) -> Result<(), Error> {
        self.task
            .await
            .map_err(|e| Error::Internal(format!("server task failed: {e}")))?
    }
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), Error> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Unavailable(format!("cannot bind {addr}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::Internal(format!("listener has no address: {e}")))?;
    Ok((listener, bound))
}

/// Serves `$router` on `$listener`, over TLS when `$tls` is set, until `$stopped` turns
/// true. (A macro: the two kinds of connection have different types.)
macro_rules! serve {
    ($router:expr, $listener:expr, $tls:expr, $stopped:expr) => {{
        let (router, listener, tls, mut stopped) = ($router, $listener, $tls, $stopped);
        async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            match tls {
                Some(tls) => {
                    router
                        .serve_with_incoming_shutdown(tls.incoming(listener), shutdown)
                        .await
                }
                // A caller-supplied listener skips the builder's socket options: set TCP_NODELAY
                // here, or small responses wait on delayed ACKs (tens of milliseconds).
                None => {
                    router
                        .serve_with_incoming_shutdown(
                            TcpIncoming::from(listener).with_nodelay(Some(true)),
                            shutdown,
                        )
                        .await
                }
            }
        }
    }};
}

/// Opens the node described by `config` and starts serving it in the background.
pub async fn start(config: Config) -> Result<RunningNode, Error> {
    config.check()?;
    config.check_exposure()?;
    let tls = config.tls.as_ref().map(NodeTls::load).transpose()?;
    let peer_tls = config.tls.as_ref().map(node_client_config).transpose()?;
    let (client_listener, addr) = bind(config.listen_addr).await?;
    let (peer_listener, peer_addr) = bind(config.peer_listen_addr()).await?;
    let metrics_listener = match config.metrics_listen {
        Some(at) => Some(bind(at).await?),
        None => None,
    };
    let metrics_addr = metrics_listener.as_ref().map(|(_, at)| *at);
    if config.is_open() {
        tracing::warn!(%addr, "development mode: plaintext, no authentication, every call allowed; configure tls and auth before exposing this node");
    }
    let node = RaftNode::open(NodeOptions {
        node_id: config.node_id,
        data_dir: config.data_dir.clone(),
        advertise_addr: config
            .peer_advertise_addr
            .clone()
            .unwrap_or_else(|| peer_addr.to_string()),
        client_addr: config
            .advertise_addr
            .clone()
            .unwrap_or_else(|| addr.to_string()),
        cluster_id: config.cluster_id.clone(),
        peer_tls,
        heartbeat_ms: config.raft.heartbeat_ms,
        election_timeout_min_ms: config.raft.election_timeout_min_ms,
        election_timeout_max_ms: config.raft.election_timeout_max_ms,
        snapshot_logs_since_last: config.raft.snapshot_logs_since_last,
        snapshot_log_fraction: config.raft.snapshot_log_percent as f64 / 100.0,
        max_in_snapshot_log_to_keep: config.raft.max_in_snapshot_log_to_keep,
        lease_reads: config.raft.lease_reads,
        sled: config.storage.sled_options(),
    })
    .await?;
    // Only a node that just made itself a one-node cluster waits for its leader (itself);
    // a restarted node serves at once, or it could not hear the leader it has to find.
    // A cluster created here writes its records in the newest format from its first entry.
    if config.bootstrap && node.initialize_single_if_new().await? {
        wait_for_leader(&node).await;
        let format = crate::api::cluster::compact_records(&node).await?;
        tracing::info!(
            record_format = format.record_format,
            "new cluster: records are written in the compact format"
        );
    }

    let config = Arc::new(config);
    let (stop, stopped) = watch::channel(false);
    let authority = Authority::new(node.clone(), config.clone(), stopped.clone());

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let (health, verdict_seen) = crate::health::start(
        node.clone(),
        config.health.clone(),
        health_reporter,
        stopped.clone(),
    )
    .await;
    let metrics = metrics_listener.map(|(listener, _)| {
        tokio::spawn(sampler::run(
            node.clone(),
            config.data_dir.clone(),
            verdict_seen.clone(),
            stopped.clone(),
        ));
        tokio::spawn(crate::metrics::http::serve(
            listener,
            node.clone(),
            verdict_seen,
            stopped.clone(),
        ))
    });

    // The client listener. Both reflection versions: grpcurl speaks v1, many stock clients
    // (grpcio-reflection, GUI tools) still speak only v1alpha.
    let reflection = reflection_builder()
        .build_v1()
        .map_err(|e| Error::Internal(format!("reflection service: {e}")))?;
    let reflection_v1alpha = reflection_builder()
        .build_v1alpha()
        .map_err(|e| Error::Internal(format!("reflection service: {e}")))?;
    let sessions = SessionAuthorityServer::new(authority.clone())
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
    let cluster = ClusterServer::new(ClusterAdmin::new(node.clone()));
    let authenticator = Arc::new(Authenticator::new(&config.cluster_id, &config.auth));
    // The metrics layer is outside the auth layer: refused calls are counted too.
    let client_router = Server::builder()
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESET_STREAMS))
        .layer(RpcMetricsLayer)
        .layer(AuthLayer::new(authenticator))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(sessions)
        .add_service(cluster);

    // The peer listener. Proposals forwarded by peers are checked like public requests.
    let proposal_config = config.clone();
    let check_proposal: CommandCheck = Arc::new(move |command| {
        crate::api::proposal::check(&proposal_config, command, crate::clock::now_ms())
    });
    let transport = RaftTransportServer::new(TransportService::new(node.clone(), check_proposal))
        .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES);
    let guard = PeerGuard::new(node.clone(), &config.cluster_id, tls.is_some());
    let peer_router = Server::builder()
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESET_STREAMS))
        .add_service(InterceptedService::new(transport, guard));

    let client_tls = tls.as_ref().map(|t| t.client.clone());
    let peer_tls = tls.as_ref().map(|t| t.peer.clone());
    let gc = tokio::spawn(collect_garbage_periodically(authority, stopped.clone()));
    let serving_node = node.clone();
    let task = tokio::spawn(async move {
        let client = serve!(client_router, client_listener, client_tls, stopped.clone());
        let peer = serve!(peer_router, peer_listener, peer_tls, stopped.clone());
        let (client, peer) = tokio::join!(client, peer);
        let _ = gc.await;
        let _ = health.await;
        if let Some(metrics) = metrics {
            let _ = metrics.await;
        }
        let closed = serving_node.shutdown().await;
        client.map_err(|e| Error::Internal(format!("gRPC server: {e}")))?;
        peer.map_err(|e| Error::Internal(format!("peer server: {e}")))?;
        closed
    });
    if let Some(at) = metrics_addr {
        tracing::info!(addr = %at, "metrics and probes on http://{at}/metrics, /healthz, /readyz");
    }
    tracing::info!(%addr, %peer_addr, node_id = config.node_id, cluster_id = %config.cluster_id, tls = config.tls.is_some(), data_dir = %config.data_dir.display(), "sessiond serving");
    Ok(RunningNode {
        addr,
        peer_addr,
        metrics_addr,
        node,
        tls,
        stop,
        task,
    })
}

/// Runs the node until SIGINT or SIGTERM, then shuts it down gracefully; SIGHUP reloads the
/// TLS certificates.
pub async fn run(config: Config) -> Result<(), Error> {
    crate::clock::set_offset_ms(config.clock_offset_ms);
    let running = start(config).await?;
    let reload = reload_signal();
    tokio::pin!(reload);
    loop {
        tokio::select! {
            _ = shutdown_signal() => break,
            _ = &mut reload => {
                if let Err(e) = running.reload_tls() {
                    tracing::error!(error = %e, "TLS reload failed; the previous certificates stay in force");
                }
                reload.set(reload_signal());
            }
        }
    }
    tracing::info!("shutdown signal received; draining");
    running.stop().await?;
    tracing::info!("stopped");
    Ok(())
}

/// Server reflection over every proto file of the API and of gRPC health, listing the
/// client listener's services ([`CLIENT_SERVICES`]).
fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    CLIENT_SERVICES.iter().fold(
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
        |builder, name| builder.with_service_name(*name),
    )
}

/// Resolves on the next SIGHUP (never on other platforms).
async fn reload_signal() {
    #[cfg(unix)]
    if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        s.recv().await;
        return;
    }
    std::future::pending::<()>().await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}

async fn wait_for_leader(node: &RaftNode) {
    let waited = node
        .raft()
        .wait(Some(LEADER_WAIT))
        .metrics(|m| m.current_leader.is_some(), "a leader is known")
        .await;
    if waited.is_err() {
        tracing::warn!("no leader yet; requests get UNAVAILABLE until one is elected");
    }
}

/// While this node leads, proposes a bounded garbage collection every interval, the first
/// one interval after start (at once again while a batch comes back with work left), until
/// `stopped` turns true.
async fn collect_garbage_periodically(authority: Authority, mut stopped: watch::Receiver<bool>) {
    let gc = authority.config().gc.clone();
    let retention = authority.config().sessions.dedup_retention_ms;
    let period = Duration::from_millis(gc.interval_ms.max(1));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        while authority.node().is_leader() && !*stopped.borrow() {
            let command = CollectGarbage {
                limit: gc.batch_limit,
                dedup_retention_ms: retention,
                event_retention_ms: gc.event_retention_ms,
            };
            match authority
                .propose(now_ms(), Vec::new(), command::Kind::CollectGarbage(command))
                .await
            {
                Ok(applied) => match applied.result.kind {
                    Some(command_result::Kind::CollectGarbage(r)) => {
                        crate::metrics::GC_COLLECTIONS.inc();
                        crate::metrics::GC_REMOVED.inc_by(r.removed);
                        if r.more || r.removed >= u64::from(gc.batch_limit) {
                            continue;
                        }
                        if r.removed > 0 {
                            tracing::debug!(removed = r.removed, "garbage collected");
                        }
                        break;
                    }
                    _ => break,
                },
                Err(e) => {
                    tracing::warn!(error = %e, "garbage collection not applied");
                    break;
                }
            }
        }
    }
}

/// Installs the global tracing subscriber: human-readable or JSON lines, filtered by
/// `RUST_LOG` (default `info`, with openraft's own chatter at `warn`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
