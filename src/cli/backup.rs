//! `sessiond backup` streams a consistent, checksummed snapshot of a running cluster into a
//! file; `sessiond restore` makes such a file the data directory of a new one-node cluster
//! (see [`crate::store::backup`] for what carries over and what does not).
//!
//! A backup is written to `FILE.partial`, checked from end to end (size, header, entry count
//! and CRC-32), synced, and only then renamed to `FILE`: a `FILE` that exists is complete.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use super::cluster::connect_any;
use super::serve::ServeArgs;
use super::Target;
use crate::proto::v1::cluster_client::ClusterClient;
use crate::proto::v1::{backup_chunk, BackupInfo, BackupRequest};
use crate::store::backup::{self, BackupSummary};
use crate::store::snapshot::sync_dir;

/// Flags of `sessiond backup`.
#[derive(Debug, Clone, Args)]
pub struct BackupArgs {
    /// The file to write (a `.partial` file next to it until the backup is complete).
    #[arg(long)]
    pub out: PathBuf,
    /// Send the node's current snapshot as it is, instead of one covering every write
    /// committed before the call (built first if the node's snapshot is older).
    #[arg(long)]
    pub existing: bool,
}

/// Flags of `sessiond restore`.
#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    /// The backup file.
    #[arg(long)]
    pub from: PathBuf,
    /// The new node's data directory (absent or empty); default as `serve`'s.
    #[arg(long, env = "SESSIOND_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The TOML configuration the new node will be served with (node id, peer address,
    /// data directory).
    #[arg(long, env = "SESSIOND_CONFIG")]
    pub config: Option<PathBuf>,
    /// The new node's id; default as `serve`'s.
    #[arg(long, env = "SESSIOND_NODE_ID")]
    pub node_id: Option<u64>,
    /// The address other nodes will reach the new node's peer listener at; default as
    /// `serve`'s (its peer listen address).
    #[arg(long, env = "SESSIOND_PEER_ADVERTISE")]
    pub peer_advertise: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The path of the file a backup is written to until it is complete.
fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// Runs `sessiond backup`.
pub async fn run_backup(target: &Target, args: BackupArgs) -> anyhow::Result<()> {
    let partial = partial_path(&args.out);
    let received = receive(target, &args, &partial).await;
    let (info, summary) = match received {
        Ok(done) => done,
        Err(e) => {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(e);
        }
    };
    tokio::fs::rename(&partial, &args.out)
        .await
        .with_context(|| format!("cannot rename the backup to {}", args.out.display()))?;
    let dir = args
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    tokio::task::spawn_blocking(move || sync_dir(&dir)).await??;
    if target.json {
        println!(
            "{}",
            json!({
                "file": args.out.display().to_string(),
                "node_id": info.node_id,
                "snapshot_id": summary.snapshot_id,
                "bytes": summary.bytes,
                "entries": summary.entries,
                "sessions": summary.sessions,
                "last_index": summary.last_index,
            })
        );
    } else {
        println!(
            "backup of node {} written to {}: {} bytes, {} sessions ({} entries), last index {}",
            info.node_id,
            args.out.display(),
            summary.bytes,
            summary.sessions,
            summary.entries,
            summary.last_index
        );
    }
    Ok(())
}

/// Streams the backup into `partial`, syncs it and checks it from end to end.
async fn receive(
    target: &Target,
    args: &BackupArgs,
    partial: &Path,
) -> anyhow::Result<(BackupInfo, BackupSummary)> {
    let mut client = ClusterClient::new(connect_any(target).await?);
    let mut stream = client
        .backup(BackupRequest {
            fresh: !args.existing,
        })
        .await?
        .into_inner();
    let info = match stream.message().await?.and_then(|c| c.kind) {
        Some(backup_chunk::Kind::Info(info)) => info,
        _ => bail!("the node did not describe the backup first"),
    };
    let mut file = tokio::fs::File::create(partial)
        .await
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let mut written = 0u64;
    while let Some(chunk) = stream.message().await? {
        match chunk.kind {
            Some(backup_chunk::Kind::Data(data)) => {
                written += data.len() as u64;
                if written > info.total_bytes {
                    bail!(
                        "the node sent more than the {} bytes announced",
                        info.total_bytes
                    );
                }
                file.write_all(&data).await?;
            }
            _ => bail!("unexpected message in the backup stream"),
        }
    }
    if written != info.total_bytes {
        bail!(
            "the backup stream ended after {written} of {} bytes",
            info.total_bytes
        );
    }
    file.flush().await?;
    file.sync_all().await?;
    drop(file);
    let path = partial.to_path_buf();
    let summary = tokio::task::spawn_blocking(move || backup::verify(&path))
        .await?
        .context("the backup is damaged")?;
    if summary.last_index != info.last_index || summary.bytes != info.total_bytes {
        bail!("the backup does not match what the node announced");
    }
    Ok((info, summary))
}

/// Runs `sessiond restore`.
pub async fn run_restore(args: RestoreArgs) -> anyhow::Result<()> {
    let config = ServeArgs {
        config: args.config.clone(),
        data_dir: args.data_dir.clone(),
        node_id: args.node_id,
        peer_advertise: args.peer_advertise.clone(),
        ..Default::default()
    }
    .to_config()?;
    let peer_addr = match &config.peer_advertise_addr {
        Some(addr) => addr.clone(),
        None if config.peer_listen_addr().port() != 0 => config.peer_listen_addr().to_string(),
        None => {
            return Err(crate::Error::invalid(
                "peer_advertise",
                "required when the peer listener takes any free port",
            )
            .into())
        }
    };
    let restored = backup::restore(
        &args.from,
        &config.data_dir,
        config.node_id,
        &peer_addr,
        config.storage.sled_options(),
    )
    .await?;
    let b = &restored.backup;
    if args.json {
        println!(
            "{}",
            json!({
                "data_dir": config.data_dir.display().to_string(),
                "node_id": config.node_id,
                "peer_addr": peer_addr,
                "snapshot_id": b.snapshot_id,
                "sessions": b.sessions,
                "entries": b.entries,
                "backup_last_index": b.last_index,
                "applied_index": restored.applied_index,
            })
        );
    } else {
        println!(
            "restored {} sessions ({} entries, backup index {}) into {} as node {} at {}; \
             revisions continue after {}; serve it with the same node id and data directory, \
             then grow it with cluster add-learner",
            b.sessions,
            b.entries,
            b.last_index,
            config.data_dir.display(),
            config.node_id,
            peer_addr,
            restored.applied_index
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_is_written_next_to_its_target_until_complete() {
        assert_eq!(
            partial_path(Path::new("/b/x.snap")),
            PathBuf::from("/b/x.snap.partial")
        );
    }
}
