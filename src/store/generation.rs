//! Generations of the state database. Each generation is one sled `Db` in
//! `state/gen-<n>`; the file `state/CURRENT` names the live one and is replaced atomically
//! (temporary file, sync, rename, directory sync). A snapshot is installed into a fresh
//! generation that becomes live only once complete and flushed, so a node is always either
//! its old state or the complete new one; rebuilding from scratch also leaves sled with far
//! less garbage than rewriting a live tree.
//!
//! A generation also carries the point-in-time copy a snapshot build takes of it while
//! writes go on: the build copies keys in order, a chunk at a time, and every write to a key
//! the build has not reached yet first records the key's value as it was when the build
//! started (its pre-image), which the build then uses instead of the newer value.
//!
//! And it tracks the keys written while it is being rebuilt: a rebuild fills a fresh
//! generation from a snapshot of this one, carries the keys written since over, then
//! switches to it (sled never shrinks its files; a rebuilt database holds no garbage).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use super::snapshot::sync_dir;

const POINTER: &str = "CURRENT";
const PREFIX: &str = "gen-";

/// One state database.
pub struct Generation {
    /// Its number (the directory `gen-<number>`).
    pub number: u64,
    /// The sled database.
    pub db: sled::Db,
    /// The tree holding the state.
    pub tree: sled::Tree,
    copy: Mutex<Option<Copy>>,
    tracked: Mutex<Option<Tracked>>,
}

/// Keys written since a rebuild started, not yet carried over to the rebuilt generation.
struct Tracked {
    keys: BTreeSet<Vec<u8>>,
    /// Most keys held at once (bounds the rebuild's memory).
    max: usize,
    /// More than `max` were pending at once: the rebuild is given up.
    overflowed: bool,
}

/// A point-in-time copy in progress.
#[derive(Default)]
struct Copy {
    /// The last key copied so far.
    cursor: Option<Vec<u8>>,
    /// Values, as of the start of the copy, of keys after the cursor written since.
    pre_images: BTreeMap<Vec<u8>, Option<sled::IVec>>,
}

/// Keys read for a copy, not yet settled against the pre-images of later writes.
pub struct ReadChunk {
    lower: Bound<Vec<u8>>,
    stored: Vec<(Vec<u8>, Vec<u8>)>,
    last: bool,
}

/// Entries of one copied chunk, and whether it was the last.
pub type CopiedChunk = (Vec<(Vec<u8>, Vec<u8>)>, bool);

/// The first key a copy includes: keys starting with `0x00` are store metadata.
const FIRST_STATE_KEY: &[u8] = &[1];

impl Generation {
    /// Starts a point-in-time copy of the state as it is now. Call under the lock that
    /// orders writes.
    pub fn start_copy(&self) {
        if let Ok(mut copy) = self.copy.lock() {
            *copy = Some(Copy::default());
        }
    }

    /// Ends the copy in progress (finished or abandoned).
    pub fn stop_copy(&self) {
        if let Ok(mut copy) = self.copy.lock() {
            *copy = None;
        }
    }

