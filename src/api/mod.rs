//! The client-facing gRPC API.
//!
//! Every handler reads top to bottom: validate the request (INVALID_ARGUMENT naming the
//! field, nothing written) → build one Raft command carrying the proposer's clock and freshly
//! minted ids and token hashes → propose it → map the applied outcome to the response.
//! Reads check the requested consistency (a read-index round through the leader for
//! LINEARIZABLE) and then query this node's applied state. There is no other path that
//! mutates state.
//!
//! One file per operation: [`create`], [`rotate`], [`lease`], [`touch`], [`revoke`], and the
//! read-only [`reads`], all on the shared [`authority`]; [`service`] binds them to the
//! generated tonic trait. [`cluster`] is
//! the operators' membership API; [`watch`] streams revocations, at most
//! [`limits::MAX_STREAMS_PER_CONNECTION`] at once per connection.

pub mod authority;
pub mod cluster;
pub mod convert;
pub mod create;
pub mod lease;
pub mod limits;
pub mod proposal;
pub mod reads;
pub mod redact;
pub mod revoke;
pub mod rotate;
pub mod service;
pub mod status;
pub mod touch;
pub mod validate;
pub mod watch;

pub use authority::Authority;
