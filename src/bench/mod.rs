//! `sessiond bench`: a load generator that drives sessiond (and, with the `compare` feature,
//! etcd and Redis) through the same workers and reports throughput and latency percentiles.

pub mod store;
