//! When the state database is rebuilt, and at what pace. sled never shrinks its files; a
//! rebuild copies the live data into a fresh database ([`super::generation`]) beside the
//! applies, then switches to it.
//!
//! While it fills the new database, a rebuild holds in memory the keys written ahead of its
//! fill, to carry them over once the fill has passed them. So it pays only when the writes
//! are slow enough for it to finish: a rebuild that the write rate would make hold more
//! than half of its limit is postponed; one that reaches the limit anyway is given up, and
//! then no rebuild starts for a while (a back-off that doubles with each give-up in a row).
//! The fill itself sleeps as long as it works, so that it takes at most half of a core from
//! the applies beside it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// No rebuild starts for this long after a give-up ...
const BACK_OFF: Duration = Duration::from_secs(5 * 60);
/// ... doubled for each further give-up in a row, up to this.
const MAX_BACK_OFF: Duration = Duration::from_secs(2 * 60 * 60);

/// Bytes a freshly filled state database takes per byte of live data (the uncompressed
/// snapshot length), assumed until a rebuild or an install measures it: sled's files hold
/// about three times the data even when fresh (300,000 sessions: 236 MB of live data
/// restored into 704 MB; 1M: 2.36 GB rebuilt from ~790 MB, estimated from the compressed
/// snapshot's size), 1.8× with its compression
/// (the same 300,000 sessions: 427 MB).
const FRESH_PER_LIVE: f64 = 3.0;
/// The same, for databases created compressed.
const FRESH_PER_LIVE_COMPRESSED: f64 = 1.8;

/// How fast a rebuild is assumed to fill before one has been measured, in bytes of live
/// data (the uncompressed snapshot) per second: at half of a core, 100k sessions' state
/// (79 MB) fills in about 20 s on a 2-core machine.
const ASSUMED_FILL_BYTES_PER_SEC: f64 = 4.0 * 1024.0 * 1024.0;

/// The thresholds of the rebuild policy.
#[derive(Clone, Copy, Debug)]
pub struct RebuildPolicy {
    /// No database smaller than this is rebuilt (sled's fixed overhead dominates there).
    pub min_bytes: u64,
    /// A database is rebuilt once its files take this many times what a fresh copy of the
    /// live data would.
    pub factor: f64,
    /// The factor while writes are quiet (at most `quiet_keys_per_sec`): a rebuild then
    /// competes with no apply, so a smaller saving pays for it.
    pub quiet_factor: f64,
    /// Most keys written per second that count as quiet.
    pub quiet_keys_per_sec: f64,
    /// Most written keys a rebuild holds to carry over; past it the rebuild is given up.
    pub max_tracked_keys: usize,
}

/// What a snapshot build observed, for the decision: the write rate is measured while the
/// build copied the state (the rebuild would start right after).
#[derive(Clone, Copy, Debug)]
pub struct Observation {
    /// Bytes the live database takes on disk.
    pub on_disk: u64,
    /// Bytes of live data (the uncompressed size of the last snapshot; 0: unknown).
    pub live: u64,
    /// Keys written per second while the build copied the state.
    pub written_keys_per_sec: f64,
}

/// Whether a build goes on to rebuild the state database.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Decision {
    /// The files have not outgrown the live data.
    NotNeeded,
    /// Rebuild now.
    Rebuild,
    /// The files outgrew the live data, but recent rebuilds were given up: none starts
    /// for this long yet.
    BackingOff {
        /// Time left until the back-off ends.
        left: Duration,
    },
    /// The files outgrew the live data, but at the current write rate the rebuild would
    /// hold about this many written keys at once, more than half of its limit.
    WritesTooFast {
        /// The predicted peak of keys held.
        predicted_keys: u64,
    },
}

/// Keys garbage collection deleted since the current snapshot's point in time, against the
/// snapshot's key count: what the live data lost since the snapshot measured it. Without
/// it, a state whose idempotency records (a third of a freshly loaded state's bytes) or
/// expired sessions were collected would count as large as before, and its files would
/// keep their garbage until the log brought the next build.
#[derive(Debug, Default)]
pub struct Collected {
    /// Keys in the current snapshot (0: unknown, as after a restart until the next build).
    snapshot_keys: AtomicU64,
    /// Keys deleted by garbage collection since the snapshot's point in time.
    deleted: AtomicU64,
}

