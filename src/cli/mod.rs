//! The `sessiond` command line: `serve` runs a node; `session …` talks to a running node for
//! operators debugging a user's sessions; `cluster …` grows, shrinks and inspects a cluster;
//! `watch` prints revocations as they happen; `backup` copies a running cluster's state into
//! a file and `restore` makes it a new cluster; `bench` measures throughput and latency;
//! `certs` makes development certificates and API keys; `completions` prints a shell
//! completion script.
//!
//! Every client command takes `--endpoint` as one URL or a comma-separated list of a
//! cluster's nodes, `--json`, and the TLS and credential flags of [`ConnectArgs`]. Exit
//! codes: see [`output::exit_code`].

pub mod backup;
pub mod certs;
pub mod cluster;
pub mod output;
pub mod serve;
pub mod session;
pub mod watch;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::client::{Client, ClientOptions, DEFAULT_ENDPOINT};

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

/// Where a client command connects, and how it prints.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// The node to talk to, or several comma-separated nodes of one cluster.
    #[arg(long, env = "SESSIOND_ENDPOINT", default_value = DEFAULT_ENDPOINT, global = true)]
    pub endpoint: String,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// TLS and credentials.
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node (with no flags: a single-node cluster on ./data at 127.0.0.1:50051).
    Serve(serve::ServeArgs),
    /// Create, rotate, look up, list and revoke sessions on a running node.
    Session {
        /// Endpoints, output format, TLS and credentials.
        #[command(flatten)]
        target: Target,
        /// What to do.
        #[command(subcommand)]
        command: session::SessionCommand,
    },
    /// Print revocation events as they arrive.
    Watch {
        /// Endpoints, output format, TLS and credentials.
        #[command(flatten)]
        target: Target,
        /// What to watch.
        #[command(flatten)]
        args: watch::WatchArgs,
    },
    /// Add, promote and remove nodes; show the cluster's status.
    Cluster {
        /// Endpoints, output format, TLS and credentials.
        #[command(flatten)]
        target: Target,
        /// What to do.
        #[command(subcommand)]
        command: cluster::ClusterCommand,
    },
    /// Stream a consistent, checksummed snapshot of a running cluster into a file.
    Backup {
        /// Endpoints, output format, TLS and credentials.
        #[command(flatten)]
        target: Target,
        /// Where to write it.
        #[command(flatten)]
        args: backup::BackupArgs,
    },
    /// Make a backup the data directory of a new one-node cluster (then `serve` it).
    Restore(backup::RestoreArgs),
    /// Make a development CA, node and client certificates, and API keys.
    Certs {
        /// What to make.
        #[command(subcommand)]
        command: certs::CertsCommand,
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

/// A client of `target`'s endpoints (one node, or a cluster's nodes tried in turn), with
/// its TLS and credentials.
pub async fn client(target: &Target) -> anyhow::Result<Client> {
    let urls = endpoint_list(&target.endpoint);
    let options = target.connect.options()?;
    match urls.as_slice() {
        [] => Err(Unreachable("no endpoint given".into()).into()),
        [one] => Ok(Client::connect_with(one, &options).await?),
        many => Ok(Client::for_cluster_with(many, &options)?),
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
        Command::Backup { target, args } => backup::run_backup(&target, args).await,
        Command::Restore(args) => backup::run_restore(args).await,
        Command::Certs { command } => certs::run(command),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// clap's own consistency checks (names, groups, global flags of every subcommand), which
    /// otherwise fire only when a command line is parsed.
    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
