//! The clients of a schedule: creates, rotations (sequential, deliberately concurrent on one
//! token, retries of a rotated token within the grace window, replays of older tokens),
//! revocations at every scope, LINEARIZABLE and LOCAL lookups, lookups through a gateway
//! cache, and a revocation watcher on every node. Every call goes to one chosen node (no
//! client-side retry hides an outcome) and is recorded in the [`History`].

use std::collections::BTreeMap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sessiond::gateway::GatewayCache;
use sessiond::proto::v1::session_authority_client::SessionAuthorityClient;
use sessiond::proto::v1::watch_revocations_response::Kind;
use sessiond::proto::v1::*;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

use crate::history::*;

/// How long one client call may take before its outcome is unknown.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Operations aimed at one session before the workload leaves it (keeps the per-session
/// linearizability search small).
const OPS_PER_SESSION: usize = 8;
/// Tenants and users the workload spreads over (small, so that user and tenant revocations
/// hit several sessions).
const TENANTS: usize = 3;
const USERS: usize = 4;

/// A lazily connected client of every node.
#[derive(Clone)]
pub struct Nodes {
    clients: BTreeMap<u64, SessionAuthorityClient<Channel>>,
}

impl Nodes {
    /// Clients of `urls` (id → URL).
    pub fn new(urls: &BTreeMap<u64, String>) -> Self {
        let clients = urls
            .iter()
            .map(|(id, url)| {
                let channel = Endpoint::from_shared(url.clone())
                    .expect("url")
                    .connect_timeout(Duration::from_secs(2))
                    .timeout(CALL_TIMEOUT)
                    .tcp_nodelay(true)
                    .connect_lazy();
                (*id, SessionAuthorityClient::new(channel))
            })
            .collect();
        Nodes { clients }
    }

    /// The client of node `id`.
    pub fn client(&self, id: u64) -> SessionAuthorityClient<Channel> {
        self.clients[&id].clone()
    }
}

fn tenant_name(i: usize) -> String {
    format!("t{i}")
}

/// The shared context of the client tasks.
#[derive(Clone)]
pub struct Workload {
    /// Where to record.
    pub history: History,
    /// Node clients.
    pub nodes: Nodes,
    /// Nodes requests may go to (the schedule's voters).
    pub targets: Vec<u64>,
    /// The gateway cache the workload reads through.
    pub gateway: GatewayCache,
}

/// Runs `f` with the per-call timeout; an elapsed timeout is an error.
async fn timed<T>(
    f: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, String> {
    match tokio::time::timeout(CALL_TIMEOUT + Duration::from_secs(1), f).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(format!("{s:?}")),
        Err(_) => Err("timed out".into()),
    }
}

/// A write's outcome: unknown on any error, except a refused connection (the request never
/// left the client).
fn write_outcome(r: Result<Ret, String>) -> Outcome {
    match r {
        Ok(ret) => Outcome::Ok(ret),
        Err(e) if e.contains("Connection refused") => Outcome::Fail(e),
        Err(e) => Outcome::Unknown(e),
    }
}

/// What a rotate attempt presents: a token of generation `gen`, with a request id (empty:
/// none) that a retry of the attempt sends again.
#[derive(Debug, Clone)]
struct Presented {
    gen: u64,
    token: String,
    request_id: String,
}

impl Presented {
    /// The token of `gen`, with a fresh request id half the time (the other half the node
    /// keys the command itself).
    fn new(gen: u64, token: String, rng: &mut StdRng) -> Self {
        let request_id = if rng.random_bool(0.5) {
            request_id("rotate", rng)
        } else {
            String::new()
        };
        Presented {
            gen,
            token,
            request_id,
        }
    }
}

/// A fresh request id for an operation of `kind` (random, within the 16..=128 bytes allowed):
/// half of them UUIDv7s of the current time, whose dedup records the cluster keys by that
/// time (record format 5), half opaque, keyed at time 0.
fn request_id(kind: &str, rng: &mut StdRng) -> String {
    if rng.random_bool(0.5) {
        return format!("chaos-{kind}-{:016x}", rng.random::<u64>());
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64);
    uuid::Builder::from_unix_timestamp_millis(now_ms, &rng.random::<[u8; 10]>())
        .into_uuid()
        .to_string()
}

fn read_outcome(r: Result<Ret, String>) -> Outcome {
    match r {
        Ok(ret) => Outcome::Ok(ret),
        Err(e) => Outcome::Fail(e),
    }
}