    /// Records, for the copy in progress, the current values of `keys` it has not reached
    /// yet, and, for a rebuild in progress, that `keys` are written. Call under the lock
    /// that orders writes, before writing them.
    pub fn before_writes<'k>(
        &self,
        keys: impl Iterator<Item = &'k [u8]> + Clone,
    ) -> Result<(), sled::Error> {
        self.track(keys.clone())?;
        let mut copy = self.copy.lock().map_err(|_| poisoned())?;
        let Some(copy) = copy.as_mut() else {
            return Ok(());
        };
        for key in keys {
            let reached = match &copy.cursor {
                Some(cursor) => key <= cursor.as_slice(),
                None => key < FIRST_STATE_KEY,
            };
            if !reached && !copy.pre_images.contains_key(key) {
                copy.pre_images.insert(key.to_vec(), self.tree.get(key)?);
            }
        }
        Ok(())
    }

    /// Reads the next (at most `max`) keys after the copy's cursor as they are now. Needs no
    /// lock, so that writes go on while a slow read misses the cache: a key written
    /// meanwhile has its pre-image recorded (the cursor only moves in [`settle_chunk`]),
    /// which then overrides what was read. Only the copy's own builder may call it.
    ///
    /// [`settle_chunk`]: Generation::settle_chunk
    pub fn read_chunk(&self, max: usize) -> Result<ReadChunk, sled::Error> {
        let lower = {
            let mut copy = self.copy.lock().map_err(|_| poisoned())?;
            match &copy.get_or_insert_with(Copy::default).cursor {
                Some(cursor) => Bound::Excluded(cursor.clone()),
                None => Bound::Included(FIRST_STATE_KEY.to_vec()),
            }
        };
        let mut stored = Vec::new();
        for item in self
            .tree
            .range::<Vec<u8>, _>((lower.clone(), Bound::Unbounded))
            .take(max)
        {
            let (key, value) = item?;
            stored.push((key.to_vec(), value.to_vec()));
        }
        let last = stored.len() < max;
        Ok(ReadChunk {
            lower,
            stored,
            last,
        })
    }

    /// The entries of a chunk from [`read_chunk`](Generation::read_chunk) with their values
    /// as of the copy's start, and whether it was the last; moves the cursor past it. Call
    /// under the lock that orders writes: it only merges in-memory pre-images.
    pub fn settle_chunk(&self, chunk: ReadChunk) -> Result<CopiedChunk, sled::Error> {
        let ReadChunk {
            lower,
            stored,
            last,
        } = chunk;
        let mut copy = self.copy.lock().map_err(|_| poisoned())?;
        let copy = copy.get_or_insert_with(Copy::default);
        let upper = match stored.last() {
            Some((key, _)) if !last => Bound::Included(key.clone()),
            _ => Bound::Unbounded,
        };
        let older: Vec<(Vec<u8>, Option<sled::IVec>)> = copy
            .pre_images
            .range::<Vec<u8>, _>((lower, upper))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (key, _) in &older {
            copy.pre_images.remove(key);
        }
        if let Some((key, _)) = stored.last() {
            copy.cursor = Some(key.clone());
        }
        Ok((merge(stored, older), last))
    }

    /// Starts tracking the keys written from now on, for a rebuild, holding at most `max`
    /// of them at once (past it, tracking overflows and the rebuild is given up). Call
    /// under the lock that orders writes, at the instant the rebuild's snapshot copy starts.
    pub fn start_tracking(&self, max: usize) {
        if let Ok(mut tracked) = self.tracked.lock() {
            *tracked = Some(Tracked {
                keys: BTreeSet::new(),
                max,
                overflowed: false,
            });
        }
    }

    /// Stops tracking written keys (the rebuild ended).
    pub fn stop_tracking(&self) {
        if let Ok(mut tracked) = self.tracked.lock() {
            *tracked = None;
        }
    }

    fn track<'k>(&self, keys: impl Iterator<Item = &'k [u8]>) -> Result<(), sled::Error> {
        let mut tracked = self.tracked.lock().map_err(|_| poisoned())?;
        let Some(tracked) = tracked.as_mut().filter(|t| !t.overflowed) else {
            return Ok(());
        };
        tracked.keys.extend(keys.map(<[u8]>::to_vec));
        if tracked.keys.len() > tracked.max {
            tracked.keys = BTreeSet::new();
            tracked.overflowed = true;
        }
        Ok(())
    }

    /// Takes the tracked keys up to and including `upto` (all of them if `None`); `None` if
    /// tracking overflowed or stopped. Call under the lock that orders writes; read their
    /// values with [`current_values`](Generation::current_values) after releasing it (a key
    /// written again meanwhile is tracked again, so a later carry-over brings its newer
    /// value).
    pub fn take_written(
        &self,
        upto: Option<&[u8]>,
    ) -> Result<Option<BTreeSet<Vec<u8>>>, sled::Error> {
        let mut tracked = self.tracked.lock().map_err(|_| poisoned())?;
        let Some(tracked) = tracked.as_mut().filter(|t| !t.overflowed) else {
            return Ok(None);
        };
        Ok(Some(match upto {
            None => std::mem::take(&mut tracked.keys),
            Some(upto) => {
                let rest = tracked.keys.split_off(&[upto, &[0][..]].concat());
                std::mem::replace(&mut tracked.keys, rest)
            }
        }))
    }

    /// `keys` with their current values (`None`: removed).
    pub fn current_values(
        &self,
        keys: impl IntoIterator<Item = Vec<u8>>,
    ) -> Result<Written, sled::Error> {
        keys.into_iter()
            .map(|key| {
                let value = self.tree.get(&key)?;
                Ok((key, value))
            })
            .collect()
    }
}

/// Written keys with their current values (`None`: removed).
pub type Written = Vec<(Vec<u8>, Option<sled::IVec>)>;

