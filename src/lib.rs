//! sessiond: a gRPC session authority.
//!
//! Login-session families, refresh-token hashes and renewal leases live in a Raft-replicated
//! (openraft) state machine stored in sled, so that refresh-token rotation and revocation are
//! linearizable cluster-wide. The crate is layered so that the request path reads top to
//! bottom:
//!
//! - [`proto`]: the generated gRPC API (`sessiond.v1`) and internal records
//!   (`sessiond.internal.v1`: commands, results, stored records).
//! - [`domain`]: the pure core. Commands are applied to an ordered key space through a small
//!   trait; no clock, no randomness, no I/O. Also the read-side queries.
//! - [`token`]: minting, hashing and sealing of raw tokens (proposer side only).
//! - [`store`]: the sled-backed Raft log, state machine and snapshots.
//! - [`raft`]: openraft type configuration, network, and the [`raft::RaftNode`] handle.
//! - [`api`]: gRPC services: validation, command building, outcome mapping.
//! - [`client`]: a typed Rust client; [`cli`]: the `sessiond` command line.
//! - [`tls`]: TLS of the two listeners and of peer connections; [`auth`]: principals, roles,
//!   tenant scopes and the audit trail of the client listener.
//! - [`config`]: node configuration (flags, environment, TOML file); [`clock`]: the wall clock.
//! - [`gateway`]: the gateway's session cache fed by the revocation stream.
//! - [`health`]: the node's health verdict; [`metrics`]: Prometheus metrics and probes.
//! - [`bench`]: the `sessiond bench` load generator.

pub mod api;
pub mod auth;
pub mod bench;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod domain;
pub mod error;
pub mod gateway;
pub mod health;
pub mod metrics;
pub mod proto;
pub mod raft;
pub mod server;
pub mod store;
pub mod tls;
pub mod token;

pub use error::Error;
