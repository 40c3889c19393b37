//! Migration of a data directory written by storage format 1: one sled database
//! (`<data_dir>/sled`) holding the trees `raft_log`, `raft_meta` and `state`, and a snapshot
//! file holding one prost `SnapshotRecord`. It runs once, at start: the log trees are copied
//! to the log database, the state tree into state generation 1, the snapshot rewritten in
//! the streamed format; only then is the old database renamed away and removed. A crash
//! part-way leaves the old database in place, and the next start migrates again from it.

use std::io;
use std::path::Path;

use super::generation::{Generations, SledOptions};
use super::snapshot::{self, SnapshotWriter};
use crate::proto::internal::SnapshotRecord;
use crate::store::codec;
use crate::Error;

/// The database directory of format 1.
const FORMAT_1_DB: &str = "sled";
/// The same directory once migrated, until it is removed.
const MIGRATED_DB: &str = "sled.migrated";
/// Keys copied per sled batch.
const COPY_BATCH: usize = 10_000;

fn failed(e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("cannot migrate the data directory: {e}"))
}

/// Migrates `data_dir` from format 1 if it is in that format: the log trees into `log_db`,
/// the state into generation 1 of `state_dir`, the snapshot in `snapshot_dir` rewritten.
pub fn from_format_1(
    data_dir: &Path,
    log_db: &sled::Db,
    state_dir: &Path,
    snapshot_dir: &Path,
    sled: SledOptions,
) -> Result<(), Error> {
    let migrated = data_dir.join(MIGRATED_DB);
    if migrated.exists() {
        std::fs::remove_dir_all(&migrated).map_err(failed)?;
    }
    let old_dir = data_dir.join(FORMAT_1_DB);
    if !old_dir.exists() {
        return Ok(());
    }
    tracing::info!(
        data_dir = %data_dir.display(),
        "the data directory is in storage format 1 (one sled database); migrating it once"
    );
    let old = sled::Config::new()
        .path(&old_dir)
        .cache_capacity(sled.cache_bytes)
        .open()
        .map_err(failed)?;
    for name in ["raft_log", "raft_meta"] {
        let target = log_db.open_tree(name).map_err(failed)?;
        target.clear().map_err(failed)?;
        copy_tree(&old.open_tree(name).map_err(failed)?, &target)?;
    }
    log_db.flush().map_err(failed)?;
    if state_dir.exists() {
        std::fs::remove_dir_all(state_dir).map_err(failed)?;
    }
    let generations = Generations::new(state_dir, sled).map_err(failed)?;
    {
        let generation = generations.create_fresh(1).map_err(failed)?;
        copy_tree(&old.open_tree("state").map_err(failed)?, &generation.tree)?;
        generation.db.flush().map_err(failed)?;
    }
    rewrite_snapshot(&snapshot_dir.join(super::state_machine::SNAPSHOT_FILE))?;
    generations.make_current(1).map_err(failed)?;
    drop(old);
    std::fs::rename(&old_dir, &migrated).map_err(failed)?;
    snapshot::sync_dir(data_dir).map_err(failed)?;
    std::fs::remove_dir_all(&migrated).map_err(failed)?;
    tracing::info!("migrated the data directory to storage format 2");
    Ok(())
}

fn copy_tree(from: &sled::Tree, to: &sled::Tree) -> Result<(), Error> {
    let mut batch = sled::Batch::default();
    let mut pending = 0;
    for item in from.iter() {
        let (key, value) = item.map_err(failed)?;
        batch.insert(key, value);
        pending += 1;
        if pending == COPY_BATCH {
            to.apply_batch(std::mem::take(&mut batch)).map_err(failed)?;
            pending = 0;
        }
    }
    to.apply_batch(batch).map_err(failed)
}

/// Rewrites a format-1 snapshot file (one prost record, read whole: format-1 nodes held it
/// in memory anyway) in the streamed format, atomically. A file already in the streamed
/// format, or no file, is left as it is.
fn rewrite_snapshot(path: &Path) -> Result<(), Error> {
    match snapshot::has_magic(path) {
        Ok(true) => return Ok(()),
        Ok(false) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(failed(e)),
    }
    let bytes = std::fs::read(path).map_err(failed)?;
    let mut record: SnapshotRecord = codec::decode("snapshot", &bytes).map_err(failed)?;
    drop(bytes);
    let mut entries = std::mem::take(&mut record.entries);
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    let tmp = path.with_extension("snap.tmp");
    let mut writer = SnapshotWriter::create(&tmp, &record).map_err(failed)?;
    for entry in entries.into_iter().filter(|e| e.key.first() != Some(&0)) {
        writer.push(&entry.key, &entry.value).map_err(failed)?;
    }
    writer.finish().map_err(failed)?;
    std::fs::rename(&tmp, path).map_err(failed)?;
    snapshot::sync_dir(path.parent().unwrap_or(Path::new("."))).map_err(failed)
}
