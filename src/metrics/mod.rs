//! Prometheus metrics of the node (the `prometheus` crate), served on `/metrics` when
//! `metrics_listen` is set.
//!
//! This module holds the instruments in one process-wide registry, so that any layer can
//! count what it sees without carrying a handle: the RPC layer ([`layer`]), group commit
//! (commands per log entry), the revocation stream (subscribers, cut-offs) and garbage
//! collection. [`sampler`] copies Raft's state, replication lag, storage sizes and
//! per-tenant session counts into gauges; [`http`] serves them with the probes. A process
//! runs one node, so one registry describes one node.

pub mod http;
pub mod layer;
pub mod sampler;

use std::sync::LazyLock;

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

/// Revocation stream subscribers currently attached to this node.
pub static STREAM_SUBSCRIBERS: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "sessiond_stream_subscribers",
        "Revocation stream subscribers attached",
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
    }
}
