//! The `sessiond` command line: `serve` runs a node; `session …` talks to a running node for
//! operators debugging a user's sessions; `cluster …` grows, shrinks and inspects a cluster; `watch` prints
//! revocations as they happen; `bench` measures throughput and latency.

pub mod certs;
pub mod cluster;
pub mod serve;
pub mod session;
pub mod watch;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::client::{ClientOptions, DEFAULT_ENDPOINT};

/// sessiond: a Raft-replicated session authority.
#[derive(Debug, Parser)]
#[command(name = "sessiond", version, about)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// How the client commands reach a cluster with TLS and authentication.
#[derive(Debug, Clone, Default, Args)]
pub struct ConnectArgs {
    /// CA certificate (PEM) to trust for https:// endpoints.
    #[arg(long, env = "SESSIOND_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS; needs --key and --ca.
    #[arg(long, env = "SESSIOND_CERT", global = true, requires_all = ["key", "ca"])]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long, env = "SESSIOND_KEY", global = true, requires = "cert")]
    pub key: Option<PathBuf>,
    /// API key, sent as `authorization: Bearer <key>` (prefer the environment variable).
    #[arg(long, env = "SESSIOND_API_KEY", global = true, hide_env_values = true)]
    pub api_key: Option<String>,
}

impl ConnectArgs {
    /// The client options these flags describe.
    pub fn options(&self) -> anyhow::Result<ClientOptions> {
        let identity = self.cert.as_deref().zip(self.key.as_deref());
        let tls = self
            .ca
            .as_deref()
            .map(|ca| crate::tls::client_config(ca, identity))
            .transpose()?;
        Ok(ClientOptions {
            tls,
            api_key: self.api_key.clone(),
        })
    }
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node (with no flags: a single-node cluster on ./data at 127.0.0.1:50051).
    Serve(serve::ServeArgs),
    /// Create, rotate, look up, list and revoke sessions on a running node.
    Session {
        /// The node to talk to, or several comma-separated nodes of one cluster.
        #[arg(long, env = "SESSIOND_ENDPOINT", default_value = DEFAULT_ENDPOINT, global = true)]
        endpoint: String,
        /// TLS and credentials.
        #[command(flatten)]
        connect: ConnectArgs,
        /// What to do.
        #[command(subcommand)]
        command: session::SessionCommand,
    },
    /// Print revocation events as they arrive.
    Watch {
        /// The node to subscribe on (any member).
        #[arg(long, env = "SESSIOND_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
        endpoint: String,
        /// TLS and credentials.
        #[command(flatten)]
        connect: ConnectArgs,
        /// What to watch.
        #[command(flatten)]
        args: watch::WatchArgs,
    },
    /// Add, promote and remove nodes; show the cluster's status.
    Cluster {
        /// The node to talk to (any member).
        #[arg(long, env = "SESSIOND_ENDPOINT", default_value = DEFAULT_ENDPOINT, global = true)]
        endpoint: String,
        /// Print JSON instead of a table.
        #[arg(long, global = true)]
        json: bool,
        /// TLS and credentials.
        #[command(flatten)]
        connect: ConnectArgs,
        /// What to do.
        #[command(subcommand)]
        command: cluster::ClusterCommand,
    },
    /// Make a development CA, node and client certificates, and API keys.
    Certs {
        /// What to make.
        #[command(subcommand)]
        command: certs::CertsCommand,
    },
    /// Load-test a cluster (or, built with `--features compare`, etcd or Redis).
    Bench(crate::bench::BenchArgs),
}

/// Parses the command line and runs it; the process exit code follows the result.
pub async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Session {
            endpoint,
            connect,
            command,
        } => session::run(&endpoint, &connect.options()?, command).await,
        Command::Watch {
            endpoint,
            connect,
            args,
        } => watch::run(&endpoint, &connect.options()?, args).await,
        Command::Cluster {
            endpoint,
            json,
            connect,
            command,
        } => cluster::run(&endpoint, &connect.options()?, json, command).await,
        Command::Certs { command } => certs::run(command),
        Command::Bench(args) => crate::bench::run(args).await,
    }
}
