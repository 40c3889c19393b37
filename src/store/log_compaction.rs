//! Compaction of the log database at start.
//!
//! sled never shrinks its files, so the log database keeps the size it reached when the log
//! was longest: at 1M sessions, ~230 MB after a full-speed load, for a few MB of entries
//! kept once the log is purged behind a snapshot. At start, before anything opens it, a log
//! database whose files take more than [`OUTGROWN_FACTOR`] times what it still holds (and at
//! least the given minimum) is copied into a fresh one: the entries after the purge point,
//! the vote, the commit and purge points. Nothing else runs meanwhile, so no write can race
//! the copy.
//!
//! The switch is crash-safe. The copy is written to `log.compacting`, flushed and renamed to
//! `log.compacted` (complete from then on); then `log` is renamed to `log.old`,
//! `log.compacted` to `log`, and `log.old` removed. [`recover`] finishes or undoes whatever
//! a crash interrupted: a start always opens either the old database or its complete copy.

use std::path::Path;

use prost::Message;

use super::codec;
use super::generation::{self, SledOptions};
use super::snapshot::sync_dir;
use crate::proto::internal::LogIdRecord;
use crate::Error;

/// A log database is compacted once its files take this many times what it holds.
pub const OUTGROWN_FACTOR: u64 = 4;
/// Keys copied per sled batch.
const COPY_BATCH: usize = 1_024;
/// The tree of log entries (key: big-endian index).
const LOG_TREE: &[u8] = b"raft_log";
/// The tree of the vote, commit and purge points.
const META_TREE: &[u8] = b"raft_meta";
/// The key of the purge point in [`META_TREE`].
const PURGED_KEY: &[u8] = b"purged";

fn failed(e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("cannot compact the log database: {e}"))
}

/// Finishes or undoes a compaction a crash interrupted, then compacts `data_dir`'s log
/// database (`<data_dir>/<name>`) if its files take at least `min_bytes` and more than
/// [`OUTGROWN_FACTOR`] times what it holds.
pub fn compact_if_outgrown(
    data_dir: &Path,
    name: &str,
    cache_bytes: u64,
    sled: SledOptions,
    min_bytes: u64,
) -> Result<(), Error> {
    recover(data_dir, name)?;
    let live_dir = data_dir.join(name);
    if !live_dir.exists() {
        return Ok(());
    }
    let open = |path: &Path| {
        generation::open_db(
            sled::Config::new().path(path).cache_capacity(cache_bytes),
            sled.compression,
        )
        .map_err(failed)
    };
    let old = open(&live_dir)?;
    let on_disk = old.size_on_disk().map_err(failed)?;
    if on_disk < min_bytes {
        return Ok(());
    }
    let kept_after = purge_point(&old)?;
    let held = held_bytes(&old, kept_after)?;
    if on_disk <= held.saturating_mul(OUTGROWN_FACTOR) {
        return Ok(());
    }
    let compacting = data_dir.join(format!("{name}.compacting"));
    if compacting.exists() {
        std::fs::remove_dir_all(&compacting).map_err(failed)?;
    }
    let copy = open(&compacting)?;
    copy_kept(&old, &copy, kept_after)?;
    copy.flush().map_err(failed)?;
    let compacted_bytes = copy.size_on_disk().map_err(failed)?;
    drop(copy);
    drop(old);
    std::fs::rename(&compacting, data_dir.join(format!("{name}.compacted"))).map_err(failed)?;
    sync_dir(data_dir).map_err(failed)?;
    recover(data_dir, name)?;
    tracing::info!(
        bytes_before = on_disk,
        bytes_after = compacted_bytes,
        "log database compacted"
    );
    Ok(())
}

/// Brings `data_dir` to one log database named `name` after a compaction stopped anywhere:
/// an unfinished copy is removed, a complete one replaces the old database, and the old
/// database is removed once replaced.
pub fn recover(data_dir: &Path, name: &str) -> Result<(), Error> {
    let live = data_dir.join(name);
    let compacting = data_dir.join(format!("{name}.compacting"));
    let compacted = data_dir.join(format!("{name}.compacted"));
    let old = data_dir.join(format!("{name}.old"));
    if compacting.exists() {
        std::fs::remove_dir_all(&compacting).map_err(failed)?;
    }
    if compacted.exists() {
        if live.exists() {
            std::fs::rename(&live, &old).map_err(failed)?;
        }
        std::fs::rename(&compacted, &live).map_err(failed)?;
        sync_dir(data_dir).map_err(failed)?;
    } else if !live.exists() && old.exists() {
        std::fs::rename(&old, &live).map_err(failed)?;
        sync_dir(data_dir).map_err(failed)?;
    }
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(failed)?;
    }
    Ok(())
}

/// The index of the last purged entry (0: none).
fn purge_point(db: &sled::Db) -> Result<u64, Error> {
    let meta = db.open_tree(META_TREE).map_err(failed)?;
    match meta.get(PURGED_KEY).map_err(failed)? {
        None => Ok(0),
        Some(bytes) => {
            let record = LogIdRecord::decode(bytes.as_ref()).map_err(failed)?;
            Ok(codec::log_id(&record).index)
        }
    }
}

/// Whether `key` of `tree` is kept by a compaction: every key but the log's entries up to
/// the purge point (still on disk until the background purge removes them).
fn kept(tree: &[u8], key: &[u8], kept_after: u64) -> bool {
    tree != LOG_TREE
        || key.try_into().map_or(true, |index: [u8; 8]| {
            u64::from_be_bytes(index) > kept_after
        })
}

