//! The replicated state machine on sled: the domain core applied to the live generation of
//! the state database ([`super::generation`]).
//!
//! One `apply` call (a batch of committed entries) runs the domain over an [`Overlay`] of
//! pending writes and commits them, with the last applied log id and membership, as one
//! atomic sled batch. It is not flushed by itself: the log entries it applied are durable
//! in the log, and sled recovers a consistent prefix of its writes, so a crash replays from
//! the last applied id. Store metadata lives under keys starting with `0x00`, which the
//! domain never writes.
//!
//! Snapshots are files ([`super::snapshot`]), `snapshots/current.snap`. A build copies the
//! state a chunk of keys at a time while writes go on (a point-in-time copy through
//! pre-images), streams it to a file and flushes the state. A received snapshot is written
//! to a file, synced and renamed to `received.snap` when its last chunk arrives, then
//! installed into a fresh generation, which becomes live in one step once it is complete:
//! readers see the old state until then. At start, a local snapshot newer than the applied
//! state (an install or a build cut short by a crash) is installed again.

// openraft's storage and RPC error types are large by design, and they are what its traits
// return; boxing them here would only add conversions.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::io;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    AnyError, BasicNode, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, StorageError,
    StorageIOError, StoredMembership,
};
use prost::Message;
use tokio::sync::broadcast;

use super::codec::{self, Entry};
use super::generation::{Generation, Generations, SledOptions};
use super::rebuild::{Collected, Decision, Observation, RebuildHistory, RebuildPolicy};
use super::snapshot::{self, sync_dir, SnapshotFile, SnapshotReader, SnapshotWriter};
use super::TypeConfig;
use crate::domain::{self, StateEntry, StateError, StateRead, StateWrite};
use crate::proto::internal::{
    command_result, CommandResult, Empty, LogIdRecord, RevocationEvent, SnapshotRecord,
    StoredMembershipRecord,
};
use crate::proto::SCHEMA_VERSION;