/// `stored` entries with the keys of `older` replaced by (or, if absent, added as) their
/// older values; a key that did not exist then is left out. Both inputs are sorted.
fn merge(
    stored: Vec<(Vec<u8>, Vec<u8>)>,
    older: Vec<(Vec<u8>, Option<sled::IVec>)>,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::with_capacity(stored.len());
    let mut older = older.into_iter().peekable();
    for (key, value) in stored {
        while let Some((k, v)) = older.next_if(|(k, _)| *k < key) {
            if let Some(v) = v {
                out.push((k, v.to_vec()));
            }
        }
        match older.next_if(|(k, _)| *k == key) {
            Some((k, Some(v))) => out.push((k, v.to_vec())),
            Some((_, None)) => {}
            None => out.push((key, value)),
        }
    }
    out.extend(older.filter_map(|(k, v)| v.map(|v| (k, v.to_vec()))));
    out
}

/// zstd level of sled's compression: level 1 costs a fraction of sled's default 5 (whose
/// compression took 13% of a loaded node's CPU at 1M sessions) for a slightly larger file.
/// The level is not part of sled's on-disk settings: any level reads any file.
const COMPRESSION_LEVEL: i32 = 1;

/// How the node's sled databases are opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SledOptions {
    /// sled page cache of the state database, in bytes.
    pub cache_bytes: u64,
    /// Whether new databases are created with sled's zstd compression (less disk, more CPU
    /// per write).
    pub compression: bool,
}

