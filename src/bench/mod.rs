//! `sessiond bench`: a closed-loop load generator that drives sessiond (and, with the
//! `compare` feature, etcd and Redis) through the same workers and the same
//! [`store::SessionStore`] operations, and reports throughput and latency percentiles.
//!
//! A run loads `--keyspace` sessions (not measured), warms up, then measures for
//! `--duration` seconds or `--ops` operations. Each of the `--concurrency` workers owns a
//! slice of the sessions, so rotation chains never contend with each other.

pub mod cpu;
#[cfg(feature = "compare")]
pub mod etcd;
pub mod fanout;
#[cfg(feature = "compare")]
pub mod kv;
#[cfg(feature = "compare")]
pub mod redis;
pub mod report;
pub mod sessiond;
pub mod store;
pub mod workload;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tokio::task::JoinSet;

use cpu::{CpuUsage, CpuWindow};
use report::{Recorder, Report};
use store::{ReadConsistency, SessionStore};
use workload::{Clock, Limit, Plan, Workload};

/// The store a bench run drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// A sessiond cluster (gRPC endpoints `http://host:port`).
    Sessiond,
    /// An etcd cluster (client URLs); needs the `compare` feature.
    Etcd,
    /// A Redis server (`redis://host:port`); needs the `compare` feature.
    Redis,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Sessiond => "sessiond",
            Target::Etcd => "etcd",
            Target::Redis => "redis",
        }
    }
}

/// Options of `sessiond bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(long, value_enum, default_value = "rotate")]
    pub workload: Workload,
    /// The store to drive.
    #[arg(long, value_enum, default_value = "sessiond")]
    pub target: Target,
    /// Comma-separated endpoints of the target (default: a local sessiond).
    #[arg(long, env = "SESSIOND_ENDPOINT", default_value = crate::client::DEFAULT_ENDPOINT, value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// Concurrent clients, each with one request in flight.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Length of the measured phase, seconds (ignored with --ops).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Measure this many operations instead of a duration.
    #[arg(long)]
    pub ops: Option<u64>,
    /// Unmeasured warm-up before the measured phase, seconds.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Sessions created before the run (split across workers) for rotate, lookup and mixed.
    #[arg(long, default_value_t = 10_000)]
    pub keyspace: usize,
    /// Consistency of lookups.
    #[arg(long, value_enum, default_value = "linearizable")]
    pub consistency: ReadConsistency,
    /// Offered load over all clients, ops/s (open loop); without it each client sends its
    /// next request as soon as the last one is answered (closed loop).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Revocation-stream subscribers for revoke-fanout, spread over the endpoints.
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// Comma-separated process ids of the servers under test: their CPU time during the
    /// measured phase is reported per operation.
    #[arg(long, value_delimiter = ',')]
    pub server_pids: Vec<i32>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// TLS and credentials for a secured sessiond cluster (https:// endpoints).
    #[command(flatten)]
    pub connect: crate::cli::ConnectArgs,
}

impl BenchArgs {
    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.concurrency > 0, "--concurrency must be at least 1");
        anyhow::ensure!(!self.endpoints.is_empty(), "--endpoints must name a node");
        anyhow::ensure!(
            self.duration.is_finite() && self.duration > 0.0,
            "--duration must be positive"
        );
        anyhow::ensure!(
            self.warmup.is_finite() && self.warmup >= 0.0,
            "--warmup must not be negative"
        );
        anyhow::ensure!(
            self.workload != Workload::RevokeFanout || self.target == Target::Sessiond,
            "revoke-fanout measures sessiond's revocation stream: use --target sessiond"
        );
        Ok(())
    }

    fn limit(&self) -> Limit {
        match self.ops {
            Some(count) => Limit::Ops(count),
            None => Limit::Duration(Duration::from_secs_f64(self.duration)),
        }
    }
}

/// Runs `sessiond bench` and prints its report.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    args.validate()?;
    let report = measure(&args).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_table());
    }
    Ok(())
}

