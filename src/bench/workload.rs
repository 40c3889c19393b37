//! The closed-loop workers: each keeps its own slice of sessions (so rotation chains never
//! collide), runs operations back to back, and records latencies only after the warm-up.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::report::Recorder;
use super::store::{Held, OpError, ReadConsistency, SessionStore};

/// A workload over pre-loaded sessions (or, for `Create`, over none).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Create new sessions.
    Create,
    /// Rotate refresh-token chains (each worker redeems its sessions' tokens in turn).
    Rotate,
    /// Look sessions up by id.
    Lookup,
    /// 70% lookup, 25% rotate, 5% revoke (each revoked session is replaced by a new one).
    Mixed,
    /// Revocations while subscribers on every node consume the revocation stream
    /// (sessiond only); measures revoke acknowledgement to event receipt.
    RevokeFanout,
}

impl Workload {
    /// The workload's name as given on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Create => "create",
            Workload::Rotate => "rotate",
            Workload::Lookup => "lookup",
            Workload::Mixed => "mixed",
            Workload::RevokeFanout => "revoke-fanout",
        }
    }
}

/// When the measured phase ends.
#[derive(Clone, Copy, Debug)]
pub enum Limit {
    /// After this long.
    Duration(Duration),
    /// After this many operations (successful or not).
    Ops(u64),
}

/// Shared run control: warm-up deadline, end condition and a progress counter.
pub struct Clock {
    measure_from: Instant,
    limit: Limit,
    measured_ops: AtomicU64,
    /// Operations done so far, warm-up included (read by the progress display).
    pub done: AtomicU64,
}

impl Clock {
    /// A clock whose measured phase starts after `warmup` from now.
    pub fn start(warmup: Duration, limit: Limit) -> Arc<Self> {
        Arc::new(Clock {
            measure_from: Instant::now() + warmup,
            limit,
            measured_ops: AtomicU64::new(0),
            done: AtomicU64::new(0),
        })
    }

    /// When measurement starts.
    pub fn measure_from(&self) -> Instant {
        self.measure_from
    }

    /// Claims the next operation: `None` when the run is over, `Some(measured)` otherwise.
    pub fn next_op(&self) -> Option<bool> {
        let now = Instant::now();
        if now < self.measure_from {
            return Some(false);
        }
        match self.limit {
            Limit::Duration(length) => (now < self.measure_from + length).then_some(true),
            Limit::Ops(count) => {
                (self.measured_ops.fetch_add(1, Ordering::Relaxed) < count).then_some(true)
            }
        }
    }
}

/// Spaces one worker's operations so that all workers together offer `rate` operations per
/// second (open loop); without a rate, each worker runs back to back (closed loop).
pub struct Pacer {
    interval: Option<Duration>,
    next: tokio::time::Instant,
}

impl Pacer {
    /// A pacer for one of `workers` workers sharing a total `rate` (ops/s).
    pub fn new(rate: Option<f64>, workers: usize) -> Self {
        Pacer {
            interval: rate
                .filter(|r| *r > 0.0)
                .map(|r| Duration::from_secs_f64(workers as f64 / r)),
            next: tokio::time::Instant::now(),
        }
    }

    /// Waits until this worker's next operation is due.
    pub async fn wait(&mut self) {
        if let Some(interval) = self.interval {
            tokio::time::sleep_until(self.next).await;
            self.next = self.next.max(tokio::time::Instant::now() - interval) + interval;
        }
    }
}

/// What to run, shared by every worker.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The operation mix.
    pub workload: Workload,
    /// Consistency of lookups.
    pub consistency: ReadConsistency,
    /// A tag unique to this run, part of every user id.
    pub run_tag: String,
    /// Offered load in operations per second over all workers; `None`: closed loop.
    pub rate: Option<f64>,
    /// Workers sharing the rate.
    pub workers: usize,
}

/// Percentages of the mixed workload: lookups, then rotations; the rest are revocations.
const MIXED_LOOKUP_PCT: u32 = 70;
const MIXED_ROTATE_PCT: u32 = 25;

/// Creates `count` sessions for worker `worker` (not measured).
pub async fn load<S: SessionStore>(
    store: &S,
    plan: &Plan,
    worker: usize,
    count: usize,
    clock: &Clock,
) -> anyhow::Result<Vec<Held>> {
    let mut held = Vec::with_capacity(count);
    for seq in 0..count {
        let user = user_id(plan, worker, seq as u64);
        held.push(
            store
                .create(&user)
                .await
                .map_err(|e| anyhow::anyhow!("loading sessions failed: {e} ({})", e.kind()))?,
        );
        clock.done.fetch_add(1, Ordering::Relaxed);
    }
    Ok(held)
}

