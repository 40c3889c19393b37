//! Durable storage for one node, under its data directory:
//!
//! - `log/`: the Raft log, vote and commit point, in their own sled database with group
//!   commit ([`log`]); log churn (appends, then purges) never touches the state files, and
//!   a log database that outgrew what it holds is compacted at start ([`log_compaction`]).
//! - `state/gen-<n>/`: the state machine, one sled database per generation; `state/CURRENT`
//!   names the live one ([`generation`], [`state_machine`]).
//! - `snapshots/current.snap`: the newest snapshot, a streamed, checksummed file
//!   ([`snapshot`]); `received.snap` while a received snapshot awaits its install. A backup
//!   is a copy of that file, and a restore installs one into a new data directory ([`backup`]).
//!
//! Every record is a prost message carrying a schema version ([`codec`]). A data directory
//! of the first format (one sled database) is migrated once at start ([`migrate`]).

pub mod backup;
pub mod codec;
pub mod generation;
pub mod log;
mod log_compaction;
mod migrate;
pub mod rebuild;
pub mod snapshot;
pub mod state_machine;

use std::path::Path;

pub use generation::SledOptions;
pub use log::{Flusher, LogStore};
pub use state_machine::{RebuildProbe, StateMachine, StateReader};

use openraft::BasicNode;

use crate::proto::internal::{Command, CommandResult};
use crate::Error;

openraft::declare_raft_types!(
    /// The Raft types of sessiond: commands in, command results out, nodes known by address.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = snapshot::SnapshotFile,
        AsyncRuntime = openraft::TokioRuntime,
);
/// The directory of a node's snapshot files, under its data directory.
pub(crate) const SNAPSHOT_DIR: &str = "snapshots";

/// A log flush or an apply slower than this is logged as a warning (as etcd logs "apply
/// request took too long").
pub(crate) const SLOW_STORAGE: std::time::Duration = std::time::Duration::from_millis(100);

/// sled page cache of the log database: it holds the entries since the last snapshot.
const LOG_CACHE_BYTES: u64 = 32 * 1024 * 1024;
/// The log database's directory, under the data directory.
const LOG_DIR: &str = "log";
/// No log database smaller than this is compacted at start ([`log_compaction`]).
const LOG_COMPACTION_MIN_BYTES: u64 = 64 * 1024 * 1024;

/// The opened storage of a node.
pub struct Store {
    /// The Raft log and vote.
    pub log: LogStore,
    /// The state machine.
    pub state_machine: StateMachine,
    /// Flushes the log database (group commit).
    pub flusher: Flusher,
}

impl Store {
    /// Opens (creating if needed) the storage under `data_dir`, its sled databases with
    /// `sled`. Must run inside a tokio runtime (it starts the flusher task).
    pub fn open(data_dir: &Path, sled: SledOptions) -> Result<Self, Error> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            Error::Unavailable(format!("cannot create {}: {e}", data_dir.display()))
        })?;
        log_compaction::compact_if_outgrown(
            data_dir,
            LOG_DIR,
            LOG_CACHE_BYTES,
            sled,
            LOG_COMPACTION_MIN_BYTES,
        )?;
        let db = generation::open_db(
            sled::Config::new()
                .path(data_dir.join(LOG_DIR))
                .cache_capacity(LOG_CACHE_BYTES),
            sled.compression,
        )
        .map_err(|e| Error::Unavailable(format!("cannot open the log database: {e}")))?;
        let state_dir = data_dir.join("state");
        let snapshot_dir = data_dir.join(SNAPSHOT_DIR);
        migrate::from_format_1(data_dir, &db, &state_dir, &snapshot_dir, sled)?;
        let flusher = Flusher::start(db.clone());
        let log = LogStore::open(&db, flusher.clone())
            .map_err(|e| Error::Unavailable(format!("cannot open the log: {e}")))?;
        let state_machine = StateMachine::open(&state_dir, &snapshot_dir, sled)
            .map_err(|e| Error::Unavailable(format!("cannot open the state machine: {e}")))?;
        Ok(Store {
            log,
            state_machine,
            flusher,
        })
    }
}

