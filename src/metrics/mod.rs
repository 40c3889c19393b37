//! Prometheus metrics of the node (the `prometheus` crate), served on `/metrics` when
//! `metrics_listen` is set.
//!
//! This module holds the instruments in one process-wide registry, so that any layer can
//! count what it sees without carrying a handle: the RPC layer ([`layer`]), group commit
//! (commands per log entry), the state machine (apply, snapshot build and install), the
//! Raft transport (snapshot transfers), the revocation stream (subscribers, their lag,
//! cut-offs) and garbage collection. [`sampler`] copies Raft's state, replication lag, storage sizes and
//! per-tenant session counts into gauges; [`http`] serves them with the probes. A process
//! runs one node, so one registry describes one node.

pub mod http;
pub mod layer;
pub mod sampler;

use std::sync::{LazyLock, Mutex};
use std::time::Instant;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// The registry every instrument below is registered in.
pub static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

fn register<T: prometheus::core::Collector + Clone + 'static>(metric: T) -> T {
    // Names are fixed and distinct, so registration cannot collide.
    let _ = REGISTRY.register(Box::new(metric.clone()));
    metric
}

fn gauge(name: &str, help: &str) -> IntGauge {
    register(IntGauge::new(name, help).expect("valid metric"))
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
}

fn counter(name: &str, help: &str) -> IntCounter {
    register(IntCounter::new(name, help).expect("valid metric"))
}

/// gRPC requests by method and outcome (gRPC status code name).
pub static RPC_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "sessiond_rpc_requests_total",
                "gRPC requests by method and status code",
            ),
            &["method", "code"],
        )
        .expect("valid metric"),
    )
});

/// gRPC latency by method and outcome, until the response headers (for a server stream:
/// until it starts).
pub static RPC_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(
        HistogramVec::new(
            HistogramOpts::new(
                "sessiond_rpc_duration_seconds",
                "gRPC latency by method and status code",
            )
            .buckets(prometheus::exponential_buckets(0.0005, 2.0, 14).expect("valid buckets")),
            &["method", "code"],
        )
        .expect("valid metric"),
    )
});

/// Commands per proposed log entry (group commit).
pub static COMMANDS_PER_ENTRY: LazyLock<Histogram> = LazyLock::new(|| {
    register(
        Histogram::with_opts(
            HistogramOpts::new(
                "sessiond_commands_per_entry",
                "Commands group-committed into one log entry",
            )
            .buckets(prometheus::exponential_buckets(1.0, 2.0, 10).expect("valid buckets")),
        )
        .expect("valid metric"),
    )
});

/// Time from proposing a log entry to its commands' results (replication, commit, apply).
pub static ENTRY_COMMIT_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register(
        Histogram::with_opts(
            HistogramOpts::new(
                "sessiond_entry_commit_seconds",
                "Time from proposing a log entry until it is applied on the leader",
            )
            .buckets(prometheus::exponential_buckets(0.0005, 2.0, 14).expect("valid buckets")),
        )
        .expect("valid metric"),
    )
});

fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    register(
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
            .expect("valid metric"),
    )
}

fn histogram_vec(name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
    register(
        HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
            .expect("valid metric"),
    )
}

/// Buckets from 1 ms to about 30 minutes.
fn slow_seconds() -> Vec<f64> {
    prometheus::exponential_buckets(0.001, 4.0, 12).expect("valid buckets")
}

/// Buckets from 64 KiB to 64 GiB.
fn file_bytes() -> Vec<f64> {
    prometheus::exponential_buckets(65_536.0, 4.0, 11).expect("valid buckets")
}

/// Time the state machine takes to apply one batch of committed entries.
pub static APPLY_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "sessiond_apply_seconds",
        "Time to apply one batch of committed log entries to the state",
        prometheus::exponential_buckets(0.0001, 2.0, 16).expect("valid buckets"),
    )
});

/// Log entries per applied batch.
pub static APPLY_BATCH_ENTRIES: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "sessiond_apply_batch_entries",
        "Log entries applied in one batch",
        prometheus::exponential_buckets(1.0, 2.0, 12).expect("valid buckets"),
    )
});

/// Time to build a snapshot (copy the state to a file and flush it).
pub static SNAPSHOT_BUILD_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "sessiond_snapshot_build_seconds",
        "Time to build a snapshot file of the state",
        slow_seconds(),
    )
});

/// Size of the snapshot files built.
pub static SNAPSHOT_BUILD_BYTES: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "sessiond_snapshot_build_bytes",
        "Size of the snapshot files built",
        file_bytes(),
    )
});

/// Time to install a snapshot into a fresh state generation.
pub static SNAPSHOT_INSTALL_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "sessiond_snapshot_install_seconds",
        "Time to install a snapshot file as the state",
        slow_seconds(),
    )
});

/// Size of the snapshot files installed.
pub static SNAPSHOT_INSTALL_BYTES: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "sessiond_snapshot_install_bytes",
        "Size of the snapshot files installed",
        file_bytes(),
    )
});

