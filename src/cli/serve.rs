//! `sessiond serve`: flags and environment variables over an optional TOML file over the
//! defaults.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use crate::config::{ClientCertPolicy, Config, LogFormat, TlsConfig};

/// Flags of `sessiond serve`. Every flag also reads an environment variable.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// TOML configuration file (see cluster/ for examples).
    #[arg(long, env = "SESSIOND_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's Raft id.
    #[arg(long, env = "SESSIOND_NODE_ID")]
    pub node_id: Option<u64>,
    /// Address to bind the gRPC server to.
    #[arg(long, env = "SESSIOND_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Address clients reach this node at.
    #[arg(long, env = "SESSIOND_ADVERTISE")]
    pub advertise: Option<String>,
    /// Address to bind the peer listener (Raft transport) to (default: client port + 1).
    #[arg(long, env = "SESSIOND_PEER_LISTEN")]
    pub peer_listen: Option<SocketAddr>,
    /// Address other nodes reach this node's peer listener at (its membership address).
    #[arg(long, env = "SESSIOND_PEER_ADVERTISE")]
    pub peer_advertise: Option<String>,
    /// The cluster id (checked on every peer message, named in node certificates).
    #[arg(long, env = "SESSIOND_CLUSTER_ID")]
    pub cluster_id: Option<String>,
    /// Cluster CA certificate (PEM); with --tls-cert and --tls-key turns TLS on.
    #[arg(long, env = "SESSIOND_TLS_CA", requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<PathBuf>,
    /// This node's certificate (PEM).
    #[arg(long, env = "SESSIOND_TLS_CERT", requires = "tls_ca")]
    pub tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, env = "SESSIOND_TLS_KEY", requires = "tls_ca")]
    pub tls_key: Option<PathBuf>,
    /// Client certificates on the client listener.
    #[arg(long, env = "SESSIOND_TLS_CLIENT_CERTS", value_enum)]
    pub tls_client_certs: Option<ClientCertPolicy>,
    /// Allow a non-loopback listener without TLS or authentication (never in production).
    #[arg(long, env = "SESSIOND_INSECURE")]
    pub insecure: bool,
    /// Data directory (sled database and snapshots).
    #[arg(long, env = "SESSIOND_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Join an existing cluster instead of starting one: wait to be added by an operator.
    #[arg(long, env = "SESSIOND_JOIN")]
    pub join: bool,
    /// Log format.
    #[arg(long, env = "SESSIOND_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Refresh-token reuse grace window in ms (0 disables).
    #[arg(long, env = "SESSIOND_REUSE_GRACE_MS")]
    pub reuse_grace_ms: Option<i64>,
    /// Default absolute session lifetime in ms.
    #[arg(long, env = "SESSIOND_DEFAULT_TTL_MS")]
    pub default_ttl_ms: Option<i64>,
    /// Default access-token lifetime in ms.
    #[arg(long, env = "SESSIOND_ACCESS_TOKEN_TTL_MS")]
    pub access_token_ttl_ms: Option<i64>,
    /// Per-user session limit for tenants without their own (0 = unlimited).
    #[arg(long, env = "SESSIOND_MAX_SESSIONS_PER_USER")]
    pub max_sessions_per_user: Option<u32>,
    /// Garbage collection interval in ms.
    #[arg(long, env = "SESSIOND_GC_INTERVAL_MS")]
    pub gc_interval_ms: Option<u64>,
    /// Serve /metrics, /healthz and /readyz over HTTP on this address (off unless set).
    #[arg(long, env = "SESSIOND_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Test-only: shift this node's clock by this many ms (simulates a skewed node).
    #[arg(
        long,
        env = "SESSIOND_CLOCK_OFFSET_MS",
        hide = true,
        allow_hyphen_values = true
    )]
    pub clock_offset_ms: Option<i64>,
}

impl ServeArgs {
    /// The configuration these flags describe: the file (or defaults), then each flag given.
    pub fn to_config(&self) -> Result<Config, crate::Error> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        let s = &mut config.sessions;
        set(&mut config.node_id, self.node_id);
        set(&mut config.listen_addr, self.listen);
        set(&mut config.data_dir, self.data_dir.clone());
        if self.join {
            config.bootstrap = false;
        }
        set(&mut config.log_format, self.log_format);
        set(&mut s.reuse_grace_ms, self.reuse_grace_ms);
        set(&mut s.default_ttl_ms, self.default_ttl_ms);
        set(&mut s.access_token_ttl_ms, self.access_token_ttl_ms);
        set(&mut s.max_sessions_per_user, self.max_sessions_per_user);
        set(&mut config.gc.interval_ms, self.gc_interval_ms);
        set(&mut config.clock_offset_ms, self.clock_offset_ms);
        if self.metrics_listen.is_some() {
            config.metrics_listen = self.metrics_listen;
        }
        if self.advertise.is_some() {
            config.advertise_addr = self.advertise.clone();
        }
        if self.peer_listen.is_some() {
            config.peer_listen_addr = self.peer_listen;
        }
        if self.peer_advertise.is_some() {
            config.peer_advertise_addr = self.peer_advertise.clone();
        }
        set(&mut config.cluster_id, self.cluster_id.clone());
        if let (Some(ca), Some(cert), Some(key)) = (&self.tls_ca, &self.tls_cert, &self.tls_key) {
            config.tls = Some(TlsConfig {
                ca_file: ca.clone(),
                cert_file: cert.clone(),
                key_file: key.clone(),
                client_certs: ClientCertPolicy::default(),
            });
        }
        if let (Some(tls), Some(policy)) = (&mut config.tls, self.tls_client_certs) {
            tls.client_certs = policy;
        }
        config.insecure |= self.insecure;
        config.check()?;
        Ok(config)
    }
}

fn set<T>(target: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *target = v;
    }
}

/// Runs `sessiond serve` until SIGINT/SIGTERM.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.to_config()?;
    crate::server::init_logging(config.log_format);
    crate::server::run(config).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_flags_means_defaults() {
        assert_eq!(ServeArgs::default().to_config().unwrap(), Config::default());
    }

    #[test]
    fn flags_override_defaults() {
        let args = ServeArgs {
            node_id: Some(7),
            reuse_grace_ms: Some(0),
            data_dir: Some(PathBuf::from("/tmp/x")),
            ..Default::default()
        };
        let c = args.to_config().unwrap();
        assert_eq!(c.node_id, 7);
        assert_eq!(c.sessions.reuse_grace_ms, 0);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
    }
}
