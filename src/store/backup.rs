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
use super::{codec, SledOptions, Store, SNAPSHOT_DIR};
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
    sled: SledOptions,
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
    let mut store = Store::open(data_dir, sled)?;
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

#[cfg(test)]
mod tests {
    use openraft::storage::RaftStateMachine;

    use super::*;
    use crate::domain::StateRead;

    const TEST_SLED: SledOptions = SledOptions {
        cache_bytes: 8 * 1024 * 1024,
        compression: true,
    };

    /// A backup of an old three-node cluster at term 4, index 900: sessions, two retained
    /// events, the compaction watermark at 100, and an unrelated counter.
    fn write_backup(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
        let old_members = StoredMembership::new(
            Some(codec::log_id(&LogIdRecord {
                term: 2,
                node_id: 1,
                index: 10,
            })),
            Membership::new(
                vec![BTreeSet::from([1, 2, 3])],
                BTreeMap::from([
                    (1, BasicNode::new("old-1:1")),
                    (2, BasicNode::new("old-2:1")),
                    (3, BasicNode::new("old-3:1")),
                ]),
            ),
        );
        let header = SnapshotRecord {
            schema_version: SCHEMA_VERSION,
            last_log_id: Some(LogIdRecord {
                term: 4,
                node_id: 2,
                index: 900,
            }),
            last_membership: Some(codec::stored_membership_record(&old_members)),
            snapshot_id: "4-900-1".into(),
            entries: Vec::new(),
        };
        let mut entries = vec![events::compaction_watermark(100)];
        entries.push((b"K".to_vec(), 7u64.to_be_bytes().to_vec()));
        entries.push((b"e-event-1".to_vec(), b"x".to_vec()));
        entries.push((b"e-event-2".to_vec(), b"y".to_vec()));
        for i in 0..25 {
            entries.push((format!("s-session-{i:04}").into_bytes(), vec![1]));
        }
        entries.sort();
        let mut writer = SnapshotWriter::create(path, &header).unwrap();
        for (key, value) in &entries {
            writer.push(key, value).unwrap();
        }
        writer.finish().unwrap();
        entries
    }

    async fn open_when_unlocked(dir: &Path) -> Store {
        for _ in 0..300 {
            if let Ok(store) = Store::open(dir, TEST_SLED) {
                return store;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the restored store stayed locked");
    }

    /// The restored node is the only member, holds every entry but the old event history,
    /// has a watermark at its new start, an empty log and a vote at the backup's term.
    #[tokio::test]
    async fn a_restore_keeps_the_state_but_not_membership_log_or_event_history() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("backup");
        let written = write_backup(&file);
        let summary = verify(&file).unwrap();
        assert_eq!(summary.entries, written.len() as u64);
        assert_eq!(summary.sessions, 25);
        assert_eq!(summary.last_index, 900);

        let data = dir.path().join("new");
        let restored = restore(&file, &data, 7, "new-7:50052", TEST_SLED)
            .await
            .unwrap();
        let start = 900 + REVISION_GAP;
        assert_eq!(restored.applied_index, start);
        assert_eq!(restored.backup, summary);

        let mut store = open_when_unlocked(&data).await;
        let (applied, membership) = store.state_machine.applied_state().await.unwrap();
        assert_eq!(
            applied.map(|id| (id.leader_id.term, id.index)),
            Some((4, start))
        );
        let members = membership.membership();
        assert_eq!(members.voter_ids().collect::<Vec<_>>(), vec![7]);
        assert_eq!(members.get_node(&7).unwrap().addr, "new-7:50052");
        assert_eq!(members.nodes().count(), 1);
        assert_eq!(store.log.read_vote().await.unwrap(), Some(Vote::new(4, 7)));
        let log = store.log.get_log_state().await.unwrap();
        assert!(log.last_log_id.is_none() || log.last_log_id == applied);

        let state = store
            .state_machine
            .reader()
            .scan_prefix(b"", None, usize::MAX)
            .unwrap();
        let kept: Vec<_> = written
            .iter()
            .filter(|(k, _)| !events::is_history_key(k))
            .cloned()
            .collect();
        let (watermark, rest): (Vec<_>, Vec<_>) = state
            .into_iter()
            .filter(|(k, _)| k[0] != 0)
            .partition(|(k, _)| events::is_history_key(k));
        assert_eq!(watermark, vec![events::compaction_watermark(start)]);
        assert_eq!(rest, kept);
    }

    /// A backup written before snapshots were compressed (format 2, kept as a fixture: the
    /// same contents as [`write_backup`]) is verified and restored like a new one, into a
    /// snapshot in the current format.
    #[tokio::test]
    async fn a_backup_in_the_uncompressed_format_is_verified_and_restored() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_backup(&dir.path().join("backup"));
        let old =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/snapshot-v2/backup.snap");
        let summary = verify(&old).unwrap();
        assert_eq!(summary.entries, written.len() as u64);
        assert_eq!(summary.sessions, 25);
        assert_eq!(summary.last_index, 900);

        let data = dir.path().join("new");
        let restored = restore(&old, &data, 7, "new-7:50052", TEST_SLED)
            .await
            .unwrap();
        assert_eq!(restored.applied_index, 900 + REVISION_GAP);
        let current = data.join(SNAPSHOT_DIR).join(SNAPSHOT_FILE);
        let mut magic = [0u8; 8];
        std::io::Read::read_exact(&mut std::fs::File::open(&current).unwrap(), &mut magic).unwrap();
        assert_eq!(&magic, super::super::snapshot::MAGIC);
        let store = open_when_unlocked(&data).await;
        let state = store
            .state_machine
            .reader()
            .scan_prefix(b"s", None, usize::MAX)
            .unwrap();
        let sessions: Vec<_> = written.into_iter().filter(|(k, _)| k[0] == b's').collect();
        assert_eq!(state, sessions);
    }

    /// A damaged backup, or a directory that is not empty, is refused and changes nothing.
    #[tokio::test]
    async fn a_damaged_backup_or_a_used_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("backup");
        write_backup(&file);
        let mut bytes = std::fs::read(&file).unwrap();
        let at = bytes.len() - 20;
        bytes[at] ^= 1;
        let damaged = dir.path().join("damaged");
        std::fs::write(&damaged, &bytes).unwrap();
        assert!(verify(&damaged).is_err());
        let data = dir.path().join("new");
        let refused = restore(&damaged, &data, 1, "a:1", TEST_SLED).await;
        assert!(matches!(
            refused,
            Err(Error::InvalidArgument { field: "from", .. })
        ));
        assert_eq!(std::fs::read_dir(&data).unwrap().count(), 0);

        std::fs::write(data.join("something"), b"x").unwrap();
        let refused = restore(&file, &data, 1, "a:1", TEST_SLED).await;
        assert!(matches!(
            refused,
            Err(Error::InvalidArgument {
                field: "data_dir",
                ..
            })
        ));
        assert_eq!(std::fs::read_dir(&data).unwrap().count(), 1);
    }
}
