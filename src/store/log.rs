//! The Raft log and vote on sled, with group commit.
//!
//! Appended entries are written to the `raft_log` tree (key: big-endian index) at once, so
//! they are readable when `append` returns; their durability callback goes to the
//! [`Flusher`], one background task that runs `Db::flush` in `spawn_blocking` and completes
//! every callback queued before that flush started. Under load, one flush covers many
//! appends; there is never more than one flush in flight. A vote is saved the same way, but
//! `save_vote` waits for its flush before returning.
//!
//! A purge records the new purge point at once and leaves the removal of the entries to a
//! background task ([`Purger`]) that deletes them one by one on a blocking thread:
//! removing the tens of thousands of entries behind a snapshot in one call stalled the Raft
//! core, and with it every write, for up to a second.

// openraft's storage and RPC error types are large by design, and they are what its traits
// return; boxing them here would only add conversions.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{AnyError, LogId, OptionalSend, StorageError, StorageIOError, Vote};
use prost::Message;
use tokio::sync::{mpsc, oneshot, watch};

use super::codec::{self, Entry};
use super::TypeConfig;
use crate::proto::internal::{LogIdRecord, VoteRecord};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const PURGED: &[u8] = b"purged";

/// Entries the purger removes between two checks of a newer purge point.
const PURGE_BATCH: usize = 1_024;

/// Something waiting for the next flush to complete.
enum FlushWaiter {
    /// openraft's callback for appended entries.
    Appended(LogFlushed<TypeConfig>),
    /// A caller awaiting durability (a saved vote).
    Notify(oneshot::Sender<Result<(), String>>),
}

/// The handle to the single background flusher of a database.
#[derive(Clone)]
pub struct Flusher {
    queue: mpsc::UnboundedSender<FlushWaiter>,
}

impl Flusher {
    /// Starts the flusher task of `db` on the current tokio runtime. It stops when every
    /// handle is dropped.
    pub fn start(db: sled::Db) -> Self {
        let (queue, mut waiting) = mpsc::unbounded_channel::<FlushWaiter>();
        tokio::spawn(async move {
            while let Some(first) = waiting.recv().await {
                let mut batch = vec![first];
                while let Ok(next) = waiting.try_recv() {
                    batch.push(next);
                }
                let db = db.clone();
                let started = std::time::Instant::now();
                let flushed = tokio::task::spawn_blocking(move || db.flush())
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map(|_| ()).map_err(|e| e.to_string()));
                let took = started.elapsed();
                if took > super::SLOW_STORAGE {
                    tracing::warn!(
                        took_ms = took.as_millis() as u64,
                        waiting = batch.len(),
                        "log flush took too long"
                    );
                }
                for waiter in batch {
                    match waiter {
                        FlushWaiter::Appended(callback) => {
                            callback.log_io_completed(flushed.clone().map_err(io::Error::other))
                        }
                        FlushWaiter::Notify(done) => {
                            let _ = done.send(flushed.clone());
                        }
                    }
                }
            }
        });
        Flusher { queue }
    }

    /// Waits until everything written to the database so far is on disk.
    pub async fn flush(&self) -> Result<(), String> {
        let (done, flushed) = oneshot::channel();
        self.queue
            .send(FlushWaiter::Notify(done))
            .map_err(|_| "flusher stopped".to_owned())?;
        flushed.await.map_err(|_| "flusher stopped".to_owned())?
    }

    fn after_next_flush(&self, callback: LogFlushed<TypeConfig>) {
        if let Err(mpsc::error::SendError(FlushWaiter::Appended(callback))) =
            self.queue.send(FlushWaiter::Appended(callback))
        {
            callback.log_io_completed(Err(io::Error::other("flusher stopped")));
        }
    }
}

/// The Raft log storage: entries, vote, committed and purged log ids.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

struct Inner {
    log: sled::Tree,
    meta: sled::Tree,
    flusher: Flusher,
    purger: Purger,
    /// The lowest index not purged: entries below it may still be on disk, awaiting the
    /// purger, but are never read.
    first_kept: AtomicU64,
    /// The bytes of entries counted by [`LogStore::bytes_between`] so far.
    counted: Mutex<CountedBytes>,
}