impl Collected {
    /// A snapshot's copy starts: deletions from now on count against it.
    pub fn restart(&self) {
        self.deleted.store(0, Ordering::Relaxed);
    }

    /// The current snapshot holds `keys` keys (a build that started at the last
    /// [`Self::restart`], or an install, which also starts the count again).
    pub fn since_snapshot(&self, keys: u64) {
        self.snapshot_keys.store(keys, Ordering::Relaxed);
    }

    /// Garbage collection deleted `keys` more keys.
    pub fn add(&self, keys: u64) {
        self.deleted.fetch_add(keys, Ordering::Relaxed);
    }

    /// `live` bytes of the snapshot less the share of its keys collected since, at the
    /// snapshot's mean bytes per key.
    pub fn live_after(&self, live: u64) -> u64 {
        let keys = self.snapshot_keys.load(Ordering::Relaxed);
        if keys == 0 {
            return live;
        }
        let kept = keys.saturating_sub(self.deleted.load(Ordering::Relaxed));
        (live as f64 * kept as f64 / keys as f64) as u64
    }
}

/// What the policy learns from rebuilds and installs: how fast rebuilds fill, how large a
/// fresh copy is for its live data, and the give-ups in a row.
#[derive(Debug)]
pub struct RebuildHistory {
    fill_bytes_per_sec: f64,
    /// Bytes a freshly filled database takes per byte of live data.
    fresh_per_live: f64,
    given_up_in_a_row: u32,
    not_before: Option<Instant>,
}

impl RebuildHistory {
    /// Nothing learned yet, for databases created with sled's compression or without.
    pub fn new(compression: bool) -> Self {
        RebuildHistory {
            fill_bytes_per_sec: ASSUMED_FILL_BYTES_PER_SEC,
            fresh_per_live: if compression {
                FRESH_PER_LIVE_COMPRESSED
            } else {
                FRESH_PER_LIVE
            },
            given_up_in_a_row: 0,
            not_before: None,
        }
    }
}

impl RebuildPolicy {
    /// Whether files taking `on_disk` bytes outgrew `live` bytes of live data (0: unknown),
    /// given what a fresh copy took the last time.
    /// At the lower of the two factors: whether a build should prepare for a rebuild.
    pub fn outgrown(&self, on_disk: u64, live: u64, history: &RebuildHistory) -> bool {
        self.outgrown_by(self.factor.min(self.quiet_factor), on_disk, live, history)
    }

    fn outgrown_by(&self, factor: f64, on_disk: u64, live: u64, history: &RebuildHistory) -> bool {
        let fresh = live as f64 * history.fresh_per_live;
        live > 0 && on_disk >= self.min_bytes && on_disk as f64 > fresh * factor
    }

    /// Decides at `now`, having observed `seen`, whether to rebuild: past the quiet factor
    /// if the writes were quiet, past the factor otherwise.
    pub fn decide(&self, seen: Observation, history: &RebuildHistory, now: Instant) -> Decision {
        let factor = if seen.written_keys_per_sec <= self.quiet_keys_per_sec {
            self.quiet_factor
        } else {
            self.factor
        };
        if !self.outgrown_by(factor, seen.on_disk, seen.live, history) {
            return Decision::NotNeeded;
        }
        if let Some(left) = history
            .not_before
            .and_then(|until| until.checked_duration_since(now))
            .filter(|left| !left.is_zero())
        {
            return Decision::BackingOff { left };
        }
        let predicted_keys = history.predicted_tracked_keys(seen);
        if predicted_keys > self.max_tracked_keys as u64 / 2 {
            return Decision::WritesTooFast { predicted_keys };
        }
        Decision::Rebuild
    }
}

impl RebuildHistory {
    /// The peak number of written keys a rebuild starting now would hold. The fill moves
    /// through the key space at an even pace, so a key written at a fraction `t` of the
    /// fill is still ahead of it with probability `1 - t`: the keys held peak at a quarter
    /// of those written during the whole fill (at `t = ½`), here doubled for uneven keys.
    fn predicted_tracked_keys(&self, seen: Observation) -> u64 {
        let fill_secs = seen.live as f64 / self.fill_bytes_per_sec;
        (seen.written_keys_per_sec * fill_secs / 2.0).ceil() as u64
    }

