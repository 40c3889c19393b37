//! Randomized fault schedules against real `sessiond` processes, with a history checker.
//!
//! Each schedule (one seed) starts a cluster of `sessiond serve` processes on free loopback
//! ports, their peer links through fault-injecting proxies, drives concurrent clients,
//! watchers on every node and a gateway cache, injects the seed's faults (SIGKILL and
//! restart, SIGSTOP, partitions of every shape, clock offsets, membership changes, forced
//! snapshots and log purges so that laggards install snapshots), heals, and checks DESIGN.md's
//! invariants 1-5 over the recorded history and the final state.
//!
//! The fault schedules are not part of a plain `cargo test` (they are `#[ignore]`; the
//! checker's own test and the short single-fault regressions run):
//! `scripts/chaos.sh` runs them. Environment: `CHAOS_SEED` (replay one), `CHAOS_SCHEDULES`
//! (how many, from `CHAOS_FIRST_SEED`, default random), `CHAOS_DURATION_S` (default 20),
//! `CHAOS_VOTERS` (3 or 5), `CHAOS_LEASE_READS` (1: the nodes answer LINEARIZABLE reads from a
//! leader lease).

mod check;
mod cluster;
mod history;
mod proxy;
mod reforward;
mod schedule;
mod workload;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sessiond::client::Client;
use sessiond::gateway::{GatewayCache, GatewayConfig};
use sessiond::proto::v1::session_authority_client::SessionAuthorityClient;
use sessiond::proto::v1::watch_revocations_response::Kind;
use sessiond::proto::v1::*;
use tokio::sync::watch;

use check::Violation;
use cluster::{Cluster, KEEP};
use history::{History, OpKind, Outcome, Ret};
use proxy::LinkMode;
use schedule::{Fault, Schedule, Target};
use workload::{Nodes, Workload};

/// Grace window of the harness's nodes: longer than any retry plus any clock offset, so a
/// retry of the token just rotated always gets the same successor.
const GRACE_MS: i64 = 120_000;
/// Sessions created before the faults start (a tenant of their own), so that snapshots
/// take a while to send and install.
const PRELOAD: usize = 1_500;
/// Requests abandoned on a paused node (h2 refuses a connection with more than 20 streams
/// reset before they were accepted).
const ABANDONED: usize = 32;
/// Concurrent client tasks.
const CLIENTS: usize = 8;
/// How long the cluster may take to converge once the faults healed.
const CONVERGE: Duration = Duration::from_secs(60);

/// What one schedule did and found.
#[derive(Default)]
struct Report {
    faults: BTreeMap<&'static str, usize>,
    ops: BTreeMap<String, usize>,
    errors: BTreeMap<String, usize>,
    violations: Vec<Violation>,
    notes: Vec<String>,
    rejoins: Vec<String>,
}

/// One schedule in progress.
struct Runner {
    cluster: Cluster,
    voters: Vec<u64>,
    spares: Vec<u64>,
    report: Report,
    rng: StdRng,
    nodes: Nodes,
}

impl Runner {
    async fn resolve(&self, target: Target) -> Option<u64> {
        let leader = self.cluster.leader().await;
        match target {
            Target::Node(id) => Some(id),
            Target::Leader => leader,
            Target::Follower(k) => {
                let followers: Vec<u64> = self
                    .voters
                    .iter()
                    .copied()
                    .filter(|id| Some(*id) != leader)
                    .collect();
                Some(followers[k % followers.len()])
            }
        }
    }

    fn restart(&mut self, id: u64) {
        self.cluster.kill(id);
        self.cluster.start(id);
    }

