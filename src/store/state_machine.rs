//! The replicated state machine on sled: the domain core applied to the `state` tree.
//!
//! One `apply` call (a batch of committed entries) runs the domain over an [`Overlay`] of
//! pending writes and commits them, with the last applied log id and membership, as one
//! atomic sled batch. It is not flushed by itself: the log entries it applied are durable,
//! and sled recovers a consistent prefix of its writes, so a crash replays from the last
//! applied id. Store metadata lives under keys starting with `0x00`, which the domain never
//! writes. Snapshots are a copy of the whole tree taken under the commit lock (a consistent
//! view), written to `snapshots/current.snap` atomically.

// openraft's storage and RPC error types are large by design, and they are what its traits
// return; boxing them here would only add conversions.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::io::{self, Cursor, Write};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    AnyError, BasicNode, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, StorageError,
    StorageIOError, StoredMembership,
};
use prost::Message;
use tokio::sync::broadcast;

use super::codec::{self, Entry};
use crate::domain::{self, StateEntry, StateError, StateRead, StateWrite};
use crate::proto::internal::{
    command_result, CommandResult, Empty, LogIdRecord, RevocationEvent, SnapshotRecord,
    StateEntry as EntryRecord, StoredMembershipRecord,
};
use crate::proto::SCHEMA_VERSION;
use crate::raft::TypeConfig;

const APPLIED: &[u8] = &[0, b'a'];
const MEMBERSHIP: &[u8] = &[0, b'm'];
const SNAPSHOT_FILE: &str = "current.snap";

/// Pending writes over the state tree: reads see them, nothing reaches the tree until
/// [`StateMachine`] commits them as one batch.
pub struct Overlay<'t> {
    tree: &'t sled::Tree,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'t> Overlay<'t> {
    /// An empty overlay over `tree`.
    pub fn new(tree: &'t sled::Tree) -> Self {
        Overlay {
            tree,
            writes: BTreeMap::new(),
        }
    }

    fn into_batch(self) -> sled::Batch {
        let mut batch = sled::Batch::default();
        for (key, value) in self.writes {
            match value {
                Some(v) => batch.insert(key, v),
                None => batch.remove(key),
            }
        }
        batch
    }
}

fn store_err(e: sled::Error) -> StateError {
    StateError::Store(e.to_string())
}

impl StateRead for Overlay<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        match self.writes.get(key) {
            Some(pending) => Ok(pending.clone()),
            None => Ok(self.tree.get(key).map_err(store_err)?.map(|v| v.to_vec())),
        }
    }

    fn scan_prefix(
        &self,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<StateEntry>, StateError> {
        let lower = match start_after {
            Some(after) if after >= prefix => Bound::Excluded(after.to_vec()),
            _ => Bound::Included(prefix.to_vec()),
        };
        let range = (lower, Bound::Unbounded);
        let mut stored = self
            .tree
            .range::<Vec<u8>, _>(range.clone())
            .map(|item| item.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .take_while(|item| item.as_ref().map_or(true, |(k, _)| k.starts_with(prefix)))
            .peekable();
        let mut pending = self
            .writes
            .range(range)
            .take_while(|(k, _)| k.starts_with(prefix))
            .peekable();
        let mut out = Vec::new();
        while out.len() < limit {
            let stored_key = match stored.peek() {
                Some(Ok((k, _))) => Some(k.clone()),
                Some(Err(_)) => {
                    let Some(Err(e)) = stored.next() else {
                        unreachable!("peeked an error")
                    };
                    return Err(store_err(e));
                }
                None => None,
            };
            let take_pending = match (&stored_key, pending.peek()) {
                (None, None) => break,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some(s), Some((p, _))) => {
                    if *p == s {
                        stored.next();
                    }
                    p.as_slice() <= s.as_slice()
                }
            };
            if take_pending {
                if let Some((k, Some(v))) = pending.next() {
                    out.push((k.clone(), v.clone()));
                }
            } else if let Some(Ok(entry)) = stored.next() {
                out.push(entry);
            }
        }
        Ok(out)
    }
}

impl StateWrite for Overlay<'_> {
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert(key, Some(value));
    }

    fn delete(&mut self, key: &[u8]) {
        self.writes.insert(key.to_vec(), None);
    }
}

/// The revocations one applied command caused, as published to stream subscribers.
#[derive(Debug)]
pub struct AppliedRevocations {
    /// The command's log index.
    pub revision: u64,
    /// Its revocation events, in order.
    pub events: Vec<RevocationEvent>,
}

/// Revisions with revocations a subscriber may fall behind by before it is cut off.
const PUBLISHED_BACKLOG: usize = 4096;