    /// A rebuild filled `live` bytes in `took` into files of `fresh` bytes, and switched:
    /// the back-off ends, and the fill speed and the fresh copy's size are remembered.
    pub fn completed(&mut self, live: u64, fresh: u64, took: Duration) {
        self.given_up_in_a_row = 0;
        self.not_before = None;
        let secs = took.as_secs_f64();
        if live > 0 && secs > 0.0 {
            self.fill_bytes_per_sec = live as f64 / secs;
        }
        self.filled(live, fresh);
    }

    /// A fill (a rebuild's or an install's) wrote `live` bytes of live data into files of
    /// `fresh` bytes: the size a fresh copy takes is remembered, so that a database only as
    /// large as a fresh copy is not rebuilt again and again.
    pub fn filled(&mut self, live: u64, fresh: u64) {
        if live > 0 && fresh > 0 {
            self.fresh_per_live = fresh as f64 / live as f64;
        }
    }

    /// A rebuild was given up at `now`: none starts for [`BACK_OFF`], doubled for each
    /// give-up in a row before this one (at most [`MAX_BACK_OFF`]).
    pub fn given_up(&mut self, now: Instant) {
        let doublings = self.given_up_in_a_row.min(16);
        self.given_up_in_a_row = self.given_up_in_a_row.saturating_add(1);
        let back_off = BACK_OFF.saturating_mul(1 << doublings).min(MAX_BACK_OFF);
        self.not_before = Some(now + back_off);
    }

    /// Ends a back-off now, as if its time had passed.
    #[cfg(test)]
    pub fn end_back_off(&mut self) {
        self.not_before = None;
    }