/// Opens the sled database of `config`, compressed (sled's zstd) if new and `compression`
/// is set. A database created with the other setting (sled fixes it at creation) is opened
/// as it is; it is replaced by one with this setting at the next install or rebuild. Waits
/// (a few seconds at most) for a previous handle's background thread to let go of the
/// database lock.
pub fn open_db(config: sled::Config, compression: bool) -> Result<sled::Db, sled::Error> {
    let mut config = config
        .use_compression(compression)
        .compression_factor(COMPRESSION_LEVEL);
    let mut attempts = 0;
    let mut flipped = false;
    loop {
        match config.open() {
            Ok(db) => return Ok(db),
            Err(sled::Error::Unsupported(_)) if !flipped => {
                flipped = true;
                let other = !config.use_compression;
                config = config.use_compression(other);
            }
            Err(sled::Error::Io(e)) if attempts < 250 && e.kind() != io::ErrorKind::NotFound => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}

fn poisoned() -> sled::Error {
    sled::Error::ReportableBug("copy state lock poisoned".into())
}

/// The generations under one directory.
pub struct Generations {
    root: PathBuf,
    options: SledOptions,
}

impl Generations {
    /// The generations under `root` (created if needed), each opened with `options`.
    pub fn new(root: &Path, options: SledOptions) -> io::Result<Self> {
        std::fs::create_dir_all(root)?;
        Ok(Generations {
            root: root.to_path_buf(),
            options,
        })
    }

    fn dir(&self, number: u64) -> PathBuf {
        self.root.join(format!("{PREFIX}{number}"))
    }

    /// The live generation's number, if one was ever made live.
    pub fn current_number(&self) -> io::Result<Option<u64>> {
        match std::fs::read_to_string(self.root.join(POINTER)) {
            Ok(text) => text
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad CURRENT file")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Makes generation `number` the live one, durably.
    pub fn make_current(&self, number: u64) -> io::Result<()> {
        let tmp = self.root.join(format!("{POINTER}.tmp"));
        std::fs::write(&tmp, number.to_string())?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, self.root.join(POINTER))?;
        sync_dir(&self.root)
    }

    /// Opens generation `number`, creating it if needed. Waits (a few seconds at most) for
    /// a previous handle's background thread to let go of the database lock.
    pub fn open(&self, number: u64) -> Result<Generation, sled::Error> {
        let db = open_db(
            sled::Config::new()
                .path(self.dir(number))
                .cache_capacity(self.options.cache_bytes),
            self.options.compression,
        )?;
        Ok(Generation {
            number,
            tree: db.open_tree("state")?,
            db,
            copy: Mutex::new(None),
            tracked: Mutex::new(None),
        })
    }

    /// A new, empty generation `number` (whatever a crashed attempt left there is removed).
    pub fn create_fresh(&self, number: u64) -> Result<Generation, sled::Error> {
        self.remove(number)?;
        self.open(number)
    }

    /// Removes generation `number`'s files (open handles keep working until dropped).
    pub fn remove(&self, number: u64) -> io::Result<()> {
        match std::fs::remove_dir_all(self.dir(number)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Removes every generation but `keep` (left over from interrupted installs).
    pub fn remove_all_but(&self, keep: u64) -> io::Result<()> {
        for entry in std::fs::read_dir(&self.root)? {
            let name = entry?.file_name();
            let number = name
                .to_str()
                .and_then(|n| n.strip_prefix(PREFIX))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(number) = number.filter(|n| *n != keep) {
                tracing::info!(generation = number, "removing an unused state generation");
                self.remove(number)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST_SLED: SledOptions = SledOptions {
        cache_bytes: 8 << 20,
        compression: true,
    };

    /// Written keys are handed over up to a bound, with their current values, once each
    /// until written again; a rebuild that falls too far behind is told so.
    #[test]
    fn tracked_writes_are_taken_in_key_order_with_current_values() {
        let dir = tempfile::tempdir().unwrap();
        let generation = Generations::new(dir.path(), TEST_SLED)
            .unwrap()
            .open(1)
            .unwrap();
        let write = |key: &[u8], value: Option<&[u8]>| {
            generation.before_writes([key].into_iter()).unwrap();
            match value {
                Some(v) => generation.tree.insert(key, v).unwrap(),
                None => generation.tree.remove(key).unwrap(),
            };
        };
        write(b"a", Some(b"1"));
        assert_eq!(generation.take_written(None).unwrap(), None, "not tracking");
        generation.start_tracking(10);
        write(b"c", Some(b"1"));
        write(b"a", None);
        write(b"b", Some(b"1"));
        let taken = generation.take_written(Some(b"b")).unwrap().unwrap();
        // A key written between taking the keys and reading their values is taken again.
        write(b"b", Some(b"2"));
        assert_eq!(
            generation.current_values(taken).unwrap(),
            vec![
                (b"a".to_vec(), None),
                (b"b".to_vec(), Some(sled::IVec::from(&b"2"[..])))
            ]
        );
        write(b"a", Some(b"3"));
        let rest = generation.take_written(None).unwrap().unwrap();
        let keys: Vec<_> = rest.iter().map(|k| k.as_slice()).collect();
        assert_eq!(keys, [&b"a"[..], b"b", b"c"]);
        assert_eq!(
            generation.take_written(None).unwrap(),
            Some(BTreeSet::new())
        );
        for i in 0..=10u32 {
            generation
                .before_writes([&i.to_be_bytes()[..]].into_iter())
                .unwrap();
        }
        assert_eq!(generation.take_written(None).unwrap(), None, "overflowed");
        generation.stop_tracking();
    }

    /// A copy taken chunk by chunk while keys are inserted, changed and removed yields the
    /// state as it was when the copy started.
    #[test]
    fn a_copy_sees_the_state_as_of_its_start_despite_concurrent_writes() {
        let dir = tempfile::tempdir().unwrap();
        let generations = Generations::new(dir.path(), TEST_SLED).unwrap();
        let generation = generations.open(1).unwrap();
        let key = |i: u32| format!("k{i:05}").into_bytes();
        for i in (0..3_000).step_by(2) {
            generation.tree.insert(key(i), &i.to_be_bytes()).unwrap();
        }
        generation.tree.insert([0, b'a'], &b"meta"[..]).unwrap();
        let expected: Vec<(Vec<u8>, Vec<u8>)> = generation
            .tree
            .range(FIRST_STATE_KEY..)
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap())
            .collect();
        let write = |step: u32| {
            for i in [
                step * 7 % 3_000,
                (step * 13 + 1) % 3_000,
                2_999 - step % 3_000,
            ] {
                let keys = [key(i)];
                generation
                    .before_writes(keys.iter().map(|k| k.as_slice()))
                    .unwrap();
                if i % 3 == 0 {
                    generation.tree.remove(key(i)).unwrap();
                } else {
                    generation.tree.insert(key(i), &b"new"[..]).unwrap();
                }
            }
        };
        generation.start_copy();
        let mut copied = Vec::new();
        let mut step = 0u32;
        loop {
            let read = generation.read_chunk(97).unwrap();
            // Writes land both between a chunk's read and its settling and between chunks.
            write(step);
            let (chunk, last) = generation.settle_chunk(read).unwrap();
            copied.extend(chunk);
            if last {
                break;
            }
            write(step + 1_000);
            step += 1;
        }
        generation.stop_copy();
        assert!(step > 10);
        assert_eq!(copied, expected);
    }
}
