//! Durable storage for one node: the Raft log, vote and state machine in one sled database
//! (`<data_dir>/sled`), snapshots under `<data_dir>/snapshots`. Every record is a prost
//! message carrying a schema version ([`codec`]).

pub mod codec;
pub mod log;
pub mod state_machine;

use std::path::Path;

pub use log::{Flusher, LogStore};
pub use state_machine::{StateMachine, StateReader};

use crate::Error;

/// The opened storage of a node.
pub struct Store {
    /// The Raft log and vote.
    pub log: LogStore,
    /// The state machine.
    pub state_machine: StateMachine,
    /// Flushes the whole database (group commit).
    pub flusher: Flusher,
}

impl Store {
    /// Opens (creating if needed) the storage under `data_dir`. Must run inside a tokio
    /// runtime (it starts the flusher task).
    pub fn open(data_dir: &Path) -> Result<Self, Error> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            Error::Unavailable(format!("cannot create {}: {e}", data_dir.display()))
        })?;
        let db = sled::Config::new()
            .path(data_dir.join("sled"))
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|e| Error::Unavailable(format!("cannot open the database: {e}")))?;
        let flusher = Flusher::start(db.clone());
        let log = LogStore::open(&db, flusher.clone())
            .map_err(|e| Error::Unavailable(format!("cannot open the log: {e}")))?;
        let state_machine = StateMachine::open(&db, &data_dir.join("snapshots"))
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

    use super::*;
    use crate::domain::StateRead;
    use crate::proto::internal::{command, Command, CreateSession};
    use crate::proto::SCHEMA_VERSION;
    use crate::raft::TypeConfig;

    struct TempStores;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for TempStores {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<u64>> {
            let dir = tempfile::tempdir().expect("temp dir");
            let store = Store::open(dir.path()).expect("open store");
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
                now_ms: 1_000,
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

    /// Opens the store again once the previous instance's background flusher has let go of
    /// the database lock.
    async fn reopen(dir: &Path) -> Store {
        for _ in 0..200 {
            if let Ok(store) = Store::open(dir) {
                return store;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the database stayed locked");
    }

    #[tokio::test]
    async fn log_vote_and_applied_state_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = Store::open(dir.path()).unwrap();
            store
                .log
                .save_vote(&Vote::new_committed(3, 1))
                .await
                .unwrap();
            let entries: Vec<_> = (1..=50).map(|i| create_entry(i, i as u32)).collect();
            store.log.blocking_append(entries.clone()).await.unwrap();
            store.state_machine.apply(entries).await.unwrap();
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
        assert!(crate::domain::query::session_by_id(
            &store.state_machine.reader(),
            "t",
            &format!("sid_{:022}", 50)
        )
        .unwrap()
        .is_some());
    }

    /// Large enough that both clearing the old state and writing the new one take several
    /// install batches.
    #[tokio::test]
    async fn a_snapshot_installed_elsewhere_reproduces_the_state_byte_for_byte() {
        let source_dir = tempfile::tempdir().unwrap();
        let mut source = Store::open(source_dir.path()).unwrap();
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
        let mut target = Store::open(target_dir.path()).unwrap();
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
        let current = target
            .state_machine
            .get_current_snapshot()
            .await
            .unwrap()
            .expect("installed snapshot is the current one");
        assert_eq!(current.meta, snapshot.meta);
    }
}