    /// Assumes rebuilds take no time, so that none is postponed for the write rate.
    #[cfg(test)]
    pub fn assume_instant_fill(&mut self) {
        self.fill_bytes_per_sec = f64::INFINITY;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn policy() -> RebuildPolicy {
        RebuildPolicy {
            min_bytes: 64 * MIB,
            factor: 2.0,
            quiet_factor: 2.0,
            quiet_keys_per_sec: 0.0,
            max_tracked_keys: 100_000,
        }
    }

    /// A history that learned that a fresh copy takes exactly the live data.
    fn history() -> RebuildHistory {
        let mut history = RebuildHistory::new(false);
        history.filled(1, 1);
        history
    }

    fn seen(on_disk_mib: u64, live_mib: u64, written_keys_per_sec: f64) -> Observation {
        Observation {
            on_disk: on_disk_mib * MIB,
            live: live_mib * MIB,
            written_keys_per_sec,
        }
    }

    #[test]
    fn only_files_grown_past_the_factor_and_the_minimum_are_rebuilt() {
        let history = history();
        let now = Instant::now();
        let decide = |s| policy().decide(s, &history, now);
        assert_eq!(decide(seen(63, 10, 0.0)), Decision::NotNeeded);
        assert_eq!(decide(seen(100, 50, 0.0)), Decision::NotNeeded);
        assert_eq!(decide(seen(100, 0, 0.0)), Decision::NotNeeded);
        assert_eq!(decide(seen(101, 50, 0.0)), Decision::Rebuild);
    }

    #[test]
    fn quiet_writes_lower_the_factor() {
        let history = history();
        let now = Instant::now();
        let policy = RebuildPolicy {
            quiet_factor: 1.25,
            quiet_keys_per_sec: 100.0,
            ..policy()
        };
        // 140 MiB of files for 100 MiB of live data: past the quiet factor, not the other.
        assert!(policy.outgrown(140 * MIB, 100 * MIB, &history));
        assert_eq!(
            policy.decide(seen(140, 100, 100.0), &history, now),
            Decision::Rebuild
        );
        assert_eq!(
            policy.decide(seen(140, 100, 101.0), &history, now),
            Decision::NotNeeded
        );
        assert_eq!(
            policy.decide(seen(120, 100, 0.0), &history, now),
            Decision::NotNeeded
        );
    }

    #[test]
    fn collected_keys_take_their_share_off_the_snapshots_live_data() {
        let collected = Collected::default();
        collected.add(5);
        assert_eq!(
            collected.live_after(700),
            700,
            "no snapshot count yet: as measured"
        );
        collected.restart();
        collected.since_snapshot(7_000);
        collected.add(2_000);
        assert_eq!(collected.live_after(700 * MIB), 500 * MIB);
        collected.add(9_000);
        assert_eq!(collected.live_after(700 * MIB), 0);
        collected.restart();
        assert_eq!(collected.live_after(700 * MIB), 700 * MIB);
    }

    #[test]
    fn the_threshold_follows_the_size_of_the_last_fresh_copy() {
        let mut history = history();
        let now = Instant::now();
        let decide = |history: &RebuildHistory, on_disk_mib| {
            policy().decide(seen(on_disk_mib, 50, 0.0), history, now)
        };
        assert_eq!(decide(&history, 230), Decision::Rebuild);
        // The rebuild left files of 105 MiB for 50 MiB of live data (sled's uncompressed
        // pages): that size is no reason to rebuild again; twice it is.
        history.completed(50 * MIB, 105 * MIB, Duration::from_secs(10));
        assert_eq!(decide(&history, 105), Decision::NotNeeded);
        assert_eq!(decide(&history, 210), Decision::NotNeeded);
        assert_eq!(decide(&history, 211), Decision::Rebuild);
    }

    #[test]
    fn before_any_fill_a_fresh_copy_is_assumed_as_large_as_sled_makes_it() {
        let now = Instant::now();
        // 50 MiB of live data: a fresh copy takes ~150 MiB uncompressed, ~90 MiB compressed.
        let decide = |history: &RebuildHistory| policy().decide(seen(200, 50, 0.0), history, now);
        assert_eq!(decide(&RebuildHistory::new(false)), Decision::NotNeeded);
        assert_eq!(decide(&RebuildHistory::new(true)), Decision::Rebuild);
        let mut installed = RebuildHistory::new(true);
        installed.filled(50 * MIB, 150 * MIB);
        assert_eq!(
            decide(&installed),
            Decision::NotNeeded,
            "learned from an install"
        );
    }

    #[test]
    fn a_write_rate_the_rebuild_could_not_keep_up_with_postpones_it() {
        let mut history = history();
        let now = Instant::now();
        // 40 MiB of live data fill in ~10 s at the assumed speed: at 4,000 keys/s the fill
        // would hold ~20,000 keys at most, at 20,000 keys/s twice half of the limit.
        assert_eq!(
            policy().decide(seen(200, 40, 4_000.0), &history, now),
            Decision::Rebuild
        );
        assert_eq!(
            policy().decide(seen(200, 40, 20_000.0), &history, now),
            Decision::WritesTooFast {
                predicted_keys: 100_000
            }
        );
        // A measured fill four times faster allows four times the writes.
        history.completed(40 * MIB, 40 * MIB, Duration::from_millis(2_500));
        assert_eq!(
            policy().decide(seen(200, 40, 16_000.0), &history, now),
            Decision::Rebuild
        );
    }

    #[test]
    fn give_ups_in_a_row_double_the_back_off_up_to_a_bound() {
        let mut history = history();
        let outgrown = seen(200, 40, 0.0);
        let start = Instant::now();
        for (give_ups, back_off) in [(1, BACK_OFF), (2, BACK_OFF * 2), (3, BACK_OFF * 4)] {
            for _ in 0..give_ups {
                history.given_up(start);
            }
            assert_eq!(
                policy().decide(outgrown, &history, start + Duration::from_secs(1)),
                Decision::BackingOff {
                    left: back_off - Duration::from_secs(1)
                }
            );
            assert_eq!(
                policy().decide(seen(10, 40, 0.0), &history, start),
                Decision::NotNeeded,
                "no back-off is reported when no rebuild is needed"
            );
            assert_eq!(
                policy().decide(outgrown, &history, start + back_off),
                Decision::Rebuild
            );
            history.completed(40 * MIB, 40 * MIB, Duration::from_secs(10));
            assert_eq!(
                policy().decide(outgrown, &history, start),
                Decision::Rebuild
            );
        }
        for _ in 0..100 {
            history.given_up(start);
        }
        assert_eq!(
            policy().decide(outgrown, &history, start),
            Decision::BackingOff { left: MAX_BACK_OFF }
        );
    }
}
