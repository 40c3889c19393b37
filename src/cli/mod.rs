//! The `sessiond` command line: `serve` runs a node; `session …` talks to a running node for
//! operators debugging a user's sessions; `cluster …` grows, shrinks and inspects a cluster;
//! `watch` prints revocations as they happen; `bench` measures throughput and latency;
//! `completions` prints a shell completion script.
//!
//! Every client command takes `--endpoint` as one URL or a comma-separated list of a
//! cluster's nodes, and `--json`. Exit codes: see [`output::exit_code`].

pub mod cluster;
pub mod output;
pub mod serve;
pub mod session;
pub mod watch;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::client::{Client, DEFAULT_ENDPOINT};

/// sessiond: a Raft-replicated session authority.
#[derive(Debug, Parser)]
#[command(name = "sessiond", version, about)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Where a client command connects, and how it prints.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// The node to talk to, or several comma-separated nodes of one cluster.
    #[arg(long, env = "SESSIOND_ENDPOINT", default_value = DEFAULT_ENDPOINT, global = true)]
    pub endpoint: String,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node (with no flags: a single-node cluster on ./data at 127.0.0.1:50051).
    Serve(serve::ServeArgs),
    /// Create, rotate, look up, list and revoke sessions on a running node.
    Session {
        /// Endpoints and output format.
        #[command(flatten)]
        target: Target,
        /// What to do.
        #[command(subcommand)]
        command: session::SessionCommand,
    },
    /// Print revocation events as they arrive.
    Watch {
        /// Endpoints and output format.
        #[command(flatten)]
        target: Target,
        /// What to watch.
        #[command(flatten)]
        args: watch::WatchArgs,
    },
    /// Add, promote and remove nodes; show the cluster's status.
    Cluster {
        /// Endpoints and output format.
        #[command(flatten)]
        target: Target,
        /// What to do.
        #[command(subcommand)]
        command: cluster::ClusterCommand,
    },
    /// Load-test a cluster (or, built with `--features compare`, etcd or Redis).
    Bench(crate::bench::BenchArgs),
    /// Print a shell completion script (e.g. `sessiond completions bash > /etc/bash_completion.d/sessiond`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// No node of the given endpoints could be reached.
#[derive(Debug, thiserror::Error)]
#[error("no endpoint answered: {0}")]
pub struct Unreachable(pub String);

/// The comma-separated `endpoints`, trimmed, empty entries dropped.
pub fn endpoint_list(endpoints: &str) -> Vec<String> {
    endpoints
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A client of `endpoints` (one node, or a cluster's nodes tried in turn).
pub async fn client(endpoints: &str) -> anyhow::Result<Client> {
    let urls = endpoint_list(endpoints);
    match urls.as_slice() {
        [] => Err(Unreachable("no endpoint given".into()).into()),
        [one] => Ok(Client::connect(one).await?),
        many => Ok(Client::for_cluster(many)?),
    }
}

/// Parses the command line, runs it, and turns the outcome into the process exit code
/// (0 success; errors as in [`output::exit_code`], after printing the error).
pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    let ran = match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Session { target, command } => session::run(&target, command).await,
        Command::Watch { target, args } => watch::run(&target, args).await,
        Command::Cluster { target, command } => cluster::run(&target, command).await,
        Command::Bench(args) => crate::bench::run(args).await,
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "sessiond",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    };
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(output::exit_code(&e))
        }
    }
}
