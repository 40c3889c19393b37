//! [`Authority`]: what every handler shares (the Raft node, the configuration, the stream
//! limiter) and the steps they all take: proposing a command (under an idempotency key or
//! not), proving an absence, the read barrier and the time a read is answered at.

use std::sync::Arc;

use super::limits::{StreamLimiter, TenantLimiter};
use crate::config::Config;
use crate::domain::StateError;
use crate::proto::internal::{command, Command};
use crate::proto::v1::Consistency;
use crate::proto::SCHEMA_VERSION;
use crate::raft::{Applied, RaftNode};
use crate::store::StateReader;
use crate::token;
use crate::Error;

/// What every handler needs: the Raft node and the configuration (defaults and limits).
#[derive(Clone)]
pub struct Authority {
    node: RaftNode,
    config: Arc<Config>,
    stopping: tokio::sync::watch::Receiver<bool>,
    streams: Arc<StreamLimiter>,
    tenants: Arc<TenantLimiter>,
}

impl Authority {
    /// A service over `node`, applying `config`'s defaults and limits; long-lived streams
    /// end when `stopping` turns true.
    pub fn new(
        node: RaftNode,
        config: Arc<Config>,
        stopping: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        Authority {
            node,
            tenants: Arc::new(TenantLimiter::new(&config)),
            config,
            stopping,
            streams: Arc::default(),
        }
    }

    /// Turns true when the node begins to stop.
    pub fn stopping(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stopping.clone()
    }

    /// The Raft node this service proposes to and reads from.
    pub fn node(&self) -> &RaftNode {
        &self.node
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The request rates admitted per tenant.
    pub fn tenants(&self) -> &TenantLimiter {
        &self.tenants
    }

    /// The limit on concurrent revocation streams per connection.
    pub fn streams(&self) -> &Arc<StreamLimiter> {
        &self.streams
    }

    /// Proposes one command stamped with `now_ms`; `request_key` is the hashed idempotency
    /// key or empty.
    pub async fn propose(
        &self,
        now_ms: i64,
        request_key: Vec<u8>,
        kind: command::Kind,
    ) -> Result<Applied, Error> {
        let command = Command {
            schema_version: SCHEMA_VERSION,
            now_ms,
            request_key,
            kind: Some(kind),
            ..Default::default()
        };
        self.node.propose(command).await
    }

    /// Proposes one command under an idempotency key: a retry (same key, same fingerprint)
    /// gets the first result with the first revision; the key reused with another
    /// fingerprint is FAILED_PRECONDITION naming `request_id`, and changes nothing.
    pub async fn propose_idempotent(
        &self,
        now_ms: i64,
        idempotency: Idempotency,
        kind: command::Kind,
    ) -> Result<Applied, Error> {
        let command = Command {
            schema_version: SCHEMA_VERSION,
            now_ms,
            request_key: idempotency.key,
            request_fingerprint: idempotency.fingerprint,
            request_time_ms: idempotency.time_ms,
            kind: Some(kind),
        };
        let mut applied = self.node.propose(command).await?;
        if applied.result.request_mismatch {
            return Err(Error::Conflict(
                "request_id: already used for a request with other parameters".into(),
            ));
        }
        if applied.result.deduplicated && applied.result.first_revision != 0 {
            applied.revision = applied.result.first_revision;
        }
        Ok(applied)
    }

    /// Whether `absent` is proven on a linearizable view of the state: first checked on this
    /// node's applied state (a write that finds what it needs costs nothing more), then,
    /// when it holds there, again after a read barrier. Returns the revision of the proof.
    /// For facts that stay true once true (see [`crate::domain::absence`]), the caller may
    /// then answer without proposing anything.
    pub async fn proven_absent(
        &self,
        absent: impl Fn(&StateReader) -> Result<bool, StateError>,
    ) -> Result<Option<u64>, Error> {
        let state = self.node.state();
        if !absent(state)? {
            return Ok(None);
        }
        self.node.ensure_linearizable().await?;
        let revision = state.applied_index();
        Ok(absent(state)?.then_some(revision))
    }

    /// The time a read is answered at: this node's clock held to cluster time, i.e. never
    /// before the latest time the leader stamped on an entry this node applied, and at most
    /// one GC interval (the longest an idle leader goes without stamping an entry) plus
    /// [`READ_CLOCK_SLACK_MS`] after it. A node whose clock runs ahead or behind therefore
    /// reports no live session expired early and no expired one alive for long.
    pub fn read_now_ms(&self) -> i64 {
        let wall = crate::clock::now_ms();
        let stamped = self.node.state().applied_time_ms();
        if stamped == 0 {
            return wall;
        }
        let lead = i64::try_from(self.config.gc.interval_ms)
            .unwrap_or(i64::MAX)
            .saturating_add(READ_CLOCK_SLACK_MS);
        wall.clamp(stamped, stamped.saturating_add(lead))
    }

    /// Waits until this node's applied state reflects every write acknowledged before the
    /// call, when `consistency` asks for it.
    pub async fn read_barrier(&self, consistency: Consistency) -> Result<(), Error> {
        match consistency {
            Consistency::Local => Ok(()),
            _ => self.node.ensure_linearizable().await,
        }
    }
}

/// A request's idempotency key, fingerprint and time, or none (the client sent no request
/// id).
#[derive(Debug, Default)]
pub struct Idempotency {
    key: Vec<u8>,
    fingerprint: Vec<u8>,
    /// What the request id tells of the request's time ([`token::request_time_ms`]).
    time_ms: u64,
}

impl Idempotency {
    /// The key of `request_id` for `operation` in `scope` (empty `request_id`: none), bound
    /// to the request's parameters by `fingerprint` (a [`crate::token::Fingerprint`]).
    pub fn new(scope: &[u8], operation: &str, request_id: &str, fingerprint: Vec<u8>) -> Self {
        if request_id.is_empty() {
            return Idempotency::default();
        }
        Idempotency {
            key: token::request_key(scope, operation, request_id).to_vec(),
            fingerprint,
            time_ms: token::request_time_ms(request_id),
        }
    }
}

pub use crate::clock::now_ms;

/// The error for an applied result of another kind than the command's. Idempotency keys
/// name the operation, so a deduplicated answer always has the command's kind: this is a bug
/// (or a replica of another schema), never the caller's mistake.
pub fn unexpected_result() -> Error {
    Error::Internal(format!(
        "applied result does not match the command (schema {SCHEMA_VERSION})"
    ))
}

/// How far past the last stamped time (beyond one GC interval) a read's clock may run.
pub const READ_CLOCK_SLACK_MS: i64 = 2_000;
