//! Latency recording and the benchmark report: per-operation HDR histograms kept by each
//! worker (no shared state on the hot path), merged at the end into throughput and
//! percentiles, printed as a table or JSON.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::store::OpError;

/// Highest latency the histograms track (longer ones are clamped to it).
const MAX_TRACKED: Duration = Duration::from_secs(60);

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_TRACKED.as_nanos() as u64, 3)
        .expect("static histogram bounds are valid")
}

/// One worker's measurements: a latency histogram per operation and failures by kind.
#[derive(Default)]
pub struct Recorder {
    latencies: BTreeMap<&'static str, Histogram<u64>>,
    errors: BTreeMap<String, u64>,
}

impl Recorder {
    /// Records one completed operation: its latency if it succeeded, its kind if it failed.
    pub fn record<T>(&mut self, op: &'static str, elapsed: Duration, result: &Result<T, OpError>) {
        match result {
            Ok(_) => self.record_latency(op, elapsed),
            Err(error) => self.record_error(op, error),
        }
    }

    /// Records a successful operation's latency.
    pub fn record_latency(&mut self, op: &'static str, elapsed: Duration) {
        let nanos = (elapsed.as_nanos() as u64).clamp(1, MAX_TRACKED.as_nanos() as u64);
        self.latencies
            .entry(op)
            .or_insert_with(new_histogram)
            .saturating_record(nanos);
    }

    /// Counts a failed operation under `op:kind`.
    pub fn record_error(&mut self, op: &'static str, error: &OpError) {
        *self
            .errors
            .entry(format!("{op}:{}", error.kind()))
            .or_default() += 1;
    }

    /// Counts `count` failures of a named kind that is not an operation's error.
    pub fn count_error(&mut self, kind: &str, count: u64) {
        if count > 0 {
            *self.errors.entry(kind.to_owned()).or_default() += count;
        }
    }

    /// Adds another worker's measurements to these.
    pub fn merge(&mut self, other: Recorder) {
        for (op, histogram) in other.latencies {
            self.latencies
                .entry(op)
                .or_insert_with(new_histogram)
                .add(&histogram)
                .expect("histograms share bounds");
        }
        for (kind, count) in other.errors {
            *self.errors.entry(kind).or_default() += count;
        }
    }

    /// Turns the measurements over `elapsed` into per-operation rows.
    pub fn summarize(&self, elapsed: Duration) -> (Vec<OpSummary>, BTreeMap<String, u64>) {
        let secs = elapsed.as_secs_f64().max(f64::EPSILON);
        let ops = self
            .latencies
            .iter()
            .map(|(op, h)| {
                let ms = |nanos: u64| nanos as f64 / 1e6;
                OpSummary {
                    op: (*op).to_owned(),
                    count: h.len(),
                    ops_per_sec: h.len() as f64 / secs,
                    mean_ms: h.mean() / 1e6,
                    p50_ms: ms(h.value_at_quantile(0.50)),
                    p90_ms: ms(h.value_at_quantile(0.90)),
                    p99_ms: ms(h.value_at_quantile(0.99)),
                    p999_ms: ms(h.value_at_quantile(0.999)),
                    max_ms: ms(h.max()),
                }
            })
            .collect();
        (ops, self.errors.clone())
    }
}

/// Throughput and latency of one operation over the measured phase.
#[derive(Clone, Debug, Serialize)]
pub struct OpSummary {
    /// Operation name (`create`, `rotate`, `lookup`, `revoke`, `revoke_to_event`).
    pub op: String,
    /// Successful operations measured.
    pub count: u64,
    /// Successful operations per second of measured time.
    pub ops_per_sec: f64,
    /// Mean latency, milliseconds.
    pub mean_ms: f64,
    /// Median latency, milliseconds.
    pub p50_ms: f64,
    /// 90th percentile latency, milliseconds.
    pub p90_ms: f64,
    /// 99th percentile latency, milliseconds.
    pub p99_ms: f64,
    /// 99.9th percentile latency, milliseconds.
    pub p999_ms: f64,
    /// Highest latency seen, milliseconds.
    pub max_ms: f64,
}