/// The encoded bytes of the entries after index `after` through index `through`.
#[derive(Debug, Default, Clone, Copy)]
struct CountedBytes {
    after: u64,
    through: u64,
    bytes: u64,
}

/// The handle to the background task that removes purged entries.
struct Purger {
    /// The highest index to remove (`None`: nothing yet).
    up_to: watch::Sender<Option<u64>>,
}

impl Purger {
    /// Starts the purge task of `log` on the current tokio runtime; it stops when the handle
    /// is dropped.
    fn start(log: sled::Tree) -> Self {
        let (up_to, mut requested) = watch::channel(None);
        tokio::spawn(async move {
            while requested.changed().await.is_ok() {
                let Some(target) = *requested.borrow_and_update() else {
                    continue;
                };
                let log = log.clone();
                let removed = tokio::task::spawn_blocking(move || remove_up_to(&log, target)).await;
                if let Ok(Err(e)) = removed {
                    tracing::warn!(error = %e, "purged log entries not removed; retried at the next purge");
                }
            }
        });
        Purger { up_to }
    }

    /// Asks for every entry up to `index` (inclusive) to be removed.
    fn purge(&self, index: u64) {
        self.up_to.send_if_modified(|current| {
            let newer = current.is_none_or(|c| index > c);
            if newer {
                *current = Some(index);
            }
            newer
        });
    }
}

