//! Health that means something: a node is SERVING only while it knows a leader, a leader
//! only while a quorum keeps acknowledging it, and any node only while it applies what is
//! committed within a bound. A watcher re-judges the node from openraft's metrics a few
//! times a second and publishes the verdict to gRPC health (`grpc.health.v1`, the empty
//! service name and `sessiond.v1.SessionAuthority`) and to `/readyz`.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::config::HealthConfig;
use crate::raft::RaftNode;

/// How often the watcher re-judges the node.
const INTERVAL: Duration = Duration::from_millis(250);

/// The service names whose gRPC health status follows the verdict.
const SERVICES: [&str; 2] = ["", "sessiond.v1.SessionAuthority"];

/// What the watcher knows about the node at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    /// Raft has not stopped on a fatal error.
    pub running: bool,
    /// The leader this node knows of.
    pub leader: Option<u64>,
    /// This node leads.
    pub is_leader: bool,
    /// For a leader: milliseconds since a quorum last acknowledged it.
    pub millis_since_quorum_ack: Option<u64>,
    /// The highest log index this node knows committed.
    pub committed: Option<u64>,
    /// The highest log index applied to this node's state machine.
    pub applied: Option<u64>,
}

/// The verdict: serving, or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Requests are served with fresh state.
    Serving,
    /// Not serving, with the reason (for logs and `/readyz`).
    NotServing(String),
}

impl Verdict {
    /// Whether the node is serving.
    pub fn is_serving(&self) -> bool {
        *self == Verdict::Serving
    }
}

/// Judges the node against `bounds`.
pub fn judge(o: &Observed, bounds: &HealthConfig) -> Verdict {
    let not = |why: String| Verdict::NotServing(why);
    if !o.running {
        return not("raft has stopped".into());
    }
    if o.leader.is_none() {
        return not("no leader is known".into());
    }
    if o.is_leader {
        if let Some(ms) = o
            .millis_since_quorum_ack
            .filter(|ms| *ms > bounds.max_leader_ack_ms)
        {
            return not(format!(
                "no quorum has acknowledged this leader for {ms} ms"
            ));
        }
    }
    let Some(applied) = o.applied else {
        return not("nothing applied yet (waiting for the log or a snapshot)".into());
    };
    let lag = o.committed.unwrap_or(0).saturating_sub(applied);
    if lag > bounds.max_apply_lag {
        return not(format!("{lag} committed entries not yet applied"));
    }
    Verdict::Serving
}

/// Observes `node` now.
pub async fn observe(node: &RaftNode) -> Observed {
    let raft = node.raft();
    let committed = raft
        .with_raft_state(|s| s.committed.map(|id| id.index))
        .await;
    let m = raft.metrics().borrow().clone();
    Observed {
        running: m.running_state.is_ok() && committed.is_ok(),
        leader: m.current_leader,
        is_leader: m.current_leader == Some(m.id),
        millis_since_quorum_ack: m.millis_since_quorum_ack,
        committed: committed.ok().flatten(),
        applied: m.last_applied.map(|id| id.index),
    }
}

/// Judges `node` once and publishes the verdict, then keeps re-judging it every
/// [`INTERVAL`] in a task until `stopped` turns true (publishing and logging each change; at
/// stop every service turns NOT_SERVING). Returns the task and the verdict as it changes.
pub async fn start(
    node: RaftNode,
    bounds: HealthConfig,
    reporter: HealthReporter,
    mut stopped: watch::Receiver<bool>,
) -> (JoinHandle<()>, watch::Receiver<Verdict>) {
    let first = judge(&observe(&node).await, &bounds);
    publish(&reporter, first.is_serving()).await;
    let (verdict, seen) = watch::channel(first);
    let task = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stopped.wait_for(|s| *s) => break,
            }
            let now = judge(&observe(&node).await, &bounds);
            if *verdict.borrow() != now {
                match &now {
                    Verdict::Serving => tracing::info!("health: serving"),
                    Verdict::NotServing(why) => {
                        tracing::warn!(reason = %why, "health: not serving")
                    }
                }
                publish(&reporter, now.is_serving()).await;
                verdict.send_replace(now);
            }
        }
        publish(&reporter, false).await;
        verdict.send_replace(Verdict::NotServing("the node is stopping".into()));
    });
    (task, seen)
}

async fn publish(reporter: &HealthReporter, serving: bool) {
    let status = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    for service in SERVICES {
        reporter.set_service_status(service, status).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy_follower() -> Observed {
        Observed {
            running: true,
            leader: Some(1),
            is_leader: false,
            millis_since_quorum_ack: None,
            committed: Some(100),
            applied: Some(100),
        }
    }

    #[test]
    fn a_caught_up_follower_with_a_leader_serves() {
        assert_eq!(
            judge(&healthy_follower(), &HealthConfig::default()),
            Verdict::Serving
        );
    }

    #[test]
    fn each_reason_alone_turns_the_node_not_serving() {
        let bounds = HealthConfig {
            max_apply_lag: 10,
            max_leader_ack_ms: 1_000,
        };
        let broken = [
            Observed {
                running: false,
                ..healthy_follower()
            },
            Observed {
                leader: None,
                ..healthy_follower()
            },
            Observed {
                applied: None,
                ..healthy_follower()
            },
            Observed {
                applied: Some(89),
                ..healthy_follower()
            },
            Observed {
                leader: Some(2),
                is_leader: true,
                millis_since_quorum_ack: Some(1_001),
                ..healthy_follower()
            },
        ];
        for o in broken {
            assert!(!judge(&o, &bounds).is_serving(), "{o:?} judged serving");
        }
        let at_the_bounds = [
            Observed {
                applied: Some(90),
                ..healthy_follower()
            },
            Observed {
                leader: Some(2),
                is_leader: true,
                millis_since_quorum_ack: Some(1_000),
                ..healthy_follower()
            },
        ];
        for o in at_the_bounds {
            assert!(judge(&o, &bounds).is_serving(), "{o:?} judged not serving");
        }
    }
}
