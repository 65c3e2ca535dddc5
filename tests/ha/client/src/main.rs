//! `ha-client`: the client of ringlb's high-availability test (tests/ha/run.sh).
//!
//! Holds `--held` long-lived connections to `--target` (a virtual IP served by two ringlb nodes)
//! and opens `--rate` new ones per second for `--duration` seconds, recording the outcome of
//! every connection. It prints `ready held_open=N` once the held connections are open, so that
//! the test knows when to act; the test appends `EPOCH_MS NAME` lines to the `--marks` file when
//! it does something (kills a process, drains a node), and at the end the client prints, for the
//! whole run and after each mark, one line of `key=value` figures (see `report.rs`), and writes a
//! per-second table to `--csv`.
//!
//! It only ever connects to the target, from the `--source` addresses given; everything it does
//! ends with `--duration` (plus one attempt timeout).

mod http;
mod load;
mod record;
mod report;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use tokio::task::JoinSet;

use load::Plan;
use record::Recorder;
use report::{Mark, OpenSample};

/// How long the held connections may take to open before the client says it is ready anyway
/// (with the number actually open, which the test checks).
const HELD_OPEN_LIMIT: Duration = Duration::from_secs(30);
/// Period of the samples of open held connections (also the client's stall detector).
const SAMPLE_EVERY: Duration = Duration::from_micros(report::SAMPLE_PERIOD_US);