impl Workload {
    fn node(&self, rng: &mut StdRng) -> u64 {
        self.targets[rng.random_range(0..self.targets.len())]
    }

    /// One client until `stop` turns true.
    pub async fn client(self, client: usize, seed: u64, mut stop: watch::Receiver<bool>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut mine: Vec<usize> = Vec::new();
        while !*stop.borrow() {
            mine.retain(|s| self.history.sessions.lock().unwrap()[*s].ops < OPS_PER_SESSION);
            let roll = rng.random_range(0..100);
            if mine.len() < 2 || roll < 12 {
                if let Some(s) = self.create(client, &mut rng).await {
                    mine.push(s);
                }
            } else {
                let s = mine[rng.random_range(0..mine.len())];
                match roll {
                    12..=41 => self.rotate_current(client, s, &mut rng, 1).await,
                    42..=49 => self.rotate_current(client, s, &mut rng, 3).await,
                    50..=57 => self.rotate_back(client, s, 1, &mut rng).await,
                    58..=59 => self.rotate_back(client, s, 2, &mut rng).await,
                    60..=65 => self.revoke_session(client, s, &mut rng, false).await,
                    66..=67 => self.revoke_session(client, s, &mut rng, true).await,
                    68..=70 => self.revoke_user(client, &mut rng).await,
                    71 => self.revoke_tenant(client, &mut rng).await,
                    72..=86 => self.lookup(client, s, true, &mut rng).await,
                    87..=94 => self.lookup(client, s, false, &mut rng).await,
                    _ => self.gateway_lookup(client, s).await,
                }
            }
            let pause = Duration::from_millis(rng.random_range(5..40));
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => {}
            }
        }
    }

    fn touch(&self, session: usize) {
        self.history.sessions.lock().unwrap()[session].ops += 1;
    }

    async fn create(&self, client: usize, rng: &mut StdRng) -> Option<usize> {
        let tenant = tenant_name(rng.random_range(0..TENANTS));
        let user = format!("u{}", rng.random_range(0..USERS));
        let node = self.node(rng);
        let request_id = request_id("create", rng);
        let id = self.history.invoke(
            client,
            node,
            OpKind::Create {
                tenant: tenant.clone(),
                user: user.clone(),
            },
            request_id.clone(),
        );
        let request = CreateSessionRequest {
            tenant: tenant.clone(),
            user_id: user.clone(),
            request_id,
            ..Default::default()
        };
        let r = timed(self.nodes.client(node).create_session(request)).await;
        let created = r.and_then(|r| {
            let session = r.session.ok_or("no session in the response")?;
            let mut sessions = self.history.sessions.lock().unwrap();
            sessions.push(SessionInfo {
                id: session.session_id.clone(),
                family: session.family_id.clone(),
                tenant,
                user,
                created_by: id,
                tokens: BTreeMap::from([(0, r.refresh_token)]),
                ops: 0,
            });
            Ok(sessions.len() - 1)
        });
        let session = created.as_ref().ok().copied();
        self.history.complete(
            id,
            write_outcome(created.map(|session| Ret::Created { session })),
        );
        session
    }

    /// Rotates the newest known token of `session`, `parallel` times at once (on random
    /// nodes); an attempt whose outcome is unknown is retried once with the same token and
    /// request id.
    async fn rotate_current(
        &self,
        client: usize,
        session: usize,
        rng: &mut StdRng,
        parallel: usize,
    ) {
        let (gen, token) = {
            let sessions = self.history.sessions.lock().unwrap();
            let (gen, token) = sessions[session].tokens.last_key_value().expect("a token");
            (*gen, token.clone())
        };
        let mut attempts = tokio::task::JoinSet::new();
        for _ in 0..parallel {
            let (w, node) = (self.clone(), self.node(rng));
            let presented = Presented::new(gen, token.clone(), rng);
            attempts.spawn(async move { w.rotate(client, node, session, presented, None).await });
        }
        while let Some(attempt) = attempts.join_next().await {
            if let Some((attempt_of, presented)) = attempt.expect("rotate task") {
                let node = self.node(rng);
                self.rotate(client, node, session, presented, Some(attempt_of))
                    .await;
            }
        }
    }

    /// Presents the token `back` generations older than the newest known: 1 is a retry
    /// within the grace window (same successor expected), 2 a replay (family revoked).
    async fn rotate_back(&self, client: usize, session: usize, back: u64, rng: &mut StdRng) {
        let found = {
            let sessions = self.history.sessions.lock().unwrap();
            let tokens = &sessions[session].tokens;
            let newest = *tokens.last_key_value().expect("a token").0;
            newest
                .checked_sub(back)
                .and_then(|g| tokens.get(&g).map(|t| (g, t.clone())))
        };
        match found {
            Some((gen, token)) => {
                let node = self.node(rng);
                let presented = Presented::new(gen, token, rng);
                self.rotate(client, node, session, presented, None).await;
            }
            None => self.rotate_current(client, session, rng, 1).await,
        }
    }

    /// One rotate attempt (`retry_of`: the first attempt it retries). When its outcome is
    /// unknown, returns what a retry sends: the first attempt's id and the same token and
    /// request id.
    async fn rotate(
        &self,
        client: usize,
        node: u64,
        session: usize,
        presented: Presented,
        retry_of: Option<usize>,
    ) -> Option<(usize, Presented)> {
        self.touch(session);
        let id = self.history.invoke(
            client,
            node,
            OpKind::Rotate {
                session,
                presented_gen: presented.gen,
                attempt_of: usize::MAX,
            },
            presented.request_id.clone(),
        );
        let attempt_of = retry_of.unwrap_or(id);
        if let OpKind::Rotate { attempt_of: a, .. } = &mut self.history.ops.lock().unwrap()[id].kind
        {
            *a = attempt_of;
        }
        let request = RotateRequest {
            refresh_token: presented.token.clone(),
            request_id: presented.request_id.clone(),
            ..Default::default()
        };
        let r = timed(self.nodes.client(node).rotate(request))
            .await
            .map(|r| {
                if r.outcome == RotateOutcome::Rotated as i32 {
                    let gen = r.session.as_ref().map_or(0, |s| s.generation);
                    let mut sessions = self.history.sessions.lock().unwrap();
                    sessions[session]
                        .tokens
                        .entry(gen)
                        .or_insert_with(|| r.refresh_token.clone());
                    Ret::Rotated {
                        gen,
                        retried: r.retried,
                        token: r.refresh_token,
                    }
                } else {
                    Ret::RotateOutcome(r.outcome)
                }
            });
        let unknown = r.is_err();
        self.history.complete(id, write_outcome(r));
        unknown.then_some((attempt_of, presented))
    }

    async fn revoke(&self, client: usize, tenant: String, scope: Scope, rng: &mut StdRng) {
        let node = self.node(rng);
        let (proto_scope, target) = match &scope {
            Scope::Session(s) => (RevokeScope::Session, s.clone()),
            Scope::Family(f) => (RevokeScope::Family, f.clone()),
            Scope::User(u) => (RevokeScope::User, u.clone()),
            Scope::Tenant => (RevokeScope::Tenant, String::new()),
        };
        let request_id = request_id("revoke", rng);
        let id = self.history.invoke(
            client,
            node,
            OpKind::Revoke {
                tenant: tenant.clone(),
                scope,
            },
            request_id.clone(),
        );
        let request = RevokeRequest {
            tenant,
            scope: proto_scope as i32,
            id: target,
            reason: RevocationReason::Logout as i32,
            request_id,
        };
        let r = timed(self.nodes.client(node).revoke(request))
            .await
            .map(|r| Ret::Revoked {
                count: r.revoked_count,
            });
        self.history.complete(id, write_outcome(r));
    }

    async fn revoke_session(&self, client: usize, session: usize, rng: &mut StdRng, family: bool) {
        self.touch(session);
        let (tenant, scope) = {
            let s = &self.history.sessions.lock().unwrap()[session];
            let scope = if family {
                Scope::Family(s.family.clone())
            } else {
                Scope::Session(s.id.clone())
            };
            (s.tenant.clone(), scope)
        };
        self.revoke(client, tenant, scope, rng).await;
    }

    async fn revoke_user(&self, client: usize, rng: &mut StdRng) {
        let tenant = tenant_name(rng.random_range(0..TENANTS));
        let user = format!("u{}", rng.random_range(0..USERS));
        self.revoke(client, tenant, Scope::User(user), rng).await;
    }

    async fn revoke_tenant(&self, client: usize, rng: &mut StdRng) {
        let tenant = tenant_name(rng.random_range(0..TENANTS));
        self.revoke(client, tenant, Scope::Tenant, rng).await;
    }

    async fn lookup(&self, client: usize, session: usize, linearizable: bool, rng: &mut StdRng) {
        self.touch(session);
        let (tenant, sid) = {
            let s = &self.history.sessions.lock().unwrap()[session];
            (s.tenant.clone(), s.id.clone())
        };
        let node = self.node(rng);
        let id = self.history.invoke(
            client,
            node,
            OpKind::Lookup {
                session,
                linearizable,
            },
            String::new(),
        );
        let consistency = if linearizable {
            Consistency::Linearizable
        } else {
            Consistency::Local
        };
        let request = LookupRequest {
            tenant,
            key: Some(lookup_request::Key::SessionId(sid)),
            consistency: consistency as i32,
        };
        let r = timed(self.nodes.client(node).lookup(request))
            .await
            .map(|r| found(r.session.as_ref()));
        self.history.complete(id, read_outcome(r));
    }

    async fn gateway_lookup(&self, client: usize, session: usize) {
        let (tenant, sid) = {
            let s = &self.history.sessions.lock().unwrap()[session];
            (s.tenant.clone(), s.id.clone())
        };
        let id = self
            .history
            .invoke(client, 0, OpKind::GatewayLookup { session }, String::new());
        let r = tokio::time::timeout(CALL_TIMEOUT, self.gateway.lookup(&tenant, &sid))
            .await
            .map_err(|_| "timed out".to_owned())
            .and_then(|r| r.map_err(|s| s.message().to_owned()))
            .map(|c| found(c.session.as_ref()));
        self.history.complete(id, read_outcome(r));
    }
}

