//! The one place where crate errors become gRPC statuses.
//!
//! Callers see the field at fault for bad input, UNAVAILABLE (with the leader's address
//! when known) for conditions a retry can fix, and a bare INTERNAL for everything else:
//! the details of internal faults go to the log, never to the caller.

use tonic::metadata::MetadataValue;
use tonic::Status;

use crate::Error;

/// gRPC metadata key carrying the leader's address on a NOT-leader UNAVAILABLE.
pub const LEADER_METADATA_KEY: &str = "x-sessiond-leader";

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        match error {
            Error::InvalidArgument { field, reason } => {
                Status::invalid_argument(format!("{field}: {reason}"))
            }
            Error::NotLeader { leader_addr, .. } => {
                let mut status = Status::unavailable("this node is not the leader");
                if let Some(value) = leader_addr.and_then(|a| MetadataValue::try_from(a).ok()) {
                    status.metadata_mut().insert(LEADER_METADATA_KEY, value);
                }
                status
            }
            Error::Unavailable(reason) => Status::unavailable(reason),
            Error::Conflict(reason) => Status::failed_precondition(reason),
            Error::Storage(e) => {
                tracing::error!(error = %e, "storage failure while serving a request");
                Status::internal("internal error")
            }
            Error::Internal(e) => {
                tracing::error!(error = %e, "internal failure while serving a request");
                Status::internal("internal error")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::StateError;

    #[test]
    fn invalid_argument_names_the_field() {
        let s = Status::from(Error::invalid("user_id", "must not be empty"));
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert_eq!(s.message(), "user_id: must not be empty");
    }

    #[test]
    fn internal_details_do_not_leak() {
        let s = Status::from(Error::Storage(StateError::Store("/secret/path io".into())));
        assert_eq!(s.code(), tonic::Code::Internal);
        assert_eq!(s.message(), "internal error");
    }

    #[test]
    fn not_leader_carries_the_leader_address() {
        let s = Status::from(Error::NotLeader {
            leader_id: Some(2),
            leader_addr: Some("127.0.0.1:7002".into()),
        });
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert_eq!(
            s.metadata().get(LEADER_METADATA_KEY).unwrap(),
            "127.0.0.1:7002"
        );
    }
}
