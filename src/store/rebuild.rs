//! When the state database is rebuilt, and at what pace. sled never shrinks its files; a
//! rebuild copies the live data into a fresh database ([`super::generation`]) beside the
//! applies, then switches to it.
//!
//! While it fills the new database, a rebuild holds in memory the keys written ahead of its
//! fill, to carry them over once the fill has passed them. So it pays only when the writes
//! are slow enough for it to finish: a rebuild that the write rate would make hold more
//! than half of its limit is postponed; one that reaches the limit anyway is given up, and
//! then the next builds do not try again (a back-off that doubles with each give-up in a
//! row). The fill itself sleeps as long as it works, so that it takes at most half of a
//! core from the applies beside it.

use std::time::Duration;

/// Most builds skipped after give-ups in a row.
const MAX_BACK_OFF_BUILDS: u64 = 64;

/// How fast a rebuild is assumed to fill before one has been measured, in bytes of live
/// data (the uncompressed snapshot) per second: at half of a core, 100k sessions' state
/// (79 MB) fills in about 20 s on a 2-core machine.
const ASSUMED_FILL_BYTES_PER_SEC: f64 = 4.0 * 1024.0 * 1024.0;

/// The thresholds of the rebuild policy.
#[derive(Clone, Copy, Debug)]
pub struct RebuildPolicy {
    /// No database smaller than this is rebuilt (sled's fixed overhead dominates there).
    pub min_bytes: u64,
    /// A database is rebuilt once its files take this many times the live data.
    pub factor: u64,
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
    /// The files outgrew the live data, but recent rebuilds were given up: this many more
    /// builds pass without one.
    BackingOff {
        /// Builds left to skip after this one.
        builds_left: u64,
    },
    /// The files outgrew the live data, but at the current write rate the rebuild would
    /// hold about this many written keys at once, more than half of its limit.
    WritesTooFast {
        /// The predicted peak of keys held.
        predicted_keys: u64,
    },
}

/// What the policy learns from rebuilds: how fast they fill, and the give-ups in a row.
#[derive(Debug)]
pub struct RebuildHistory {
    fill_bytes_per_sec: f64,
    given_up_in_a_row: u32,
    builds_to_skip: u64,
}

impl Default for RebuildHistory {
    fn default() -> Self {
        RebuildHistory {
            fill_bytes_per_sec: ASSUMED_FILL_BYTES_PER_SEC,
            given_up_in_a_row: 0,
            builds_to_skip: 0,
        }
    }
}

impl RebuildPolicy {
    /// Whether files taking `on_disk` bytes outgrew `live` bytes of live data (0: unknown).
    pub fn outgrown(&self, on_disk: u64, live: u64) -> bool {
        live > 0 && on_disk >= self.min_bytes && on_disk > live.saturating_mul(self.factor)
    }

    /// Decides, after a build observed `seen`, whether to rebuild, and counts a skipped
    /// build against a back-off.
    pub fn decide(&self, seen: Observation, history: &mut RebuildHistory) -> Decision {
        if !self.outgrown(seen.on_disk, seen.live) {
            return Decision::NotNeeded;
        }
        if history.builds_to_skip > 0 {
            history.builds_to_skip -= 1;
            return Decision::BackingOff {
                builds_left: history.builds_to_skip,
            };
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

    /// A rebuild filled `live` bytes in `took` and switched: the back-off ends and the
    /// fill speed is remembered.
    pub fn completed(&mut self, live: u64, took: Duration) {
        self.given_up_in_a_row = 0;
        self.builds_to_skip = 0;
        let secs = took.as_secs_f64();
        if live > 0 && secs > 0.0 {
            self.fill_bytes_per_sec = live as f64 / secs;
        }
    }

    /// A rebuild was given up: the next 2, 4, 8 ... (at most [`MAX_BACK_OFF_BUILDS`])
    /// builds do not try again.
    pub fn given_up(&mut self) {
        self.given_up_in_a_row = self.given_up_in_a_row.saturating_add(1);
        self.builds_to_skip = 1u64
            .checked_shl(self.given_up_in_a_row)
            .unwrap_or(u64::MAX)
            .min(MAX_BACK_OFF_BUILDS);
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
            factor: 2,
            max_tracked_keys: 100_000,
        }
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
        let mut history = RebuildHistory::default();
        let decide = |s, h: &mut RebuildHistory| policy().decide(s, h);
        assert_eq!(decide(seen(63, 10, 0.0), &mut history), Decision::NotNeeded);
        assert_eq!(
            decide(seen(100, 50, 0.0), &mut history),
            Decision::NotNeeded
        );
        assert_eq!(decide(seen(100, 0, 0.0), &mut history), Decision::NotNeeded);
        assert_eq!(decide(seen(101, 50, 0.0), &mut history), Decision::Rebuild);
    }

    #[test]
    fn a_write_rate_the_rebuild_could_not_keep_up_with_postpones_it() {
        let mut history = RebuildHistory::default();
        // 40 MiB of live data fill in ~10 s at the assumed speed: at 4,000 keys/s the fill
        // would hold ~20,000 keys at most, at 20,000 keys/s twice half of the limit.
        assert_eq!(
            policy().decide(seen(200, 40, 4_000.0), &mut history),
            Decision::Rebuild
        );
        match policy().decide(seen(200, 40, 20_000.0), &mut history) {
            Decision::WritesTooFast { predicted_keys } => {
                assert_eq!(predicted_keys, 100_000)
            }
            other => panic!("expected WritesTooFast, got {other:?}"),
        }
        // A measured fill four times faster allows four times the writes.
        history.completed(40 * MIB, Duration::from_millis(2_500));
        assert_eq!(
            policy().decide(seen(200, 40, 16_000.0), &mut history),
            Decision::Rebuild
        );
    }

    #[test]
    fn give_ups_in_a_row_double_the_builds_skipped_up_to_a_bound() {
        let mut history = RebuildHistory::default();
        let outgrown = seen(200, 40, 0.0);
        for (give_ups, skipped) in [(1, 2), (2, 4), (3, 8)] {
            for _ in 0..give_ups {
                history.given_up();
            }
            for left in (0..skipped).rev() {
                assert_eq!(
                    policy().decide(outgrown, &mut history),
                    Decision::BackingOff { builds_left: left }
                );
            }
            assert_eq!(policy().decide(outgrown, &mut history), Decision::Rebuild);
            history.completed(40 * MIB, Duration::from_secs(10));
        }
        for _ in 0..100 {
            history.given_up();
        }
        assert_eq!(
            policy().decide(outgrown, &mut history),
            Decision::BackingOff {
                builds_left: MAX_BACK_OFF_BUILDS - 1
            }
        );
        assert_eq!(
            policy().decide(seen(10, 40, 0.0), &mut history),
            Decision::NotNeeded,
            "a build that needs no rebuild does not count against the back-off"
        );
    }
}
