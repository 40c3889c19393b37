//! CPU time spent during the measured phase, by the servers under test (`--server-pids`) and
//! by the load generator itself: the figure that stays comparable on a noisy shared machine,
//! where throughput does not. Read from `/proc/<pid>/stat` (user + system time).

use std::time::Duration;

use procfs::process::Process;
use serde::Serialize;
use tokio::time::Instant;

/// CPU seconds used by a set of processes between two instants.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct CpuUsage {
    /// CPU seconds of the servers named by `--server-pids` (all of them together).
    pub server_secs: f64,
    /// CPU seconds of this load generator.
    pub client_secs: f64,
}

impl CpuUsage {
    /// Microseconds of server CPU per operation.
    pub fn server_us_per_op(&self, ops: u64) -> Option<f64> {
        (ops > 0).then(|| self.server_secs * 1e6 / ops as f64)
    }

    /// Microseconds of load-generator CPU per operation.
    pub fn client_us_per_op(&self, ops: u64) -> Option<f64> {
        (ops > 0).then(|| self.client_secs * 1e6 / ops as f64)
    }
}

/// A measurement window: started at the measured phase's first instant, read at its end.
pub struct CpuWindow {
    pids: Vec<i32>,
    start: tokio::task::JoinHandle<anyhow::Result<CpuUsage>>,
}

impl CpuWindow {
    /// Samples `pids` and this process at `measure_from` (in the background).
    pub fn open(pids: &[i32], measure_from: std::time::Instant) -> Self {
        let owned = pids.to_vec();
        let start = tokio::spawn(async move {
            tokio::time::sleep_until(Instant::from_std(measure_from)).await;
            sample(&owned)
        });
        CpuWindow {
            pids: pids.to_vec(),
            start,
        }
    }

    /// The CPU used since the window opened (zero if the run ended before it did).
    pub async fn close(self) -> anyhow::Result<CpuUsage> {
        let end = sample(&self.pids)?;
        if !self.start.is_finished() {
            self.start.abort();
            return Ok(CpuUsage::default());
        }
        let start = self.start.await??;
        Ok(CpuUsage {
            server_secs: end.server_secs - start.server_secs,
            client_secs: end.client_secs - start.client_secs,
        })
    }
}

/// The cumulative CPU time of `pids` (together) and of this process, now.
fn sample(pids: &[i32]) -> anyhow::Result<CpuUsage> {
    let mut server = Duration::ZERO;
    for pid in pids {
        server += cpu_time(&Process::new(*pid)?)?;
    }
    Ok(CpuUsage {
        server_secs: server.as_secs_f64(),
        client_secs: cpu_time(&Process::myself()?)?.as_secs_f64(),
    })
}

fn cpu_time(process: &Process) -> anyhow::Result<Duration> {
    let stat = process.stat()?;
    let ticks = stat.utime + stat.stime;
    Ok(Duration::from_secs_f64(
        ticks as f64 / procfs::ticks_per_second() as f64,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_window_counts_the_cpu_burnt_inside_it() {
        let me = std::process::id() as i32;
        let window = CpuWindow::open(&[me], std::time::Instant::now());
        tokio::time::sleep(Duration::from_millis(20)).await;
        let busy_until = std::time::Instant::now() + Duration::from_millis(300);
        let mut spins = 0u64;
        while std::time::Instant::now() < busy_until {
            spins = std::hint::black_box(spins.wrapping_add(1));
        }
        let used = window.close().await.unwrap();
        assert!(used.server_secs >= 0.1, "{used:?}");
        assert!(used.client_secs >= 0.1, "{used:?}");
        assert_eq!(used.server_us_per_op(0), None);
        assert_eq!(used.server_us_per_op(2), Some(used.server_secs * 5e5));
    }

    #[tokio::test]
    async fn a_window_that_never_opened_counts_nothing() {
        let later = std::time::Instant::now() + Duration::from_secs(3600);
        let window = CpuWindow::open(&[std::process::id() as i32], later);
        assert_eq!(window.close().await.unwrap(), CpuUsage::default());
    }
}
