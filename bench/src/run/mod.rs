//! Runs an engine workload (`rr`, `conn`, `hold`) with its threads in this process or spread over
//! worker processes, watches it (progress once a second, the target's CPU, threads and memory),
//! and turns the merged tallies into a [`RunResult`].
//!
//! Worker processes are this same executable started with `--worker I`; they speak to the parent
//! in JSON lines on stdout ([`ChildMsg`]) and wait for `go START` on stdin before the measured
//! window, so that all of them start it at the same monotonic instant. Every phase is bounded in
//! time; a worker that misbehaves is killed and the run fails.

mod fleet;

use std::io::{BufRead, Write};
use std::sync::Arc;
use std::time::Duration;

use fleet::{ChildMsg, Fleet, Kids, Local};

use crate::engine::{sys, ConnMode, Schedule, ThreadPlan};
use crate::plan::Split;
use crate::procstat::{self, TargetWatch};
use crate::stats::{HoldStats, Latency, RunResult, Tally, WorkerTally};
use crate::BenchError;

/// Slack given to worker processes beyond the sum of their own time bounds.
const WATCHDOG_SLACK_NS: u64 = 30_000_000_000;
/// Delay between deciding to start the window and its start, so that every thread sees it.
const START_DELAY_NS: u64 = 50_000_000;
const POLL: Duration = Duration::from_millis(10);

/// The whole workload, before it is cut into processes and threads.
#[derive(Debug, Clone)]
pub struct Workload {
    pub mode: ConnMode,
    pub split: Split,
    /// `Open` carries the total rate of the whole run.
    pub schedule: Schedule,
    pub active_fraction: f64,
    pub probe: bool,
    pub hold: bool,
    /// Connection attempts in flight during the ramp, over the whole run.
    pub ramp_concurrency: usize,
    pub ramp_limit_ns: u64,
    pub duration_ns: u64,
    /// Most requests over the whole run; 0 = unbounded.
    pub max_requests: u64,
    pub timeout_ns: u64,
    pub drain_ns: u64,
    pub request: Arc<[u8]>,
}

impl Workload {
    /// The plans of the threads of worker process `proc`.
    pub fn thread_plans(&self, proc: usize) -> Vec<ThreadPlan> {
        let s = &self.split;
        let parts = (s.procs * s.threads) as f64;
        (0..s.threads)
            .map(|t| {
                let range = s.slots(proc, t);
                let share = |total: f64| s.rate_share(total, &range);
                let schedule = match self.schedule {
                    Schedule::Open(total) => Schedule::Open(share(total)),
                    other => other,
                };
                let max_requests =
                    if self.max_requests == 0 { 0 } else { share(self.max_requests as f64).ceil() as u64 };
                ThreadPlan {
                    mode: self.mode,
                    slots: range.clone().map(|g| (s.source(g), s.target(g))).collect(),
                    schedule,
                    phase: (proc * s.threads + t) as f64 / parts,
                    active: ((range.len() as f64) * self.active_fraction).ceil() as usize,
                    probe: self.probe,
                    hold: self.hold,
                    ramp_concurrency: self.ramp_concurrency.div_ceil(s.procs * s.threads).max(1),
                    ramp_limit_ns: self.ramp_limit_ns,
                    duration_ns: self.duration_ns,
                    max_requests,
                    timeout_ns: self.timeout_ns,
                    drain_ns: self.drain_ns,
                    request: Arc::clone(&self.request),
                }
            })
            .collect()
    }

    fn bound_ns(&self) -> u64 {
        self.ramp_limit_ns + self.duration_ns + self.drain_ns + self.timeout_ns + WATCHDOG_SLACK_NS
    }
}

/// What the parent watches besides the workload itself.
#[derive(Debug, Clone, Default)]
pub struct Watch {
    pub pids: Vec<u32>,
    /// Measure memory per held connection (hold).
    pub memory: bool,
    pub progress: bool,
    pub label: String,
}

/// What memory looked like before the ramp.
struct Baseline {
    kernel: procstat::KernelMemory,
    rss_kib: Option<u64>,
}

