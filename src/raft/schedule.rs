//! When a node builds a snapshot.
//!
//! A build copies the whole state (at one million sessions, ~9M keys into a ~400 MB file,
//! about a minute of a core), while what it saves is the log written since the last one: the
//! log behind a snapshot is purged. Building every fixed number of entries makes the cost
//! of builds grow with the state: at 1M sessions, builds every 20,000 entries ran on every
//! node about half of the time under a mixed workload and halved its throughput. So a
//! build also waits until the log since the last snapshot holds a fraction of the last
//! snapshot's size in bytes: the bytes builds write stay proportional to the bytes the log
//! takes, and the log on disk stays within that fraction of a snapshot.

/// The thresholds of the snapshot schedule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SnapshotSchedule {
    /// Fewest applied entries since the last snapshot before a build.
    pub min_entries: u64,
    /// Bytes of log since the last snapshot, per byte of that snapshot's file, before a
    /// build (0: only `min_entries` counts).
    pub log_fraction: f64,
}

impl SnapshotSchedule {
    /// Whether a build is due with `entries_since` entries applied since the last snapshot
    /// (all of them when there is none), taking `log_bytes_since` bytes in the log, and the
    /// last snapshot's file taking `snapshot_bytes` (0: none).
    pub fn due(&self, entries_since: u64, log_bytes_since: u64, snapshot_bytes: u64) -> bool {
        entries_since >= self.min_entries
            && log_bytes_since as f64 >= self.log_fraction * snapshot_bytes as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEDULE: SnapshotSchedule = SnapshotSchedule {
        min_entries: 20_000,
        log_fraction: 0.25,
    };

    #[test]
    fn a_small_state_builds_every_min_entries() {
        assert!(!SCHEDULE.due(19_999, 6_000_000, 0), "no snapshot yet");
        assert!(SCHEDULE.due(20_000, 6_000_000, 0), "no snapshot yet");
        assert!(
            SCHEDULE.due(20_000, 6_000_000, 10_000_000),
            "6 MB of log for a 10 MB snapshot"
        );
    }

    #[test]
    fn a_large_state_waits_for_a_fraction_of_its_snapshot_in_log() {
        let snapshot = 400_000_000;
        assert!(!SCHEDULE.due(20_000, 6_000_000, snapshot), "6 MB of log");
        assert!(
            !SCHEDULE.due(333_332, 99_999_999, snapshot),
            "just under 100 MB"
        );
        assert!(
            SCHEDULE.due(333_334, 100_000_000, snapshot),
            "100 MB of log: a quarter"
        );
    }

    #[test]
    fn a_zero_fraction_counts_entries_only() {
        let entries_only = SnapshotSchedule {
            log_fraction: 0.0,
            ..SCHEDULE
        };
        assert!(entries_only.due(20_000, 0, u64::MAX));
        assert!(!entries_only.due(19_999, u64::MAX, 0));
    }
}