#[cfg(test)]
mod tests {
    use openraft::storage::{RaftLogReader, RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
    use openraft::testing::{StoreBuilder, Suite};
    use openraft::{
        CommittedLeaderId, EntryPayload, LogId, RaftSnapshotBuilder, StorageError, Vote,
    };

    use std::sync::Arc;

    use super::*;
    use crate::domain::StateRead;
    use crate::proto::internal::{command, Command, CreateSession};
    use crate::proto::SCHEMA_VERSION;

    const TEST_SLED: SledOptions = SledOptions {
        cache_bytes: 16 * 1024 * 1024,
        compression: true,
    };

    /// Whether the applied state holds the session that test entry `n` created.
    fn holds_session(store: &Store, n: u64) -> bool {
        crate::domain::query::session_by_id(
            &store.state_machine.reader(),
            "t",
            &format!("sid_{n:022}"),
        )
        .unwrap()
        .is_some()
    }

    struct TempStores;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for TempStores {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<u64>> {
            let dir = tempfile::tempdir().expect("temp dir");
            let store = Store::open(dir.path(), TEST_SLED).expect("open store");
            Ok((dir, store.log, store.state_machine))
        }
    }

    /// openraft's own conformance suite for log and state machine storage.
    #[test]
    fn passes_the_openraft_storage_suite() {
        Suite::test_all(TempStores).expect("storage suite");
    }

    fn create_entry(index: u64, n: u32) -> codec::Entry {
        codec::Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command {
                schema_version: SCHEMA_VERSION,
                now_ms: 1_000 + index as i64,
                request_key: Vec::new(),
                kind: Some(command::Kind::CreateSession(CreateSession {
                    session_id: format!("sid_{n:022}"),
                    family_id: format!("fam_{n:022}"),
                    tenant: "t".into(),
                    user_id: "u".into(),
                    expires_at_ms: 10_000_000,
                    refresh_hash: n.to_be_bytes().repeat(8),
                    ..Default::default()
                })),
                ..Default::default()
            }),
        }
    }

    /// Opens the store in `dir`, appends and applies `n` creates, flushes the log and the
    /// state, and closes it.
    async fn write_sessions(dir: &Path, n: u64) {
        let mut store = Store::open(dir, TEST_SLED).unwrap();
        let entries: Vec<_> = (1..=n).map(|i| create_entry(i, i as u32)).collect();
        store.log.blocking_append(entries.clone()).await.unwrap();
        store.state_machine.apply(entries).await.unwrap();
        store.flusher.flush().await.unwrap();
        store.state_machine.reader().flush().await.unwrap();
    }

    /// Opens the store again once the previous instance's background flusher has let go of
    /// the database lock.
    async fn reopen(dir: &Path) -> Store {
        reopen_with(dir, TEST_SLED).await
    }

    /// Opens the store in `dir` with `options` once the previous handle let go of it.
    async fn reopen_with(dir: &Path, options: SledOptions) -> Store {
        for _ in 0..200 {
            if let Ok(store) = Store::open(dir, options) {
                return store;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the database stayed locked");
    }

    /// A rebuild or an install that dies before its switch leaves a generation `CURRENT` does
    /// not name: the next start removes it and keeps the state it had.
    #[tokio::test]
    async fn a_generation_left_by_a_rebuild_cut_short_is_removed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        write_sessions(dir.path(), 20).await;
        let left = dir.path().join("state").join("gen-9");
        {
            let db = sled::open(&left).unwrap();
            let tree = db.open_tree("state").unwrap();
            tree.insert(b"s-half-filled", b"x".to_vec()).unwrap();
            db.flush().unwrap();
        }
        let store = reopen(dir.path()).await;
        assert!(!left.exists(), "the unfinished generation was removed");
        assert!((1..=20).all(|n| holds_session(&store, n)));
        assert_eq!(store.state_machine.reader().applied_index(), 20);
    }

    #[tokio::test]
    async fn log_vote_and_applied_state_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = Store::open(dir.path(), TEST_SLED).unwrap();
            store
                .log
                .save_vote(&Vote::new_committed(3, 1))
                .await
                .unwrap();
            let entries: Vec<_> = (1..=50).map(|i| create_entry(i, i as u32)).collect();
            store.log.blocking_append(entries.clone()).await.unwrap();
            store.state_machine.apply(entries).await.unwrap();
            assert_eq!(store.state_machine.reader().applied_time_ms(), 1_050);
            store.flusher.flush().await.unwrap();
        }
        let mut store = reopen(dir.path()).await;
        assert_eq!(
            store.log.read_vote().await.unwrap(),
            Some(Vote::new_committed(3, 1))
        );
        let state = store.log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id.map(|id| id.index), Some(50));
        let read = store.log.try_get_log_entries(10..20).await.unwrap();
        assert_eq!(
            read.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
            (10..20).collect::<Vec<_>>()
        );
        let (applied, _) = store.state_machine.applied_state().await.unwrap();
        assert_eq!(applied.map(|id| id.index), Some(50));
        assert_eq!(store.state_machine.reader().applied_index(), 50);
        assert_eq!(
            store.state_machine.reader().applied_time_ms(),
            1_050,
            "cluster time survives a reopen"
        );
        assert!(holds_session(&store, 50));
    }

    /// Large enough that both clearing the old state and writing the new one take several
    /// install batches.
    #[tokio::test]
    async fn a_snapshot_installed_elsewhere_reproduces_the_state_byte_for_byte() {
        let source_dir = tempfile::tempdir().unwrap();
        let mut source = Store::open(source_dir.path(), TEST_SLED).unwrap();
        let entries: Vec<_> = (1..=4_000).map(|i| create_entry(i, i as u32)).collect();
        source.state_machine.apply(entries).await.unwrap();
        let snapshot = source
            .state_machine
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(snapshot.meta.last_log_id.map(|id| id.index), Some(4_000));

        let target_dir = tempfile::tempdir().unwrap();
        let mut target = Store::open(target_dir.path(), TEST_SLED).unwrap();
        let stale: Vec<_> = (1..=2_000)
            .map(|i| create_entry(i, 1_000_000 + i as u32))
            .collect();
        target.state_machine.apply(stale).await.unwrap();
        target
            .state_machine
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
        let all = |r: &StateReader| r.scan_prefix(b"", None, usize::MAX).unwrap();
        let expected = all(&source.state_machine.reader());
        let installed = all(&target.state_machine.reader());
        assert!(expected.len() > 2 * state_machine::INSTALL_BATCH);
        assert_eq!(installed.len(), expected.len());
        for (got, want) in installed.iter().zip(&expected) {
            assert_eq!(got, want);
        }
        assert_eq!(target.state_machine.reader().applied_index(), 4_000);
        assert_eq!(
            target.state_machine.reader().applied_time_ms(),
            5_000,
            "the installed state's cluster time"
        );
        let current = target
            .state_machine
            .get_current_snapshot()
            .await
            .unwrap()
            .expect("installed snapshot is the current one");
        assert_eq!(current.meta, snapshot.meta);
    }
    /// Whether the sled database at `dir` was created with compression (sled keeps the
    /// setting in its `conf` file).
    fn compressed(dir: &Path) -> bool {
        let conf = std::fs::read(dir.join("conf")).unwrap();
        String::from_utf8_lossy(&conf).contains("use_compression: true")
    }

    /// With compression on, databases created uncompressed (sled fixes the setting at
    /// creation) open and keep working; new ones are compressed, and a rebuild replaces an
    /// uncompressed state database by a compressed one.
    #[tokio::test]
    async fn uncompressed_databases_still_open_and_rebuilds_compress_them() {
        let dir = tempfile::tempdir().unwrap();
        for path in ["log", "state/gen-1"] {
            let db = sled::Config::new()
                .path(dir.path().join(path))
                .open()
                .unwrap();
            db.flush().unwrap();
        }
        std::fs::write(dir.path().join("state/CURRENT"), "1").unwrap();
        write_sessions(dir.path(), 200).await;
        let mut store = reopen(dir.path()).await;
        assert!(!compressed(&dir.path().join("log")));
        assert!(!compressed(&dir.path().join("state/gen-1")));
        let log = store.log.get_log_state().await.unwrap();
        assert_eq!(log.last_log_id.map(|id| id.index), Some(200));
        assert_eq!(store.state_machine.reader().applied_index(), 200);
        let mut builder = store.state_machine.get_snapshot_builder().await;
        builder.build_snapshot().await.unwrap();
        store.state_machine.always_rebuild(usize::MAX);
        builder.build_snapshot().await.unwrap();
        assert!(compressed(&dir.path().join("state/gen-2")));
        assert!(holds_session(&store, 200));
        let fresh = tempfile::tempdir().unwrap();
        drop(Store::open(fresh.path(), TEST_SLED).unwrap());
        assert!(compressed(&fresh.path().join("log")));
        assert!(compressed(&fresh.path().join("state/gen-1")));
    }

    /// With compression turned off, databases created compressed still open and keep their
    /// data; new databases, and a rebuilt state database, are uncompressed.
    #[tokio::test]
    async fn with_compression_off_compressed_databases_open_and_new_ones_are_uncompressed() {
        let dir = tempfile::tempdir().unwrap();
        write_sessions(dir.path(), 200).await;
        let uncompressed = SledOptions {
            compression: false,
            ..TEST_SLED
        };
        let mut store = reopen_with(dir.path(), uncompressed).await;
        assert!(compressed(&dir.path().join("log")));
        assert!(compressed(&dir.path().join("state/gen-1")));
        let log = store.log.get_log_state().await.unwrap();
        assert_eq!(log.last_log_id.map(|id| id.index), Some(200));
        assert!(holds_session(&store, 200));
        let mut builder = store.state_machine.get_snapshot_builder().await;
        builder.build_snapshot().await.unwrap();
        store.state_machine.always_rebuild(usize::MAX);
        builder.build_snapshot().await.unwrap();
        assert!(!compressed(&dir.path().join("state/gen-2")));
        assert!(holds_session(&store, 200));
        let fresh = tempfile::tempdir().unwrap();
        drop(Store::open(fresh.path(), uncompressed).unwrap());
        assert!(!compressed(&fresh.path().join("log")));
        assert!(!compressed(&fresh.path().join("state/gen-1")));
    }

    /// A build that finds the state database grown beyond its live data rebuilds it into
    /// a fresh generation while writes go on: the result, before and after a restart, is
    /// exactly the state that applying every entry gives, and the old files are gone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rebuild_while_writes_go_on_keeps_every_write() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), TEST_SLED).unwrap();
        let first: Vec<_> = (1..=3_000).map(|i| create_entry(i, i as u32)).collect();
        store.state_machine.apply(first).await.unwrap();
        let mut builder = store.state_machine.get_snapshot_builder().await;
        builder.build_snapshot().await.unwrap();
        let state = dir.path().join("state");
        assert!(
            state.join("gen-1").exists(),
            "no rebuild below the threshold"
        );
        store.state_machine.always_rebuild(usize::MAX);
        let build = tokio::spawn(async move { builder.build_snapshot().await });
        let mut next = 3_001;
        while !build.is_finished() {
            store
                .state_machine
                .apply([create_entry(next, next as u32)])
                .await
                .unwrap();
            next += 1;
        }
        build.await.unwrap().unwrap();
        assert!(next > 3_001, "no write went on during the rebuild");
        for _ in 0..50 {
            store
                .state_machine
                .apply([create_entry(next, next as u32)])
                .await
                .unwrap();
            next += 1;
        }
        assert_eq!(std::fs::read_to_string(state.join("CURRENT")).unwrap(), "2");
        assert!(!state.join("gen-1").exists());

        let reference_dir = tempfile::tempdir().unwrap();
        let mut reference = Store::open(reference_dir.path(), TEST_SLED).unwrap();
        let all: Vec<_> = (1..next).map(|i| create_entry(i, i as u32)).collect();
        reference.state_machine.apply(all).await.unwrap();
        let expected = everything(&reference.state_machine.reader());
        assert_eq!(everything(&store.state_machine.reader()), expected);
        assert_eq!(store.state_machine.reader().applied_index(), next - 1);
        drop(store);
        let mut store = reopen(dir.path()).await;
        assert_eq!(everything(&store.state_machine.reader()), expected);
        let (applied, _) = store.state_machine.applied_state().await.unwrap();
        assert_eq!(applied.map(|id| id.index), Some(next - 1));
    }

    /// What garbage collection deletes after a snapshot comes off the live data the rebuild
    /// policy sees, until the next snapshot measures it again; other deletions do not.
    #[tokio::test]
    async fn collected_keys_lower_the_live_data_until_the_next_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), TEST_SLED).unwrap();
        let creates: Vec<_> = (1..=100).map(|i| create_entry(i, i as u32)).collect();
        store.state_machine.apply(creates).await.unwrap();
        let mut builder = store.state_machine.get_snapshot_builder().await;
        builder.build_snapshot().await.unwrap();
        let live = store.state_machine.live_estimate();
        assert!(live > 0);
        let at = |index: u64, now_ms: i64, kind: command::Kind| codec::Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command {
                schema_version: SCHEMA_VERSION,
                now_ms,
                kind: Some(kind),
                ..Default::default()
            }),
        };
        let revoke = command::Kind::Revoke(crate::proto::internal::Revoke {
            tenant: "t".into(),
            scope: crate::proto::v1::RevokeScope::Session as i32,
            id: format!("sid_{:022}", 1),
            ..Default::default()
        });
        store
            .state_machine
            .apply([at(101, 2_000, revoke)])
            .await
            .unwrap();
        assert_eq!(store.state_machine.live_estimate(), live);
        let collect = command::Kind::CollectGarbage(crate::proto::internal::CollectGarbage {
            limit: 1_000,
            ..Default::default()
        });
        store
            .state_machine
            .apply([at(102, 20_000_000, collect)])
            .await
            .unwrap();
        let after = store.state_machine.live_estimate();
        assert!(
            after < live / 10,
            "{after} of {live} left after collecting every session"
        );
        builder.build_snapshot().await.unwrap();
        let measured = store.state_machine.live_estimate();
        assert!(measured > after && measured < live / 2, "{measured}");
    }

    /// A rebuild the writes outrun (more written keys to carry over than it may hold) is
    /// given up with every write kept, and no rebuild is due or tried until the back-off
    /// ends; then one is due (but not while a build runs), and the next build rebuilds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rebuild_the_writes_outrun_is_given_up_and_due_again_only_after_a_back_off() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), TEST_SLED).unwrap();
        let first: Vec<_> = (1..=3_000).map(|i| create_entry(i, i as u32)).collect();
        store.state_machine.apply(first).await.unwrap();
        let mut builder = store.state_machine.get_snapshot_builder().await;
        builder.build_snapshot().await.unwrap();
        store.state_machine.always_rebuild(10);
        let build = tokio::spawn(async move { builder.build_snapshot().await });
        let mut next = 3_001;
        while !build.is_finished() {
            store
                .state_machine
                .apply([create_entry(next, next as u32)])
                .await
                .unwrap();
            next += 1;
        }
        let mut builder = store.state_machine.get_snapshot_builder().await;
        build.await.unwrap().unwrap();
        assert!(next > 3_001, "no write went on during the rebuild");
        let state = dir.path().join("state");
        let current = || std::fs::read_to_string(state.join("CURRENT")).unwrap();
        let generations = || std::fs::read_dir(&state).unwrap().count() - 1;
        assert_eq!(current(), "1", "the rebuild was given up");
        assert_eq!(generations(), 1, "the given-up generation is removed");
        let mut probe = store.state_machine.rebuild_probe();
        assert!(!probe.due(), "the first question only starts measuring");
        assert!(!probe.due(), "backing off");
        builder.build_snapshot().await.unwrap();
        assert_eq!((current().as_str(), generations()), ("1", 1), "backing off");
        store.state_machine.end_rebuild_back_off();
        let during_a_build = store.state_machine.as_if_building(|| probe.due());
        assert!(!during_a_build, "a build is running");
        assert!(probe.due(), "outgrown, quiet and no back-off");
        builder.build_snapshot().await.unwrap();
        assert_eq!((current().as_str(), generations()), ("3", 1), "rebuilt");

        let reference_dir = tempfile::tempdir().unwrap();
        let mut reference = Store::open(reference_dir.path(), TEST_SLED).unwrap();
        let all: Vec<_> = (1..next).map(|i| create_entry(i, i as u32)).collect();
        reference.state_machine.apply(all).await.unwrap();
        let expected = everything(&reference.state_machine.reader());
        assert_eq!(everything(&store.state_machine.reader()), expected);
    }

    fn everything(r: &StateReader) -> Vec<crate::domain::StateEntry> {
        r.scan_prefix(b"", None, usize::MAX).unwrap()
    }

    /// A source store with 4,000 applied creates and its snapshot file, and a target store
    /// with an unrelated older state; returns the source's full state too.
    async fn source_and_stale_target() -> (
        tempfile::TempDir,
        Vec<crate::domain::StateEntry>,
        tempfile::TempDir,
        Vec<crate::domain::StateEntry>,
    ) {
        let source_dir = tempfile::tempdir().unwrap();
        let mut source = Store::open(source_dir.path(), TEST_SLED).unwrap();
        let entries: Vec<_> = (1..=4_000).map(|i| create_entry(i, i as u32)).collect();
        source.state_machine.apply(entries).await.unwrap();
        source
            .state_machine
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let expected = everything(&source.state_machine.reader());
        let target_dir = tempfile::tempdir().unwrap();
        let mut target = Store::open(target_dir.path(), TEST_SLED).unwrap();
        let stale: Vec<_> = (1..=1_500)
            .map(|i| create_entry(i, 1_000_000 + i as u32))
            .collect();
        target.state_machine.apply(stale).await.unwrap();
        let old = everything(&target.state_machine.reader());
        target.state_machine.reader().flush().await.unwrap();
        (source_dir, expected, target_dir, old)
    }

    /// Every state a crash can leave an install in: after a restart the node has either its
    /// old state (with its log) or the complete new one, and leftovers are removed.
    #[tokio::test]
    async fn a_crash_at_any_point_of_an_install_leaves_the_old_or_the_new_state() {
        let (source_dir, expected, target_dir, old) = source_and_stale_target().await;
        let source_snapshot = source_dir
            .path()
            .join("snapshots")
            .join(state_machine::SNAPSHOT_FILE);
        let target = target_dir.path();
        let snapshots = target.join("snapshots");
        let bytes = std::fs::read(&source_snapshot).unwrap();

        // Killed while receiving: a partial incoming file, and a half-filled generation.
        std::fs::write(
            snapshots.join("incoming-00ff.snap"),
            &bytes[..bytes.len() / 2],
        )
        .unwrap();
        let orphan = target.join("state").join("gen-2");
        {
            let generations =
                generation::Generations::new(&target.join("state"), TEST_SLED).unwrap();
            let g = generations.open(2).unwrap();
            g.tree.insert(b"s-half", &b"x"[..]).unwrap();
            g.db.flush().unwrap();
        }
        let store = reopen(target).await;
        assert_eq!(everything(&store.state_machine.reader()), old);
        assert!(!snapshots.join("incoming-00ff.snap").exists());
        assert!(!orphan.exists());
        drop(store);

        // A damaged received file (cannot happen by construction, renamed only once synced)
        // is ignored.
        std::fs::write(snapshots.join("received.snap"), &bytes[..bytes.len() - 3]).unwrap();
        let store = reopen(target).await;
        assert_eq!(everything(&store.state_machine.reader()), old);
        assert!(!snapshots.join("received.snap").exists());
        drop(store);

        // Killed after the last chunk was received and synced, before or during the install.
        std::fs::write(snapshots.join("received.snap"), &bytes).unwrap();
        let store = reopen(target).await;
        assert_eq!(everything(&store.state_machine.reader()), expected);
        assert!(!snapshots.join("received.snap").exists());
        drop(store);

        // Killed after the snapshot became the current one, before the switch.
        let (_, expected, target_dir, old) = source_and_stale_target().await;
        let target = target_dir.path();
        std::fs::write(
            target.join("snapshots").join(state_machine::SNAPSHOT_FILE),
            &bytes,
        )
        .unwrap();
        let store = reopen(target).await;
        let installed = everything(&store.state_machine.reader());
        assert_ne!(installed, old);
        assert_eq!(installed, expected);
        let mut sm = store.state_machine;
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied.map(|id| id.index), Some(4_000));
    }

    /// Queries running while a snapshot is installed see the whole old state or the whole
    /// new one, never a mix or an emptied tree.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_during_an_install_see_the_old_or_the_new_state() {
        let (source_dir, expected, target_dir, old) = source_and_stale_target().await;
        let mut target = reopen(target_dir.path()).await;
        let reader = target.state_machine.reader();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let scanning = {
            let (reader, done) = (reader.clone(), done.clone());
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                while !done.load(std::sync::atomic::Ordering::Acquire) {
                    seen.push(reader.scan_prefix(b"", None, usize::MAX).unwrap().len());
                }
                seen
            })
        };
        let path = source_dir
            .path()
            .join("snapshots")
            .join(state_machine::SNAPSHOT_FILE);
        let file = std::fs::File::open(&path).unwrap();
        let header = snapshot::read_header(&path).unwrap().unwrap();
        let meta = openraft::SnapshotMeta {
            last_log_id: codec::optional_log_id(header.last_log_id.as_ref()),
            last_membership: Default::default(),
            snapshot_id: header.snapshot_id,
        };
        let mut subscribed = reader.subscribe().0;
        target
            .state_machine
            .install_snapshot(
                &meta,
                Box::new(snapshot::SnapshotFile::from_std(file, &path)),
            )
            .await
            .unwrap();
        done.store(true, std::sync::atomic::Ordering::Release);
        let seen = scanning.join().unwrap();
        assert!(!seen.is_empty());
        for n in &seen {
            assert!(
                *n == old.len() || *n == expected.len(),
                "a read saw {n} keys"
            );
        }
        assert_eq!(everything(&reader), expected);
        let marker = subscribed.try_recv().unwrap();
        assert!(marker.installed);
        assert_eq!(marker.revision, 4_000);
        assert_eq!(reader.applied_index(), 4_000);
    }

    /// A data directory written by storage format 1 (one sled database, a prost snapshot) is
    /// migrated once at start and keeps its log, state and snapshot.
    #[tokio::test]
    async fn a_format_1_data_directory_is_migrated_and_keeps_everything() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format1");
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&fixture.join("data"), dir.path());
        let sids = std::fs::read_to_string(fixture.join("sids.txt")).unwrap();
        let revoked = std::fs::read_to_string(fixture.join("revoked.txt")).unwrap();
        for pass in 0..2 {
            let mut store = reopen(dir.path()).await;
            assert!(!dir.path().join("sled").exists(), "pass {pass}");
            let reader = store.state_machine.reader();
            for sid in sids.lines() {
                let session = crate::domain::query::session_by_id(&reader, "acme", sid)
                    .unwrap()
                    .unwrap_or_else(|| panic!("session {sid} lost"));
                assert_eq!(session.revoked_at_ms != 0, sid == revoked.trim(), "{sid}");
            }
            assert_eq!(sids.lines().count(), 28);
            let log = store.log.get_log_state().await.unwrap();
            let last = log.last_log_id.unwrap().index;
            assert!(last >= 30, "log ends at {last}");
            let read = store.log.try_get_log_entries(last..=last).await.unwrap();
            assert_eq!(read.len(), 1);
            assert!(store.log.read_vote().await.unwrap().is_some());
            let snapshot = store
                .state_machine
                .get_current_snapshot()
                .await
                .unwrap()
                .expect("the snapshot survives the migration");
            assert!(snapshot.meta.last_log_id.unwrap().index >= 10);
            let (applied, membership) = store.state_machine.applied_state().await.unwrap();
            assert!(applied.unwrap().index >= snapshot.meta.last_log_id.unwrap().index);
            assert_eq!(membership.membership().voter_ids().count(), 1);
            drop(store);
        }
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), &target).unwrap();
            }
        }
    }
}
