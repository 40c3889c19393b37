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
