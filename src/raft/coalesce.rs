//! Coalescing of concurrent read-index rounds.
//!
//! A linearizable read needs a read index confirmed by a quorum *after* the read arrived.
//! Rather than one confirmation round (a heartbeat to every follower, or an RPC to the
//! leader) per read, callers queue up; one driver task takes everything queued, runs one
//! round, and answers the whole batch with its result. A caller that arrives while a round
//! is in flight waits for the next round, which starts after it arrived, so every caller
//! still gets a confirmation that postdates its arrival.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// Shares rounds of an idempotent confirmation among concurrent callers.
pub struct Coalescer<T> {
    pending: Mutex<Pending<T>>,
}

struct Pending<T> {
    waiters: Vec<oneshot::Sender<T>>,
    driving: bool,
}

impl<T> Default for Coalescer<T> {
    fn default() -> Self {
        Coalescer {
            pending: Mutex::new(Pending {
                waiters: Vec::new(),
                driving: false,
            }),
        }
    }
}

impl<T: Clone + Send + 'static> Coalescer<T> {
    /// Waits for the result of a round of `round` that starts after this call. `None` if the
    /// round's task died (a panic) before answering.
    pub async fn join<F, Fut>(self: &Arc<Self>, round: F) -> Option<T>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let start_driver = {
            let mut pending = self.pending.lock().expect("coalescer lock");
            pending.waiters.push(answer);
            !std::mem::replace(&mut pending.driving, true)
        };
        if start_driver {
            tokio::spawn(self.clone().drive(round));
        }
        answered.await.ok()
    }

    /// Runs rounds until no caller is waiting.
    async fn drive<F, Fut>(self: Arc<Self>, round: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = T>,
    {
        loop {
            let batch = {
                let mut pending = self.pending.lock().expect("coalescer lock");
                if pending.waiters.is_empty() {
                    pending.driving = false;
                    return;
                }
                std::mem::take(&mut pending.waiters)
            };
            let result = round().await;
            for waiter in batch {
                let _ = waiter.send(result.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use super::*;

    /// A round that reports its own number, started in order, taking a while.
    fn counting_round(
        rounds: &Arc<AtomicU64>,
    ) -> impl Fn() -> std::pin::Pin<Box<dyn Future<Output = u64> + Send>> + Send + 'static {
        let rounds = rounds.clone();
        move || {
            let number = rounds.fetch_add(1, Ordering::SeqCst) + 1;
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                number
            })
        }
    }

    #[tokio::test]
    async fn concurrent_callers_share_rounds() {
        let coalescer = Arc::new(Coalescer::default());
        let rounds = Arc::new(AtomicU64::new(0));
        let callers: Vec<_> = (0..50)
            .map(|_| {
                let (coalescer, round) = (coalescer.clone(), counting_round(&rounds));
                tokio::spawn(async move { coalescer.join(round).await })
            })
            .collect();
        for caller in callers {
            assert!(caller.await.unwrap().is_some());
        }
        let used = rounds.load(Ordering::SeqCst);
        assert!((1..=2).contains(&used), "50 callers took {used} rounds");
    }

    #[tokio::test]
    async fn a_caller_arriving_during_a_round_gets_a_later_round() {
        let coalescer = Arc::new(Coalescer::default());
        let rounds = Arc::new(AtomicU64::new(0));
        let first = {
            let (coalescer, round) = (coalescer.clone(), counting_round(&rounds));
            tokio::spawn(async move { coalescer.join(round).await })
        };
        while rounds.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let started_before_me = rounds.load(Ordering::SeqCst);
        let mine = coalescer.join(counting_round(&rounds)).await.unwrap();
        assert!(
            mine > started_before_me,
            "round {mine} began before the call"
        );
        assert_eq!(first.await.unwrap(), Some(1));
    }

    #[tokio::test]
    async fn the_driver_stops_when_idle_and_restarts_on_demand() {
        let coalescer = Arc::new(Coalescer::default());
        let rounds = Arc::new(AtomicU64::new(0));
        assert_eq!(coalescer.join(counting_round(&rounds)).await, Some(1));
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!coalescer.pending.lock().unwrap().driving);
        assert_eq!(coalescer.join(counting_round(&rounds)).await, Some(2));
    }
}
