//! Leader leases: LINEARIZABLE reads answered by the leader without a quorum round, while a
//! quorum is known to refuse every other candidate (opt-in, `raft.lease_reads`; the safety
//! argument is in README "Lease reads").
//!
//! An openraft 0.9 voter that accepts an AppendEntries of the leader's vote refuses every
//! vote request for `election_timeout_max` after it received it (openraft's own leader lease,
//! on the voter's monotonic clock). The leader records, per voter, when it *sent* the latest
//! AppendEntries of its vote that the voter accepted ([`LeaseTracker::accepted`]). Once a
//! majority of every configuration of the membership (the leader counting itself while it
//! still leads) accepted one sent at or after `t`, no other node can win an election before
//! `t + election_timeout_max`; the leader serves lease reads until `t + lease`, `lease`
//! being a fraction of that (the margin for clocks that run at different rates). A voter
//! that restarts keeps the promise: openraft gives the vote it loads at start-up the start
//! as its time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use openraft::Vote;

/// Share of `election_timeout_max` a leader trusts its lease for: the voters' clocks may run
/// up to ~5 % faster than the leader's over one lease without a stale read.
const LEASE_NUMERATOR: u32 = 9;
/// See [`LEASE_NUMERATOR`].
const LEASE_DENOMINATOR: u32 = 10;

/// How long a leader trusts a quorum's acceptance for, given the election timeout's upper
/// bound (how long a voter refuses other candidates after accepting the leader).
pub fn lease_duration(election_timeout_max: Duration) -> Duration {
    election_timeout_max * LEASE_NUMERATOR / LEASE_DENOMINATOR
}

/// The latest AppendEntries each voter accepted from this node, for one vote of this node.
#[derive(Debug, Default)]
pub struct LeaseTracker {
    acks: Mutex<Acks>,
}

#[derive(Debug, Default)]
struct Acks {
    /// The vote the send times below were sent with (the newest this node sent with).
    vote: Option<Vote<u64>>,
    /// Per voter: when this node sent the latest AppendEntries the voter accepted.
    sent_at: BTreeMap<u64, Instant>,
}

impl LeaseTracker {
    /// Records that `target` accepted an AppendEntries sent at `sent_at` with `vote` (it did
    /// not answer with a higher vote). Acceptances of an older vote than the newest seen are
    /// ignored; a newer vote starts afresh.
    pub fn accepted(&self, target: u64, vote: &Vote<u64>, sent_at: Instant) {
        let Ok(mut acks) = self.acks.lock() else {
            return;
        };
        match acks.vote.as_ref() {
            Some(current) if vote < current => return,
            Some(current) if vote == current => {}
            _ => {
                acks.vote = Some(*vote);
                acks.sent_at.clear();
            }
        }
        let latest = acks.sent_at.entry(target).or_insert(sent_at);
        *latest = (*latest).max(sent_at);
    }