/// Read access to the applied state, for queries, and the feed of applied revocations;
/// cheap to share.
#[derive(Clone)]
pub struct StateReader {
    tree: sled::Tree,
    applied: Arc<AtomicU64>,
    revocations: broadcast::Sender<Arc<AppliedRevocations>>,
}

impl StateReader {
    /// The log index of the last applied entry (0 before any). Revocations up to it have
    /// been published (they are published before the index moves).
    pub fn applied_index(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// Every revocation applied from now on, in revision order. The feed is bounded: a
    /// receiver more than a few thousand revisions behind gets `Lagged`.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<AppliedRevocations>> {
        self.revocations.subscribe()
    }
}

impl StateRead for StateReader {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        Overlay::new(&self.tree).get(key)
    }

    fn scan_prefix(
        &self,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<StateEntry>, StateError> {
        Overlay::new(&self.tree).scan_prefix(prefix, start_after, limit)
    }
}

/// The state machine storage handed to openraft.
pub struct StateMachine {
    shared: Arc<Shared>,
}

struct Shared {
    db: sled::Db,
    tree: sled::Tree,
    applied: Arc<AtomicU64>,
    revocations: broadcast::Sender<Arc<AppliedRevocations>>,
    /// Held while a batch is committed or the tree is copied for a snapshot.
    commit: Mutex<()>,
    snapshot_dir: PathBuf,
    snapshots_built: AtomicU64,
}

fn sm_read_err(e: impl ToString) -> StorageError<u64> {
    StorageIOError::read_state_machine(AnyError::error(e)).into()
}

fn sm_write_err(e: impl ToString) -> StorageError<u64> {
    StorageIOError::write_state_machine(AnyError::error(e)).into()
}

fn snapshot_err(e: impl ToString) -> StorageError<u64> {
    StorageIOError::write_snapshot(None, AnyError::error(e)).into()
}

fn none_result() -> CommandResult {
    CommandResult {
        schema_version: SCHEMA_VERSION,
        kind: Some(command_result::Kind::None(Empty {})),
        ..Default::default()
    }
}

impl StateMachine {
    /// The state machine over `db`'s `state` tree, with snapshots under `snapshot_dir`.
    pub fn open(db: &sled::Db, snapshot_dir: &Path) -> Result<Self, StorageError<u64>> {
        std::fs::create_dir_all(snapshot_dir).map_err(snapshot_err)?;
        let tree = db.open_tree("state").map_err(sm_read_err)?;
        let machine = StateMachine {
            shared: Arc::new(Shared {
                db: db.clone(),
                tree,
                applied: Arc::new(AtomicU64::new(0)),
                revocations: broadcast::channel(PUBLISHED_BACKLOG).0,
                commit: Mutex::new(()),
                snapshot_dir: snapshot_dir.to_path_buf(),
                snapshots_built: AtomicU64::new(0),
            }),
        };
        let (applied, _) = machine.shared.read_applied()?;
        machine
            .shared
            .applied
            .store(applied.map_or(0, |id| id.index), Ordering::Release);
        Ok(machine)
    }

    /// A reader of the applied state.
    pub fn reader(&self) -> StateReader {
        StateReader {
            tree: self.shared.tree.clone(),
            applied: self.shared.applied.clone(),
            revocations: self.shared.revocations.clone(),
        }
    }
}

type AppliedState = (Option<LogId<u64>>, StoredMembership<u64, BasicNode>);

impl Shared {
    fn read_applied(&self) -> Result<AppliedState, StorageError<u64>> {
        let applied = match self.tree.get(APPLIED).map_err(sm_read_err)? {
            None => None,
            Some(b) => Some(codec::log_id(
                &codec::decode::<LogIdRecord>("applied log id", &b).map_err(sm_read_err)?,
            )),
        };
        let membership = match self.tree.get(MEMBERSHIP).map_err(sm_read_err)? {
            None => StoredMembership::default(),
            Some(b) => codec::stored_membership(
                &codec::decode::<StoredMembershipRecord>("membership", &b).map_err(sm_read_err)?,
            ),
        };
        Ok((applied, membership))
    }

    fn snapshot_path(&self) -> PathBuf {
        self.snapshot_dir.join(SNAPSHOT_FILE)
    }

