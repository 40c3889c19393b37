//! The crate's one error type. Every layer returns it; the gRPC boundary converts it into a
//! `tonic::Status` in one place (`api::status`). Messages never carry secrets or internal
//! details meant for operators only: those go to the logs, redacted.

use crate::domain::StateError;

/// What went wrong, by kind.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The request is malformed; `field` names the offending field. Nothing was written.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The request field at fault, as named in the proto.
        field: &'static str,
        /// Why it was rejected (never echoes a secret).
        reason: String,
    },
    /// This node is not the leader; the leader's address is given when known.
    #[error("not the leader")]
    NotLeader {
        /// The current leader's id, if known.
        leader_id: Option<u64>,
        /// The current leader's client address, if known.
        leader_addr: Option<String>,
    },
    /// The request conflicts with the cluster's current state (e.g. another membership change
    /// is in progress); it was refused and changed nothing.
    #[error("refused: {0}")]
    Conflict(String),
    /// The cluster cannot serve the request now (no quorum, shutting down); retrying may help.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Stored data could not be read or written.
    #[error("storage: {0}")]
    Storage(#[from] StateError),
    /// A bug or an unexpected condition.
    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }
}