/// Key of the last applied log id.
pub(crate) const APPLIED: &[u8] = &[0, b'a'];
/// Key of the last applied membership.
pub(crate) const MEMBERSHIP: &[u8] = &[0, b'm'];
/// The snapshot this node serves to others (the newest built or installed).
pub const SNAPSHOT_FILE: &str = "current.snap";
/// A completely received snapshot, until it is installed.
const RECEIVED_FILE: &str = "received.snap";
/// Prefix of snapshots being received.
const INCOMING_PREFIX: &str = "incoming-";
/// A snapshot being built.
const BUILDING_FILE: &str = "building.snap.tmp";
/// Keys copied per step of a snapshot build. A step reads its keys without the commit lock
/// and holds it only to merge the pre-images of keys written meanwhile (in memory).
const BUILD_CHUNK: usize = 1_000;
/// When the state database is rebuilt from a new snapshot: once its files take 1.5 times
/// what a fresh copy of the live data would (so a rebuild saves at least a third; loading
/// 1M sessions through applies left 1.8 times a fresh copy), 1.25 times while writes are
/// quiet (at most 100 keys a second: a node at rest, whose rebuild slows nothing), and not
/// below 64 MiB (sled's fixed overhead dominates there). A rebuild holds at most 250,000
/// written keys to carry over (~30 MB).
const REBUILD_POLICY: RebuildPolicy = RebuildPolicy {
    min_bytes: 64 * 1024 * 1024,
    factor: 1.5,
    quiet_factor: 1.25,
    quiet_keys_per_sec: 100.0,
    max_tracked_keys: 250_000,
};

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

    /// How many keys the pending writes delete.
    fn deleted(&self) -> u64 {
        self.writes.values().filter(|v| v.is_none()).count() as u64
    }

    /// The keys written so far.
    fn written_keys(&self) -> impl Iterator<Item = &[u8]> + Clone {
        self.writes.keys().map(|k| k.as_slice())
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

/// Whether `command` is, or holds, a garbage collection (whose deletions remove data for
/// good, where other commands' deletions come with writes of their own).
fn collects_garbage(command: &crate::proto::internal::Command) -> bool {
    use crate::proto::internal::command::Kind;
    match &command.kind {
        Some(Kind::CollectGarbage(_)) => true,
        Some(Kind::Batch(batch)) => batch.commands.iter().any(collects_garbage),
        _ => false,
    }
}

/// The revocations one applied command caused, as published to stream subscribers.
#[derive(Debug)]
pub struct AppliedRevocations {
    /// The command's log index; for an install, the snapshot's last index.
    pub revision: u64,
    /// Its revocation events, in order (none for an install).
    pub events: Vec<RevocationEvent>,
    /// The node replaced its state with a snapshot ending at `revision`: revisions between a
    /// subscriber's last delivered one and `revision` were never published here, and are to
    /// be read from the retained events of the installed state.
    pub installed: bool,
}

/// Revisions with revocations a subscriber may fall behind by before it is cut off.
const PUBLISHED_BACKLOG: usize = 4096;

/// The feed of applied revocations and the applied index, moved together: a revision is
/// published before the index passes it, and a subscriber learns the index and its place
/// in the feed at one instant.
struct Feed {
    sender: broadcast::Sender<Arc<AppliedRevocations>>,
    applied: AtomicU64,
    /// The cluster time of the applied state (its latest applied command's time), kept here
    /// so that reads need not look it up in the database.
    applied_time_ms: AtomicI64,
    lock: Mutex<()>,
}

impl Feed {
    fn new(applied: u64, applied_time_ms: i64) -> Self {
        Feed {
            sender: broadcast::channel(PUBLISHED_BACKLOG).0,
            applied: AtomicU64::new(applied),
            applied_time_ms: AtomicI64::new(applied_time_ms),
            lock: Mutex::new(()),
        }
    }

    fn publish(&self, published: Vec<Arc<AppliedRevocations>>, applied: u64, time_ms: i64) {
        let _order = self.lock.lock();
        for revocations in published {
            let _ = self.sender.send(revocations);
        }
        self.applied_time_ms.store(time_ms, Ordering::Release);
        self.applied.store(applied, Ordering::Release);
    }

    fn subscribe(&self) -> (broadcast::Receiver<Arc<AppliedRevocations>>, u64) {
        let _order = self.lock.lock();
        (
            self.sender.subscribe(),
            self.applied.load(Ordering::Acquire),
        )
    }
}

/// The live generation, swapped in one step by an install.
type Live = Arc<RwLock<Arc<Generation>>>;

fn live_generation(live: &Live) -> Arc<Generation> {
    match live.read() {
        Ok(generation) => generation.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

/// Read access to the applied state, for queries, and the feed of applied revocations;
/// cheap to share. Each read uses the generation live when it starts, so a query never
/// sees a state being installed.
#[derive(Clone)]
pub struct StateReader {
    live: Live,
    feed: Arc<Feed>,
}

impl StateReader {
    /// The log index of the last applied entry (0 before any). Revocations up to it have
    /// been published (they are published before the index moves).
    pub fn applied_index(&self) -> u64 {
        self.feed.applied.load(Ordering::Acquire)
    }

    /// The cluster time of the applied state: the latest time a command was applied with
    /// (0 before the first), as [`domain::time::applied`] reads it from the state.
    pub fn applied_time_ms(&self) -> i64 {
        self.feed.applied_time_ms.load(Ordering::Acquire)
    }

    /// Every revocation applied from now on, in revision order, and the applied index at
    /// the same instant: every revision after that index is on the returned feed, none up
    /// to it is. The feed is bounded: a receiver more than a few thousand revisions behind
    /// gets `Lagged`.
    pub fn subscribe(&self) -> (broadcast::Receiver<Arc<AppliedRevocations>>, u64) {
        self.feed.subscribe()
    }

    /// Writes the applied state to disk (at shutdown, so a restart has little to re-apply).
    pub async fn flush(&self) -> Result<(), String> {
        let generation = live_generation(&self.live);
        tokio::task::spawn_blocking(move || generation.db.flush().map(|_| ()))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }
}

impl StateRead for StateReader {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        Overlay::new(&live_generation(&self.live).tree).get(key)
    }

    fn scan_prefix(
        &self,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<StateEntry>, StateError> {
        Overlay::new(&live_generation(&self.live).tree).scan_prefix(prefix, start_after, limit)
    }
}

/// The state machine storage handed to openraft.
pub struct StateMachine {
    shared: Arc<Shared>,
}

struct Shared {
    generations: Generations,
    live: Live,
    feed: Arc<Feed>,
    /// Held while a batch is committed, a build copies a chunk, or the live generation is
    /// swapped.
    commit: Mutex<()>,
    /// One snapshot build at a time.
    building: Mutex<()>,
    /// Held while `current.snap` is replaced.
    snapshot_file: Mutex<()>,
    /// Held while an install runs, or while a rebuild switches to its generation.
    switching: Mutex<()>,
    /// The number the next new generation gets.
    next_generation: AtomicU64,
    /// When the state database is rebuilt, and what past rebuilds taught.
    rebuilds: Mutex<Rebuilds>,
    /// Keys written by applies since the start (for the write rate a rebuild must keep up
    /// with).
    keys_written: AtomicU64,
    /// What garbage collection removed since the current snapshot's point in time.
    collected: Collected,
    snapshot_dir: PathBuf,
    snapshots_built: AtomicU64,
    /// Longest wait of an apply for the commit lock since the current build started, in µs
    /// (reported when the build ends: builds must not stall writes).
    worst_apply_wait_us: AtomicU64,
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

fn lock<T>(mutex: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>, StorageError<u64>> {
    mutex
        .lock()
        .map_err(|_| sm_write_err("state machine lock poisoned"))
}

impl StateMachine {
    /// The state machine whose generations live under `state_dir`, with snapshots under
    /// `snapshot_dir`, its databases opened with `sled`. Removes what interrupted
    /// installs and receives left, and installs a local snapshot newer than the state.
    pub fn open(
        state_dir: &Path,
        snapshot_dir: &Path,
        sled: SledOptions,
    ) -> Result<Self, StorageError<u64>> {
        std::fs::create_dir_all(snapshot_dir).map_err(snapshot_err)?;
        remove_partial_snapshots(snapshot_dir, true).map_err(snapshot_err)?;
        let generations = Generations::new(state_dir, sled).map_err(sm_read_err)?;
        let number = match generations.current_number().map_err(sm_read_err)? {
            Some(number) => number,
            None => {
                generations.create_fresh(1).map_err(sm_write_err)?;
                generations.make_current(1).map_err(sm_write_err)?;
                1
            }
        };
        generations.remove_all_but(number).map_err(sm_write_err)?;
        let generation = generations.open(number).map_err(sm_read_err)?;
        let (applied, _) = read_applied(&generation)?;
        let applied_time_ms = applied_time(&generation)?;
        let shared = Arc::new(Shared {
            generations,
            live: Arc::new(RwLock::new(Arc::new(generation))),
            feed: Arc::new(Feed::new(applied.map_or(0, |id| id.index), applied_time_ms)),
            commit: Mutex::new(()),
            building: Mutex::new(()),
            snapshot_file: Mutex::new(()),
            switching: Mutex::new(()),
            next_generation: AtomicU64::new(number + 1),
            rebuilds: Mutex::new(Rebuilds {
                policy: REBUILD_POLICY,
                history: RebuildHistory::new(sled.compression),
            }),
            keys_written: AtomicU64::new(0),
            collected: Collected::default(),
            snapshot_dir: snapshot_dir.to_path_buf(),
            snapshots_built: AtomicU64::new(0),
            worst_apply_wait_us: AtomicU64::new(0),
        });
        shared.recover_from_local_snapshots(applied)?;
        Ok(StateMachine { shared })
    }

    /// Rebuilds the state database after every snapshot build, whatever its size and the
    /// write rate, holding at most `max_tracked_keys` written keys.
    #[cfg(test)]
    pub(crate) fn always_rebuild(&self, max_tracked_keys: usize) {
        let mut rebuilds = self.shared.rebuilds.lock().unwrap();
        rebuilds.policy = RebuildPolicy {
            min_bytes: 0,
            factor: 0.0,
            quiet_factor: 0.0,
            quiet_keys_per_sec: 0.0,
            max_tracked_keys,
        };
        rebuilds.history.assume_instant_fill();
    }

    /// Ends a back-off after a given-up rebuild, as if its time had passed.
    #[cfg(test)]
    pub(crate) fn end_rebuild_back_off(&self) {
        self.shared.rebuilds.lock().unwrap().history.end_back_off();
    }

    /// Runs `during` while a snapshot build is in progress, as far as other builds and
    /// the rebuild probe can tell.
    #[cfg(test)]
    pub(crate) fn as_if_building<T>(&self, during: impl FnOnce() -> T) -> T {
        let _building = self.shared.building.lock().unwrap();
        during()
    }

    /// The live data as the rebuild policy sees it now.
    #[cfg(test)]
    pub(crate) fn live_estimate(&self) -> u64 {
        self.shared.live_estimate()
    }

    /// A probe telling when the state database is due for a rebuild.
    pub fn rebuild_probe(&self) -> RebuildProbe {
        RebuildProbe {
            shared: self.shared.clone(),
            last: None,
        }
    }

    /// Where the current snapshot file is (absent before the first build or install).
    pub fn current_snapshot_path(&self) -> PathBuf {
        self.shared.snapshot_path()
    }

    /// A reader of the applied state.
    pub fn reader(&self) -> StateReader {
        StateReader {
            live: self.shared.live.clone(),
            feed: self.shared.feed.clone(),
        }
    }
}

/// Removes snapshots whose receive did not finish, and, at start (`builds`), whose build
/// did not finish.
fn remove_partial_snapshots(dir: &Path, builds: bool) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(INCOMING_PREFIX) || (builds && name.ends_with(".tmp")) {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

type AppliedState = (Option<LogId<u64>>, StoredMembership<u64, BasicNode>);

/// Tells, when asked periodically, whether the state database is due for a rebuild: its
/// files outgrew the live data, no back-off runs, and the writes since the previous question
/// are slow enough. A rebuild follows a snapshot build, so a node whose writes went quiet
/// after a load (no build is due by the log for a long time) asks Raft for one.
pub struct RebuildProbe {
    shared: Arc<Shared>,
    /// When the previous question was asked, and the keys written by then.
    last: Option<(std::time::Instant, u64)>,
}

impl RebuildProbe {
    /// Whether a rebuild is due now. The first question only starts measuring the write
    /// rate, and answers false; so does every question asked while a build (and the
    /// rebuild that may follow it) runs.
    pub fn due(&mut self) -> bool {
        let generation = self.shared.generation();
        let now = std::time::Instant::now();
        let written = self.shared.keys_written.load(Ordering::Relaxed);
        let Some((then, before)) = self.last.replace((now, written)) else {
            return false;
        };
        if self.shared.building.try_lock().is_err() {
            return false;
        }
        let seen = Observation {
            on_disk: generation.db.size_on_disk().unwrap_or(0),
            live: self.shared.live_estimate(),
            written_keys_per_sec: written.saturating_sub(before) as f64
                / now.duration_since(then).as_secs_f64().max(0.001),
        };
        self.shared.rebuilds.lock().is_ok_and(|rebuilds| {
            rebuilds.policy.decide(seen, &rebuilds.history, now) == Decision::Rebuild
        })
    }
}

/// The rebuild policy with what it learned.
struct Rebuilds {
    policy: RebuildPolicy,
    history: RebuildHistory,
}

/// A build of a state database that outgrew its live data: rebuilt after the build if the
/// writes during the copy were slow enough.
struct RebuildCandidate {
    policy: RebuildPolicy,
    on_disk: u64,
    live: u64,
    /// Keys written by applies when the copy started, and when it started.
    written_before: u64,
    since: std::time::Instant,
}

/// The cluster time of `generation`'s state.
fn applied_time(generation: &Generation) -> Result<i64, StorageError<u64>> {
    domain::time::applied(&Overlay::new(&generation.tree)).map_err(sm_read_err)
}

fn read_applied(generation: &Generation) -> Result<AppliedState, StorageError<u64>> {
    let tree = &generation.tree;
    let applied = match tree.get(APPLIED).map_err(sm_read_err)? {
        None => None,
        Some(b) => Some(codec::log_id(
            &codec::decode::<LogIdRecord>("applied log id", &b).map_err(sm_read_err)?,
        )),
    };
    let membership = match tree.get(MEMBERSHIP).map_err(sm_read_err)? {
        None => StoredMembership::default(),
        Some(b) => codec::stored_membership(
            &codec::decode::<StoredMembershipRecord>("membership", &b).map_err(sm_read_err)?,
        ),
    };
    Ok((applied, membership))
}

fn header_log_id(header: &SnapshotRecord) -> Option<LogId<u64>> {
    codec::optional_log_id(header.last_log_id.as_ref())
}

impl Shared {
    fn generation(&self) -> Arc<Generation> {
        live_generation(&self.live)
    }

    /// The live data now, as far as the rebuild policy can tell without reading the state:
    /// the current snapshot's, less what garbage collection removed since.
    fn live_estimate(&self) -> u64 {
        let live = snapshot::live_bytes(&self.snapshot_path()).unwrap_or(0);
        self.collected.live_after(live)
    }

    fn snapshot_path(&self) -> PathBuf {
        self.snapshot_dir.join(SNAPSHOT_FILE)
    }

    fn received_path(&self) -> PathBuf {
        self.snapshot_dir.join(RECEIVED_FILE)
    }

    /// The startup rule: a received snapshot, or the current one, that is newer than the
    /// applied state (a crash interrupted its install, or came before the state was
    /// flushed after a build while the log behind it may be purged) is installed now.
    fn recover_from_local_snapshots(
        &self,
        applied: Option<LogId<u64>>,
    ) -> Result<(), StorageError<u64>> {
        let received = self.received_path();
        match snapshot::read_header(&received) {
            Ok(Some(header)) if header_log_id(&header) > applied => {
                tracing::info!(
                    snapshot = %header.snapshot_id,
                    "installing a received snapshot whose install was interrupted"
                );
                match self.install_file(&received, None) {
                    Ok(()) => return Ok(()),
                    Err(e) => tracing::warn!(error = %e, "the received snapshot is unusable"),
                }
            }
            Ok(None) => {}
            Ok(Some(_)) => {}
            Err(e) => tracing::warn!(error = %e, "the received snapshot is unusable"),
        }
        if received.exists() {
            std::fs::remove_file(&received).map_err(snapshot_err)?;
        }
        let current = self.snapshot_path();
        if let Some(header) = snapshot::read_header(&current).map_err(sm_read_err)? {
            if header_log_id(&header) > applied {
                tracing::info!(
                    snapshot = %header.snapshot_id,
                    "installing the local snapshot: it is newer than the applied state"
                );
                self.install_file(&current, None)?;
            }
        }
        Ok(())
    }

    /// Copies the state as of now to a snapshot file, a chunk of keys at a time, without
    /// stopping writes for longer than one chunk; then flushes the state, so that it is
    /// durable up to the snapshot before the log behind the snapshot is purged. A state
    /// database grown far beyond its live data is then rebuilt from the new snapshot.
    fn build_snapshot(&self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let _one_build = lock(&self.building)?;
        let started = std::time::Instant::now();
        self.worst_apply_wait_us.store(0, Ordering::Relaxed);
        let generation = self.generation();
        let mut candidate = self.rebuild_candidate(&generation)?;
        let (applied, membership) = {
            let _commit = lock(&self.commit)?;
            generation.start_copy();
            self.collected.restart();
            if let Some(candidate) = &mut candidate {
                generation.start_tracking(candidate.policy.max_tracked_keys);
                candidate.written_before = self.keys_written.load(Ordering::Relaxed);
                candidate.since = std::time::Instant::now();
            }
            read_applied(&generation)?
        };
        let built = self.build_and_rebuild(&generation, candidate, applied, membership, started);
        generation.stop_tracking();
        built
    }

    /// A rebuild candidate if `generation`'s files outgrew the live data, as measured by the
    /// uncompressed size of the last snapshot: the build then tracks the keys written while
    /// it copies, and decides after the copy ([`Self::rebuild_now`]).
    fn rebuild_candidate(
        &self,
        generation: &Generation,
    ) -> Result<Option<RebuildCandidate>, StorageError<u64>> {
        let on_disk = generation.db.size_on_disk().unwrap_or(0);
        let live = self.live_estimate();
        let rebuilds = lock(&self.rebuilds)?;
        let policy = rebuilds.policy;
        Ok(policy
            .outgrown(on_disk, live, &rebuilds.history)
            .then(|| RebuildCandidate {
                policy,
                on_disk,
                live,
                written_before: 0,
                since: std::time::Instant::now(),
            }))
    }

    /// Whether to rebuild now ([`super::rebuild`]), given the keys written since the copy
    /// started: only writes slow enough for the rebuild to keep up with, and no back-off.
    fn rebuild_now(&self, candidate: RebuildCandidate) -> Result<bool, StorageError<u64>> {
        let written = self
            .keys_written
            .load(Ordering::Relaxed)
            .saturating_sub(candidate.written_before);
        let seen = Observation {
            on_disk: candidate.on_disk,
            live: candidate.live,
            written_keys_per_sec: written as f64
                / candidate.since.elapsed().as_secs_f64().max(0.001),
        };
        let decision = candidate.policy.decide(
            seen,
            &lock(&self.rebuilds)?.history,
            std::time::Instant::now(),
        );
        match decision {
            Decision::NotNeeded => Ok(false),
            Decision::Rebuild => Ok(true),
            Decision::BackingOff { left } => {
                tracing::info!(
                    on_disk = seen.on_disk,
                    live = seen.live,
                    secs_left = left.as_secs(),
                    "state database rebuild postponed: recent rebuilds were given up"
                );
                Ok(false)
            }
            Decision::WritesTooFast { predicted_keys } => {
                tracing::info!(
                    on_disk = seen.on_disk,
                    live = seen.live,
                    written_keys_per_sec = seen.written_keys_per_sec.round(),
                    predicted_keys,
                    "state database rebuild postponed: writes too fast for it to keep up"
                );
                Ok(false)
            }
        }
    }

    fn build_and_rebuild(
        &self,
        generation: &Arc<Generation>,
        candidate: Option<RebuildCandidate>,
        applied: Option<LogId<u64>>,
        membership: StoredMembership<u64, BasicNode>,
        started: std::time::Instant,
    ) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let built = self.snapshots_built.fetch_add(1, Ordering::Relaxed) + 1;
        let header = SnapshotRecord {
            schema_version: SCHEMA_VERSION,
            last_log_id: applied.as_ref().map(codec::log_id_record),
            last_membership: Some(codec::stored_membership_record(&membership)),
            snapshot_id: applied.map_or_else(
                || format!("0-0-{built}"),
                |id| format!("{}-{}-{built}", id.leader_id.term, id.index),
            ),
            entries: Vec::new(),
        };
        let tmp = self.snapshot_dir.join(BUILDING_FILE);
        let written = self.copy_to(generation, &tmp, &header);
        generation.stop_copy();
        let entries = written?;
        self.collected.since_snapshot(entries);
        generation.db.flush().map_err(sm_write_err)?;
        let bytes = std::fs::metadata(&tmp).map_or(0, |m| m.len());
        crate::metrics::SNAPSHOT_BUILD_SECONDS.observe(started.elapsed().as_secs_f64());
        crate::metrics::SNAPSHOT_BUILD_BYTES.observe(bytes as f64);
        tracing::info!(
            snapshot = %header.snapshot_id,
            entries,
            bytes,
            secs = started.elapsed().as_secs_f64(),
            worst_apply_wait_ms = self.worst_apply_wait_us.load(Ordering::Relaxed) as f64 / 1000.0,
            "snapshot built"
        );
        let path = self.publish_snapshot(&tmp, applied)?;
        let file = std::fs::File::open(&path).map_err(snapshot_err)?;
        if path == tmp {
            std::fs::remove_file(&tmp).map_err(snapshot_err)?;
        } else if candidate.map_or(Ok(false), |c| {
            let live = snapshot::live_bytes(&path).unwrap_or(c.live);
            self.rebuild_now(RebuildCandidate { live, ..c })
        })? {
            let snapshot = std::fs::File::open(&path).map_err(snapshot_err)?;
            let rebuilt = self.rebuild(generation, snapshot);
            let mut rebuilds = lock(&self.rebuilds)?;
            match rebuilt {
                Ok(Some(took)) => {
                    let live = snapshot::live_bytes(&path).unwrap_or(0);
                    let fresh = self.generation().db.size_on_disk().unwrap_or(0);
                    rebuilds.history.completed(live, fresh, took);
                }
                Ok(None) => {}
                Err(e) => {
                    rebuilds.history.given_up(std::time::Instant::now());
                    tracing::warn!(error = %e, "the state database was not rebuilt");
                }
            }
        }
        Ok(Snapshot {
            meta: snapshot_meta(&header),
            snapshot: Box::new(SnapshotFile::from_std(file, &path)),
        })
    }

    fn copy_to(
        &self,
        generation: &Generation,
        path: &Path,
        header: &SnapshotRecord,
    ) -> Result<u64, StorageError<u64>> {
        let mut writer = SnapshotWriter::create(path, header).map_err(snapshot_err)?;
        loop {
            let read = generation.read_chunk(BUILD_CHUNK).map_err(sm_read_err)?;
            let (chunk, last) = {
                let _commit = lock(&self.commit)?;
                generation.settle_chunk(read).map_err(sm_read_err)?
            };
            for (key, value) in chunk {
                writer.push(&key, &value).map_err(snapshot_err)?;
            }
            if last {
                return writer.finish().map_err(snapshot_err);
            }
        }
    }

    /// Makes the snapshot file at `path` (ending at `last`) the current one, unless the
    /// current one is newer (an install overtook a build); returns where the file is.
    fn publish_snapshot(
        &self,
        path: &Path,
        last: Option<LogId<u64>>,
    ) -> Result<PathBuf, StorageError<u64>> {
        let _file = lock(&self.snapshot_file)?;
        let current = self.snapshot_path();
        if path == current {
            return Ok(current);
        }
        let newer = match snapshot::read_header(&current) {
            Ok(Some(header)) => header_log_id(&header) > last,
            Ok(None) | Err(_) => false,
        };
        if newer {
            return Ok(path.to_path_buf());
        }
        std::fs::rename(path, &current).map_err(snapshot_err)?;
        sync_dir(&self.snapshot_dir).map_err(snapshot_err)?;
        Ok(current)
    }

    /// A new, empty generation.
    fn new_generation(&self) -> Result<Generation, StorageError<u64>> {
        let number = self.next_generation.fetch_add(1, Ordering::Relaxed);
        self.generations.create_fresh(number).map_err(sm_write_err)
    }

    /// Replaces the live generation `old` with a fresh one filled from `snapshot` (a
    /// snapshot of `old` taken when its written keys started being tracked) and the keys
    /// written since, switching in one step once both hold the same state. Writes go on
    /// meanwhile: each carry-over of written keys holds the commit lock only briefly, and
    /// the fill sleeps as long as it works. Returns the time the fill took, or `None` if an
    /// install replaced `old` meanwhile.
    fn rebuild(
        &self,
        old: &Arc<Generation>,
        snapshot: std::fs::File,
    ) -> Result<Option<std::time::Duration>, StorageError<u64>> {
        let started = std::time::Instant::now();
        let before = old.db.size_on_disk().unwrap_or(0);
        let mut reader = SnapshotReader::from_file(snapshot).map_err(sm_read_err)?;
        let header = reader.header().clone();
        let new = self.new_generation()?;
        let number = new.number;
        tracing::info!(
            generation = number,
            bytes_before = before,
            "state database rebuild started"
        );
        let mut working_since = std::time::Instant::now();
        let filled = fill(&new, &mut reader, &header, REBUILD_FILL_BATCH, |upto| {
            self.carry_over(old, &new, Some(upto))?;
            std::thread::sleep(working_since.elapsed());
            working_since = std::time::Instant::now();
            Ok(())
        });
        let took = started.elapsed();
        let switched = filled.and_then(|_| self.switch_to_rebuilt(old, new));
        match switched {
            Ok(true) => {
                self.generations.remove(old.number).map_err(sm_write_err)?;
                tracing::info!(
                    generation = number,
                    bytes_before = before,
                    bytes_after = self.generation().db.size_on_disk().unwrap_or(0),
                    secs = started.elapsed().as_secs_f64(),
                    worst_apply_wait_ms =
                        self.worst_apply_wait_us.load(Ordering::Relaxed) as f64 / 1000.0,
                    "state database rebuilt"
                );
                Ok(Some(took))
            }
            Ok(false) => {
                self.generations.remove(number).map_err(sm_write_err)?;
                tracing::info!("state database rebuild given up: an install replaced the state");
                Ok(None)
            }
            Err(e) => {
                let _ = self.generations.remove(number);
                Err(e)
            }
        }
    }

    /// Writes into `new` the keys written to `old` since the rebuild started (up to and
    /// including `upto`, or all), with their current values. The commit lock is held only
    /// to take the keys: reading their values (cache misses on a large state) goes on
    /// beside the applies.
    fn carry_over(
        &self,
        old: &Generation,
        new: &Generation,
        upto: Option<&[u8]>,
    ) -> Result<(), StorageError<u64>> {
        let keys = {
            let _commit = lock(&self.commit)?;
            old.take_written(upto).map_err(sm_read_err)?
        };
        let keys = keys.ok_or_else(|| sm_write_err("too many writes during the rebuild"))?;
        let written = old.current_values(keys).map_err(sm_read_err)?;
        for part in written.chunks(REBUILD_FILL_BATCH) {
            new.tree.apply_batch(batch_of(part)).map_err(sm_write_err)?;
        }
        Ok(())
    }

    /// Makes the filled `new` generation live in place of `old`, unless an install replaced
    /// `old` meanwhile (then returns false): carries the last written keys over and swaps
    /// under the commit lock, then makes the switch durable.
    fn switch_to_rebuilt(
        &self,
        old: &Arc<Generation>,
        new: Generation,
    ) -> Result<bool, StorageError<u64>> {
        let _switching = lock(&self.switching)?;
        self.carry_over(old, &new, None)?;
        new.db.flush().map_err(sm_write_err)?;
        // The flush of a large generation takes seconds: carry over what was written
        // meanwhile too, so that only a few keys are left for the commit lock.
        self.carry_over(old, &new, None)?;
        let new = Arc::new(new);
        {
            let _commit = lock(&self.commit)?;
            if !Arc::ptr_eq(&self.generation(), old) {
                return Ok(false);
            }
            let keys = old
                .take_written(None)
                .map_err(sm_read_err)?
                .ok_or_else(|| sm_write_err("too many writes during the rebuild"))?;
            let mut written = old.current_values(keys).map_err(sm_read_err)?;
            for key in [APPLIED, MEMBERSHIP] {
                written.push((key.to_vec(), old.tree.get(key).map_err(sm_read_err)?));
            }
            new.tree
                .apply_batch(batch_of(&written))
                .map_err(sm_write_err)?;
            let mut live = self.live.write().map_err(|_| sm_write_err("poisoned"))?;
            *live = new.clone();
        }
        new.db.flush().map_err(sm_write_err)?;
        self.generations
            .make_current(new.number)
            .map_err(sm_write_err)?;
        Ok(true)
    }

    /// Replaces the state with the snapshot file at `path`: fills a fresh generation from
    /// it (checking count and checksum), flushes it, notes its size for the rebuild policy,
    /// makes the file the current snapshot, then makes the generation live in one step and
    /// tells subscribers.
    fn install_file(
        &self,
        path: &Path,
        expected: Option<Option<LogId<u64>>>,
    ) -> Result<(), StorageError<u64>> {
        let started = std::time::Instant::now();
        let _switching = lock(&self.switching)?;
        let bytes = std::fs::metadata(path).map_err(sm_read_err)?.len();
        let mut reader = SnapshotReader::open(path).map_err(sm_read_err)?;
        let header = reader.header().clone();
        let last = header_log_id(&header);
        if expected.is_some_and(|e| e != last) {
            return Err(sm_read_err("snapshot contents do not match its metadata"));
        }
        let old = self.generation();
        let generation = self.new_generation()?;
        let entries = match fill(
            &generation,
            &mut reader,
            &header,
            INSTALL_FILL_BATCH,
            |_| Ok(()),
        ) {
            Ok(entries) => entries,
            Err(e) => {
                let number = generation.number;
                drop(generation);
                let _ = self.generations.remove(number);
                return Err(e);
            }
        };
        self.collected.since_snapshot(entries);
        let fresh = generation.db.size_on_disk().unwrap_or(0);
        let live = snapshot::live_bytes(path).unwrap_or(0);
        lock(&self.rebuilds)?.history.filled(live, fresh);
        self.publish_snapshot(path, last)?;
        self.generations
            .make_current(generation.number)
            .map_err(sm_write_err)?;
        {
            let _commit = lock(&self.commit)?;
            let mut live = self.live.write().map_err(|_| sm_write_err("poisoned"))?;
            *live = Arc::new(generation);
        }
        let revision = last.map_or(0, |id| id.index);
        self.feed.publish(
            vec![Arc::new(AppliedRevocations {
                revision,
                events: Vec::new(),
                installed: true,
            })],
            revision,
            applied_time(&self.generation())?,
        );
        let number = old.number;
        drop(old);
        self.generations.remove(number).map_err(sm_write_err)?;
        crate::metrics::SNAPSHOT_INSTALL_SECONDS.observe(started.elapsed().as_secs_f64());
        crate::metrics::SNAPSHOT_INSTALL_BYTES.observe(bytes as f64);
        tracing::info!(
            snapshot = %header.snapshot_id,
            secs = started.elapsed().as_secs_f64(),
            "snapshot installed"
        );
        Ok(())
    }
}

/// A sled batch writing `written` (`None`: remove).
fn batch_of(written: &[(Vec<u8>, Option<sled::IVec>)]) -> sled::Batch {
    let mut batch = sled::Batch::default();
    for (key, value) in written {
        match value {
            Some(value) => batch.insert(key.as_slice(), value.clone()),
            None => batch.remove(key.as_slice()),
        }
    }
    batch
}

/// Keys written between two calls of a fill's `after_batch`.
pub(crate) const INSTALL_BATCH: usize = 10_000;
/// Keys an install writes to its generation per sled batch. sled's memory grows with the
/// batch (spacejam/sled#1303): restoring 300,000 sessions peaked at 515 MB RSS in 13.7 s
/// with 1,000-key batches, 400 MB in 11.9 s with 512-key ones, 396 MB in 16.4 s with
/// 64-key ones (compressed: 890 MB with 1,000, 433 MB with 64; one key per insert, 3.6 GB).
/// Below 512, batches cost more per key, and a debug-build learner under load never caught
/// up with a leader snapshotting every 50 entries (`tests/cluster.rs`: 21 s with 512-key
/// batches, 97 s with 256, never with 64).
const INSTALL_FILL_BATCH: usize = 512;
/// Keys a rebuild writes per sled batch. sled 0.34 serializes every batch against every
/// other operation of the process (one global lock, `concurrency_control`), so a rebuild
/// running beside the applies keeps its batches small: 1,000-key batches stalled applies
/// for up to 0.6 s while a 1M-session state was rebuilt.
const REBUILD_FILL_BATCH: usize = 64;

/// Writes every entry of `reader` and the header's applied id and membership into the
/// (empty) `generation`, and flushes it; `after_batch` runs after each [`INSTALL_BATCH`]
/// keys, with the last key written. Keys go in in sled batches of `batch_keys`: the
/// generation is not live until the fill is complete.
fn fill(
    generation: &Generation,
    reader: &mut SnapshotReader,
    header: &SnapshotRecord,
    batch_keys: usize,
    mut after_batch: impl FnMut(&[u8]) -> Result<(), StorageError<u64>>,
) -> Result<u64, StorageError<u64>> {
    let mut written = 0;
    let mut pending = sled::Batch::default();
    while let Some((key, value)) = reader.next_entry().map_err(sm_read_err)? {
        pending.insert(key.as_slice(), value);
        written += 1;
        if written % batch_keys == 0 {
            generation
                .tree
                .apply_batch(std::mem::take(&mut pending))
                .map_err(sm_write_err)?;
        }
        if written % INSTALL_BATCH == 0 {
            after_batch(&key)?;
        }
    }
    generation.tree.apply_batch(pending).map_err(sm_write_err)?;
    let mut batch = sled::Batch::default();
    if let Some(id) = &header.last_log_id {
        batch.insert(APPLIED, id.encode_to_vec());
    }
    if let Some(m) = header
        .last_membership
        .as_ref()
        .filter(|m| m.log_id.is_some())
    {
        batch.insert(MEMBERSHIP, m.encode_to_vec());
    }
    generation.tree.apply_batch(batch).map_err(sm_write_err)?;
    generation.db.flush().map_err(sm_write_err)?;
    Ok(written as u64)
}

fn snapshot_meta(header: &SnapshotRecord) -> SnapshotMeta<u64, BasicNode> {
    SnapshotMeta {
        last_log_id: header_log_id(header),
        last_membership: header
            .last_membership
            .as_ref()
            .map(codec::stored_membership)
            .unwrap_or_default(),
        snapshot_id: header.snapshot_id.clone(),
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
        read_applied(&self.shared.generation())
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let started = std::time::Instant::now();
        let shared = &self.shared;
        let read_from = shared.generation();
        let mut overlay = Overlay::new(&read_from.tree);
        let mut results = Vec::new();
        let mut last_applied = None;
        let mut membership = None;
        let mut published = Vec::new();
        let mut collected_keys = 0;
        for entry in entries {
            last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => results.push(none_result()),
                EntryPayload::Normal(command) => {
                    let deleted_before = collects_garbage(&command).then(|| overlay.deleted());
                    let result = domain::apply(&command, entry.log_id.index, &mut overlay)
                        .map_err(|e| {
                            StorageError::from(StorageIOError::apply(
                                entry.log_id,
                                AnyError::error(e),
                            ))
                        })?;
                    if let Some(before) = deleted_before {
                        collected_keys += overlay.deleted().saturating_sub(before);
                    }
                    if !result.events.is_empty() {
                        published.push(Arc::new(AppliedRevocations {
                            revision: entry.log_id.index,
                            events: result.events.clone(),
                            installed: false,
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
        let applied_time_ms = domain::time::applied(&overlay).map_err(sm_read_err)?;
        {
            let waiting = std::time::Instant::now();
            let _commit = lock(&shared.commit)?;
            shared
                .worst_apply_wait_us
                .fetch_max(waiting.elapsed().as_micros() as u64, Ordering::Relaxed);
            // A rebuild may have switched generations since the reads: it switches only to
            // a generation holding exactly the same state, so the writes go there.
            let generation = shared.generation();
            generation
                .before_writes(overlay.written_keys())
                .map_err(sm_read_err)?;
            shared
                .keys_written
                .fetch_add(overlay.written_keys().count() as u64, Ordering::Relaxed);
            let mut batch = overlay.into_batch();
            batch.insert(APPLIED, codec::log_id_record(&last_applied).encode_to_vec());
            if let Some(m) = &membership {
                batch.insert(
                    MEMBERSHIP,
                    codec::stored_membership_record(m).encode_to_vec(),
                );
            }
            generation.tree.apply_batch(batch).map_err(sm_write_err)?;
            shared.collected.add(collected_keys);
        }
        shared
            .feed
            .publish(published, last_applied.index, applied_time_ms);
        let took = started.elapsed();
        if took > super::SLOW_STORAGE {
            tracing::warn!(
                took_ms = took.as_millis() as u64,
                entries = results.len(),
                last_applied = last_applied.index,
                "apply took too long"
            );
        }
        crate::metrics::APPLY_SECONDS.observe(took.as_secs_f64());
        crate::metrics::APPLY_BATCH_ENTRIES.observe(results.len() as f64);
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            shared: self.shared.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotFile>, StorageError<u64>> {
        let dir = self.shared.snapshot_dir.clone();
        tokio::task::spawn_blocking(move || remove_partial_snapshots(&dir, false))
            .await
            .map_err(snapshot_err)?
            .map_err(snapshot_err)?;
        let path = self.shared.snapshot_dir.join(format!(
            "{INCOMING_PREFIX}{:016x}.snap",
            rand::random::<u64>()
        ));
        let file = SnapshotFile::receive(&path, &self.shared.received_path())
            .await
            .map_err(snapshot_err)?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        mut snapshot: Box<SnapshotFile>,
    ) -> Result<(), StorageError<u64>> {
        let received = self.shared.received_path();
        if !(snapshot.is_completed_receive() && snapshot.path() == received) {
            self.keep_copy(&mut snapshot, &received).await?;
        }
        let shared = self.shared.clone();
        let expected = meta.last_log_id;
        tokio::task::spawn_blocking(move || shared.install_file(&received, Some(expected)))
            .await
            .map_err(sm_write_err)?
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        let path = self.shared.snapshot_path();
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(sm_read_err(e)),
        };
        let header = SnapshotReader::from_file(file.try_clone().map_err(sm_read_err)?)
            .map_err(sm_read_err)?
            .header()
            .clone();
        Ok(Some(Snapshot {
            meta: snapshot_meta(&header),
            snapshot: Box::new(SnapshotFile::from_std(file, &path)),
        }))
    }
}

impl StateMachine {
    /// Copies a snapshot that did not arrive through this node's receiver (one handed over
    /// directly) to `received`, durably.
    async fn keep_copy(
        &self,
        snapshot: &mut SnapshotFile,
        received: &Path,
    ) -> Result<(), StorageError<u64>> {
        use tokio::io::{AsyncSeekExt, AsyncWriteExt};
        let incoming = self
            .shared
            .snapshot_dir
            .join(format!("{INCOMING_PREFIX}copy.snap"));
        let mut copy = SnapshotFile::receive(&incoming, received)
            .await
            .map_err(snapshot_err)?;
        snapshot
            .seek(io::SeekFrom::Start(0))
            .await
            .map_err(snapshot_err)?;
        tokio::io::copy(snapshot, &mut copy)
            .await
            .map_err(snapshot_err)?;
        copy.shutdown().await.map_err(snapshot_err)
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