/// A lookup's answer as the history records it.
pub fn found(session: Option<&Session>) -> Ret {
    match session {
        Some(s) => Ret::Found {
            revoked: s.status() == SessionStatus::Revoked,
            gen: s.generation,
        },
        None => Ret::NotFound,
    }
}

/// A watcher on node `node`: subscribes, records each connection as a [`Segment`], resumes
/// after the highest revision delivered (or the current one after RESYNC_REQUIRED) until
/// `stop` turns true.
pub async fn watcher(history: History, node: u64, url: String, mut stop: watch::Receiver<bool>) {
    let channel = Endpoint::from_shared(url)
        .expect("url")
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy();
    let mut client = SessionAuthorityClient::new(channel);
    let mut resume = 0u64;
    while !*stop.borrow() {
        let mut segment = Segment {
            node,
            from: resume,
            events: Vec::new(),
            high: resume,
            resync: None,
            ended: String::new(),
        };
        let mut partial = Vec::new();
        let request = WatchRevocationsRequest {
            from_revision: resume,
            ..Default::default()
        };
        let opened = tokio::select! {
            r = tokio::time::timeout(Duration::from_secs(5), client.watch_revocations(request)) => r,
            _ = stop.changed() => break,
        };
        match opened {
            Ok(Ok(response)) => {
                let mut stream = response.into_inner();
                loop {
                    let next = tokio::select! {
                        m = stream.message() => m,
                        _ = stop.changed() => { segment.ended = "stopped".into(); break; }
                    };
                    match next {
                        Ok(Some(message)) => match message.kind {
                            Some(Kind::Events(batch)) => {
                                // A revision split over several messages counts once its
                                // last part arrived; a stream cut between parts resumes
                                // before it and receives the whole revision again.
                                partial.extend(
                                    batch
                                        .events
                                        .into_iter()
                                        .map(|e| (batch.revision, e.session_id)),
                                );
                                if !batch.partial {
                                    segment.events.append(&mut partial);
                                    segment.high = segment.high.max(batch.revision);
                                }
                            }
                            Some(Kind::Progress(p)) => segment.high = segment.high.max(p.revision),
                            Some(Kind::ResyncRequired(r)) => {
                                segment.resync = Some(r.current_revision);
                                segment.ended = "resync required".into();
                                break;
                            }
                            Some(Kind::CutOff(c)) => {
                                segment.ended = format!("cut off at {}", c.resume_from_revision);
                                break;
                            }
                            None => {}
                        },
                        Ok(None) => {
                            segment.ended = "stream ended".into();
                            break;
                        }
                        Err(s) => {
                            segment.ended = format!("{:?}: {}", s.code(), s.message());
                            break;
                        }
                    }
                }
            }
            Ok(Err(s)) => segment.ended = format!("open failed: {:?}", s.code()),
            Err(_) => segment.ended = "open timed out".into(),
        }
        resume = segment.resync.unwrap_or(segment.high);
        let empty = segment.events.is_empty() && segment.high == segment.from;
        if !empty || segment.resync.is_some() {
            history.segments.lock().unwrap().push(segment);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