/// What one `sessiond bench` run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The store driven (`sessiond`, `etcd`, `redis`).
    pub target: String,
    /// The workload run.
    pub workload: String,
    /// Read consistency of lookups.
    pub consistency: String,
    /// Concurrent clients (workers).
    pub concurrency: usize,
    /// Offered load, ops/s (`None`: closed loop).
    pub rate: Option<f64>,
    /// Revocation-stream subscribers (revoke-fanout only).
    pub subscribers: usize,
    /// Length of the measured phase, seconds.
    pub elapsed_secs: f64,
    /// Successful operations per second over all operations.
    pub total_ops_per_sec: f64,
    /// CPU microseconds of the servers (`--server-pids`) per successful operation of the
    /// measured phase (revoke-fanout: per revocation).
    pub server_cpu_us_per_op: Option<f64>,
    /// CPU microseconds of the load generator per successful operation.
    pub client_cpu_us_per_op: Option<f64>,
    /// One row per operation.
    pub ops: Vec<OpSummary>,
    /// Failures by `op:kind`.
    pub errors: BTreeMap<String, u64>,
}

impl Report {
    /// The report as an aligned, human-readable table.
    pub fn to_table(&self) -> String {
        let mut out = format!(
            "target={} workload={} consistency={} concurrency={}{}{} measured={:.1}s total={:.0} ops/s\n",
            self.target,
            self.workload,
            self.consistency,
            self.concurrency,
            self.rate
                .map_or_else(String::new, |rate| format!(" rate={rate:.0}/s")),
            if self.subscribers > 0 {
                format!(" subscribers={}", self.subscribers)
            } else {
                String::new()
            },
            self.elapsed_secs,
            self.total_ops_per_sec,
        );
        if let Some(server) = self.server_cpu_us_per_op {
            out.push_str(&format!("server CPU per op: {server:.1} µs\n"));
        }
        if let Some(client) = self.client_cpu_us_per_op {
            out.push_str(&format!("load generator CPU per op: {client:.1} µs\n"));
        }
        out.push_str(&format!(
            "{:<16} {:>10} {:>11} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
            "op", "count", "ops/s", "mean ms", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
        ));
        for row in &self.ops {
            out.push_str(&format!(
                "{:<16} {:>10} {:>11.1} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}\n",
                row.op,
                row.count,
                row.ops_per_sec,
                row.mean_ms,
                row.p50_ms,
                row.p90_ms,
                row.p99_ms,
                row.p999_ms,
                row.max_ms
            ));
        }
        if self.errors.is_empty() {
            out.push_str("errors: none\n");
        } else {
            out.push_str("errors:\n");
            for (kind, count) in &self.errors {
                out.push_str(&format!("  {kind}: {count}\n"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_recorders_report_percentiles_and_errors() {
        let mut a = Recorder::default();
        let mut b = Recorder::default();
        for ms in 1..=100 {
            a.record_latency("rotate", Duration::from_millis(ms));
        }
        b.record_latency("rotate", Duration::from_millis(1000));
        b.record_error("rotate", &OpError::Outcome("cas_failed".into()));
        a.merge(b);
        let (ops, errors) = a.summarize(Duration::from_secs(2));
        assert_eq!(ops.len(), 1);
        let rotate = &ops[0];
        assert_eq!(rotate.count, 101);
        assert!((rotate.ops_per_sec - 50.5).abs() < 1e-9);
        assert!((rotate.p50_ms - 51.0).abs() < 0.1, "{}", rotate.p50_ms);
        assert!((rotate.max_ms - 1000.0).abs() < 1.0, "{}", rotate.max_ms);
        assert_eq!(errors.get("rotate:outcome:cas_failed"), Some(&1));
    }

    #[test]
    fn latencies_beyond_the_tracked_range_are_clamped_not_lost() {
        let mut r = Recorder::default();
        r.record_latency("lookup", Duration::from_secs(3600));
        r.record_latency("lookup", Duration::ZERO);
        let (ops, _) = r.summarize(Duration::from_secs(1));
        assert_eq!(ops[0].count, 2);
        assert!(ops[0].max_ms >= 59_000.0);
    }
}