    /// Restarts `id` and records how long until it knows a leader, and by how much the
    /// term rose meanwhile (issue (d)).
    async fn restart_and_watch(&mut self, id: u64) {
        let term_before = match self.cluster.leader().await {
            Some(l) => self.cluster.status(l).await.map_or(0, |s| s.term),
            None => 0,
        };
        self.restart(id);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(15) {
            if let Some(s) = self.cluster.status(id).await {
                if s.leader_id != 0 && s.applied_index > 0 {
                    self.report.rejoins.push(format!(
                        "node {id}: leader known after {} ms, term {term_before} -> {}",
                        started.elapsed().as_millis(),
                        s.term
                    ));
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.report
            .rejoins
            .push(format!("node {id}: no leader known 15 s after restart"));
    }

    async fn run_fault(&mut self, fault: &Fault) {
        let sleep = |ms: u64| tokio::time::sleep(Duration::from_millis(ms));
        match fault.clone() {
            Fault::Kill {
                target,
                down_ms,
                again_ms,
            } => {
                let Some(id) = self.resolve(target).await else {
                    return;
                };
                self.cluster.kill(id);
                sleep(down_ms).await;
                match again_ms {
                    None => self.restart_and_watch(id).await,
                    Some(ms) => {
                        self.restart(id);
                        sleep(ms).await;
                        self.cluster.kill(id);
                        sleep(300).await;
                        self.restart_and_watch(id).await;
                    }
                }
            }
            Fault::Pause { target, ms } => {
                let Some(id) = self.resolve(target).await else {
                    return;
                };
                self.probe(id).await;
                self.cluster.pause(id, true);
                let burst = self.abandoned_requests(id);
                sleep(ms).await;
                self.cluster.pause(id, false);
                let _ = burst.await;
                self.probe_after_pause(id).await;
            }
            Fault::Isolate { target, ms, mode } => {
                let Some(id) = self.resolve(target).await else {
                    return;
                };
                self.cluster.isolate(&[id], mode);
                sleep(ms).await;
                self.cluster.proxies.heal();
            }
            Fault::Split {
                minority,
                leader_in_minority,
                ms,
            } => {
                let leader = self.cluster.leader().await;
                let mut order: Vec<u64> = self.voters.clone();
                order.sort_by_key(|id| (Some(*id) == leader) != leader_in_minority);
                let (small, large) = order.split_at(minority.min(order.len()));
                self.cluster.proxies.split(small, large, LinkMode::Down);
                sleep(ms).await;
                self.cluster.proxies.heal();
            }
            Fault::OneWay { from, to, ms } => {
                let (Some(a), Some(b)) = (self.resolve(from).await, self.resolve(to).await) else {
                    return;
                };
                if a != b {
                    self.cluster.proxies.set(a, b, LinkMode::Blackhole);
                    sleep(ms).await;
                    self.cluster.proxies.heal();
                }
            }
            Fault::Slow {
                target,
                delay_ms,
                ms,
            } => {
                let Some(id) = self.resolve(target).await else {
                    return;
                };
                let others: Vec<u64> = self.voters.iter().copied().filter(|o| *o != id).collect();
                self.cluster
                    .proxies
                    .split(&[id], &others, LinkMode::Delay(delay_ms));
                sleep(ms).await;
                self.cluster.proxies.heal();
            }
            Fault::Clock { target, offset_ms } => {
                let Some(id) = self.resolve(target).await else {
                    return;
                };
                self.cluster.set_clock_offset(id, offset_ms);
                self.restart_and_watch(id).await;
            }
            Fault::QuorumLoss { down_ms } => {
                let majority = self.voters.len() / 2 + 1;
                let victims: Vec<u64> = self.voters.iter().copied().take(majority).collect();
                for id in &victims {
                    self.cluster.kill(*id);
                }
                sleep(down_ms).await;
                for id in victims {
                    self.cluster.start(id);
                }
            }
            Fault::Membership { during_isolation } => self.membership(during_isolation).await,
            Fault::Laggard {
                target,
                killed,
                behind_ms,
                kill_during_install_ms,
            } => {
                let Some(id) = self.resolve(target).await else {
                    return;
                };
                if killed {
                    self.cluster.kill(id);
                } else {
                    self.cluster.isolate(&[id], LinkMode::Down);
                }
                sleep(behind_ms).await;
                for other in self.voters.clone() {
                    if other != id {
                        if let Some((snapshot, purge)) =
                            self.cluster.snapshot_and_purge(other).await
                        {
                            self.report.notes.push(format!(
                                "node {other} snapshot at {snapshot}, purge up to {purge}"
                            ));
                        }
                    }
                }
                if killed {
                    self.cluster.start(id);
                } else {
                    self.cluster.proxies.heal();
                }
                if let Some(ms) = kill_during_install_ms {
                    sleep(ms).await;
                    self.cluster.kill(id);
                    sleep(300).await;
                    self.restart_and_watch(id).await;
                }
            }
        }
    }

    /// One LOCAL lookup on the probe connection to `id` (which also opens it); the error, if
    /// any, in full.
    async fn probe(&self, id: u64) -> String {
        let request = LookupRequest {
            tenant: "probe".into(),
            key: Some(lookup_request::Key::SessionId("sid_probe".into())),
            consistency: Consistency::Local as i32,
        };
        match self.nodes.client(id).lookup(request).await {
            Err(s) if s.code() != tonic::Code::InvalidArgument => format!("{s:?}"),
            _ => String::new(),
        }
    }

    /// Requests to a paused node that the callers give up on (as impatient clients do): each
    /// leaves a stream the node only sees, already reset, when it resumes.
    fn abandoned_requests(&self, id: u64) -> tokio::task::JoinHandle<()> {
        let client = self.nodes.client(id);
        tokio::spawn(async move {
            let mut calls = tokio::task::JoinSet::new();
            for _ in 0..ABANDONED {
                let mut client = client.clone();
                calls.spawn(async move {
                    let mut request = tonic::Request::new(LookupRequest {
                        tenant: "probe".into(),
                        key: Some(lookup_request::Key::SessionId("sid_probe".into())),
                        consistency: Consistency::Local as i32,
                    });
                    request.set_timeout(Duration::from_millis(200));
                    let _ = client.lookup(request).await;
                });
            }
            while calls.join_next().await.is_some() {}
        })
    }

    /// After a pause: whether the node refused a connection with GOAWAY too_many_resets
    /// (h2 logs it), and whether requests on the clients' connection to it fail so (issue (c)).
    async fn probe_after_pause(&mut self, id: u64) {
        const H2_LIMIT: &str = "remotely-reset pending-accept streams reached limit";
        let before = self.cluster.log_count(id, H2_LIMIT);
        let mut refused = 0;
        for _ in 0..5 {
            if self.probe(id).await.contains("too_many_resets") {
                refused += 1;
            }
        }
        let goaways = self.cluster.log_count(id, H2_LIMIT) - before;
        self.report.notes.push(format!(
            "node {id} resumed after a pause with {ABANDONED} abandoned requests: \
             {goaways} GOAWAY too_many_resets logged, {refused} of 5 probes refused"
        ));
    }

    /// Adds a new node as learner, promotes it, removes it again and stops it, optionally
    /// while a follower is cut off.
    async fn membership(&mut self, during_isolation: bool) {
        let Some(new) = self.spares.pop() else { return };
        self.cluster.start(new);
        let isolated = if during_isolation {
            let k = self.rng.random_range(0..4);
            self.resolve(Target::Follower(k)).await
        } else {
            None
        };
        if let Some(id) = isolated {
            self.cluster.isolate(&[id], LinkMode::Down);
        }
        let mut step = "add-learner";
        let mut done = false;
        for _ in 0..3 {
            let Some(leader) = self.cluster.wait_leader(Duration::from_secs(10)).await else {
                continue;
            };
            let result = match step {
                "add-learner" => self.cluster.add_learner(leader, new).await,
                "promote" => self.cluster.promote(leader, new).await,
                _ => self.cluster.remove(leader, new).await,
            };
            match result {
                Ok(()) => {
                    self.report.notes.push(format!("node {new}: {step} ok"));
                    step = match step {
                        "add-learner" => "promote",
                        "promote" => "remove",
                        _ => {
                            done = true;
                            break;
                        }
                    };
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => {
                    self.report
                        .notes
                        .push(format!("node {new}: {step} failed: {e}"));
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        if !done {
            // Try the remaining steps once the isolation heals; a learner or voter that
            // stays is checked with the others at the end.
            self.cluster.proxies.heal();
        }
        if done {
            self.cluster.kill(new);
        }
        self.cluster.proxies.heal();
    }
}

fn config_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn preload(url: &str) {
    let client = SessionAuthorityClient::connect(url.to_owned())
        .await
        .expect("preload client");
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..16 {
        let mut client = client.clone();
        tasks.spawn(async move {
            for i in (worker..PRELOAD).step_by(16) {
                let request = CreateSessionRequest {
                    tenant: "bulk".into(),
                    user_id: format!("bulk{}", i % 100),
                    request_id: format!("chaos-preload-{i:08}-0000"),
                    ..Default::default()
                };
                let _ = client.create_session(request).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Every event the leader retains, in stream order, read until a progress message reaches
/// `upto`.
async fn all_events(url: &str, upto: u64) -> Option<Vec<(u64, String)>> {
    let mut client = SessionAuthorityClient::connect(url.to_owned()).await.ok()?;
    let mut stream = client
        .watch_revocations(WatchRevocationsRequest::default())
        .await
        .ok()?
        .into_inner();
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let message = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .ok()?
            .ok()??;
        match message.kind {
            Some(Kind::Events(batch)) => {
                events.extend(
                    batch
                        .events
                        .into_iter()
                        .map(|e| (batch.revision, e.session_id)),
                );
                if batch.revision >= upto && !batch.partial {
                    return Some(events);
                }
            }
            Some(Kind::Progress(p)) if p.revision >= upto => return Some(events),
            _ => {}
        }
    }
    None
}

fn error_class(e: &str) -> String {
    let e = e.to_lowercase();
    for key in [
        "too_many_resets",
        "timed out",
        "deadline",
        "connect",
        "leader",
        "quorum",
        "broken pipe",
        "reset",
    ] {
        if e.contains(key) {
            return key.to_owned();
        }
    }
    e.chars().take(40).collect()
}

/// Waits until every running member reports the same applied index with a leader known;
/// returns the members, the leader and that index, or the laggards.
async fn converge(cluster: &mut Cluster, members: &[u64]) -> Result<(u64, u64), String> {
    let deadline = Instant::now() + CONVERGE;
    let mut last = String::new();
    while Instant::now() < deadline {
        let mut indexes = BTreeMap::new();
        let mut leader = None;
        for id in members {
            if let Some(s) = cluster.status(*id).await {
                indexes.insert(*id, s.applied_index);
                if s.leader_id != 0 {
                    leader = Some(s.leader_id);
                }
            }
        }
        let target = indexes.values().max().copied().unwrap_or(0);
        if let Some(leader) = leader {
            if indexes.len() == members.len() && indexes.values().all(|i| *i == target) {
                return Ok((leader, target));
            }
        }
        last = format!("leader {leader:?}, applied {indexes:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Err(last)
}

async fn run_schedule(schedule: &Schedule, duration: Duration) -> Report {
    let voters: Vec<u64> = (1..=schedule.voters).collect();
    let memberships = schedule
        .steps
        .iter()
        .filter(|s| matches!(s.fault, Fault::Membership { .. }))
        .count() as u64;
    let spares: Vec<u64> = (schedule.voters + 1..=schedule.voters + memberships)
        .rev()
        .collect();
    let ids: Vec<u64> = voters.iter().chain(spares.iter().rev()).copied().collect();
    let mut cluster = Cluster::prepare(&ids, GRACE_MS).await;
    cluster.start(1);
    cluster
        .wait_leader(Duration::from_secs(20))
        .await
        .expect("node 1 elects itself");
    for id in &voters[1..] {
        cluster.start(*id);
        cluster.add_learner(1, *id).await.expect("add voter");
        cluster.promote(1, *id).await.expect("promote voter");
    }
    preload(&cluster.url(1)).await;

    let history = History::new();
    let urls: BTreeMap<u64, String> = ids.iter().map(|id| (*id, cluster.url(*id))).collect();
    let voter_urls: Vec<String> = voters.iter().map(|id| urls[id].clone()).collect();
    let gateway = GatewayCache::new(
        Client::for_cluster(&voter_urls).expect("gateway client"),
        GatewayConfig::default(),
    );
    let following = gateway.follow(Client::for_cluster(&voter_urls).expect("stream client"));
    let workload = Workload {
        history: history.clone(),
        nodes: Nodes::new(&urls),
        targets: voters.clone(),
        gateway: gateway.clone(),
    };
    let (stop_clients, clients_stopped) = watch::channel(false);
    let (stop_watchers, watchers_stopped) = watch::channel(false);
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        clients.spawn(workload.clone().client(
            c,
            schedule.seed.wrapping_mul(31).wrapping_add(c as u64),
            clients_stopped.clone(),
        ));
    }
    let mut watchers = tokio::task::JoinSet::new();
    for id in &voters {
        watchers.spawn(workload::watcher(
            history.clone(),
            *id,
            urls[id].clone(),
            watchers_stopped.clone(),
        ));
    }

    let mut runner = Runner {
        cluster,
        voters: voters.clone(),
        spares,
        report: Report::default(),
        rng: StdRng::seed_from_u64(schedule.seed ^ 0x5eed),
        nodes: Nodes::new(&urls),
    };
    let started = Instant::now();
    for step in &schedule.steps {
        let at = Duration::from_millis(step.at_ms);
        if let Some(wait) = at.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        *runner.report.faults.entry(step.fault.kind()).or_default() += 1;
        runner.run_fault(&step.fault).await;
    }
    if let Some(wait) = duration.checked_sub(started.elapsed()) {
        tokio::time::sleep(wait).await;
    }

    // Heal: every link up, every process resumed, every voter running.
    runner.cluster.heal();
    for id in &voters {
        if runner.cluster.has_process(*id) && !runner.cluster.running(*id) {
            runner.report.violations.push(Violation {
                invariant: 0,
                message: format!("node {id} exited by itself (a crash at any point must leave a node that recovers)"),
                history: runner.cluster.log_errors(*id, 3),
            });
        }
        if !runner.cluster.running(*id) {
            runner.restart(*id);
        }
    }
    let _ = stop_clients.send(true);
    while clients.join_next().await.is_some() {}
    let end_us = history.now_us();

    let (mut report, truth) = check_final(&mut runner, &history, &gateway, end_us).await;
    let _ = stop_watchers.send(true);
    while watchers.join_next().await.is_some() {}
    following.abort();
    if let Some(truth) = truth {
        report.violations.extend(check::check_watchers(
            &history.segments.lock().unwrap(),
            &truth,
        ));
    }
    if !report.violations.is_empty() {
        let kept = runner.cluster.keep_files();
        report.notes.push(format!(
            "data directories and logs kept in {}",
            kept.display()
        ));
    }
    report
}

/// Convergence, digests (5), final reads, the operation checks (1-3), the gateway cache;
/// also returns every retained event, for the watchers' check (4).
async fn check_final(
    runner: &mut Runner,
    history: &History,
    gateway: &GatewayCache,
    end_us: u64,
) -> (Report, Option<Vec<(u64, String)>>) {
    let mut report = std::mem::take(&mut runner.report);
    let ops = history.finished_ops();
    for op in &ops {
        let kind = match &op.kind {
            OpKind::Create { .. } => "create",
            OpKind::Rotate { .. } => "rotate",
            OpKind::Revoke { .. } => "revoke",
            OpKind::Lookup {
                linearizable: true, ..
            } => "lookup-linearizable",
            OpKind::Lookup { .. } => "lookup-local",
            OpKind::GatewayLookup { .. } => "gateway-lookup",
        };
        let outcome = match &op.outcome {
            Outcome::Ok(_) => "ok",
            Outcome::Fail(e) | Outcome::Unknown(e) => {
                *report.errors.entry(error_class(e)).or_default() += 1;
                if matches!(op.outcome, Outcome::Fail(_)) {
                    "fail"
                } else {
                    "unknown"
                }
            }
            Outcome::Pending => "pending",
        };
        *report.ops.entry(format!("{kind}:{outcome}")).or_default() += 1;
    }
    let members: Vec<u64> = match runner.cluster.wait_leader(CONVERGE).await {
        Some(l) => runner
            .cluster
            .status(l)
            .await
            .map(|s| s.members.iter().map(|m| m.node_id).collect())
            .unwrap_or_else(|| runner.voters.clone()),
        None => runner.voters.clone(),
    };
    for id in &members {
        if !runner.cluster.running(*id) {
            runner.cluster.start(*id);
        }
    }
    let (leader, index) = match converge(&mut runner.cluster, &members).await {
        Ok(x) => x,
        Err(state) => {
            for id in &members {
                if !runner.cluster.running(*id) {
                    report.violations.push(Violation {
                        invariant: 0,
                        message: format!("node {id} exited by itself and does not start again"),
                        history: runner.cluster.log_errors(*id, 2),
                    });
                }
            }
            let tails: Vec<String> = members
                .iter()
                .flat_map(|id| runner.cluster.log_errors(*id, 2))
                .collect();
            report.violations.push(Violation {
                invariant: 0,
                message: format!(
                    "the cluster did not converge within {CONVERGE:?} after healing: {state}"
                ),
                history: tails,
            });
            return (report, None);
        }
    };
    // (5) byte-identical replicas.
    for _ in 0..20 {
        let mut digests = BTreeMap::new();
        for id in &members {
            if let Some(d) = runner.cluster.digest(*id).await {
                digests.insert(*id, (d.applied_index, d.digest, d.keys));
            }
        }
        let indexes: std::collections::BTreeSet<u64> = digests.values().map(|d| d.0).collect();
        if digests.len() == members.len() && indexes.len() == 1 {
            let distinct: std::collections::BTreeSet<&Vec<u8>> =
                digests.values().map(|d| &d.1).collect();
            if distinct.len() > 1 {
                report.violations.push(Violation {
                    invariant: 5,
                    message: format!("replicas at index {indexes:?} differ"),
                    history: digests
                        .iter()
                        .map(|(id, (i, d, k))| {
                            format!("node {id} applied {i}: {k} keys, {:02x?}", &d[..8])
                        })
                        .collect(),
                });
            }
            report.notes.push(format!(
                "digests compared at index {indexes:?} on {} nodes",
                members.len()
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Final LINEARIZABLE reads through the leader.
    let sessions = history.sessions.lock().unwrap().clone();
    let mut client = SessionAuthorityClient::connect(runner.cluster.url(leader))
        .await
        .expect("final read client");
    let mut finals = Vec::with_capacity(sessions.len());
    for s in &sessions {
        let mut answer = None;
        for _ in 0..5 {
            let request = LookupRequest {
                tenant: s.tenant.clone(),
                key: Some(lookup_request::Key::SessionId(s.id.clone())),
                consistency: Consistency::Linearizable as i32,
            };
            if let Ok(r) = client.lookup(request).await {
                answer = Some(workload::found(r.into_inner().session.as_ref()));
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        finals.push(answer.unwrap_or(Ret::RotateOutcome(-1)));
    }
    report
        .violations
        .extend(check::check_operations(&ops, &sessions, &finals, end_us));

    // The gateway cache: once it caught up, no revoked session is cached as active.
    let deadline = Instant::now() + Duration::from_secs(20);
    while gateway.stats().revision < index && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (s, f) in sessions.iter().zip(&finals) {
        if let (Ret::Found { revoked: true, .. }, Some(cached)) =
            (f, gateway.cached(&s.tenant, &s.id))
        {
            if !cached.is_revoked() {
                report.violations.push(Violation {
                    invariant: 4,
                    message: format!(
                        "gateway cache (revision {}) holds revoked session {} as active",
                        gateway.stats().revision,
                        s.id
                    ),
                    history: Vec::new(),
                });
            }
        }
    }

    // Every retained event, for the watchers' check; let them reach the end first.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let truth = all_events(&runner.cluster.url(leader), index).await;
    if truth.is_none() {
        report
            .notes
            .push("could not read the leader's event list".into());
    }
    (report, truth)
}

fn print_report(schedule: &Schedule, report: &Report) {
    println!("--- seed {} ---", schedule.seed);
    println!("faults: {:?}", report.faults);
    println!("ops: {:?}", report.ops);
    println!("errors: {:?}", report.errors);
    for r in &report.rejoins {
        println!("rejoin: {r}");
    }
    for n in &report.notes {
        println!("note: {n}");
    }
    if !report.violations.is_empty() {
        println!(
            "VIOLATIONS in seed {} (replay: scripts/chaos.sh --seed {}):",
            schedule.seed, schedule.seed
        );
        print!("{schedule}");
        for v in &report.violations {
            println!("  invariant {}: {}", v.invariant, v.message);
            for line in &v.history {
                println!("      {line}");
            }
        }
    }
}

/// Runs `seeds`, prints each report and a summary; returns the seeds with violations.
fn run_seeds(seeds: &[u64]) -> Vec<u64> {
    let duration = Duration::from_secs(config_u64("CHAOS_DURATION_S", 20));
    let voters = config_u64("CHAOS_VOTERS", 3);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut failed = Vec::new();
    let mut faults: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut ops: BTreeMap<String, usize> = BTreeMap::new();
    let mut violations = 0;
    for seed in seeds {
        let schedule = schedule::generate(*seed, voters, duration.as_millis() as u64);
        let report = runtime.block_on(run_schedule(&schedule, duration));
        print_report(&schedule, &report);
        for (k, v) in &report.faults {
            *faults.entry(k).or_default() += v;
        }
        for (k, v) in &report.ops {
            *ops.entry(k.clone()).or_default() += v;
        }
        violations += report.violations.len();
        if !report.violations.is_empty() {
            failed.push(*seed);
        }
    }
    println!(
        "=== {} schedules of {:?} ({} voters) ===",
        seeds.len(),
        duration,
        voters
    );
    println!("faults by kind: {faults:?}");
    println!(
        "operations: {ops:?} (total {})",
        ops.values().sum::<usize>()
    );
    println!("violations: {violations} in seeds {failed:?}");
    failed
}

fn seeds_from_env(default: &[u64]) -> Vec<u64> {
    if let Ok(seed) = std::env::var("CHAOS_SEED") {
        return seed
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect();
    }
    match std::env::var("CHAOS_SCHEDULES")
        .ok()
        .and_then(|n| n.parse::<u64>().ok())
    {
        Some(n) => {
            let first = config_u64("CHAOS_FIRST_SEED", rand::random::<u32>() as u64);
            (first..first + n).collect()
        }
        None => default.to_vec(),
    }
}

/// The CI set: schedules covering every fault kind but forced snapshot installs (those are
/// the [`REGRESSION_SEEDS`], which CI runs too): one-way, clock offset, isolated leader,
/// kill, majority/minority, pause, kill twice, membership, slow links, quorum loss.
const CI_SEEDS: &[u64] = &[7, 52, 69, 98];

/// Random schedules (`CHAOS_SEED` / `CHAOS_SCHEDULES`; by default the CI set): every
/// invariant holds.
#[test]
#[ignore = "runs real processes for minutes: scripts/chaos.sh"]
fn random_fault_schedules_keep_the_invariants() {
    let failed = run_seeds(&seeds_from_env(CI_SEEDS));
    assert!(failed.is_empty(), "violations in seeds {failed:?}");
}

/// Schedules that caught defects (README "How we test faults"). On commit 1782221 seeds 1
/// and 4 left a node SIGKILLed during a snapshot install unable to start again ("Failed to
/// get log entries [0, 64)"), and seeds 3 and 1 made a watcher on a node that installed a
/// snapshot miss revocations without RESYNC_REQUIRED (which of the two a run shows depends
/// on timing). On commit 458a16c seed 5800 (one run in three) had a leader killed right
/// after it acknowledged a rotation restart before another was elected, and name a read
/// index behind that rotation: the successor token was then refused as unknown.
const REGRESSION_SEEDS: &[u64] = &[1, 3, 4, 5800];

/// The regression schedules (`scripts/chaos.sh --regressions`): every invariant holds (the
/// first three fail on 1782221, before storage format 2; 5800 fails now and then on
/// 458a16c).
#[test]
#[ignore = "runs real processes for minutes: scripts/chaos.sh --regressions"]
fn regression_schedules() {
    let failed = run_seeds(REGRESSION_SEEDS);
    assert!(failed.is_empty(), "violations in seeds {failed:?}");
}

#[test]
fn a_seed_gives_the_same_schedule_every_time() {
    let a = schedule::generate(42, 3, 20_000);
    let b = schedule::generate(42, 3, 20_000);
    assert!(!a.steps.is_empty());
    assert_eq!(a.to_string(), b.to_string());
    assert_ne!(a.to_string(), schedule::generate(43, 3, 20_000).to_string());
}

/// The operator calls the harness relies on, against one real node: the digest covers the
/// applied index and changes with the state, a forced snapshot advances the snapshot index,
/// the node purges its log behind it but for the entries it keeps, and an operator's purge
/// takes the rest.
#[test]
fn digest_snapshot_and_purge_work_on_a_real_node() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let mut cluster = Cluster::prepare(&[1], GRACE_MS).await;
        cluster.start(1);
        cluster
            .wait_leader(Duration::from_secs(20))
            .await
            .expect("leader");
        // The new leader's first entries may still be applying: compare two digests taken
        // at the same applied index.
        let mut first = cluster.digest(1).await.expect("digest");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let again = cluster.digest(1).await.expect("digest");
            if again.applied_index == first.applied_index {
                assert_eq!(again.digest, first.digest);
                assert_eq!(again.keys, first.keys);
                break;
            }
            assert!(Instant::now() < deadline, "the applied index never settled");
            first = again;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        create_sessions(&cluster.url(1), 2 * KEEP).await;
        let second = cluster.digest(1).await.expect("digest");
        assert!(second.applied_index > first.applied_index);
        assert!(second.keys > first.keys);
        assert_ne!(second.digest, first.digest);
        let snapshot = cluster.snapshot(1).await.expect("snapshot");
        assert!(snapshot >= second.applied_index);
        // The node purges behind its snapshot by itself, but for the entries it keeps; an
        // operator's purge takes the rest.
        wait_purged(&cluster, snapshot - KEEP).await;
        assert_eq!(cluster.purge(1, snapshot).await, Some(snapshot));
        wait_purged(&cluster, snapshot).await;
    });
}

/// Waits up to 10 s until node 1 has purged its log up to `index` exactly.
async fn wait_purged(cluster: &Cluster, index: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = cluster.status(1).await.expect("status");
        if status.purged_index == index {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "log not purged to {index}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Seed 5309 (lease-read run of 2026-12-06): an operator's purge up to the snapshot's index
/// stays pending on the leader while a replication to a stalled follower uses those entries.
/// The next build then scheduled openraft's own purge `max_in_snapshot_log_to_keep` lower, and
/// openraft 0.9 panicked on its purge point moving backwards (a debug assertion; the Raft
/// core stopped and the cluster never converged). sessiond now asks for the purge behind
/// each snapshot itself, through the call that never moves the point backwards.
#[test]
fn an_operator_purge_pending_behind_a_stalled_follower_survives_the_next_snapshot() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let mut cluster = Cluster::three_voters(GRACE_MS).await;
        let leader = cluster
            .wait_leader(Duration::from_secs(20))
            .await
            .expect("leader");
        let stalled = if leader == 1 { 2 } else { 1 };
        create_sessions(&cluster.url(leader), 2 * KEEP).await;
        cluster.isolate(&[stalled], LinkMode::Blackhole);
        create_sessions(&cluster.url(leader), KEEP).await;
        let (snapshot, purge) = cluster
            .snapshot_and_purge(leader)
            .await
            .expect("snapshot and purge");
        assert_eq!(purge, snapshot);
        create_sessions(&cluster.url(leader), KEEP / 4).await;
        cluster.snapshot(leader).await.expect("second snapshot");
        create_sessions(&cluster.url(leader), KEEP / 4).await;
        assert_eq!(cluster.log_count(leader, "panicked"), 0);
        cluster.proxies.heal();
        converge(&mut cluster, &[1, 2, 3])
            .await
            .expect("the cluster converges once healed");
    });
}

/// Creates `n` sessions through `url`, one after the other, each of which must succeed.
async fn create_sessions(url: &str, n: u64) {
    let mut client = SessionAuthorityClient::connect(url.to_owned())
        .await
        .expect("client");
    for i in 0..n {
        let request = CreateSessionRequest {
            tenant: "t".into(),
            user_id: format!("u{i}"),
            ..Default::default()
        };
        client.create_session(request).await.expect("create");
    }
}

/// Issue (d): a node that campaigned while cut off (uncommitted vote, no leader), killed and
/// restarted with its usual flags (node 1 bootstraps), must serve at once. On 1782221
/// `server::start` waits up to 10 s for a leader before it listens, so the node cannot hear
/// the leader, campaigns at rising terms, and then forces an election (measured: 10.7 s
/// unreachable, the cluster's term 2 -> 8). Fixed: only a node that just initialized itself
/// waits for its leader.
#[test]
fn a_restarted_node_serves_before_it_knows_a_leader() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let mut cluster = Cluster::three_voters(GRACE_MS).await;
        // Leadership moves away from node 1, then node 1 campaigns alone.
        cluster.isolate(&[1], LinkMode::Down);
        tokio::time::sleep(Duration::from_secs(5)).await;
        cluster.proxies.heal();
        tokio::time::sleep(Duration::from_secs(3)).await;
        cluster.isolate(&[1], LinkMode::Down);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let campaigning = cluster.status(1).await.expect("status");
        assert_eq!(campaigning.leader_id, 0, "node 1 should be campaigning");
        cluster.kill(1);
        cluster.proxies.heal();
        cluster.start(1);
        let restarted = Instant::now();
        while cluster.status(1).await.is_none() {
            assert!(
                restarted.elapsed() < Duration::from_secs(5),
                "node 1 not serving {:?} after its restart",
                restarted.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}
