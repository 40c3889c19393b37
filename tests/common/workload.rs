//! A concurrent create / rotate / revoke workload against a set of nodes that records every
//! acknowledged result, and the checks of that history against the cluster afterwards.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sessiond::client::Client;
use sessiond::proto::v1::*;
use tokio::sync::watch;

use super::{create_request, rotate_request};

/// What the workload saw acknowledged.
#[derive(Default)]
pub struct History {
    /// Sessions whose creation was acknowledged.
    pub created: Mutex<Vec<String>>,
    /// Sessions whose revocation was acknowledged.
    pub revoked: Mutex<Vec<String>>,
    /// Every successor acknowledged for each presented refresh token.
    pub successors: Mutex<BTreeMap<String, BTreeSet<String>>>,
    /// Acknowledged writes.
    pub acknowledged: AtomicU64,
    /// Requests that failed (unavailable during failover, …).
    pub failed: AtomicU64,
}

impl History {
    fn record_rotation(&self, presented: &str, r: &RotateResponse) {
        if r.outcome() == RotateOutcome::Rotated {
            self.successors
                .lock()
                .unwrap()
                .entry(presented.to_owned())
                .or_default()
                .insert(r.refresh_token.clone());
        }
    }

    /// Invariant 1 over the history: no refresh token yielded two different successors.
    pub fn assert_single_redemption(&self) {
        for (presented, successors) in self.successors.lock().unwrap().iter() {
            assert!(
                successors.len() <= 1,
                "token {}… redeemed for {} different successors",
                &presented[..12],
                successors.len()
            );
        }
    }
}

/// The nodes a workload talks to; a stopped node's client just fails.
pub type Clients = Arc<Vec<Client>>;

/// Runs `request` against the nodes in turn (starting at `first`) until one acknowledges it,
/// for up to ~20 s.
async fn call<T, F, Fut>(
    clients: &Clients,
    first: usize,
    history: &History,
    request: F,
) -> Option<T>
where
    F: Fn(Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    for attempt in 0..200 {
        let client = clients[(first + attempt) % clients.len()].clone();
        match tokio::time::timeout(Duration::from_secs(5), request(client)).await {
            Ok(Ok(response)) => {
                history.acknowledged.fetch_add(1, Ordering::Relaxed);
                return Some(response);
            }
            _ => {
                history.failed.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    None
}

/// One worker: creates sessions (with request ids, so retries are safe), rotates each a few
/// times, races two rotations of one token on two nodes, and revokes every fourth session.
pub async fn worker(
    worker: usize,
    clients: Clients,
    history: Arc<History>,
    stop: watch::Receiver<bool>,
) {
    let mut n = 0usize;
    while !*stop.borrow() {
        n += 1;
        let request_id = format!("workload-{worker:04}-{n:08}-create");
        let created = call(&clients, worker + n, &history, |c| {
            let request = CreateSessionRequest {
                request_id: request_id.clone(),
                ..create_request("load", &format!("user-{worker}"))
            };
            async move { c.create_session(request).await }
        })
        .await;
        let Some(created) = created else { continue };
        let session_id = created.session.as_ref().unwrap().session_id.clone();
        history.created.lock().unwrap().push(session_id.clone());

        let mut token = created.refresh_token.clone();
        for step in 0..3 {
            let presented = token.clone();
            let rotated = if step == 1 && clients.len() > 1 {
                let (a, b) = (
                    clients[n % clients.len()].clone(),
                    clients[(n + 1) % clients.len()].clone(),
                );
                let (ra, rb) = tokio::join!(
                    a.rotate(rotate_request(&presented)),
                    b.rotate(rotate_request(&presented))
                );
                for r in [&ra, &rb].into_iter().flatten() {
                    history.record_rotation(&presented, r);
                }
                [ra, rb]
                    .into_iter()
                    .flatten()
                    .find(|r| r.outcome() == RotateOutcome::Rotated)
            } else {
                call(&clients, worker + n + step, &history, |c| {
                    let request = rotate_request(&presented);
                    async move { c.rotate(request).await }
                })
                .await
            };
            match rotated {
                Some(r) if r.outcome() == RotateOutcome::Rotated => {
                    history.record_rotation(&presented, &r);
                    token = r.refresh_token.clone();
                }
                _ => break,
            }
        }

        if n % 4 == 0 {
            let request_id = format!("workload-{worker:04}-{n:08}-revoke");
            let revoked = call(&clients, worker + n, &history, |c| {
                let request = RevokeRequest {
                    tenant: "load".into(),
                    scope: RevokeScope::Session as i32,
                    id: session_id.clone(),
                    reason: RevocationReason::Logout as i32,
                    request_id: request_id.clone(),
                };
                async move { c.revoke(request).await }
            })
            .await;
            if revoked.is_some() {
                history.revoked.lock().unwrap().push(session_id);
            }
        }
    }
}

/// Starts `workers` workers; stop them by sending `true` on the returned sender.
pub fn start(
    workers: usize,
    clients: Clients,
    history: Arc<History>,
) -> (watch::Sender<bool>, Vec<tokio::task::JoinHandle<()>>) {
    let (stop, stopped) = watch::channel(false);
    let tasks = (0..workers)
        .map(|w| tokio::spawn(worker(w, clients.clone(), history.clone(), stopped.clone())))
        .collect();
    (stop, tasks)
}

/// Stops the workers and waits for them.
pub async fn finish(stop: watch::Sender<bool>, tasks: Vec<tokio::task::JoinHandle<()>>) {
    let _ = stop.send(true);
    for task in tasks {
        task.await.expect("worker panicked");
    }
}

/// Checks every acknowledged create and revoke against one node's applied state.
pub async fn assert_history_present(client: &Client, history: &History, node: &str) {
    let revoked: BTreeSet<String> = history.revoked.lock().unwrap().iter().cloned().collect();
    let created = history.created.lock().unwrap().clone();
    assert!(!created.is_empty(), "the workload acknowledged nothing");
    for id in created {
        let found = client
            .lookup(LookupRequest {
                tenant: "load".into(),
                key: Some(lookup_request::Key::SessionId(id.clone())),
                consistency: Consistency::Local as i32,
            })
            .await
            .unwrap();
        assert_eq!(
            found.outcome(),
            LookupOutcome::Found,
            "{id} missing on {node}"
        );
        if revoked.contains(&id) {
            assert_eq!(
                found.session.unwrap().status(),
                SessionStatus::Revoked,
                "{id} not revoked on {node}"
            );
        }
    }
}
