//! What a load generator needs from a session store, so that sessiond, etcd and Redis are
//! driven by the same workers and measured by the same clock.
//!
//! Each store keeps the same model: a session record keyed by session id that holds the hash
//! of its current refresh token, and a token index from that hash back to the session. A
//! rotation is one atomic compare-and-swap round trip: it succeeds only if the presented
//! token is still current, then installs the successor and retires the presented token.

use std::future::Future;

/// A session as the benchmark client holds it: its id and its current refresh token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    /// The session's id (or, for stores without server-minted ids, the key the client chose).
    pub session_id: String,
    /// The refresh token to present on the next rotation.
    pub refresh_token: String,
}

/// Read consistency of a lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadConsistency {
    /// Reflects every write acknowledged before the read started (etcd: linearizable get).
    Linearizable,
    /// Served from the contacted node's own state (etcd: serializable get).
    Local,
}

/// Why an operation did not succeed; the report counts failures by [`OpError::kind`].
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The store answered with an outcome other than success (e.g. a rotation lost its
    /// compare-and-swap); `kind` names it.
    #[error("unexpected outcome {0}")]
    Outcome(String),
    /// The transport or the server failed; `kind` is a short class such as a gRPC code.
    #[error("{0} error")]
    Transport(String),
}

impl OpError {
    /// A short, stable label for grouping failures in the report.
    pub fn kind(&self) -> String {
        match self {
            OpError::Outcome(kind) => format!("outcome:{kind}"),
            OpError::Transport(kind) => format!("transport:{kind}"),
        }
    }
}

/// A session store under load. Clones share connections; every method is one request
/// (one round trip) to the store.
pub trait SessionStore: Clone + Send + Sync + 'static {
    /// Creates a session for `user_id` and returns it with its first refresh token.
    fn create(&self, user_id: &str) -> impl Future<Output = Result<Held, OpError>> + Send;

    /// Redeems `held.refresh_token` and returns the session with its successor token.
    fn rotate(&self, held: &Held) -> impl Future<Output = Result<Held, OpError>> + Send;

    /// Reads the session record by id.
    fn lookup(
        &self,
        held: &Held,
        consistency: ReadConsistency,
    ) -> impl Future<Output = Result<(), OpError>> + Send;

    /// Revokes (ends) the session.
    fn revoke(&self, held: &Held) -> impl Future<Output = Result<(), OpError>> + Send;
}
