//! The recorded history of one schedule: every client operation (invoke, then ok, fail or
//! unknown, with times), the sessions the clients know, and every watcher stream segment.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A revocation scope as the workload uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// One session, by id.
    Session(String),
    /// A family, by id.
    Family(String),
    /// Every session of a user of the tenant.
    User(String),
    /// The whole tenant.
    Tenant,
}

/// What a client asked for (every field is shown in reports, through `Debug`).
#[derive(Debug, Clone)]
#[allow(
    dead_code,
    reason = "fields only read through Debug, in violation reports"
)]
pub enum OpKind {
    /// CreateSession.
    Create {
        /// Tenant.
        tenant: String,
        /// User.
        user: String,
    },
    /// Rotate the token of generation `presented_gen` of session `session` (an index into
    /// the session registry). Attempts sharing `attempt_of` are retries of one rotation.
    Rotate {
        /// Registry index.
        session: usize,
        /// Generation of the presented token.
        presented_gen: u64,
        /// The first attempt's operation id (retries carry the first one's).
        attempt_of: usize,
    },
    /// Revoke by scope in a tenant.
    Revoke {
        /// Tenant.
        tenant: String,
        /// Scope and target.
        scope: Scope,
    },
    /// Lookup by session id.
    Lookup {
        /// Registry index.
        session: usize,
        /// LINEARIZABLE or LOCAL.
        linearizable: bool,
    },
    /// Lookup through the gateway cache.
    GatewayLookup {
        /// Registry index.
        session: usize,
    },
}

/// What an operation returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ret {
    /// A session was created (registry index).
    Created {
        /// Registry index.
        session: usize,
    },
    /// ROTATED: the successor's generation and raw token.
    Rotated {
        /// Generation after the rotation.
        gen: u64,
        /// Whether the server answered a retry within the grace window.
        retried: bool,
        /// The successor token.
        token: String,
    },
    /// Any other rotate outcome (the proto enum value).
    RotateOutcome(i32),
    /// A revoke's count and revision.
    Revoked {
        /// Sessions revoked.
        count: u64,
    },
    /// A session found: revoked or not, its generation.
    Found {
        /// Revoked status.
        revoked: bool,
        /// Its generation.
        gen: u64,
    },
    /// NOT_FOUND.
    NotFound,
}

/// How an operation ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Still running (never seen after the run: it becomes Unknown).
    Pending,
    /// Answered.
    Ok(Ret),
    /// Definitely not applied (reads only).
    Fail(String),
    /// May or may not have been applied.
    Unknown(String),
}

/// One history entry.
#[derive(Debug, Clone)]
pub struct Op {
    /// Index in the history.
    pub id: usize,
    /// The client task.
    pub client: usize,
    /// The node it was sent to.
    pub node: u64,
    /// What was asked.
    pub kind: OpKind,
    /// The request id sent with it (empty: none).
    pub request_id: String,
    /// Microseconds since the schedule started, at invocation.
    pub invoke_us: u64,
    /// Microseconds since the start, at completion (None while pending or unknown).
    pub complete_us: Option<u64>,
    /// The result.
    pub outcome: Outcome,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let done = self
            .complete_us
            .map_or("?".to_owned(), |t| format!("{:.3}", t as f64 / 1e6));
        write!(
            f,
            "#{:<5} c{} n{} [{:.3}s..{}s] {:?}",
            self.id,
            self.client,
            self.node,
            self.invoke_us as f64 / 1e6,
            done,
            self.kind,
        )?;
        if !self.request_id.is_empty() {
            write!(f, " request_id={}", self.request_id)?;
        }
        write!(f, " -> {:?}", self.outcome)
    }
}

/// A session the clients know: its ids and every raw token seen per generation.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// Session id.
    pub id: String,
    /// Family id.
    pub family: String,
    /// Tenant.
    pub tenant: String,
    /// User.
    pub user: String,
    /// The create operation.
    pub created_by: usize,
    /// Raw refresh tokens by generation (the first one seen).
    pub tokens: BTreeMap<u64, String>,
    /// Operations aimed at it so far (the workload keeps per-session histories short).
    pub ops: usize,
}

/// One connection of a watcher: its resume point and what it delivered.
#[derive(Debug, Clone)]
pub struct Segment {
    /// The node subscribed to.
    pub node: u64,
    /// Resume point (from_revision).
    pub from: u64,
    /// Events delivered: (revision, session id), in arrival order.
    pub events: Vec<(u64, String)>,
    /// Highest revision known delivered (events or progress).
    pub high: u64,
    /// RESYNC_REQUIRED's current revision, if the stream said so.
    pub resync: Option<u64>,
    /// How the segment ended.
    pub ended: String,
}

/// Everything recorded during one schedule.
#[derive(Clone)]
pub struct History {
    start: Instant,
    /// Operations.
    pub ops: Arc<Mutex<Vec<Op>>>,
    /// Known sessions.
    pub sessions: Arc<Mutex<Vec<SessionInfo>>>,
    /// Watcher segments.
    pub segments: Arc<Mutex<Vec<Segment>>>,
}

impl History {
    /// An empty history starting now.
    pub fn new() -> Self {
        History {
            start: Instant::now(),
            ops: Arc::default(),
            sessions: Arc::default(),
            segments: Arc::default(),
        }
    }

    /// Microseconds since the start.
    pub fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// Records an invocation (`request_id` empty when the request carries none); returns its
    /// id.
    pub fn invoke(&self, client: usize, node: u64, kind: OpKind, request_id: String) -> usize {
        let mut ops = self.ops.lock().unwrap();
        let id = ops.len();
        ops.push(Op {
            id,
            client,
            node,
            kind,
            request_id,
            invoke_us: self.now_us(),
            complete_us: None,
            outcome: Outcome::Pending,
        });
        id
    }

    /// Records how operation `id` ended.
    pub fn complete(&self, id: usize, outcome: Outcome) {
        let now = self.now_us();
        let mut ops = self.ops.lock().unwrap();
        let op = &mut ops[id];
        op.complete_us = match outcome {
            Outcome::Ok(_) | Outcome::Fail(_) => Some(now),
            _ => None,
        };
        op.outcome = outcome;
    }

    /// The operations, with the pending ones turned unknown.
    pub fn finished_ops(&self) -> Vec<Op> {
        let mut ops = self.ops.lock().unwrap().clone();
        for op in &mut ops {
            if matches!(op.outcome, Outcome::Pending) {
                op.outcome = Outcome::Unknown("still running at the end".into());
            }
        }
        ops
    }
}
