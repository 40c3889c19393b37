//! Wires a node together: the Raft node on its data directory, the gRPC services (session
//! authority, health, reflection) on one listener, the health watcher, the optional metrics
//! and probe listener, the periodic garbage collection, and a graceful shutdown that stops accepting requests, lets in-flight ones finish, then stops
//! Raft and flushes storage.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

use crate::api::cluster::ClusterAdmin;
use crate::api::service::now_ms;
use crate::api::Authority;
use crate::config::{Config, LogFormat};
use crate::metrics::layer::RpcMetricsLayer;
use crate::metrics::sampler;
use crate::proto::internal::raft_transport_server::RaftTransportServer;
use crate::proto::internal::{command, command_result, CollectGarbage};
use crate::proto::v1::cluster_server::ClusterServer;
use crate::proto::v1::session_authority_server::SessionAuthorityServer;
use crate::raft::network::MAX_PEER_MESSAGE_BYTES;
use crate::raft::transport::TransportService;
use crate::raft::{NodeOptions, RaftNode};
use crate::Error;

/// How long a freshly initialized single node may take to elect itself.
const LEADER_WAIT: Duration = Duration::from_secs(10);

/// A node serving in the background; dropping it does not stop it, [`RunningNode::stop`]
/// does.
pub struct RunningNode {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    node: RaftNode,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), Error>>,
}

impl RunningNode {
    /// The address the gRPC server is bound to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address the metrics and probe listener is bound to, when enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The Raft node, for status and tests.
    pub fn node(&self) -> &RaftNode {
        &self.node
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

/// Opens the node described by `config` and starts serving it in the background.
pub async fn start(config: Config) -> Result<RunningNode, Error> {
    config.check()?;
    let listener = TcpListener::bind(config.listen_addr)
        .await
        .map_err(|e| Error::Unavailable(format!("cannot bind {}: {e}", config.listen_addr)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Internal(format!("listener has no address: {e}")))?;
    let metrics_listener = match config.metrics_listen {
        Some(at) => Some(
            TcpListener::bind(at)
                .await
                .map_err(|e| Error::Unavailable(format!("cannot bind {at}: {e}")))?,
        ),
        None => None,
    };
    let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
    let advertise_addr = config
        .advertise_addr
        .clone()
        .unwrap_or_else(|| addr.to_string());
    let node = RaftNode::open(NodeOptions {
        node_id: config.node_id,
        data_dir: config.data_dir.clone(),
        advertise_addr,
        heartbeat_ms: config.raft.heartbeat_ms,
        election_timeout_min_ms: config.raft.election_timeout_min_ms,
        election_timeout_max_ms: config.raft.election_timeout_max_ms,
        snapshot_logs_since_last: config.raft.snapshot_logs_since_last,
        max_in_snapshot_log_to_keep: config.raft.max_in_snapshot_log_to_keep,
        cache_capacity_bytes: config.storage.cache_capacity_bytes(),
    })
    .await?;
    if config.bootstrap {
        node.initialize_single_if_new().await?;
        wait_for_leader(&node).await;
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
    let metrics = metrics_listener.map(|listener| {
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
    // Both reflection versions: grpcurl speaks v1, many stock clients (grpcio-reflection,
    // GUI tools) still speak only v1alpha.
    let reflection = reflection_builder()
        .build_v1()
        .map_err(|e| Error::Internal(format!("reflection service: {e}")))?;
    let reflection_v1alpha = reflection_builder()
        .build_v1alpha()
        .map_err(|e| Error::Internal(format!("reflection service: {e}")))?;
    let sessions = SessionAuthorityServer::new(authority.clone())
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);

    let transport = RaftTransportServer::new(TransportService::new(node.clone()))
        .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES);

    let cluster = ClusterServer::new(ClusterAdmin::new(node.clone()));

    let gc = tokio::spawn(collect_garbage_periodically(authority, stopped.clone()));
    let serving_node = node.clone();
    let task = tokio::spawn(async move {
        let mut stopped = stopped;
        let served = Server::builder()
            .layer(RpcMetricsLayer)
            .add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_v1alpha)
            .add_service(sessions)
            .add_service(transport)
            .add_service(cluster)
            // A caller-supplied listener skips the builder's socket options: set TCP_NODELAY
            // here, or small responses wait on delayed ACKs (tens of milliseconds).
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                async move {
                    let _ = stopped.wait_for(|s| *s).await;
                },
            )
            .await;
        let _ = gc.await;
        let _ = health.await;
        if let Some(metrics) = metrics {
            let _ = metrics.await;
        }
        let closed = serving_node.shutdown().await;
        served.map_err(|e| Error::Internal(format!("gRPC server: {e}")))?;
        closed
    });
    if let Some(at) = metrics_addr {
        tracing::info!(addr = %at, "metrics and probes on http://{at}/metrics, /healthz, /readyz");
    }
    tracing::info!(%addr, node_id = config.node_id, data_dir = %config.data_dir.display(), "sessiond serving");
    Ok(RunningNode {
        addr,
        metrics_addr,
        node,
        stop,
        task,
    })
}

/// Runs the node until SIGINT or SIGTERM, then shuts it down gracefully.
pub async fn run(config: Config) -> Result<(), Error> {
    crate::clock::set_offset_ms(config.clock_offset_ms);
    let running = start(config).await?;
    shutdown_signal().await;
    tracing::info!("shutdown signal received; draining");
    running.stop().await?;
    tracing::info!("stopped");
    Ok(())
}

/// Server reflection over every proto file of the API and of gRPC health.
fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
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

/// While this node leads, proposes a bounded garbage collection every interval (at once
/// again while a batch comes back full), until `stopped` turns true.
async fn collect_garbage_periodically(authority: Authority, mut stopped: watch::Receiver<bool>) {
    let gc = authority.config().gc.clone();
    let retention = authority.config().sessions.dedup_retention_ms;
    let mut ticker = tokio::time::interval(Duration::from_millis(gc.interval_ms.max(1)));
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
                        if r.removed >= u64::from(gc.batch_limit) {
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
