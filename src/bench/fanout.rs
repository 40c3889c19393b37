//! The revoke-fanout workload: revokers create and revoke sessions while subscribers spread
//! over every node consume the revocation stream; the delay measured is from the revoke
//! acknowledgement reaching the revoker to the event reaching each subscriber.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;

use super::report::Recorder;
use super::sessiond::SessiondStore;
use super::store::SessionStore;
use super::workload::{Clock, Pacer, Plan};
use crate::client::{Client, ClientOptions};
use crate::proto::v1::{
    watch_revocations_response::Kind, CountSessionsRequest, WatchRevocationsRequest,
};

/// How long subscribers get, after the last revocation, to receive what is still in flight.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// One acknowledged revocation.
struct Ack {
    session_id: String,
    at: Instant,
    measured: bool,
}

/// Runs revoke-fanout with `concurrency` revokers and `subscribers` stream consumers spread
/// round-robin over `endpoints` (connected with `options`); sessions live in `tenant` (a
/// tenant of this run alone).
pub async fn run(
    endpoints: &[String],
    options: &ClientOptions,
    tenant: &str,
    plan: Arc<Plan>,
    concurrency: usize,
    subscribers: usize,
    clock: Arc<Clock>,
) -> anyhow::Result<Recorder> {
    let stores = SessiondStore::spread(endpoints, options, tenant)?;
    let from_revision = stores[0]
        .client()
        .count_sessions(CountSessionsRequest {
            tenant: tenant.to_owned(),
            consistency: crate::proto::v1::Consistency::Linearizable as i32,
            ..Default::default()
        })
        .await?
        .revision;

    let received = Arc::new(AtomicU64::new(0));
    let (stop, stopped) = watch::channel(false);
    let mut consumers = JoinSet::new();
    for index in 0..subscribers {
        let client = Client::connect_with(&endpoints[index % endpoints.len()], options).await?;
        let stream = client
            .watch_revocations(WatchRevocationsRequest {
                from_revision,
                tenants: vec![tenant.to_owned()],
                from_sequence: 0,
            })
            .await?;
        consumers.spawn(consume(stream, received.clone(), stopped.clone()));
    }

    let mut revokers = JoinSet::new();
    for worker in 0..concurrency {
        let store = stores[worker % stores.len()].clone();
        revokers.spawn(revoke_loop(store, plan.clone(), worker, clock.clone()));
    }
    let mut recorder = Recorder::default();
    let mut acks = Vec::new();
    while let Some(done) = revokers.join_next().await {
        let (worker_recorder, worker_acks) = done?;
        recorder.merge(worker_recorder);
        acks.extend(worker_acks);
    }

    let expected = (acks.len() * subscribers) as u64;
    let drain_until = Instant::now() + DRAIN_DEADLINE;
    while received.load(Ordering::Relaxed) < expected && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send_replace(true);

    let acked: HashMap<&str, Instant> = acks
        .iter()
        .filter(|ack| ack.measured)
        .map(|ack| (ack.session_id.as_str(), ack.at))
        .collect();
    let mut missing = (acked.len() * subscribers) as u64;
    while let Some(done) = consumers.join_next().await {
        let (deliveries, interrupted) = done?;
        recorder.count_error("subscriber:stream_interrupted", u64::from(interrupted));
        for (session_id, at) in deliveries {
            if let Some(acked_at) = acked.get(session_id.as_str()) {
                recorder.record_latency("revoke_to_event", at.saturating_duration_since(*acked_at));
                missing = missing.saturating_sub(1);
            }
        }
    }
    recorder.count_error("revoke_to_event:missing", missing);
    Ok(recorder)
}

/// One revoker: create a session, revoke it, note when the revocation was acknowledged.
async fn revoke_loop(
    store: SessiondStore,
    plan: Arc<Plan>,
    worker: usize,
    clock: Arc<Clock>,
) -> (Recorder, Vec<Ack>) {
    let mut recorder = Recorder::default();
    let mut acks = Vec::new();
    let mut seq = 0u64;
    let mut pacer = Pacer::new(plan.rate, plan.workers);
    loop {
        pacer.wait().await;
        let Some(measured) = clock.next_op() else {
            break;
        };
        seq += 1;
        let user = format!("bench-{}-{worker}-{seq}", plan.run_tag);
        let started = Instant::now();
        let created = store.create(&user).await;
        if measured {
            recorder.record("create", started.elapsed(), &created);
        }
        let Ok(held) = created else { continue };
        let started = Instant::now();
        let revoked = store.revoke(&held).await;
        let at = Instant::now();
        if measured {
            recorder.record("revoke", at - started, &revoked);
        }
        if revoked.is_ok() {
            acks.push(Ack {
                session_id: held.session_id,
                at,
                measured,
            });
        }
        clock.done.fetch_add(1, Ordering::Relaxed);
    }
    (recorder, acks)
}

/// One subscriber: notes when each revoked session's event arrives, until told to stop.
/// Returns the deliveries and whether the stream ended early.
async fn consume(
    mut stream: tonic::Streaming<crate::proto::v1::WatchRevocationsResponse>,
    received: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> (Vec<(String, Instant)>, bool) {
    let mut deliveries = Vec::new();
    loop {
        let message = tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return (deliveries, false),
            message = stream.message() => message,
        };
        match message {
            Ok(Some(response)) => match response.kind {
                Some(Kind::Events(events)) => {
                    let at = Instant::now();
                    received.fetch_add(events.events.len() as u64, Ordering::Relaxed);
                    deliveries.extend(events.events.into_iter().map(|e| (e.session_id, at)));
                }
                Some(Kind::Progress(_)) => {}
                _ => return (deliveries, true),
            },
            _ => return (deliveries, true),
        }
    }
}