#[derive(Parser)]
#[command(name = "ha-client", about = "Held and new connections through a virtual IP, with figures")]
struct Args {
    /// Address to connect to (the virtual IP and port).
    #[arg(long)]
    target: SocketAddr,
    /// Source addresses to spread the connections over (comma-separated).
    #[arg(long, value_delimiter = ',', required = true)]
    source: Vec<Ipv4Addr>,
    /// Long-lived connections to hold.
    #[arg(long, default_value_t = 1000)]
    held: usize,
    /// New connections per second.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Seconds to run the load.
    #[arg(long)]
    duration: u64,
    /// Seconds between two requests on one held connection.
    #[arg(long, default_value_t = 3.0)]
    probe_every: f64,
    /// Seconds one attempt (connect and request) may take.
    #[arg(long, default_value_t = 2.5)]
    timeout: f64,
    /// File of `EPOCH_MS NAME` lines the test writes while the client runs.
    #[arg(long)]
    marks: Option<PathBuf>,
    /// Where to write the per-second table.
    #[arg(long)]
    csv: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
enum ClientError {
    #[error("bad argument: {0}")]
    Argument(&'static str),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot read the marks file {path}: {source}")]
    Marks { path: PathBuf, source: std::io::Error },
    #[error("marks file {path} line {line}: expected `EPOCH_MS NAME`")]
    MarkLine { path: PathBuf, line: usize },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ha-client: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), ClientError> {
    if !(args.probe_every > 0.0 && args.probe_every < 3600.0) {
        return Err(ClientError::Argument("--probe-every must be between 0 and 3600 seconds"));
    }
    if !(args.timeout > 0.0 && args.timeout < 60.0) {
        return Err(ClientError::Argument("--timeout must be between 0 and 60 seconds"));
    }
    if args.duration == 0 || args.duration > 3600 {
        return Err(ClientError::Argument("--duration must be between 1 and 3600 seconds"));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(ClientError::Runtime)?;
    let start_epoch_us = epoch_us();
    let start = tokio::time::Instant::now();
    let recorder = Arc::new(Recorder::new(start.into_std()));
    let plan = Arc::new(Plan {
        target: args.target,
        sources: args.source.clone(),
        held: args.held,
        rate: args.rate,
        probe_every: Duration::from_secs_f64(args.probe_every),
        attempt_timeout: Duration::from_secs_f64(args.timeout),
        deadline: start + Duration::from_secs(args.duration),
    });
    let (ready_us, skipped, samples) = runtime.block_on(drive(plan.clone(), recorder.clone()));

    let end_us = args.duration * 1_000_000;
    let (events, backends) = recorder.take();
    println!("start_epoch_ms={}", start_epoch_us / 1000);
    // The new connections start once the held ones are open: count from there.
    let total = report::window(&events, &samples, ready_us, end_us);
    println!("total {} skipped={skipped}", total.render());
    let served: Vec<String> = backends
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let n = events.iter().filter(|e| e.outcome == Ok(u16::try_from(i).unwrap_or(u16::MAX))).count();
            format!("{name}={n}")
        })
        .collect();
    println!("backends {}", served.join(" "));
    if let Some(path) = &args.marks {
        let marks = read_marks(path, start_epoch_us)?;
        for (name, w) in report::marks(&events, &samples, &marks, end_us) {
            println!("mark={name} {}", w.render());
        }
        // Which backend each source reached, before the first mark and after each one.
        let mut bounds: Vec<(String, u64)> = vec![("start".to_string(), ready_us)];
        let mut sorted = marks.clone();
        sorted.sort_by_key(|m| m.at_us);
        bounds.extend(sorted.into_iter().map(|m| (m.name, m.at_us)));
        for (i, (name, from)) in bounds.iter().enumerate() {
            let to = bounds.get(i + 1).map_or(end_us, |next| next.1);
            let fields: Vec<String> = report::affinity(&events, args.source.len(), &backends, *from, to)
                .into_iter()
                .zip(&args.source)
                .map(|(backends, source)| format!("{source}={backends}"))
                .collect();
            println!("affinity={name} {}", fields.join(" "));
        }
    }
    if let Some(path) = &args.csv {
        let table = report::per_second_csv(&events, &samples, args.duration);
        std::fs::write(path, table).map_err(|source| ClientError::Write { path: path.clone(), source })?;
    }
    Ok(())
}

/// Runs the load to its deadline; returns when it was ready (microseconds since the start), the
/// skipped count and the open-connection samples.
async fn drive(plan: Arc<Plan>, recorder: Arc<Recorder>) -> (u64, u64, Vec<OpenSample>) {
    let mut held = JoinSet::new();
    for id in 0..plan.held {
        held.spawn(load::held(plan.clone(), recorder.clone(), id));
    }
    let ready_by = tokio::time::Instant::now() + HELD_OPEN_LIMIT;
    while recorder.held_open() < plan.held as i64 && tokio::time::Instant::now() < ready_by.min(plan.deadline) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("ready held_open={}", recorder.held_open());
    let ready_us = recorder.now_us();

    let sampler = {
        let (plan, recorder) = (plan.clone(), recorder.clone());
        tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut ticks = tokio::time::interval(SAMPLE_EVERY);
            // After a stall, the next sample comes one period later (the stall shows as one gap).
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while tokio::time::Instant::now() < plan.deadline {
                ticks.tick().await;
                samples.push(OpenSample { at_us: recorder.now_us(), open: recorder.held_open() });
            }
            samples
        })
    };
    let skipped = load::fresh(plan.clone(), recorder.clone()).await;
    // Held connections stop at their first probe past the deadline; one stuck in a connect or a
    // request is bounded by the attempt timeout. Anything left after that is abandoned.
    let stop_by = plan.deadline + plan.probe_every + plan.attempt_timeout + Duration::from_secs(1);
    while !held.is_empty() {
        match tokio::time::timeout_at(stop_by, held.join_next()).await {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    held.abort_all();
    let samples = sampler.await.unwrap_or_default();
    (ready_us, skipped, samples)
}

fn epoch_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Reads `EPOCH_MS NAME` lines; a missing file means no marks.
fn read_marks(path: &Path, start_epoch_us: u64) -> Result<Vec<Mark>, ClientError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(ClientError::Marks { path: path.to_owned(), source }),
    };
    let mut marks = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let bad = || ClientError::MarkLine { path: path.to_owned(), line: i + 1 };
        let (at, name) = line.trim().split_once(' ').ok_or_else(bad)?;
        let at_ms: u64 = at.parse().map_err(|_| bad())?;
        let at_us = (at_ms * 1000).saturating_sub(start_epoch_us);
        marks.push(Mark { at_us, name: name.trim().to_string() });
    }
    Ok(marks)
}