    /// Writes the snapshot file atomically: a temporary file, synced, renamed over the
    /// current one, and the directory synced.
    fn save_snapshot_file(&self, bytes: &[u8]) -> io::Result<()> {
        let tmp = self.snapshot_dir.join(format!("{SNAPSHOT_FILE}.tmp"));
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, self.snapshot_path())?;
        std::fs::File::open(&self.snapshot_dir)?.sync_all()
    }

    /// Copies the whole state under the commit lock, so no batch is half in it.
    fn copy_state(&self) -> Result<SnapshotRecord, StorageError<u64>> {
        let _commit = self.commit.lock().map_err(sm_read_err)?;
        let (applied, membership) = self.read_applied()?;
        let mut entries = Vec::new();
        for item in self.tree.iter() {
            let (key, value) = item.map_err(sm_read_err)?;
            if key.first() != Some(&0) {
                entries.push(EntryRecord {
                    key: key.to_vec(),
                    value: value.to_vec(),
                });
            }
        }
        Ok(SnapshotRecord {
            schema_version: SCHEMA_VERSION,
            last_log_id: applied.as_ref().map(codec::log_id_record),
            last_membership: Some(codec::stored_membership_record(&membership)),
            snapshot_id: String::new(),
            entries,
        })
    }

    fn build_snapshot(&self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let mut record = self.copy_state()?;
        let built = self.snapshots_built.fetch_add(1, Ordering::Relaxed) + 1;
        let last = record.last_log_id.unwrap_or_default();
        record.snapshot_id = format!("{}-{}-{}", last.term, last.index, built);
        let bytes = record.encode_to_vec();
        self.save_snapshot_file(&bytes).map_err(snapshot_err)?;
        Ok(Snapshot {
            meta: snapshot_meta(&record),
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }

    /// Replaces the whole state with a snapshot's contents, durably.
    ///
    /// The work is split into batches of [`INSTALL_BATCH`] keys (one sled batch of millions
    /// of keys needs many times the snapshot's size in memory). The applied log id is
    /// removed and flushed first and written last, so a crash part-way leaves a state that
    /// claims nothing applied and is replaced by the next snapshot the leader sends.
    fn install(&self, record: &SnapshotRecord, bytes: &[u8]) -> Result<(), StorageError<u64>> {
        {
            let _commit = self.commit.lock().map_err(sm_write_err)?;
            let mut forget = sled::Batch::default();
            forget.remove(APPLIED);
            forget.remove(MEMBERSHIP);
            self.tree.apply_batch(forget).map_err(sm_write_err)?;
            self.db.flush().map_err(sm_write_err)?;
            let mut batch = ChunkedBatch::new(&self.tree);
            for key in self.tree.iter().keys() {
                batch.remove(key.map_err(sm_read_err)?)?;
            }
            for entry in &record.entries {
                batch.insert(entry.key.as_slice(), entry.value.as_slice())?;
            }
            batch.finish()?;
            let mut applied = sled::Batch::default();
            if let Some(id) = &record.last_log_id {
                applied.insert(APPLIED, id.encode_to_vec());
            }
            if let Some(m) = record
                .last_membership
                .as_ref()
                .filter(|m| m.log_id.is_some())
            {
                applied.insert(MEMBERSHIP, m.encode_to_vec());
            }
            self.tree.apply_batch(applied).map_err(sm_write_err)?;
            self.applied.store(
                record.last_log_id.as_ref().map_or(0, |id| id.index),
                Ordering::Release,
            );
        }
        self.db.flush().map_err(sm_write_err)?;
        self.save_snapshot_file(bytes).map_err(snapshot_err)
    }
}

/// Keys written per sled batch while installing a snapshot.
pub(crate) const INSTALL_BATCH: usize = 10_000;

/// Writes to a tree in sled batches of at most [`INSTALL_BATCH`] operations.
struct ChunkedBatch<'a> {
    tree: &'a sled::Tree,
    batch: sled::Batch,
    pending: usize,
}

impl<'a> ChunkedBatch<'a> {
    fn new(tree: &'a sled::Tree) -> Self {
        ChunkedBatch {
            tree,
            batch: sled::Batch::default(),
            pending: 0,
        }
    }

    fn insert(&mut self, key: &[u8], value: &[u8]) -> Result<(), StorageError<u64>> {
        self.batch.insert(key, value);
        self.written()
    }

    fn remove(&mut self, key: sled::IVec) -> Result<(), StorageError<u64>> {
        self.batch.remove(key);
        self.written()
    }

    fn written(&mut self) -> Result<(), StorageError<u64>> {
        self.pending += 1;
        if self.pending >= INSTALL_BATCH {
            self.finish()?;
        }
        Ok(())
    }

    /// Applies what is pending.
    fn finish(&mut self) -> Result<(), StorageError<u64>> {
        let batch = std::mem::take(&mut self.batch);
        self.pending = 0;
        self.tree.apply_batch(batch).map_err(sm_write_err)
    }
}