    /// Until when this node, leading with `vote` under the membership `configs` (one set of
    /// voters, or two during a joint change), may answer reads without a quorum round: every
    /// configuration has a majority that accepted AppendEntries of `vote` sent at or after
    /// some `t`, and the answer is the earliest such `t` over the configurations plus `lease`.
    /// `None` when some configuration has no such majority. `self_id` counts as accepting
    /// at `now` (the caller has just seen this node lead with `vote`).
    pub fn valid_until(
        &self,
        vote: &Vote<u64>,
        self_id: u64,
        configs: &[BTreeSet<u64>],
        now: Instant,
        lease: Duration,
    ) -> Option<Instant> {
        let acks = self.acks.lock().ok()?;
        if acks.vote.as_ref() != Some(vote) || configs.is_empty() {
            return None;
        }
        let mut earliest: Option<Instant> = None;
        for voters in configs {
            let mut times: Vec<Instant> = voters
                .iter()
                .filter_map(|id| {
                    if *id == self_id {
                        Some(now)
                    } else {
                        acks.sent_at.get(id).copied()
                    }
                })
                .collect();
            let majority = voters.len() / 2 + 1;
            if times.len() < majority {
                return None;
            }
            times.sort_unstable_by(|a, b| b.cmp(a));
            let quorum_time = times[majority - 1];
            earliest = Some(earliest.map_or(quorum_time, |e| e.min(quorum_time)));
        }
        earliest.map(|t| t + lease)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_millis(900);

    fn vote(term: u64, leader: u64) -> Vote<u64> {
        Vote::new_committed(term, leader)
    }

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    #[test]
    fn the_lease_is_nine_tenths_of_the_voters_refusal() {
        assert_eq!(
            lease_duration(Duration::from_millis(1000)),
            Duration::from_millis(900)
        );
    }

    #[test]
    fn a_majority_decides_and_its_oldest_acceptance_bounds_the_lease() {
        let tracker = LeaseTracker::default();
        let t0 = Instant::now();
        let v = vote(3, 1);
        let five = [set(&[1, 2, 3, 4, 5])];
        assert_eq!(tracker.valid_until(&v, 1, &five, t0, LEASE), None);
        tracker.accepted(2, &v, t0);
        assert_eq!(tracker.valid_until(&v, 1, &five, t0, LEASE), None, "2 of 5");
        tracker.accepted(3, &v, t0 + Duration::from_millis(50));
        tracker.accepted(4, &v, t0 + Duration::from_millis(20));
        let now = t0 + Duration::from_millis(100);
        // Self (now), 3 (t0+50) and 4 (t0+20) are the latest majority: bounded by t0+20.
        assert_eq!(
            tracker.valid_until(&v, 1, &five, now, LEASE),
            Some(t0 + Duration::from_millis(20) + LEASE)
        );
    }

    #[test]
    fn only_the_latest_acceptance_per_voter_counts_and_never_goes_back() {
        let tracker = LeaseTracker::default();
        let t0 = Instant::now();
        let v = vote(1, 1);
        tracker.accepted(2, &v, t0 + Duration::from_millis(30));
        tracker.accepted(2, &v, t0);
        let three = [set(&[1, 2, 3])];
        let now = t0 + Duration::from_millis(40);
        assert_eq!(
            tracker.valid_until(&v, 1, &three, now, LEASE),
            Some(t0 + Duration::from_millis(30) + LEASE)
        );
    }

    #[test]
    fn acceptances_of_another_vote_do_not_count() {
        let tracker = LeaseTracker::default();
        let t0 = Instant::now();
        let three = [set(&[1, 2, 3])];
        tracker.accepted(2, &vote(2, 1), t0);
        assert_eq!(tracker.valid_until(&vote(3, 1), 1, &three, t0, LEASE), None);
        tracker.accepted(3, &vote(3, 1), t0);
        assert_eq!(
            tracker.valid_until(&vote(2, 1), 1, &three, t0, LEASE),
            None,
            "a newer vote replaced the old acceptances"
        );
        tracker.accepted(2, &vote(2, 1), t0);
        assert_eq!(
            tracker.valid_until(&vote(3, 1), 1, &three, t0, LEASE),
            Some(t0 + LEASE),
            "an older vote's acceptance is ignored, the newer one's kept"
        );
    }

    #[test]
    fn a_joint_membership_needs_a_majority_of_both_configurations() {
        let tracker = LeaseTracker::default();
        let t0 = Instant::now();
        let v = vote(4, 1);
        let joint = [set(&[1, 2, 3]), set(&[3, 4, 5])];
        tracker.accepted(2, &v, t0);
        assert_eq!(
            tracker.valid_until(&v, 1, &joint, t0, LEASE),
            None,
            "the new configuration has no majority"
        );
        tracker.accepted(4, &v, t0 + Duration::from_millis(10));
        tracker.accepted(5, &v, t0 + Duration::from_millis(40));
        assert_eq!(
            tracker.valid_until(&v, 1, &joint, t0 + Duration::from_millis(50), LEASE),
            Some(t0 + LEASE),
            "the earlier of the two configurations' quorum times"
        );
    }

    #[test]
    fn a_leader_outside_the_configuration_does_not_count_itself() {
        let tracker = LeaseTracker::default();
        let t0 = Instant::now();
        let v = vote(5, 1);
        let without_leader = [set(&[2, 3, 4])];
        tracker.accepted(2, &v, t0);
        assert_eq!(tracker.valid_until(&v, 1, &without_leader, t0, LEASE), None);
        tracker.accepted(3, &v, t0);
        assert_eq!(
            tracker.valid_until(&v, 1, &without_leader, t0, LEASE),
            Some(t0 + LEASE)
        );
    }
}
