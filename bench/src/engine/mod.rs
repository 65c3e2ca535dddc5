//! The request engine: one thread's epoll loop driving a set of connection slots through HTTP
//! request/response exchanges, for the `rr`, `conn` and `hold` workloads.
//!
//! A run has four phases. *Ramp* opens the keep-alive connections (and in `hold` sends each one a
//! probe request). *Wait* idles until the process's main thread publishes the start of the
//! measured window, so that every thread and worker process starts together. *Steady* issues
//! requests, closed-loop (a new request as soon as the previous answer arrives) or open-loop
//! (request `j` is due at `start + j / rate`, and its latency is counted from that due time even
//! when it has to wait for its connection: no coordinated omission). *Drain* waits a bounded time
//! for requests already due. The engine owns its sockets and closes them all when it returns;
//! it never prints and never reads /proc.

mod exchange;
mod slot;
pub mod sys;

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use slot::{Slot, State};

use crate::stats::{self, Tally};
use crate::BenchError;

/// How long a slot waits before reconnecting after a failure, so that a dead target costs a
/// bounded number of attempts.
const RETRY_NS: u64 = 20_000_000;
/// How often slots are scanned for timeouts and progress is published.
const SCAN_NS: u64 = 100_000_000;
/// How often a thread waiting for the start signal looks at it.
const WAIT_POLL_NS: u64 = 2_000_000;
/// Read scratch per thread; a response that does not fit in one read is kept per slot.
const SCRATCH: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnMode {
    /// Connections are opened in the ramp and carry many requests (`rr`, `hold`).
    KeepAlive,
    /// Every request opens a new connection and closes it after the response (`conn`).
    PerRequest,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Schedule {
    /// No requests in the steady phase: the connections are only held.
    Idle,
    /// A new request as soon as the previous one is answered.
    Closed,
    /// This thread's share of a fixed rate, per second.
    Open(f64),
}

/// Everything one engine thread needs to know.
#[derive(Debug, Clone)]
pub struct ThreadPlan {
    pub mode: ConnMode,
    /// Source address (None = let the kernel choose) and target of every slot.
    pub slots: Vec<(Option<Ipv4Addr>, SocketAddr)>,
    pub schedule: Schedule,
    /// Offset of this thread's first open-loop request, as a fraction of its interval, so that
    /// threads do not all send at the same instants.
    pub phase: f64,
    /// Keep-alive: how many of the slots (the first ones) carry requests in the steady phase.
    pub active: usize,
    /// Keep-alive: send one request on every new connection during the ramp.
    pub probe: bool,
    /// Keep-alive: a failed connection is not reopened but counted as dropped.
    pub hold: bool,
    /// Most connection attempts (with their probes) in flight during the ramp.
    pub ramp_concurrency: usize,
    /// The ramp is abandoned after this long: attempts in flight fail as timeouts and slots not
    /// yet tried are counted as "not attempted".
    pub ramp_limit_ns: u64,
    pub duration_ns: u64,
    /// Most requests this thread starts in the steady phase; 0 = unbounded.
    pub max_requests: u64,
    pub timeout_ns: u64,
    /// Longest wait after the window for requests that were due inside it.
    pub drain_ns: u64,
    pub request: Arc<[u8]>,
}

/// Progress counters one thread publishes every [`SCAN_NS`].
#[derive(Debug, Default)]
pub struct Progress {
    pub ok: AtomicU64,
    pub errors: AtomicU64,
    pub connected: AtomicU64,
    pub served: AtomicU64,
}

/// State shared by the engine threads of one process and its main thread.
#[derive(Debug)]
pub struct Control {
    /// Threads that have finished their ramp.
    pub ramped: AtomicUsize,
    /// Monotonic start of the measured window; 0 until the main thread sets it.
    pub steady_at: AtomicU64,
    /// Set to make every thread stop at once (the run is abandoned).
    pub abort: AtomicBool,
    pub progress: Vec<Progress>,
}

impl Control {
    pub fn new(threads: usize) -> Self {
        Self {
            ramped: AtomicUsize::new(0),
            steady_at: AtomicU64::new(0),
            abort: AtomicBool::new(false),
            progress: (0..threads).map(|_| Progress::default()).collect(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Ramp,
    Wait,
    Steady,
    Drain,
    Done,
}

/// Runs one engine thread to completion and returns what it measured.
pub fn run(plan: &ThreadPlan, ctl: &Control, me: usize) -> Result<Tally, BenchError> {
    sys::tighten_timer_slack();
    let mut engine = Engine::new(plan, ctl, me)?;
    engine.run()?;
    Ok(engine.tally)
}

struct Engine<'a> {
    plan: &'a ThreadPlan,
    ctl: &'a Control,
    me: usize,
    epoll: sys::Epoll,
    slots: Vec<Slot>,
    scratch: Vec<u8>,
    tally: Tally,
    phase: Phase,
    ramp_start: u64,
    ramp_next: usize,
    ramp_inflight: usize,
    ramp_settled: usize,
    steady_at: u64,
    end: u64,
    drain_until: u64,
    /// Open loop: due time of the next request and its number.
    next_tick: u64,
    tick: u64,
    interval_ns: f64,
    /// Requests started in the steady phase.
    issued: u64,
    /// Per-request mode: due times waiting for a free slot, and the free slots.
    queue: VecDeque<u64>,
    free: Vec<usize>,
    next_scan: u64,
}

impl<'a> Engine<'a> {
    fn new(plan: &'a ThreadPlan, ctl: &'a Control, me: usize) -> Result<Self, BenchError> {
        Ok(Self {
            plan,
            ctl,
            me,
            epoll: sys::Epoll::new().map_err(|e| BenchError::Sys("epoll_create1", e))?,
            slots: plan.slots.iter().map(|&(src, dst)| Slot::new(src, dst)).collect(),
            scratch: vec![0; SCRATCH],
            tally: Tally::default(),
            phase: Phase::Ramp,
            ramp_start: 0,
            ramp_next: 0,
            ramp_inflight: 0,
            ramp_settled: 0,
            steady_at: 0,
            end: 0,
            drain_until: 0,
            next_tick: 0,
            tick: 0,
            interval_ns: 0.0,
            issued: 0,
            queue: VecDeque::new(),
            free: Vec::new(),
            next_scan: 0,
        })
    }

    fn run(&mut self) -> Result<(), BenchError> {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
        let now = sys::monotonic_ns();
        self.next_scan = now + SCAN_NS;
        self.start_ramp(now);
        while self.phase != Phase::Done {
            let n =
                self.epoll.wait(&mut events, Some(self.deadline())).map_err(|e| BenchError::Sys("epoll_pwait2", e))?;
            for ev in &events[..n] {
                let (idx, gen) = ((ev.u64 & 0xffff_ffff) as usize, (ev.u64 >> 32) as u32);
                let flags = ev.events;
                if idx < self.slots.len() && self.slots[idx].gen == gen {
                    self.on_event(idx, flags);
                }
            }
            self.on_time(sys::monotonic_ns());
        }
        self.publish();
        Ok(())
    }

    /// The next instant at which something is due without any socket event.
    fn deadline(&self) -> u64 {
        let mut d = self.next_scan;
        match self.phase {
            Phase::Wait => {
                // Wake exactly at the start once it is known, so the first requests leave on time.
                let at = self.ctl.steady_at.load(Ordering::Acquire);
                d = d.min(if at != 0 { at } else { sys::monotonic_ns() + WAIT_POLL_NS });
            }
            Phase::Steady => {
                d = d.min(self.end);
                if let Schedule::Open(_) = self.plan.schedule {
                    d = d.min(self.next_tick);
                }
            }
            Phase::Drain => d = d.min(self.drain_until),
            Phase::Ramp | Phase::Done => {}
        }
        d
    }

    // ---- time-driven work ----

    fn on_time(&mut self, now: u64) {
        if self.ctl.abort.load(Ordering::Relaxed) {
            self.phase = Phase::Done;
            return;
        }
        if now >= self.next_scan {
            self.scan(now);
            self.next_scan = now + SCAN_NS;
        }
        if self.phase == Phase::Ramp && now >= self.ramp_start + self.plan.ramp_limit_ns {
            self.abandon_ramp(now);
        }
        match self.phase {
            Phase::Wait => {
                let at = self.ctl.steady_at.load(Ordering::Acquire);
                if at != 0 && now >= at {
                    self.start_steady(at, now);
                }
            }
            Phase::Steady => {
                if let Schedule::Open(_) = self.plan.schedule {
                    while self.next_tick <= now && self.next_tick < self.end && self.within_budget() {
                        let due = self.next_tick;
                        self.dispatch(due, now);
                        self.tick += 1;
                        self.next_tick =
                            self.steady_at + ((self.tick as f64 + self.plan.phase) * self.interval_ns) as u64;
                    }
                }
                if now >= self.end || !self.within_budget() {
                    self.phase = Phase::Drain;
                    self.drain_until = now + self.plan.drain_ns;
                }
            }
            Phase::Drain => {}
            Phase::Ramp | Phase::Done => {}
        }
        if self.phase == Phase::Drain && (now >= self.drain_until || self.drained()) {
            self.finish();
        }
    }

    fn within_budget(&self) -> bool {
        self.plan.max_requests == 0 || self.issued < self.plan.max_requests
    }

    /// Timeouts, reconnections after a failure, and progress.
    fn scan(&mut self, now: u64) {
        for i in 0..self.slots.len() {
            let s = &self.slots[i];
            match s.state {
                State::Connecting | State::Writing | State::Reading
                    if now.saturating_sub(s.started) > self.plan.timeout_ns =>
                {
                    self.fail(i, "timeout", now);
                }
                State::Idle if s.retry_at != 0 && now >= s.retry_at => {
                    self.slots[i].retry_at = 0;
                    match self.plan.mode {
                        ConnMode::KeepAlive if self.phase != Phase::Ramp => self.open(i, false, now),
                        ConnMode::PerRequest => self.slot_free(i, now),
                        ConnMode::KeepAlive => self.slots[i].retry_at = now + RETRY_NS,
                    }
                }
                _ => {}
            }
        }
        self.publish();
    }

    fn publish(&self) {
        let p = &self.ctl.progress[self.me];
        p.ok.store(self.tally.ok, Ordering::Relaxed);
        p.errors.store(self.tally.error_count(), Ordering::Relaxed);
        p.connected.store(self.tally.connected, Ordering::Relaxed);
        p.served.store(self.tally.served, Ordering::Relaxed);
    }

    // ---- phases ----

    fn start_ramp(&mut self, now: u64) {
        self.ramp_start = now;
        if self.plan.mode == ConnMode::PerRequest {
            self.free = (0..self.slots.len()).rev().collect();
            self.ramp_done(now);
        } else if self.slots.is_empty() {
            self.ramp_done(now);
        } else {
            self.fill_ramp(now);
        }
    }

    fn fill_ramp(&mut self, now: u64) {
        while self.phase == Phase::Ramp
            && self.ramp_next < self.slots.len()
            && self.ramp_inflight < self.plan.ramp_concurrency.max(1)
        {
            let i = self.ramp_next;
            self.ramp_next += 1;
            self.ramp_inflight += 1;
            self.open(i, true, now);
        }
    }

    /// A ramp attempt ended, with or without success.
    fn ramp_settle(&mut self, now: u64) {
        self.ramp_inflight -= 1;
        self.ramp_settled += 1;
        if self.ramp_settled == self.slots.len() {
            self.ramp_done(now);
        } else {
            self.fill_ramp(now);
        }
    }

    fn abandon_ramp(&mut self, now: u64) {
        let n = self.slots.len();
        for i in self.ramp_next..n {
            self.tally.error("not attempted (ramp limit)");
            let s = &mut self.slots[i];
            if self.plan.hold {
                s.state = State::Dead;
            } else {
                s.retry_at = now + RETRY_NS;
            }
        }
        self.ramp_settled += n - self.ramp_next;
        self.ramp_next = n;
        for i in 0..n {
            if self.phase == Phase::Ramp && self.slots[i].in_ramp {
                self.fail(i, "timeout", now);
            }
        }
        if self.phase == Phase::Ramp && self.ramp_settled == n {
            self.ramp_done(now);
        }
    }

    fn ramp_done(&mut self, now: u64) {
        self.tally.ramp_ns = now - self.ramp_start;
        self.phase = Phase::Wait;
        self.publish();
        self.ctl.ramped.fetch_add(1, Ordering::AcqRel);
    }

    fn start_steady(&mut self, at: u64, now: u64) {
        self.phase = Phase::Steady;
        self.steady_at = at;
        self.end = at + self.plan.duration_ns;
        match self.plan.schedule {
            Schedule::Idle => {}
            Schedule::Open(rate) => {
                self.interval_ns = if rate > 0.0 { 1e9 / rate } else { f64::INFINITY };
                self.next_tick = at + (self.plan.phase * self.interval_ns) as u64;
            }
            Schedule::Closed => match self.plan.mode {
                ConnMode::KeepAlive => {
                    for i in 0..self.plan.active.min(self.slots.len()) {
                        if self.slots[i].state == State::Ready && self.within_budget() {
                            self.send(i, now, now, false);
                        }
                    }
                }
                ConnMode::PerRequest => {
                    while let Some(i) = self.free.pop() {
                        if !self.within_budget() {
                            self.free.push(i);
                            break;
                        }
                        self.start_exchange(i, now, now, false);
                    }
                }
            },
        }
        if self.interval_ns.is_infinite() {
            self.next_tick = u64::MAX;
        }
    }

    /// True when nothing due inside the window is still outstanding.
    fn drained(&self) -> bool {
        self.queue.is_empty() && self.slots.iter().all(|s| !s.busy() && s.pending.is_empty())
    }

    fn finish(&mut self) {
        let mut unfinished = self.queue.len() as u64;
        for s in &self.slots {
            unfinished += s.pending.len() as u64 + u64::from(s.busy() && !s.in_ramp);
        }
        self.tally.unfinished = unfinished;
        for s in &mut self.slots {
            s.close();
        }
        self.phase = Phase::Done;
    }

    // ---- requests ----

    /// Open-loop request `due`: sent at once if its connection is free, queued otherwise.
    fn dispatch(&mut self, due: u64, now: u64) {
        match self.plan.mode {
            ConnMode::KeepAlive => {
                let active = self.plan.active.min(self.slots.len());
                if active == 0 {
                    return;
                }
                let i = (self.tick % active as u64) as usize;
                match self.slots[i].state {
                    State::Ready if self.slots[i].pending.is_empty() => self.send(i, due, now, true),
                    State::Dead => {
                        self.issued += 1;
                        self.tally.error("connection lost");
                    }
                    _ => {
                        self.issued += 1;
                        self.slots[i].pending.push_back(due);
                    }
                }
            }
            ConnMode::PerRequest => match self.free.pop() {
                Some(i) => self.start_exchange(i, due, now, true),
                None => {
                    self.issued += 1;
                    self.queue.push_back(due);
                }
            },
        }
    }

    /// Keep-alive: sends a request due at `due` on the ready connection `i`.
    fn send(&mut self, i: usize, due: u64, now: u64, on_time: bool) {
        self.issued += 1;
        if on_time {
            stats::record(&mut self.tally.lag, now - due);
        }
        let s = &mut self.slots[i];
        s.due = due;
        s.started = now;
        self.write_request(i, now);
    }

    /// Per-request: opens a connection for a request due at `due`.
    fn start_exchange(&mut self, i: usize, due: u64, now: u64, on_time: bool) {
        self.issued += 1;
        if on_time {
            stats::record(&mut self.tally.lag, now - due);
        }
        self.slots[i].due = due;
        self.open(i, false, now);
    }

    fn write_request(&mut self, i: usize, now: u64) {
        let s = &mut self.slots[i];
        s.state = State::Writing;
        s.written = 0;
        self.try_write(i, now);
    }

    /// Keep-alive: what a connection does once it is free again.
    fn next_request(&mut self, i: usize, now: u64) {
        match self.phase {
            Phase::Steady | Phase::Drain => {}
            _ => return,
        }
        if let Some(due) = self.slots[i].pending.pop_front() {
            self.send(i, due, now, false);
        } else if self.plan.schedule == Schedule::Closed
            && self.phase == Phase::Steady
            && now < self.end
            && i < self.plan.active
            && self.within_budget()
        {
            self.send(i, now, now, false);
        }
    }

    /// Per-request: what a slot does once its exchange is over.
    fn slot_free(&mut self, i: usize, now: u64) {
        if matches!(self.phase, Phase::Steady | Phase::Drain) {
            if let Some(due) = self.queue.pop_front() {
                self.slots[i].due = due;
                self.open(i, false, now);
                return;
            }
            if self.plan.schedule == Schedule::Closed
                && self.phase == Phase::Steady
                && now < self.end
                && self.within_budget()
            {
                self.start_exchange(i, now, now, false);
                return;
            }
        }
        self.free.push(i);
    }
}