/// Runs the workload from the parent's side and returns the merged result.
pub fn drive(w: &Workload, watch: &Watch) -> Result<RunResult, BenchError> {
    let t0 = sys::monotonic_ns();
    let baseline = if watch.memory {
        Some(Baseline {
            kernel: procstat::kernel_memory().map_err(|e| BenchError::Sys("/proc/meminfo", e))?,
            rss_kib: first_sample(&watch.pids)?.map(|s| s.rss_kib),
        })
    } else {
        None
    };
    let mut fleet =
        if w.split.procs > 1 { Fleet::Kids(Kids::start(w.split.procs)?) } else { Fleet::Local(Local::start(w, 0)?) };
    let result = watch_fleet(&mut fleet, w, watch, t0, baseline.as_ref());
    if result.is_err() {
        fleet.abort();
    }
    result.and_then(|(mut r, targets)| {
        let tally = fleet.join()?;
        finish_result(&mut r, w, tally, targets)?;
        Ok(r)
    })
}

fn first_sample(pids: &[u32]) -> Result<Option<procstat::Sample>, BenchError> {
    match pids.first() {
        Some(&p) => Ok(Some(procstat::sample(p).map_err(|e| BenchError::Target(p, e))?)),
        None => Ok(None),
    }
}

/// Memory growth between the baseline and now, per connection served by the ramp.
fn held_memory(baseline: &Baseline, pids: &[u32], served: u64) -> Result<HoldStats, BenchError> {
    let kernel = procstat::kernel_memory().map_err(|e| BenchError::Sys("/proc/meminfo", e))?;
    let held = first_sample(pids)?;
    let per_conn = |before: f64, after: f64| (served > 0).then(|| (after - before) / served as f64);
    let before = &baseline.kernel;
    Ok(HoldStats {
        slab_before_kib: before.slab_kib,
        slab_held_kib: kernel.slab_kib,
        slab_per_conn_b: per_conn(before.slab_kib as f64 * 1024.0, kernel.slab_kib as f64 * 1024.0),
        socket_slab_per_conn_b: before
            .socket_slab_b
            .zip(kernel.socket_slab_b)
            .and_then(|(b, a)| per_conn(b as f64, a as f64)),
        rss_before_kib: baseline.rss_kib,
        rss_held_kib: held.map(|s| s.rss_kib),
        rss_per_conn_b: baseline
            .rss_kib
            .zip(held)
            .and_then(|(b, h)| per_conn(b as f64 * 1024.0, h.rss_kib as f64 * 1024.0)),
        threads_held: held.map(|s| s.threads),
        ..HoldStats::default()
    })
}

/// The result so far, and the targets' cost still to be read at the very end.
type Partial = (RunResult, TargetWatch);

fn watch_fleet(
    fleet: &mut Fleet,
    w: &Workload,
    watch: &Watch,
    t0: u64,
    baseline: Option<&Baseline>,
) -> Result<Partial, BenchError> {
    let deadline = t0 + w.bound_ns();
    let mut next_print = t0 + 1_000_000_000;
    // Ramp.
    while !fleet.ramped() {
        fleet.pump()?;
        let now = sys::monotonic_ns();
        if now > deadline {
            return Err(BenchError::Worker("the ramp did not finish in time".into()));
        }
        if watch.progress && now >= next_print {
            let c = fleet.counters();
            eprintln!(
                "{} ramp {:>5.1}s  connected {}  served {}  errors {}",
                watch.label,
                (now - t0) as f64 / 1e9,
                c.connected,
                c.served,
                c.errors
            );
            next_print += 1_000_000_000;
        }
        std::thread::sleep(POLL);
    }
    let ramped = fleet.counters();
    let hold = match baseline {
        Some(b) => Some(held_memory(b, &watch.pids, ramped.served)?),
        None => None,
    };
    if watch.progress {
        eprintln!(
            "{} ramped in {:.2}s: connected {} served {} errors {}",
            watch.label,
            (sys::monotonic_ns() - t0) as f64 / 1e9,
            ramped.connected,
            ramped.served,
            ramped.errors
        );
    }
    // Measured window.
    let mut targets = TargetWatch::start(&watch.pids)?;
    let steady_at = sys::monotonic_ns() + START_DELAY_NS;
    fleet.go(steady_at)?;
    next_print = steady_at + 1_000_000_000;
    let mut last_ok = 0;
    while !fleet.finished() {
        fleet.pump()?;
        let now = sys::monotonic_ns();
        if now > deadline {
            return Err(BenchError::Worker("the run did not finish in time".into()));
        }
        if now >= next_print {
            targets.tick()?;
            if watch.progress {
                let c = fleet.counters();
                eprintln!(
                    "{} {:>5.1}s  ok {}  ({:.0}/s)  errors {}",
                    watch.label,
                    (now - steady_at) as f64 / 1e9,
                    c.ok,
                    (c.ok - last_ok.min(c.ok)) as f64,
                    c.errors
                );
                last_ok = c.ok;
            }
            next_print += 1_000_000_000;
        }
        std::thread::sleep(POLL);
    }
    fleet.pump()?;
    let elapsed_ns = (sys::monotonic_ns() - steady_at).min(w.duration_ns);
    let r = RunResult { elapsed_s: elapsed_ns as f64 / 1e9, hold, ..RunResult::default() };
    Ok((r, targets))
}