/// Runs the workload `args` describe and returns what it measured.
pub async fn measure(args: &BenchArgs) -> anyhow::Result<Report> {
    let run_tag = format!("{:08x}", rand::random::<u32>());
    let plan = Arc::new(Plan {
        workload: args.workload,
        consistency: args.consistency,
        run_tag: run_tag.clone(),
        rate: args.rate,
        workers: args.concurrency,
    });
    let (recorder, elapsed, cpu) = match args.target {
        Target::Sessiond if args.workload == Workload::RevokeFanout => {
            let clock = Clock::start(Duration::from_secs_f64(args.warmup), args.limit());
            let cpu = CpuWindow::open(&args.server_pids, clock.measure_from());
            let progress = Progress::for_run(args, clock.clone());
            let tenant = format!("bench-fanout-{run_tag}");
            let recorder = fanout::run(
                &args.endpoints,
                &args.connect.options()?,
                &tenant,
                plan,
                args.concurrency,
                args.subscribers,
                clock.clone(),
            )
            .await?;
            progress.finish();
            let elapsed = clock.measure_from().elapsed();
            (recorder, elapsed, cpu.close().await?)
        }
        Target::Sessiond => {
            let options = args.connect.options()?;
            let stores = sessiond::SessiondStore::spread(&args.endpoints, &options, "bench")?;
            drive(args, plan, stores).await?
        }
        #[cfg(feature = "compare")]
        Target::Etcd => {
            let store = etcd::EtcdStore::connect(&args.endpoints).await?;
            drive(args, plan, vec![store]).await?
        }
        #[cfg(feature = "compare")]
        Target::Redis => {
            let store = redis::RedisStore::connect(&args.endpoints).await?;
            drive(args, plan, vec![store]).await?
        }
        #[cfg(not(feature = "compare"))]
        Target::Etcd | Target::Redis => anyhow::bail!(
            "--target {} needs a build with `--features compare`",
            args.target.name()
        ),
    };
    let (ops, errors) = recorder.summarize(elapsed);
    let total = ops.iter().map(|o| o.count).sum::<u64>();
    let counted = match args.workload {
        Workload::RevokeFanout => ops.iter().find(|o| o.op == "revoke").map_or(0, |o| o.count),
        _ => total,
    };
    Ok(Report {
        target: args.target.name().to_owned(),
        workload: args.workload.name().to_owned(),
        consistency: format!("{:?}", args.consistency).to_ascii_lowercase(),
        concurrency: args.concurrency,
        rate: args.rate,
        subscribers: if args.workload == Workload::RevokeFanout {
            args.subscribers
        } else {
            0
        },
        elapsed_secs: elapsed.as_secs_f64(),
        total_ops_per_sec: total as f64 / elapsed.as_secs_f64().max(f64::EPSILON),
        server_cpu_us_per_op: if args.server_pids.is_empty() {
            None
        } else {
            cpu.server_us_per_op(counted)
        },
        client_cpu_us_per_op: cpu.client_us_per_op(counted),
        ops,
        errors,
    })
}

/// Loads the key space, then runs the workers; returns their merged measurements, the
/// length of the measured phase and the CPU used during it.
async fn drive<S: SessionStore>(
    args: &BenchArgs,
    plan: Arc<Plan>,
    stores: Vec<S>,
) -> anyhow::Result<(Recorder, Duration, CpuUsage)> {
    let per_worker = match args.workload {
        Workload::Create => 0,
        _ => args.keyspace.div_ceil(args.concurrency).max(1),
    };
    let loading = Clock::start(Duration::ZERO, Limit::Ops(0));
    let progress = Progress::show(
        format!("loading {} sessions", per_worker * args.concurrency),
        loading.clone(),
    );
    let mut loaders = JoinSet::new();
    for worker in 0..args.concurrency {
        let (store, plan, clock) = (
            stores[worker % stores.len()].clone(),
            plan.clone(),
            loading.clone(),
        );
        loaders.spawn(async move {
            let held = workload::load(&store, &plan, worker, per_worker, &clock).await;
            held.map(|held| (worker, held))
        });
    }
    let mut slices = vec![Vec::new(); args.concurrency];
    while let Some(loaded) = loaders.join_next().await {
        let (worker, held) = loaded??;
        slices[worker] = held;
    }
    progress.finish();

    let clock = Clock::start(Duration::from_secs_f64(args.warmup), args.limit());
    let cpu = CpuWindow::open(&args.server_pids, clock.measure_from());
    let progress = Progress::for_run(args, clock.clone());
    let mut workers = JoinSet::new();
    for (worker, held) in slices.into_iter().enumerate() {
        let store = stores[worker % stores.len()].clone();
        workers.spawn(workload::run_worker(
            store,
            plan.clone(),
            worker,
            held,
            clock.clone(),
        ));
    }
    let mut recorder = Recorder::default();
    while let Some(done) = workers.join_next().await {
        recorder.merge(done?);
    }
    let elapsed = clock.measure_from().elapsed();
    progress.finish();
    Ok((recorder, elapsed, cpu.close().await?))
}

/// A progress display fed by a clock's operation counter, on stderr while the run lasts.
struct Progress {
    ticker: tokio::task::JoinHandle<()>,
    bar: ProgressBar,
}

impl Progress {
    /// Shows `message` and the operations done so far (with their rate).
    fn show(message: String, clock: Arc<Clock>) -> Self {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg}: {pos} ops ({per_sec})")
                .expect("static template"),
        );
        bar.set_message(message);
        let ticker = tokio::spawn({
            let bar = bar.clone();
            async move {
                loop {
                    bar.set_position(clock.done.load(Ordering::Relaxed));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        Progress { ticker, bar }
    }

    /// Shows the run's workload, target and phases.
    fn for_run(args: &BenchArgs, clock: Arc<Clock>) -> Self {
        let length = match args.ops {
            Some(ops) => format!("{ops} ops"),
            None => format!("{:.0}s", args.duration),
        };
        Progress::show(
            format!(
                "{} on {} (warm-up {:.0}s, then {length})",
                args.workload.name(),
                args.target.name(),
                args.warmup
            ),
            clock,
        )
    }

    /// Removes the display.
    fn finish(self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}