fn snapshot_meta(record: &SnapshotRecord) -> SnapshotMeta<u64, BasicNode> {
    SnapshotMeta {
        last_log_id: codec::optional_log_id(record.last_log_id.as_ref()),
        last_membership: record
            .last_membership
            .as_ref()
            .map(codec::stored_membership)
            .unwrap_or_default(),
        snapshot_id: record.snapshot_id.clone(),
    }
}

/// Builds snapshots off the apply path (in a blocking thread).
pub struct SnapshotBuilder {
    shared: Arc<Shared>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || shared.build_snapshot())
            .await
            .map_err(snapshot_err)?
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<AppliedState, StorageError<u64>> {
        self.shared.read_applied()
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let shared = &self.shared;
        let mut overlay = Overlay::new(&shared.tree);
        let mut results = Vec::new();
        let mut last_applied = None;
        let mut membership = None;
        let mut published = Vec::new();
        for entry in entries {
            last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => results.push(none_result()),
                EntryPayload::Normal(command) => {
                    let result = domain::apply(&command, entry.log_id.index, &mut overlay)
                        .map_err(|e| {
                            StorageError::from(StorageIOError::apply(
                                entry.log_id,
                                AnyError::error(e),
                            ))
                        })?;
                    if !result.events.is_empty() {
                        published.push(Arc::new(AppliedRevocations {
                            revision: entry.log_id.index,
                            events: result.events.clone(),
                        }));
                    }
                    results.push(result);
                }
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMembership::new(Some(entry.log_id), m));
                    results.push(none_result());
                }
            }
        }
        let Some(last_applied) = last_applied else {
            return Ok(results);
        };
        let mut batch = overlay.into_batch();
        batch.insert(APPLIED, codec::log_id_record(&last_applied).encode_to_vec());
        if let Some(m) = &membership {
            batch.insert(
                MEMBERSHIP,
                codec::stored_membership_record(m).encode_to_vec(),
            );
        }
        let _commit = shared.commit.lock().map_err(sm_write_err)?;
        shared.tree.apply_batch(batch).map_err(sm_write_err)?;
        for revocations in published {
            let _ = shared.revocations.send(revocations);
        }
        shared.applied.store(last_applied.index, Ordering::Release);
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            shared: self.shared.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let bytes = snapshot.into_inner();
        let record: SnapshotRecord = codec::decode("snapshot", &bytes).map_err(sm_read_err)?;
        if record.last_log_id.as_ref().map(codec::log_id) != meta.last_log_id {
            return Err(sm_read_err("snapshot contents do not match its metadata"));
        }
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || shared.install(&record, &bytes))
            .await
            .map_err(sm_write_err)?
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        let bytes = match std::fs::read(self.shared.snapshot_path()) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(sm_read_err(e)),
        };
        let record: SnapshotRecord = codec::decode("snapshot", &bytes).map_err(sm_read_err)?;
        Ok(Some(Snapshot {
            meta: snapshot_meta(&record),
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::MemoryState;

    /// The overlay must read exactly like the tree with its pending writes applied.
    #[test]
    fn overlay_scans_merge_pending_writes_with_the_tree() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("state").unwrap();
        let mut model = MemoryState::new();
        for k in ["a/1", "a/3", "a/5", "a/7", "b/1"] {
            tree.insert(k, k.as_bytes()).unwrap();
            model.put(k.as_bytes().to_vec(), k.as_bytes().to_vec());
        }
        let mut overlay = Overlay::new(&tree);
        for (k, v) in [
            ("a/2", "new"),
            ("a/3", "changed"),
            ("a/9", "new"),
            ("a", "x"),
        ] {
            overlay.put(k.as_bytes().to_vec(), v.as_bytes().to_vec());
            model.put(k.as_bytes().to_vec(), v.as_bytes().to_vec());
        }
        for k in ["a/5", "a/9", "b/1"] {
            overlay.delete(k.as_bytes());
            model.delete(k.as_bytes());
        }
        for prefix in [&b""[..], b"a", b"a/", b"b", b"c"] {
            for after in [
                None,
                Some(&b"a/2"[..]),
                Some(b"a/3"),
                Some(b"a/6"),
                Some(b"z"),
            ] {
                for limit in [0, 1, 2, 3, 100] {
                    assert_eq!(
                        overlay.scan_prefix(prefix, after, limit).unwrap(),
                        model.scan_prefix(prefix, after, limit).unwrap(),
                        "prefix {prefix:?} after {after:?} limit {limit}"
                    );
                }
            }
        }
        assert_eq!(overlay.get(b"a/3").unwrap(), Some(b"changed".to_vec()));
        assert_eq!(overlay.get(b"a/5").unwrap(), None);
        assert_eq!(overlay.get(b"a/7").unwrap(), Some(b"a/7".to_vec()));
    }
}
