//! Backups and restores. A backup is a node's snapshot file ([`super::snapshot`]): a
//! point-in-time copy of the applied state with its own count and CRC-32. [`open_current`]
//! opens a node's current snapshot to stream it, [`verify`] checks a copy from end to end,
//! and [`restore`] makes a backup the data directory of a new one-node cluster:
//!
//! - the new node is the cluster's only member and voter (the backup's membership is
//!   dropped: the old nodes are not part of the new cluster);
//! - its Raft log is empty and its vote is fresh, at the backup's term, so that its first
//!   election starts a newer term than every log id it holds;
//! - its revisions continue at the backup's last index plus [`REVISION_GAP`], far past any
//!   revision the old cluster can have reached, and the old cluster's retained events are
//!   dropped with the compaction watermark set to the new start: a gateway that resumes from
//!   any position of the old cluster gets RESYNC_REQUIRED and rebuilds from ListRevoked,
//!   rather than skipping the new cluster's events or keeping revocations the restore
//!   rolled back.
//!
//! The state is installed by the store's own machinery: the rewritten file is put in place
//! as the node's current snapshot, and opening the store installs it into a fresh
//! generation (as after a crash that interrupted an install).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Seek};
use std::path::Path;

use openraft::storage::RaftLogStorage;
use openraft::{BasicNode, Membership, StoredMembership, Vote};

use super::snapshot::{sync_dir, SnapshotReader, SnapshotWriter};
use super::state_machine::SNAPSHOT_FILE;
use super::{codec, Store, SNAPSHOT_DIR};
use crate::domain::{events, query};
use crate::proto::internal::{LogIdRecord, SnapshotRecord};
use crate::proto::SCHEMA_VERSION;
use crate::Error;

/// How far a restored cluster's revisions jump past the backup's last index: more than a
/// cluster applying a million entries a second reaches in eight years.
pub const REVISION_GAP: u64 = 1 << 48;

/// The snapshot being rewritten by a restore, before it becomes the current one.
const RESTORING_FILE: &str = "restoring.snap.tmp";

/// What a backup file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSummary {
    /// The file's size.
    pub bytes: u64,
    /// Its entries (state keys).
    pub entries: u64,
    /// Its session records (live, revoked or expired but not yet collected).
    pub sessions: u64,
    /// The last log index (revision) it covers.
    pub last_index: u64,
    /// The snapshot's id.
    pub snapshot_id: String,
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// The current snapshot of the node whose data directory is `data_dir`, opened and
/// positioned at its start, with its header; `None` if the node has none yet. The open file
/// stays complete and unchanged while it is read, even if a newer snapshot replaces it.
pub fn open_current(data_dir: &Path) -> io::Result<Option<(std::fs::File, SnapshotRecord)>> {
    let path = data_dir.join(SNAPSHOT_DIR).join(SNAPSHOT_FILE);
    let mut file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let header = SnapshotReader::from_file(file.try_clone()?)?
        .header()
        .clone();
    file.seek(io::SeekFrom::Start(0))?;
    Ok(Some((file, header)))
}

/// Reads the backup at `path` from end to end, handing every entry to `each`: refuses a
/// file that is not a snapshot, was written by a newer schema, has no last log id, or whose
/// count or checksum does not match.
fn scan(
    path: &Path,
    mut each: impl FnMut(&[u8], &[u8]) -> io::Result<()>,
) -> io::Result<(SnapshotRecord, BackupSummary)> {
    let mut reader = SnapshotReader::open(path)?;
    let header = reader.header().clone();
    if header.schema_version > SCHEMA_VERSION {
        return Err(invalid(format!(
            "the backup's schema version {} is newer than this binary's {SCHEMA_VERSION}",
            header.schema_version
        )));
    }
    let last_index = header
        .last_log_id
        .as_ref()
        .map(|id| id.index)
        .ok_or_else(|| invalid("the backup covers no log entry"))?;
    let (mut entries, mut sessions) = (0, 0);
    while let Some((key, value)) = reader.next_entry()? {
        entries += 1;
        if query::is_session_key(&key) {
            sessions += 1;
        }
        each(&key, &value)?;
    }
    let summary = BackupSummary {
        bytes: std::fs::metadata(path)?.len(),
        entries,
        sessions,
        last_index,
        snapshot_id: header.snapshot_id.clone(),
    };
    Ok((header, summary))
}

/// Checks the backup at `path` from end to end (header, every entry, count and CRC-32).
pub fn verify(path: &Path) -> io::Result<BackupSummary> {
    scan(path, |_, _| Ok(())).map(|(_, summary)| summary)
}

