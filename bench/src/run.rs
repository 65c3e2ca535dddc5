//! Runs an engine workload (`rr`, `conn`, `hold`) with its threads in this process or spread over
//! worker processes, watches it (progress once a second, the target's CPU, threads and memory),
//! and turns the merged tallies into a [`RunResult`].
//!
//! Worker processes are this same executable started with `--worker I`; they speak to the parent
//! in JSON lines on stdout ([`ChildMsg`]) and wait for `go START` on stdin before the measured
//! window, so that all of them start it at the same monotonic instant. Every phase is bounded in
//! time; a worker that misbehaves is killed and the run fails.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::{self, sys, ConnMode, Control, Schedule, ThreadPlan};
use crate::plan::Split;
use crate::procstat;
use crate::stats::{HoldStats, Latency, RunResult, Tally, TargetStats, WorkerTally};
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
                let max_requests = if self.max_requests == 0 {
                    0
                } else {
                    share(self.max_requests as f64).ceil() as u64
                };
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

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Counters {
    pub ok: u64,
    pub errors: u64,
    pub connected: u64,
    pub served: u64,
}

impl Counters {
    fn add(&mut self, o: &Counters) {
        self.ok += o.ok;
        self.errors += o.errors;
        self.connected += o.connected;
        self.served += o.served;
    }
}

/// A worker process's messages to its parent, one JSON object per line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildMsg {
    Progress(Counters),
    Ramped(Counters),
    Done(Box<WorkerTally>),
    Failed(String),
}

/// Engine threads of this process.
struct Local {
    ctl: Arc<Control>,
    handles: Vec<JoinHandle<Result<Tally, BenchError>>>,
}

impl Local {
    fn start(w: &Workload, proc: usize) -> Result<Self, BenchError> {
        let plans = w.thread_plans(proc);
        let ctl = Arc::new(Control::new(plans.len()));
        let mut handles = Vec::new();
        for (me, plan) in plans.into_iter().enumerate() {
            let ctl = Arc::clone(&ctl);
            let h = std::thread::Builder::new()
                .name(format!("engine-{me}"))
                .spawn(move || engine::run(&plan, &ctl, me))
                .map_err(|e| BenchError::Sys("spawn thread", e))?;
            handles.push(h);
        }
        Ok(Self { ctl, handles })
    }

    fn counters(&self) -> Counters {
        let mut c = Counters::default();
        for p in &self.ctl.progress {
            c.add(&Counters {
                ok: p.ok.load(Ordering::Relaxed),
                errors: p.errors.load(Ordering::Relaxed),
                connected: p.connected.load(Ordering::Relaxed),
                served: p.served.load(Ordering::Relaxed),
            });
        }
        c
    }

    fn ramped(&self) -> bool {
        self.ctl.ramped.load(Ordering::Acquire) == self.handles.len()
    }

    fn go(&self, at: u64) {
        self.ctl.steady_at.store(at, Ordering::Release);
    }

    fn finished(&self) -> bool {
        self.handles.iter().all(JoinHandle::is_finished)
    }

    fn join(self) -> Result<Tally, BenchError> {
        let mut total = Tally::default();
        for h in self.handles {
            let t = h
                .join()
                .map_err(|_| BenchError::Worker("an engine thread panicked".into()))??;
            total.merge(&t)?;
        }
        Ok(total)
    }

    fn abort(&self) {
        self.ctl.abort.store(true, Ordering::Relaxed);
    }
}

struct Kid {
    child: Child,
    stdin: Option<ChildStdin>,
    progress: Counters,
    ramped: bool,
    done: Option<Tally>,
}

/// Worker processes.
struct Kids {
    kids: Vec<Kid>,
    rx: Receiver<(usize, ChildMsg)>,
}