fn finish_result(r: &mut RunResult, w: &Workload, tally: Tally, targets: TargetWatch) -> Result<(), BenchError> {
    let unit = match w.mode {
        ConnMode::PerRequest => "s per million connections",
        ConnMode::KeepAlive => "s per million requests",
    };
    r.targets = targets.finish(tally.ok as f64 / 1e6, unit)?;
    r.ok = tally.ok;
    r.errors = tally.error_count();
    r.error_kinds = tally.errors.clone();
    r.unfinished = tally.unfinished;
    r.rate = if r.elapsed_s > 0.0 { tally.ok as f64 / r.elapsed_s } else { 0.0 };
    r.latency = Latency::of(&tally.hist);
    r.send_lag = Latency::of(&tally.lag);
    if w.probe || w.hold {
        let h = r.hold.get_or_insert_with(HoldStats::default);
        h.conns = w.split.conns as u64;
        h.connected = tally.connected;
        h.served = tally.served;
        h.dropped = tally.dropped;
        h.ramp_s = tally.ramp_ns as f64 / 1e9;
    }
    Ok(())
}

/// The worker-process side: runs this process's share and talks to the parent.
pub fn worker(w: &Workload, proc: usize, parent: u32) -> Result<(), BenchError> {
    if !sys::die_with_parent(parent) {
        return Err(BenchError::Worker("parent already gone".into()));
    }
    let local = Local::start(w, proc)?;
    let mut out = std::io::stdout().lock();
    let mut say = |msg: &ChildMsg| -> Result<(), BenchError> {
        let line = serde_json::to_string(msg).map_err(|e| BenchError::Worker(e.to_string()))?;
        writeln!(out, "{line}").and_then(|_| out.flush()).map_err(|e| BenchError::Sys("write to parent", e))
    };
    let mut next = sys::monotonic_ns() + 1_000_000_000;
    while !local.ramped() {
        if sys::monotonic_ns() >= next {
            say(&ChildMsg::Progress(local.counters()))?;
            next += 1_000_000_000;
        }
        std::thread::sleep(POLL);
    }
    say(&ChildMsg::Ramped(local.counters()))?;
    let mut line = String::new();
    let n = std::io::stdin().lock().read_line(&mut line).map_err(|e| BenchError::Sys("read from parent", e))?;
    let at = line.trim().strip_prefix("go ").and_then(|v| v.parse::<u64>().ok());
    let Some(at) = at.filter(|_| n > 0) else {
        local.abort();
        let _ = local.join();
        return Err(BenchError::Worker("no start signal from the parent".into()));
    };
    local.go(at);
    next = sys::monotonic_ns() + 1_000_000_000;
    while !local.finished() {
        if sys::monotonic_ns() >= next {
            say(&ChildMsg::Progress(local.counters()))?;
            next += 1_000_000_000;
        }
        std::thread::sleep(POLL);
    }
    let tally = local.join()?;
    say(&ChildMsg::Done(Box::new(WorkerTally::from_tally(&tally)?)))
}
