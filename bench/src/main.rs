//! ringlb-bench: the load generator and its helpers, used by `make bench` to measure ringlb side
//! by side with HAProxy, nginx stream and the direct path.
//!
//! Workloads: `rr` (requests on keep-alive connections, open- or closed-loop), `conn` (one
//! connection per request), `bulk` (throughput of long streams) and `hold` (many concurrent
//! connections, few of them active, with the target's memory). Helpers: `http-backend` and
//! `sink` (backends), `free-ports`, `wait-port`, and `report` (tables and plot from the results).
//! This file is the composition root: it parses the command line and prints results; the
//! measuring happens in `engine`, `run` and `bulk`.

mod bulk;
mod engine;
mod http;
mod plan;
mod procstat;
mod report;
mod run;
mod serve;
mod stats;

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};

use engine::{ConnMode, Schedule};
use plan::Split;
use run::{Watch, Workload};
use stats::{Params, RunResult};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}: {1}")]
    Sys(&'static str, #[source] io::Error),
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, #[source] io::Error),
    #[error("target process {0}: {1}")]
    Target(u32, #[source] io::Error),
    #[error("histogram: {0}")]
    Histogram(String),
    #[error("{0}")]
    Worker(String),
    #[error("{0}")]
    Usage(String),
    #[error("{0}: {1}")]
    File(PathBuf, #[source] io::Error),
    #[error("{0}:{1}: {2}")]
    Results(PathBuf, usize, String),
}

#[derive(Parser)]
#[command(name = "ringlb-bench", about = "Load generator and backends for benchmarking TCP proxies")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Requests on persistent keep-alive connections: flat out (closed loop, --rate 0) or at a
    /// fixed total rate (open loop; latency counted from each request's due time).
    Rr {
        #[command(flatten)]
        common: Common,
        /// Persistent connections.
        #[arg(long, default_value_t = 64)]
        conns: usize,
        /// Total requests per second; 0 = flat out.
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
    },
    /// A new connection for every request (connect, request, response, close).
    Conn {
        #[command(flatten)]
        common: Common,
        /// Concurrent connection loops (at most this many connections open at once).
        #[arg(long, default_value_t = 32)]
        conns: usize,
        /// New connections per second in total; 0 = flat out.
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
    },
    /// Ramp to many concurrent connections (each answers one probe request), hold them, and
    /// send requests at a low total rate over a fraction of them; reports the ramp, errors, and
    /// the memory the target and the kernel spent per held connection.
    Hold {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 10_000)]
        conns: usize,
        /// Total requests per second over the active connections; 0 = only hold.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// Fraction of the connections that carry requests after the ramp.
        #[arg(long, default_value_t = 1.0)]
        active: f64,
        /// Connection attempts in flight during the ramp, over all processes.
        #[arg(long, default_value_t = 512)]
        ramp_concurrency: usize,
        /// Longest ramp; connections not settled by then count as failed.
        #[arg(long, value_parser = parse_duration, default_value = "60s")]
        ramp_limit: Duration,
        /// Do not send a probe request on each new connection.
        #[arg(long)]
        no_probe: bool,
    },
    /// Throughput of long streams through the target to a `sink`.
    Bulk {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 1)]
        streams: usize,
        #[arg(long, value_enum, default_value_t = Direction::Up)]
        direction: Direction,
    },
    /// A backend answering every HTTP/1.1 request with 200 and its name.
    HttpBackend {
        /// Address to listen on; port 0 picks a free port (the start-up line on stderr tells it).
        #[arg(long)]
        bind: SocketAddr,
        #[arg(long)]
        name: String,
        /// Share the port with other processes (SO_REUSEPORT).
        #[arg(long)]
        reuseport: bool,
        /// Wait this long before each response (a slow backend).
        #[arg(long, value_parser = parse_duration, default_value = "0s")]
        delay: Duration,
    },
    /// A backend for `bulk`: discards what clients send or sends to them.
    Sink {
        /// Address to listen on; port 0 picks a free port (the start-up line on stderr tells it).
        #[arg(long)]
        bind: SocketAddr,
        #[arg(long)]
        reuseport: bool,
    },
    /// Prints N distinct TCP ports that were free on 127.0.0.1.
    FreePorts { n: usize },
    /// Waits until ADDR accepts TCP connections; exits non-zero on timeout.
    WaitPort {
        addr: SocketAddr,
        #[arg(long, value_parser = parse_duration, default_value = "10s")]
        timeout: Duration,
    },
    /// Builds the Markdown tables and the latency plot from a results file (JSON lines).
    Report(report::ReportArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Direction {
    /// Client to server.
    Up,
    /// Server to client.
    Down,
}

#[derive(Args, Clone, Debug)]
struct Common {
    /// Target address; repeat it to spread connections round-robin over several.
    #[arg(long = "target", required = true)]
    targets: Vec<SocketAddr>,
    /// Length of the measured window (after the ramp).
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    duration: Duration,
    /// Engine threads per process.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Worker processes; 0 = as many as the descriptor limit needs (18,000 connections each).
    #[arg(long, default_value_t = 0)]
    procs: usize,
    /// First client source address; connections are spread over consecutive addresses.
    #[arg(long, default_value = "127.0.0.2")]
    src_base: Ipv4Addr,
    /// Number of source addresses; 0 = one per 10,000 connections.
    #[arg(long, default_value_t = 0)]
    sources: usize,
    /// Let the kernel choose the source address instead.
    #[arg(long)]
    no_src: bool,
    /// A connect or request taking longer counts as a timeout error.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    timeout: Duration,
    /// Stop after this many requests in total; 0 = no limit.
    #[arg(long, default_value_t = 0)]
    max_requests: u64,
    #[arg(long, default_value = "/")]
    path: String,
    /// A target process whose CPU time, threads and memory to report (with its children).
    #[arg(long = "pid")]
    pids: Vec<u32>,
    /// Print one JSON object on stdout instead of the summary.
    #[arg(long)]
    json: bool,
    /// KEY=VALUE copied into the JSON result (repeatable).
    #[arg(long = "tag", value_parser = parse_tag)]
    tags: Vec<(String, String)>,
    /// No progress lines on stderr.
    #[arg(short, long)]
    quiet: bool,
    /// Also print a one-line summary on stderr.
    #[arg(long)]
    brief: bool,
    #[arg(long, hide = true)]
    worker: Option<usize>,
    #[arg(long, hide = true)]
    parent: Option<u32>,
}

/// Parses `500ms`, `5s`, `1.5s`, `2m` or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(v) = s.strip_suffix("ms") {
        (v, 1e-3)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('m') {
        (v, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num.trim().parse().map_err(|_| format!("not a duration: {s:?} (try 500ms, 5s, 2m)"))?;
    if !(0.0..=86_400.0).contains(&(v * scale)) {
        return Err(format!("duration out of range: {s:?}"));
    }
    Ok(Duration::from_secs_f64(v * scale))
}

fn parse_tag(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    engine::sys::raise_nofile();
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringlb-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> Result<(), BenchError> {
    match command {
        Command::Rr { common, conns, rate } => {
            let schedule = if rate > 0.0 { Schedule::Open(rate) } else { Schedule::Closed };
            engine_workload("rr", &common, ConnMode::KeepAlive, conns, schedule, |w| w)
        }
        Command::Conn { common, conns, rate } => {
            let schedule = if rate > 0.0 { Schedule::Open(rate) } else { Schedule::Closed };
            engine_workload("conn", &common, ConnMode::PerRequest, conns, schedule, |w| w)
        }
        Command::Hold { common, conns, rate, active, ramp_concurrency, ramp_limit, no_probe } => {
            if !(0.0..=1.0).contains(&active) {
                return Err(BenchError::Usage("--active must be between 0 and 1".into()));
            }
            let schedule = if rate > 0.0 { Schedule::Open(rate) } else { Schedule::Idle };
            engine_workload("hold", &common, ConnMode::KeepAlive, conns, schedule, |mut w| {
                w.active_fraction = active;
                w.ramp_concurrency = ramp_concurrency;
                w.ramp_limit_ns = ramp_limit.as_nanos() as u64;
                w.probe = !no_probe;
                w.hold = true;
                w
            })
        }
        Command::Bulk { common, streams, direction } => bulk_workload(&common, streams, direction),
        Command::HttpBackend { bind, name, reuseport, delay } => serve::http_backend(bind, &name, reuseport, delay),
        Command::Sink { bind, reuseport } => serve::sink(bind, reuseport),
        Command::FreePorts { n } => free_ports(n),
        Command::WaitPort { addr, timeout } => wait_port(addr, timeout),
        Command::Report(args) => report::run(&args),
    }
}

fn sources(common: &Common) -> Option<Ipv4Addr> {
    (!common.no_src).then_some(common.src_base)
}

fn engine_workload(
    mode: &str,
    common: &Common,
    conn_mode: ConnMode,
    conns: usize,
    schedule: Schedule,
    adjust: impl FnOnce(Workload) -> Workload,
) -> Result<(), BenchError> {
    if conns == 0 {
        return Err(BenchError::Usage("--conns must be at least 1".into()));
    }
    let split =
        Split::new(conns, common.procs, common.threads, sources(common), common.sources, common.targets.clone());
    let w = adjust(Workload {
        mode: conn_mode,
        split,
        schedule,
        active_fraction: 1.0,
        probe: false,
        hold: false,
        ramp_concurrency: conns,
        ramp_limit_ns: common.timeout.as_nanos() as u64 * 2,
        duration_ns: common.duration.as_nanos() as u64,
        max_requests: common.max_requests,
        timeout_ns: common.timeout.as_nanos() as u64,
        drain_ns: common.timeout.min(Duration::from_secs(2)).as_nanos() as u64,
        request: Arc::from(http::request(&common.path, conn_mode == ConnMode::PerRequest)),
    });
    if let Some(i) = common.worker {
        let parent = common.parent.ok_or_else(|| BenchError::Usage("--worker needs --parent".into()))?;
        return run::worker(&w, i, parent);
    }
    let watch = Watch {
        pids: common.pids.clone(),
        memory: w.hold,
        progress: !common.quiet && (w.hold || common.duration >= Duration::from_secs(2)),
        label: format!("[{mode}]"),
    };
    let mut r = run::drive(&w, &watch)?;
    r.mode = mode.to_string();
    r.params = Params {
        targets: common.targets.iter().map(ToString::to_string).collect(),
        conns,
        rate: match schedule {
            Schedule::Open(r) => r,
            _ => 0.0,
        },
        duration_s: common.duration.as_secs_f64(),
        threads: w.split.threads,
        procs: w.split.procs,
        sources: w.split.sources.iter().map(ToString::to_string).collect(),
        active: w.hold.then_some(w.active_fraction),
        ..Params::default()
    };
    emit(r, common)
}

fn bulk_workload(common: &Common, streams: usize, direction: Direction) -> Result<(), BenchError> {
    let upload = matches!(direction, Direction::Up);
    let split = Split::new(streams, 1, 1, sources(common), common.sources, common.targets.clone());
    let b = bulk::Bulk {
        streams,
        upload,
        duration: common.duration,
        targets: common.targets.clone(),
        sources: split.sources.clone(),
    };
    let mut r = bulk::run(&b, &common.pids)?;
    r.mode = "bulk".into();
    r.params = Params {
        targets: common.targets.iter().map(ToString::to_string).collect(),
        conns: streams,
        duration_s: common.duration.as_secs_f64(),
        threads: streams,
        procs: 1,
        sources: split.sources.iter().map(ToString::to_string).collect(),
        streams: Some(streams),
        direction: Some(if upload { "up" } else { "down" }.into()),
        ..Params::default()
    };
    emit(r, common)
}

fn emit(mut r: RunResult, common: &Common) -> Result<(), BenchError> {
    r.tags = common.tags.iter().cloned().collect();
    if common.brief {
        eprintln!("{}", report::brief(&r));
    }
    if common.json {
        let line = serde_json::to_string(&r).map_err(|e| BenchError::Worker(e.to_string()))?;
        println!("{line}");
    } else {
        print!("{}", report::human(&r));
    }
    Ok(())
}

fn free_ports(n: usize) -> Result<(), BenchError> {
    // Hold every listener until all are chosen so that the ports are distinct.
    let listeners = (0..n)
        .map(|_| TcpListener::bind(("127.0.0.1", 0)).map_err(|e| BenchError::Sys("bind 127.0.0.1:0", e)))
        .collect::<Result<Vec<_>, _>>()?;
    for l in &listeners {
        let port = l.local_addr().map_err(|e| BenchError::Sys("getsockname", e))?.port();
        println!("{port}");
    }
    Ok(())
}

fn wait_port(addr: SocketAddr, timeout: Duration) -> Result<(), BenchError> {
    let start = Instant::now();
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(_) => return Ok(()),
            Err(e) if start.elapsed() >= timeout => {
                return Err(BenchError::Worker(format!("{addr} not accepting after {timeout:?}: {e}")));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_every_unit() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