impl Kids {
    fn start(procs: usize) -> Result<Self, BenchError> {
        let exe = std::env::current_exe().map_err(|e| BenchError::Sys("current_exe", e))?;
        let args: Vec<_> = std::env::args_os().skip(1).collect();
        let (tx, rx) = mpsc::channel();
        let mut kids = Vec::new();
        for i in 0..procs {
            let mut child = Command::new(&exe)
                .args(&args)
                .arg("--worker")
                .arg(i.to_string())
                .arg("--parent")
                .arg(std::process::id().to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| BenchError::Sys("spawn worker process", e))?;
            let stdout = child.stdout.take();
            let stdin = child.stdin.take();
            let tx = tx.clone();
            std::thread::spawn(move || {
                let Some(stdout) = stdout else { return };
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let msg = serde_json::from_str::<ChildMsg>(&line).unwrap_or_else(|e| {
                        ChildMsg::Failed(format!("bad message from worker {i}: {e}"))
                    });
                    if tx.send((i, msg)).is_err() {
                        return;
                    }
                }
                let _ = tx.send((i, ChildMsg::Failed(format!("worker {i} exited early"))));
            });
            kids.push(Kid {
                child,
                stdin,
                progress: Counters::default(),
                ramped: false,
                done: None,
            });
        }
        Ok(Self { kids, rx })
    }

    /// Takes in every message that has arrived.
    fn pump(&mut self) -> Result<(), BenchError> {
        loop {
            match self.rx.try_recv() {
                Ok((i, msg)) => {
                    let k = &mut self.kids[i];
                    match msg {
                        ChildMsg::Progress(c) => k.progress = c,
                        ChildMsg::Ramped(c) => {
                            k.progress = c;
                            k.ramped = true;
                        }
                        ChildMsg::Done(t) => k.done = Some(t.into_tally()?),
                        ChildMsg::Failed(why) => {
                            if k.done.is_none() {
                                return Err(BenchError::Worker(why));
                            }
                        }
                    }
                }
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => return Ok(()),
            }
        }
    }

    fn counters(&self) -> Counters {
        let mut c = Counters::default();
        for k in &self.kids {
            c.add(&k.progress);
        }
        c
    }

    fn go(&mut self, at: u64) -> Result<(), BenchError> {
        for k in &mut self.kids {
            if let Some(stdin) = k.stdin.as_mut() {
                writeln!(stdin, "go {at}").map_err(|e| BenchError::Sys("write to worker", e))?;
            }
        }
        Ok(())
    }

    fn join(mut self) -> Result<Tally, BenchError> {
        let mut total = Tally::default();
        for k in &mut self.kids {
            let _ = k.child.wait();
            if let Some(t) = k.done.take() {
                total.merge(&t)?;
            }
        }
        Ok(total)
    }

    fn abort(&mut self) {
        for k in &mut self.kids {
            let _ = k.child.kill();
            let _ = k.child.wait();
        }
    }
}

enum Fleet {
    Local(Local),
    Kids(Kids),
}

