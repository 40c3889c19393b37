//! The `sessiond` command line: `serve` runs a node; `session …` talks to a running node for
//! operators debugging a user's sessions; `cluster …` grows, shrinks and inspects a cluster; `watch` prints
//! revocations as they happen; `bench` measures throughput and latency.

pub mod certs;
pub mod cluster;
pub mod serve;
pub mod session;
pub mod watch;

use clap::{Parser, Subcommand};

use crate::client::DEFAULT_ENDPOINT;

/// sessiond: a Raft-replicated session authority.
#[derive(Debug, Parser)]
#[command(name = "sessiond", version, about)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
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
        /// What to do.
        #[command(subcommand)]
        command: session::SessionCommand,
    },
    /// Print revocation events as they arrive.
    Watch {
        /// The node to subscribe on (any member).
        #[arg(long, env = "SESSIOND_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
        endpoint: String,
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
        Command::Session { endpoint, command } => session::run(&endpoint, command).await,
        Command::Watch { endpoint, args } => watch::run(&endpoint, args).await,
        Command::Cluster {
            endpoint,
            json,
            command,
        } => cluster::run(&endpoint, json, command).await,
        Command::Certs { command } => certs::run(command),
        Command::Bench(args) => crate::bench::run(args).await,
    }
}