/// Snapshot transfers between nodes by direction (`send`, `receive`): time from the first
/// chunk to the last (for `send`, until the receiver acknowledged the last chunk, which it
/// does once it installed the snapshot).
pub static SNAPSHOT_TRANSFER_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram_vec(
        "sessiond_snapshot_transfer_seconds",
        "Time to transfer a snapshot between nodes, by direction",
        &["direction"],
        slow_seconds(),
    )
});

/// Size of the snapshots transferred, by direction.
pub static SNAPSHOT_TRANSFER_BYTES: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram_vec(
        "sessiond_snapshot_transfer_bytes",
        "Size of the snapshots transferred between nodes, by direction",
        &["direction"],
        file_bytes(),
    )
});

/// How far behind the applied revision a revocation stream subscriber is when the feed
/// hands it a revision: the applied index minus that revision (one observation per
/// revision delivered, whatever the subscriber).
pub static STREAM_SUBSCRIBER_LAG: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "sessiond_stream_subscriber_lag_revisions",
        "Revisions between the applied index and the one a stream subscriber is handed",
        prometheus::exponential_buckets(1.0, 4.0, 8).expect("valid buckets"),
    )
});

/// Times one snapshot transfer in one direction, from its first chunk to its last.
#[derive(Debug, Default)]
pub struct SnapshotTransfer {
    started: Option<Instant>,
}

impl SnapshotTransfer {
    /// Records the chunk of `len` bytes at `offset` moved in `direction`; `done` when it
    /// was the last (the transfer is then observed).
    pub fn chunk(&mut self, direction: &str, offset: u64, len: usize, done: bool) {
        if offset == 0 || self.started.is_none() {
            self.started = Some(Instant::now());
        }
        if done {
            if let Some(started) = self.started.take() {
                SNAPSHOT_TRANSFER_SECONDS
                    .with_label_values(&[direction])
                    .observe(started.elapsed().as_secs_f64());
                SNAPSHOT_TRANSFER_BYTES
                    .with_label_values(&[direction])
                    .observe((offset + len as u64) as f64);
            }
        }
    }
}

/// The snapshot this node is receiving (one at a time).
pub static SNAPSHOT_RECEIVING: LazyLock<Mutex<SnapshotTransfer>> = LazyLock::new(Mutex::default);

/// Revocation stream subscribers currently attached to this node.
pub static STREAM_SUBSCRIBERS: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "sessiond_stream_subscribers",
        "Revocation stream subscribers attached",
    )
});

/// Leadership confirmations of LINEARIZABLE reads done by this node as leader, by how: `lease`
/// (from the leader lease, no round trip) or `quorum` (a heartbeat round).
pub static READ_CONFIRMATIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "sessiond_read_confirmations_total",
                "Leadership confirmations of linearizable reads, by lease or by quorum round",
            ),
            &["how"],
        )
        .expect("valid metric"),
    )
});

/// Revocation stream subscribers cut off for being slow.
pub static STREAM_CUT_OFFS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "sessiond_stream_cut_offs_total",
        "Slow revocation stream subscribers cut off",
    )
});

/// Garbage collection commands applied by this node as leader.
pub static GC_COLLECTIONS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "sessiond_gc_collections_total",
        "Garbage collection commands proposed and applied",
    )
});

/// Records removed by garbage collection.
pub static GC_REMOVED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "sessiond_gc_removed_total",
        "Expired records removed by garbage collection",
    )
});

/// Counts one subscriber as attached until the returned guard is dropped.
pub fn stream_subscribed() -> SubscriberGuard {
    STREAM_SUBSCRIBERS.inc();
    SubscriberGuard
}

/// Keeps one revocation stream subscriber counted while it lives.
pub struct SubscriberGuard;

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        STREAM_SUBSCRIBERS.dec();
    }
}

/// The registry's metrics in the Prometheus text format.
pub fn render() -> String {
    prometheus::TextEncoder::new()
        .encode_to_string(&REGISTRY.gather())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instruments_appear_in_the_text_format_once_touched() {
        COMMANDS_PER_ENTRY.observe(3.0);
        GC_COLLECTIONS.inc();
        READ_CONFIRMATIONS.with_label_values(&["lease"]).inc();
        let before = STREAM_SUBSCRIBERS.get();
        {
            let _subscriber = stream_subscribed();
            assert_eq!(STREAM_SUBSCRIBERS.get(), before + 1);
        }
        assert_eq!(STREAM_SUBSCRIBERS.get(), before);
        let text = render();
        assert!(text.contains("sessiond_stream_subscribers"), "{text}");
        assert!(text.contains("sessiond_commands_per_entry_count"), "{text}");
        assert!(text.contains("sessiond_gc_collections_total"), "{text}");
        assert!(text.contains("sessiond_read_confirmations_total"), "{text}");
        let mut transfer = SnapshotTransfer::default();
        transfer.chunk("send", 0, 1000, false);
        transfer.chunk("send", 1000, 24, true);
        let text = render();
        assert!(
            text.contains("sessiond_snapshot_transfer_bytes_sum{direction=\"send\"} 1024"),
            "{text}"
        );
    }
}