impl Fleet {
    fn pump(&mut self) -> Result<(), BenchError> {
        match self {
            Fleet::Local(_) => Ok(()),
            Fleet::Kids(k) => k.pump(),
        }
    }
    fn counters(&self) -> Counters {
        match self {
            Fleet::Local(l) => l.counters(),
            Fleet::Kids(k) => k.counters(),
        }
    }
    fn ramped(&self) -> bool {
        match self {
            Fleet::Local(l) => l.ramped(),
            Fleet::Kids(k) => k.kids.iter().all(|k| k.ramped),
        }
    }
    fn go(&mut self, at: u64) -> Result<(), BenchError> {
        match self {
            Fleet::Local(l) => {
                l.go(at);
                Ok(())
            }
            Fleet::Kids(k) => k.go(at),
        }
    }
    fn finished(&self) -> bool {
        match self {
            Fleet::Local(l) => l.finished(),
            Fleet::Kids(k) => k.kids.iter().all(|k| k.done.is_some()),
        }
    }
    fn join(self) -> Result<Tally, BenchError> {
        match self {
            Fleet::Local(l) => l.join(),
            Fleet::Kids(k) => k.join(),
        }
    }
    fn abort(&mut self) {
        match self {
            Fleet::Local(l) => l.abort(),
            Fleet::Kids(k) => k.abort(),
        }
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

/// Samples of the targets' process trees taken over a run.
pub struct TargetWatch {
    pids: Vec<u32>,
    start: Vec<procstat::Sample>,
    peak_threads: Vec<u64>,
    peak_io_workers: Vec<u64>,
}

impl TargetWatch {
    pub fn start(pids: &[u32]) -> Result<Self, BenchError> {
        let start = pids
            .iter()
            .map(|&p| procstat::sample(p).map_err(|e| BenchError::Target(p, e)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            pids: pids.to_vec(),
            peak_threads: start.iter().map(|s| s.threads).collect(),
            peak_io_workers: start.iter().map(|s| s.io_workers).collect(),
            start,
        })
    }

    /// Records thread peaks; a target that has gone is an error.
    pub fn tick(&mut self) -> Result<Vec<procstat::Sample>, BenchError> {
        let mut out = Vec::new();
        for (i, &p) in self.pids.iter().enumerate() {
            let s = procstat::sample(p).map_err(|e| BenchError::Target(p, e))?;
            self.peak_threads[i] = self.peak_threads[i].max(s.threads);
            self.peak_io_workers[i] = self.peak_io_workers[i].max(s.io_workers);
            out.push(s);
        }
        Ok(out)
    }

    /// The cost of each target since `start`, per `units` completed units.
    pub fn finish(mut self, units: f64, unit: &str) -> Result<Vec<TargetStats>, BenchError> {
        let end = self.tick()?;
        Ok(self
            .pids
            .iter()
            .enumerate()
            .map(|(i, &pid)| {
                let cpu_s = end[i].cpu_s - self.start[i].cpu_s;
                TargetStats {
                    pid,
                    cpu_s,
                    cpu_s_per_unit: (units > 0.0).then(|| cpu_s / units),
                    unit: unit.to_string(),
                    threads_peak: self.peak_threads[i],
                    io_workers_peak: self.peak_io_workers[i],
                    processes: end[i].processes,
                    rss_kib: end[i].rss_kib,
                }
            })
            .collect())
    }
}

/// Runs the workload from the parent's side and returns the merged result.
pub fn drive(w: &Workload, watch: &Watch) -> Result<RunResult, BenchError> {
    let t0 = sys::monotonic_ns();
    let slab_before = if watch.memory {
        Some(procstat::slab_kib().map_err(|e| BenchError::Sys("/proc/meminfo", e))?)
    } else {
        None
    };
    let rss_before = first_rss(&watch.pids)?;
    let mut fleet = if w.split.procs > 1 {
        Fleet::Kids(Kids::start(w.split.procs)?)
    } else {
        Fleet::Local(Local::start(w, 0)?)
    };
    let result = watch_fleet(&mut fleet, w, watch, t0, slab_before, rss_before);
    if result.is_err() {
        fleet.abort();
    }
    result.and_then(|(mut r, targets_tally)| {
        let tally = fleet.join()?;
        finish_result(&mut r, w, tally, targets_tally)?;
        Ok(r)
    })
}

fn first_rss(pids: &[u32]) -> Result<Option<u64>, BenchError> {
    match pids.first() {
        Some(&p) => Ok(Some(
            procstat::sample(p)
                .map_err(|e| BenchError::Target(p, e))?
                .rss_kib,
        )),
        None => Ok(None),
    }
}

type Partial = (RunResult, (TargetWatch, u64));

fn watch_fleet(
    fleet: &mut Fleet,
    w: &Workload,
    watch: &Watch,
    t0: u64,
    slab_before: Option<u64>,
    rss_before: Option<u64>,
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
    let mut hold = None;
    if let Some(slab_before) = slab_before {
        let slab_held = procstat::slab_kib().map_err(|e| BenchError::Sys("/proc/meminfo", e))?;
        let held = match watch.pids.first() {
            Some(&p) => Some(procstat::sample(p).map_err(|e| BenchError::Target(p, e))?),
            None => None,
        };
        let per_conn = |before: u64, after: u64| {
            (ramped.served > 0)
                .then(|| (after as f64 - before as f64) * 1024.0 / ramped.served as f64)
        };
        hold = Some(HoldStats {
            slab_before_kib: slab_before,
            slab_held_kib: slab_held,
            slab_per_conn_b: per_conn(slab_before, slab_held),
            rss_before_kib: rss_before,
            rss_held_kib: held.map(|s| s.rss_kib),
            rss_per_conn_b: rss_before
                .zip(held)
                .and_then(|(b, h)| per_conn(b, h.rss_kib)),
            threads_held: held.map(|s| s.threads),
            ..HoldStats::default()
        });
    }
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
    let r = RunResult {
        elapsed_s: elapsed_ns as f64 / 1e9,
        hold,
        ..RunResult::default()
    };
    Ok((r, (targets, elapsed_ns)))
}

fn finish_result(
    r: &mut RunResult,
    w: &Workload,
    tally: Tally,
    (targets, _): (TargetWatch, u64),
) -> Result<(), BenchError> {
    let unit = match w.mode {
        ConnMode::PerRequest => "s per million connections",
        ConnMode::KeepAlive => "s per million requests",
    };
    r.targets = targets.finish(tally.ok as f64 / 1e6, unit)?;
    r.ok = tally.ok;
    r.errors = tally.error_count();
    r.error_kinds = tally.errors.clone();
    r.unfinished = tally.unfinished;
    r.rate = if r.elapsed_s > 0.0 {
        tally.ok as f64 / r.elapsed_s
    } else {
        0.0
    };
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
        writeln!(out, "{line}")
            .and_then(|_| out.flush())
            .map_err(|e| BenchError::Sys("write to parent", e))
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
    let n = std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| BenchError::Sys("read from parent", e))?;
    let at = line
        .trim()
        .strip_prefix("go ")
        .and_then(|v| v.parse::<u64>().ok());
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