fn user_id(plan: &Plan, worker: usize, seq: u64) -> String {
    format!("bench-{}-{worker}-{seq}", plan.run_tag)
}

/// Runs one worker until the clock says stop, over its own sessions `held`.
pub async fn run_worker<S: SessionStore>(
    store: S,
    plan: Arc<Plan>,
    worker: usize,
    mut held: Vec<Held>,
    clock: Arc<Clock>,
) -> Recorder {
    let mut recorder = Recorder::default();
    let mut rng = StdRng::from_rng(&mut rand::rng());
    let mut next_user = held.len() as u64;
    let mut turn = 0usize;
    let mut pacer = Pacer::new(plan.rate, plan.workers);
    loop {
        pacer.wait().await;
        let Some(measured) = clock.next_op() else {
            break;
        };
        let pick = rng.random_range(0..100u32);
        let op = match plan.workload {
            Workload::Create => Op::Create,
            Workload::Rotate => Op::Rotate,
            Workload::Lookup => Op::Lookup,
            Workload::Mixed if pick < MIXED_LOOKUP_PCT => Op::Lookup,
            Workload::Mixed if pick < MIXED_LOOKUP_PCT + MIXED_ROTATE_PCT => Op::Rotate,
            Workload::Mixed => Op::Revoke,
            Workload::RevokeFanout => unreachable!("revoke-fanout has its own driver"),
        };
        let slot = match op {
            Op::Lookup => rng.random_range(0..held.len().max(1)),
            _ => {
                turn = turn.wrapping_add(1);
                turn % held.len().max(1)
            }
        };
        let started = Instant::now();
        match op {
            Op::Create => {
                let result = store.create(&user_id(&plan, worker, next_user)).await;
                next_user += 1;
                note(&mut recorder, measured, "create", started, &result);
            }
            Op::Rotate => {
                let result = store.rotate(&held[slot]).await;
                note(&mut recorder, measured, "rotate", started, &result);
                match result {
                    Ok(successor) => held[slot] = successor,
                    Err(_) => {
                        // The chain may be broken (an unknown outcome): start a new one.
                        if let Ok(fresh) = store.create(&user_id(&plan, worker, next_user)).await {
                            held[slot] = fresh;
                        }
                        next_user += 1;
                    }
                }
            }
            Op::Lookup => {
                let result = store.lookup(&held[slot], plan.consistency).await;
                note(&mut recorder, measured, "lookup", started, &result);
            }
            Op::Revoke => {
                let result = store.revoke(&held[slot]).await;
                note(&mut recorder, measured, "revoke", started, &result);
                let started = Instant::now();
                let result = store.create(&user_id(&plan, worker, next_user)).await;
                next_user += 1;
                note(&mut recorder, measured, "create", started, &result);
                if let Ok(fresh) = result {
                    held[slot] = fresh;
                }
            }
        }
        clock.done.fetch_add(1, Ordering::Relaxed);
    }
    recorder
}

/// Records an operation that started at `started`, if it falls in the measured phase.
fn note<T>(
    recorder: &mut Recorder,
    measured: bool,
    op: &'static str,
    started: Instant,
    result: &Result<T, OpError>,
) {
    if measured {
        recorder.record(op, started.elapsed(), result);
    }
}

#[derive(Clone, Copy)]
enum Op {
    Create,
    Rotate,
    Lookup,
    Revoke,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_op_limit_admits_exactly_that_many_measured_operations() {
        let clock = Clock::start(Duration::ZERO, Limit::Ops(3));
        let admitted = std::iter::from_fn(|| clock.next_op()).count();
        assert_eq!(admitted, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pacer_spreads_the_rate_over_its_workers() {
        let started = tokio::time::Instant::now();
        let mut pacer = Pacer::new(Some(100.0), 4);
        for _ in 0..5 {
            pacer.wait().await;
        }
        // 4 workers share 100 ops/s: each runs every 40 ms; the first op is immediate.
        assert_eq!(started.elapsed(), Duration::from_millis(160));
        let mut unpaced = Pacer::new(None, 4);
        unpaced.wait().await;
        assert_eq!(started.elapsed(), Duration::from_millis(160));
    }

    #[test]
    fn operations_during_warm_up_are_not_measured() {
        let clock = Clock::start(Duration::from_secs(3600), Limit::Ops(1));
        assert_eq!(clock.next_op(), Some(false));
    }
}
