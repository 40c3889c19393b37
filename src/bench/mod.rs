//! `sessiond bench`: a load generator that drives sessiond (and, with the `compare` feature,
//! etcd and Redis) through the same workers and reports throughput and latency percentiles.

#[cfg(feature = "compare")]
pub mod etcd;
#[cfg(feature = "compare")]
pub mod kv;
#[cfg(feature = "compare")]
pub mod redis;
pub mod store;
