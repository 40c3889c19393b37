//! Fault schedules: a seed gives a list of timed faults, the same list every time. Targets
//! named by role ("the leader", "a follower") are resolved when the fault runs.

use std::fmt;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::proxy::LinkMode;

/// A node a fault aims at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// This voter.
    Node(u64),
    /// Whoever leads when the fault starts.
    Leader,
    /// The k-th follower (modulo their number) when the fault starts.
    Follower(usize),
}

/// One fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL, restart after `down_ms`; with `again_ms`, SIGKILL again that long after the
    /// restart and restart once more.
    Kill {
        /// Victim.
        target: Target,
        /// Time down.
        down_ms: u64,
        /// Second kill this long after the restart.
        again_ms: Option<u64>,
    },
    /// SIGSTOP for `ms`, then SIGCONT.
    Pause {
        /// Victim.
        target: Target,
        /// Time stopped.
        ms: u64,
    },
    /// Cut a node off from every other, both ways.
    Isolate {
        /// Victim.
        target: Target,
        /// Duration.
        ms: u64,
        /// Refused or black-holed.
        mode: LinkMode,
    },
    /// Split the voters: these against the rest (the leader goes with the minority when
    /// `leader_in_minority`).
    Split {
        /// Size of the minority side.
        minority: usize,
        /// Whether the leader is put in the minority.
        leader_in_minority: bool,
        /// Duration.
        ms: u64,
    },
    /// Requests from one node to another are lost; the reverse direction works.
    OneWay {
        /// Sender whose requests are lost.
        from: Target,
        /// Receiver.
        to: Target,
        /// Duration.
        ms: u64,
    },
    /// Every link from and to a node delayed.
    Slow {
        /// Victim.
        target: Target,
        /// Added delay per chunk.
        delay_ms: u64,
        /// Duration.
        ms: u64,
    },
    /// Restart a node with its clock shifted.
    Clock {
        /// Victim.
        target: Target,
        /// Offset.
        offset_ms: i64,
    },
    /// SIGKILL a majority of the voters, restart them after `down_ms`.
    QuorumLoss {
        /// Time down.
        down_ms: u64,
    },
    /// Grow by a new node (learner, then voter) and shrink back, while a follower is
    /// isolated when `during_isolation`.
    Membership {
        /// Whether a follower is cut off meanwhile.
        during_isolation: bool,
    },
    /// Leave a follower behind (killed or isolated), snapshot and purge the leader's log so it
    /// must install a snapshot, bring it back; with `kill_during_install_ms`, SIGKILL it that
    /// long after it came back (during the install) and restart it.
    Laggard {
        /// Victim.
        target: Target,
        /// Killed (true) or isolated (false) while behind.
        killed: bool,
        /// Time behind.
        behind_ms: u64,
        /// Second kill after it came back.
        kill_during_install_ms: Option<u64>,
    },
}

impl Fault {
    /// A short name, for counting faults by kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Kill { again_ms: None, .. } => "kill",
            Fault::Kill { .. } => "kill-twice",
            Fault::Pause { .. } => "pause",
            Fault::Isolate {
                target: Target::Leader,
                ..
            } => "isolate-leader",
            Fault::Isolate { .. } => "isolate-node",
            Fault::Split { .. } => "majority-minority",
            Fault::OneWay { .. } => "one-way",
            Fault::Slow { .. } => "slow-links",
            Fault::Clock { .. } => "clock-offset",
            Fault::QuorumLoss { .. } => "quorum-loss",
            Fault::Membership { .. } => "membership",
            Fault::Laggard {
                kill_during_install_ms: Some(_),
                ..
            } => "snapshot-install-kill",
            Fault::Laggard { .. } => "snapshot-install",
        }
    }
}

/// A fault at a time.
#[derive(Debug, Clone)]
pub struct Step {
    /// When it starts, from the start of the schedule.
    pub at_ms: u64,
    /// What.
    pub fault: Fault,
}

/// A schedule: its seed, cluster size and steps.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// The seed it came from.
    pub seed: u64,
    /// Voters.
    pub voters: u64,
    /// Faults in order.
    pub steps: Vec<Step>,
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "schedule seed={} voters={}", self.seed, self.voters)?;
        for s in &self.steps {
            writeln!(f, "  t={:>6}ms {:?}", s.at_ms, s.fault)?;
        }
        Ok(())
    }
}

fn target(rng: &mut StdRng, voters: u64) -> Target {
    match rng.random_range(0..4) {
        0 => Target::Leader,
        1 => Target::Follower(rng.random_range(0..4)),
        _ => Target::Node(rng.random_range(1..=voters)),
    }
}

fn mode(rng: &mut StdRng) -> LinkMode {
    if rng.random_bool(0.5) {
        LinkMode::Down
    } else {
        LinkMode::Blackhole
    }
}

/// The schedule of `seed` for `voters` voters over `duration_ms`.
pub fn generate(seed: u64, voters: u64, duration_ms: u64) -> Schedule {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut steps = Vec::new();
    let mut at = 1_000;
    while at + 2_000 < duration_ms {
        let fault = match rng.random_range(0..100) {
            0..=11 => Fault::Kill {
                target: target(&mut rng, voters),
                down_ms: rng.random_range(200..3_000),
                again_ms: rng.random_bool(0.4).then(|| rng.random_range(50..1_500)),
            },
            12..=21 => Fault::Pause {
                target: target(&mut rng, voters),
                ms: rng.random_range(300..5_000),
            },
            22..=31 => Fault::Isolate {
                target: if rng.random_bool(0.5) {
                    Target::Leader
                } else {
                    target(&mut rng, voters)
                },
                ms: rng.random_range(500..5_000),
                mode: mode(&mut rng),
            },
            32..=37 => Fault::Split {
                minority: rng.random_range(1..=((voters - 1) / 2) as usize),
                leader_in_minority: rng.random_bool(0.5),
                ms: rng.random_range(500..5_000),
            },
            38..=43 => Fault::OneWay {
                from: target(&mut rng, voters),
                to: target(&mut rng, voters),
                ms: rng.random_range(500..5_000),
            },
            44..=48 => Fault::Slow {
                target: target(&mut rng, voters),
                delay_ms: rng.random_range(5..200),
                ms: rng.random_range(1_000..5_000),
            },
            49..=54 => Fault::Clock {
                target: target(&mut rng, voters),
                offset_ms: rng.random_range(-20_000..20_000),
            },
            55..=59 => Fault::QuorumLoss {
                down_ms: rng.random_range(300..3_000),
            },
            60..=69 => Fault::Membership {
                during_isolation: rng.random_bool(0.5),
            },
            _ => Fault::Laggard {
                target: Target::Follower(rng.random_range(0..4)),
                killed: rng.random_bool(0.5),
                behind_ms: rng.random_range(500..4_000),
                kill_during_install_ms: rng.random_bool(0.5).then(|| rng.random_range(0..1_500)),
            },
        };
        steps.push(Step { at_ms: at, fault });
        at += rng.random_range(1_500..5_000);
    }
    Schedule {
        seed,
        voters,
        steps,
    }
}