/// Removes every entry of `log` up to `index`, one by one: a sled batch would take sled
/// 0.34's process-wide lock, which every read and write of the node waits behind, and a
/// purge needs no atomicity (the entries are already hidden).
fn remove_up_to(log: &sled::Tree, index: u64) -> Result<(), sled::Error> {
    loop {
        let keys: Vec<sled::IVec> = log
            .range(..=index_key(index))
            .keys()
            .take(PURGE_BATCH)
            .collect::<Result<_, _>>()?;
        if keys.is_empty() {
            return Ok(());
        }
        for key in keys {
            log.remove(key)?;
        }
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// The index an entry's key names (0 for a key that is not 8 bytes, which the log never
/// writes).
fn key_index(key: &[u8]) -> u64 {
    key.try_into().map_or(0, u64::from_be_bytes)
}

fn read_err(e: impl ToString) -> StorageError<u64> {
    StorageIOError::read_logs(AnyError::error(e)).into()
}

fn write_err(e: impl ToString) -> StorageError<u64> {
    StorageIOError::write_logs(AnyError::error(e)).into()
}

impl LogStore {
    /// The log store over `db`'s `raft_log` and `raft_meta` trees. Must run inside a tokio
    /// runtime (it starts the purge task, and removes what a crash left behind a purge).
    pub fn open(db: &sled::Db, flusher: Flusher) -> Result<Self, sled::Error> {
        let log = db.open_tree("raft_log")?;
        let store = LogStore {
            inner: Arc::new(Inner {
                purger: Purger::start(log.clone()),
                log,
                meta: db.open_tree("raft_meta")?,
                flusher,
                first_kept: AtomicU64::new(0),
                counted: Mutex::new(CountedBytes::default()),
            }),
        };
        if let Some(purged) = store.read_log_id(PURGED).ok().flatten() {
            store.forget_up_to(purged.index);
        }
        Ok(store)
    }

    /// The encoded bytes of the stored entries after index `after` (a snapshot's last index,
    /// so none of them is purged) through index `through`, or `None` while more than
    /// `max_entries` of them remain to be read: each call reads at most that many, and
    /// calls with the same `after` go on from where the last one stopped, so the snapshot
    /// schedule, asking as entries are applied, reads each entry about once per snapshot
    /// and the backlog of a restart a slice at a time. Blocks (reads the log database).
    pub fn bytes_between(
        &self,
        after: u64,
        through: u64,
        max_entries: usize,
    ) -> Result<Option<u64>, sled::Error> {
        let mut counted = self.inner.counted.lock().unwrap_or_else(|e| e.into_inner());
        if counted.after != after || through < counted.through {
            *counted = CountedBytes {
                after,
                through: after,
                bytes: 0,
            };
        }
        if through > counted.through {
            let range = index_key(counted.through + 1)..=index_key(through);
            let mut read = 0;
            for item in self.inner.log.range(range).take(max_entries) {
                let (key, value) = item?;
                counted.bytes += value.len() as u64;
                counted.through = key_index(&key);
                read += 1;
            }
            if read < max_entries {
                // The range ran out: nothing more is stored up to `through` (an entry
                // missing from it must not hold the count back for ever).
                counted.through = through;
            }
        }
        Ok((counted.through >= through).then_some(counted.bytes))
    }

    fn read_log_id(&self, key: &[u8]) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        match self.inner.meta.get(key).map_err(read_err)? {
            None => Ok(None),
            Some(bytes) => Ok(Some(codec::log_id(
                &codec::decode::<LogIdRecord>("log id", &bytes).map_err(read_err)?,
            ))),
        }
    }

    fn write_log_id(&self, key: &[u8], log_id: Option<&LogId<u64>>) -> Result<(), sled::Error> {
        match log_id {
            Some(id) => self
                .inner
                .meta
                .insert(key, codec::log_id_record(id).encode_to_vec())
                .map(|_| ()),
            None => self.inner.meta.remove(key).map(|_| ()),
        }
    }

    /// Hides every entry up to `index` from reads at once, and has the purger remove them.
    fn forget_up_to(&self, index: u64) {
        self.inner
            .first_kept
            .fetch_max(index.saturating_add(1), Ordering::SeqCst);
        self.inner.purger.purge(index);
    }

    /// Removes every entry with an index in `range`, as one atomic batch.
    fn remove_range(&self, range: (Bound<[u8; 8]>, Bound<[u8; 8]>)) -> Result<(), sled::Error> {
        let mut batch = sled::Batch::default();
        for key in self.inner.log.range(range).keys() {
            batch.remove(key?);
        }
        self.inner.log.apply_batch(batch)
    }
}

fn key_bounds<RB: RangeBounds<u64>>(range: &RB) -> (Bound<[u8; 8]>, Bound<[u8; 8]>) {
    let map = |b: Bound<&u64>| match b {
        Bound::Included(i) => Bound::Included(index_key(*i)),
        Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
        Bound::Unbounded => Bound::Unbounded,
    };
    (map(range.start_bound()), map(range.end_bound()))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<u64>> {
        let mut entries = Vec::new();
        let first_kept = index_key(self.inner.first_kept.load(Ordering::SeqCst));
        let (start, end) = key_bounds(&range);
        let start = match start {
            Bound::Included(k) | Bound::Excluded(k) if k < first_kept => {
                Bound::Included(first_kept)
            }
            Bound::Unbounded => Bound::Included(first_kept),
            kept => kept,
        };
        for item in self.inner.log.range((start, end)) {
            let (_, bytes) = item.map_err(read_err)?;
            entries.push(codec::decode_entry(&bytes).map_err(read_err)?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        let last_purged_log_id = self.read_log_id(PURGED)?;
        // Entries at or below the purge point may still await their removal.
        let last_log_id = match self.inner.log.last().map_err(read_err)? {
            Some((_, bytes)) => Some(codec::decode_entry(&bytes).map_err(read_err)?.log_id),
            None => None,
        }
        .max(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        let write_vote = |e: String| StorageIOError::write_vote(AnyError::error(e));
        self.inner
            .meta
            .insert(VOTE, codec::vote_record(vote).encode_to_vec())
            .map_err(|e| write_vote(e.to_string()))?;
        self.inner.flusher.flush().await.map_err(write_vote)?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        let read_vote = |e: String| StorageIOError::read_vote(AnyError::error(e));
        match self
            .inner
            .meta
            .get(VOTE)
            .map_err(|e| read_vote(e.to_string()))?
        {
            None => Ok(None),
            Some(bytes) => Ok(Some(codec::vote(
                &codec::decode::<VoteRecord>("vote", &bytes)
                    .map_err(|e| read_vote(e.to_string()))?,
            ))),
        }
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<u64>>,
    ) -> Result<(), StorageError<u64>> {
        self.write_log_id(COMMITTED, committed.as_ref())
            .map_err(write_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        self.read_log_id(COMMITTED)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            batch.insert(&index_key(entry.log_id.index), codec::encode_entry(&entry));
        }
        self.inner.log.apply_batch(batch).map_err(write_err)?;
        self.inner.flusher.after_next_flush(callback);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        self.remove_range((Bound::Included(index_key(log_id.index)), Bound::Unbounded))
            .map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        self.write_log_id(PURGED, Some(&log_id))
            .map_err(write_err)?;
        self.forget_up_to(log_id.index);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use openraft::storage::RaftLogStorageExt;
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn blank(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    fn open(path: &std::path::Path) -> (sled::Db, LogStore) {
        let db = sled::Config::new().path(path).open().unwrap();
        let log = LogStore::open(&db, Flusher::start(db.clone())).unwrap();
        (db, log)
    }

    async fn wait_for_len(log: &LogStore, len: usize) {
        for _ in 0..500 {
            if log.inner.log.len() == len {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "{} entries stored, {len} expected after the purge",
            log.inner.log.len()
        );
    }

    #[tokio::test]
    async fn bytes_between_counts_the_entries_in_range_as_the_log_grows() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, mut log) = open(dir.path());
        let size = |range: std::ops::RangeInclusive<u64>| -> u64 {
            range
                .map(|i| codec::encode_entry(&blank(i)).len() as u64)
                .sum()
        };
        log.blocking_append((1..=300).map(blank)).await.unwrap();
        let all = usize::MAX;
        assert_eq!(
            log.bytes_between(100, 200, all).unwrap(),
            Some(size(101..=200))
        );
        assert_eq!(
            log.bytes_between(100, 300, all).unwrap(),
            Some(size(101..=300))
        );
        assert_eq!(
            log.bytes_between(100, 300, 0).unwrap(),
            Some(size(101..=300))
        );
        log.blocking_append((301..=400).map(blank)).await.unwrap();
        assert_eq!(
            log.bytes_between(100, 400, 60).unwrap(),
            None,
            "60 of 100 read"
        );
        assert_eq!(
            log.bytes_between(100, 400, 60).unwrap(),
            Some(size(101..=400)),
            "counted on from where it stopped"
        );
        assert_eq!(
            log.bytes_between(250, 400, all).unwrap(),
            Some(size(251..=400)),
            "a new snapshot starts over"
        );
        assert_eq!(
            log.bytes_between(250, 260, all).unwrap(),
            Some(size(251..=260)),
            "a shorter log (truncated) starts over"
        );
        assert_eq!(log.bytes_between(400, 400, all).unwrap(), Some(0));
        assert_eq!(
            log.bytes_between(350, 500, 60).unwrap(),
            Some(size(351..=400)),
            "entries not stored do not hold the count back"
        );
    }

    #[tokio::test]
    async fn purged_entries_are_unreadable_at_once_and_removed_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, mut log) = open(dir.path());
        let count = 3 * PURGE_BATCH as u64;
        log.blocking_append((0..count).map(blank)).await.unwrap();
        log.purge(LogId::new(CommittedLeaderId::new(1, 1), count - 11))
            .await
            .unwrap();
        let read = log.try_get_log_entries(0..count).await.unwrap();
        assert_eq!(
            read.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
            (count - 10..count).collect::<Vec<_>>()
        );
        let state = log.get_log_state().await.unwrap();
        assert_eq!(
            state.last_purged_log_id.map(|id| id.index),
            Some(count - 11)
        );
        assert_eq!(state.last_log_id.map(|id| id.index), Some(count - 1));
        wait_for_len(&log, 10).await;
    }

    #[tokio::test]
    async fn entries_a_crash_left_behind_a_purge_are_removed_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (db, mut log) = open(dir.path());
            log.blocking_append((0..100).map(blank)).await.unwrap();
            // The purge point is recorded but the entries are still there, as when the
            // process dies before the purger ran.
            log.write_log_id(PURGED, Some(&LogId::new(CommittedLeaderId::new(1, 1), 99)))
                .unwrap();
            db.flush().unwrap();
        }
        let reopened = loop {
            match sled::Config::new().path(dir.path()).open() {
                Ok(db) => break db,
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        let mut log = LogStore::open(&reopened, Flusher::start(reopened.clone())).unwrap();
        assert!(log.try_get_log_entries(0..100).await.unwrap().is_empty());
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id.map(|id| id.index), Some(99));
        wait_for_len(&log, 0).await;
    }
}