/// The bytes of keys and values a compaction keeps.
fn held_bytes(db: &sled::Db, kept_after: u64) -> Result<u64, Error> {
    let mut bytes = 0u64;
    for name in db.tree_names() {
        for item in db.open_tree(&name).map_err(failed)?.iter() {
            let (key, value) = item.map_err(failed)?;
            if kept(&name, &key, kept_after) {
                bytes += (key.len() + value.len()) as u64;
            }
        }
    }
    Ok(bytes)
}

/// Copies what a compaction keeps of every tree of `from` into `to`.
fn copy_kept(from: &sled::Db, to: &sled::Db, kept_after: u64) -> Result<(), Error> {
    for name in from.tree_names() {
        let target = to.open_tree(&name).map_err(failed)?;
        let mut batch = sled::Batch::default();
        let mut pending = 0;
        for item in from.open_tree(&name).map_err(failed)?.iter() {
            let (key, value) = item.map_err(failed)?;
            if !kept(&name, &key, kept_after) {
                continue;
            }
            batch.insert(key, value);
            pending += 1;
            if pending == COPY_BATCH {
                target
                    .apply_batch(std::mem::take(&mut batch))
                    .map_err(failed)?;
                pending = 0;
            }
        }
        target.apply_batch(batch).map_err(failed)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLED: SledOptions = SledOptions {
        cache_bytes: 1024 * 1024,
        compression: false,
    };

    /// Opens the database at `path` once the previous handle's background threads let go
    /// of its lock.
    fn open(path: &Path) -> sled::Db {
        for _ in 0..200 {
            if let Ok(db) = sled::Config::new().path(path).open() {
                return db;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("{} stayed locked", path.display());
    }

    fn marked(path: &Path, mark: &str) {
        let db = open(path);
        db.open_tree(META_TREE)
            .unwrap()
            .insert("mark", mark)
            .unwrap();
        db.flush().unwrap();
    }

    fn mark(path: &Path) -> String {
        let db = open(path);
        let value = db.open_tree(META_TREE).unwrap().get("mark").unwrap();
        String::from_utf8(value.unwrap().to_vec()).unwrap()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Every point a crash can stop a compaction at leaves one database after [`recover`]:
    /// the old one until the copy is complete, the copy from then on.
    #[test]
    fn a_compaction_cut_short_anywhere_recovers_to_one_database() {
        type Layout = &'static [(&'static str, &'static str)];
        let cases: [(Layout, &str); 5] = [
            (&[("log", "old"), ("log.compacting", "partial")], "old"),
            (&[("log", "old"), ("log.compacted", "new")], "new"),
            (&[("log.old", "old"), ("log.compacted", "new")], "new"),
            (&[("log", "new"), ("log.old", "old")], "new"),
            (&[("log.old", "old")], "old"),
        ];
        for (layout, expected) in cases {
            let dir = tempfile::tempdir().unwrap();
            for (name, value) in layout {
                marked(&dir.path().join(name), value);
            }
            recover(dir.path(), "log").unwrap();
            assert_eq!(names(dir.path()), ["log"], "{layout:?}");
            assert_eq!(mark(&dir.path().join("log")), expected, "{layout:?}");
        }
    }

    /// A database holding mostly purged entries is copied without them; one that holds
    /// little garbage, or is below the minimum, is left as it is.
    #[test]
    fn only_an_outgrown_database_is_compacted_and_it_keeps_everything_after_the_purge() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        {
            let db = open(&path);
            let log = db.open_tree(LOG_TREE).unwrap();
            for index in 1..=2_000u64 {
                log.insert(index.to_be_bytes(), vec![7u8; 1_000]).unwrap();
            }
            let meta = db.open_tree(META_TREE).unwrap();
            let purged = codec::log_id_record(&openraft::LogId::new(
                openraft::CommittedLeaderId::new(3, 1),
                1_990,
            ));
            meta.insert(PURGED_KEY, purged.encode_to_vec()).unwrap();
            meta.insert("vote", "v").unwrap();
            db.flush().unwrap();
        }
        let size = || fs_size(&path);
        let before = size();
        compact_if_outgrown(dir.path(), "log", 1 << 20, SLED, 2 * before).unwrap();
        let entries = open(&path).open_tree(LOG_TREE).unwrap().len();
        assert_eq!(entries, 2_000, "below the minimum: left as it is");
        compact_if_outgrown(dir.path(), "log", 1 << 20, SLED, 0).unwrap();
        assert!(size() < before / 4, "{} of {before}", size());
        assert_eq!(names(dir.path()), ["log"]);
        let db = open(&path);
        let log = db.open_tree(LOG_TREE).unwrap();
        let indexes: Vec<u64> = log
            .iter()
            .keys()
            .map(|k| u64::from_be_bytes(k.unwrap().as_ref().try_into().unwrap()))
            .collect();
        assert_eq!(indexes, (1_991..=2_000).collect::<Vec<_>>());
        let meta = db.open_tree(META_TREE).unwrap();
        assert_eq!(meta.get("vote").unwrap().unwrap(), "v");
        assert_eq!(purge_point(&db).unwrap(), 1_990);
    }

    fn fs_size(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    fs_size(&e.path())
                } else {
                    e.metadata().unwrap().len()
                }
            })
            .sum()
    }
}