/// A backup restored by [`restore`].
#[derive(Debug, Clone)]
pub struct Restored {
    /// What the backup held.
    pub backup: BackupSummary,
    /// The new cluster's applied index: its revisions continue after it.
    pub applied_index: u64,
}

/// Makes `data_dir` (absent or empty) the data directory of a new one-node cluster whose
/// only member is node `node_id`, reached by peers at `peer_addr`, holding the state of the
/// backup at `from`. Nothing is left in `data_dir` if the backup is refused. Must run inside
/// a tokio runtime.
pub async fn restore(
    from: &Path,
    data_dir: &Path,
    node_id: u64,
    peer_addr: &str,
    cache_bytes: u64,
) -> Result<Restored, Error> {
    let occupied = match std::fs::read_dir(data_dir) {
        Ok(mut entries) => entries.next().is_some(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(Error::invalid("data_dir", e.to_string())),
    };
    if occupied {
        return Err(Error::invalid(
            "data_dir",
            "is not empty: a restore creates a new node",
        ));
    }
    let snapshots = data_dir.join(SNAPSHOT_DIR);
    std::fs::create_dir_all(&snapshots).map_err(|e| Error::invalid("data_dir", e.to_string()))?;
    let (from_owned, snapshots_owned, addr) =
        (from.to_path_buf(), snapshots.clone(), peer_addr.to_owned());
    let rewritten =
        tokio::task::spawn_blocking(move || rewrite(&from_owned, &snapshots_owned, node_id, &addr))
            .await
            .map_err(|e| Error::Internal(format!("restore task failed: {e}")))?;
    let (backup, term) = match rewritten {
        Ok(done) => done,
        Err(e) => {
            let _ = remove_contents(data_dir);
            return Err(Error::invalid("from", e.to_string()));
        }
    };
    let mut store = Store::open(data_dir, cache_bytes)?;
    let applied_index = store.state_machine.reader().applied_index();
    if applied_index != backup.last_index + REVISION_GAP {
        return Err(Error::Internal(format!(
            "the restored state ends at {applied_index}, not at {}",
            backup.last_index + REVISION_GAP
        )));
    }
    store
        .log
        .save_vote(&Vote::new(term, node_id))
        .await
        .map_err(|e| Error::Unavailable(format!("cannot save the vote: {e}")))?;
    store.flusher.flush().await.map_err(Error::Unavailable)?;
    store
        .state_machine
        .reader()
        .flush()
        .await
        .map_err(Error::Unavailable)?;
    Ok(Restored {
        backup,
        applied_index,
    })
}

/// Writes the backup at `from` as the current snapshot in `snapshots`, with the new
/// cluster's membership and last log id, its retained events dropped and the compaction
/// watermark at its new start. Returns what the backup held and its last term.
fn rewrite(
    from: &Path,
    snapshots: &Path,
    node_id: u64,
    peer_addr: &str,
) -> io::Result<(BackupSummary, u64)> {
    let header = SnapshotReader::open(from)?.header().clone();
    let last = header
        .last_log_id
        .as_ref()
        .ok_or_else(|| invalid("the backup covers no log entry"))?;
    let index = last
        .index
        .checked_add(REVISION_GAP)
        .ok_or_else(|| invalid("the backup's last index is too large"))?;
    let log_id = LogIdRecord {
        term: last.term,
        node_id,
        index,
    };
    let membership = StoredMembership::new(
        Some(codec::log_id(&log_id)),
        Membership::new(
            vec![BTreeSet::from([node_id])],
            BTreeMap::from([(node_id, BasicNode::new(peer_addr))]),
        ),
    );
    let restored = SnapshotRecord {
        schema_version: SCHEMA_VERSION,
        last_log_id: Some(log_id),
        last_membership: Some(codec::stored_membership_record(&membership)),
        snapshot_id: format!("{}-{index}-restored", log_id.term),
        entries: Vec::new(),
    };
    let tmp = snapshots.join(RESTORING_FILE);
    let mut writer = SnapshotWriter::create(&tmp, &restored)?;
    let (watermark_key, watermark) = events::compaction_watermark(index);
    let mut watermark_written = false;
    let (_, summary) = scan(from, |key, value| {
        if events::is_history_key(key) {
            return Ok(());
        }
        if !watermark_written && key > watermark_key.as_slice() {
            writer.push(&watermark_key, &watermark)?;
            watermark_written = true;
        }
        writer.push(key, value)
    })?;
    if !watermark_written {
        writer.push(&watermark_key, &watermark)?;
    }
    writer.finish()?;
    std::fs::rename(&tmp, snapshots.join(SNAPSHOT_FILE))?;
    sync_dir(snapshots)?;
    Ok((summary, log_id.term))
}

/// Removes everything inside `dir` (a refused restore leaves it as it found it: empty).
fn remove_contents(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}
