//! The Raft log and vote on sled, with group commit.
//!
//! Appended entries are written to the `raft_log` tree (key: big-endian index) at once, so
//! they are readable when `append` returns; their durability callback goes to the
//! [`Flusher`], one background task that runs `Db::flush` in `spawn_blocking` and completes
//! every callback queued before that flush started. Under load, one flush covers many
//! appends; there is never more than one flush in flight. A vote is saved the same way, but
//! `save_vote` waits for its flush before returning.

// openraft's storage and RPC error types are large by design, and they are what its traits
// return; boxing them here would only add conversions.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{AnyError, LogId, OptionalSend, StorageError, StorageIOError, Vote};
use prost::Message;
use tokio::sync::{mpsc, oneshot};

use super::codec::{self, Entry};
use super::TypeConfig;
use crate::proto::internal::{LogIdRecord, VoteRecord};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const PURGED: &[u8] = b"purged";

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
                let flushed = tokio::task::spawn_blocking(move || db.flush())
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map(|_| ()).map_err(|e| e.to_string()));
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
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn read_err(e: impl ToString) -> StorageError<u64> {
    StorageIOError::read_logs(AnyError::error(e)).into()
}

fn write_err(e: impl ToString) -> StorageError<u64> {
    StorageIOError::write_logs(AnyError::error(e)).into()
}

impl LogStore {
    /// The log store over `db`'s `raft_log` and `raft_meta` trees.
    pub fn open(db: &sled::Db, flusher: Flusher) -> Result<Self, sled::Error> {
        Ok(LogStore {
            inner: Arc::new(Inner {
                log: db.open_tree("raft_log")?,
                meta: db.open_tree("raft_meta")?,
                flusher,
            }),
        })
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
        for item in self.inner.log.range(key_bounds(&range)) {
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
        let last_log_id = match self.inner.log.last().map_err(read_err)? {
            Some((_, bytes)) => Some(codec::decode_entry(&bytes).map_err(read_err)?.log_id),
            None => last_purged_log_id,
        };
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
        self.remove_range((Bound::Unbounded, Bound::Included(index_key(log_id.index))))
            .map_err(write_err)
    }
}
