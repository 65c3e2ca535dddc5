//! The prober: one thread, `ringlb-prober`, that checks every server and owns every server's
//! health. It runs an event loop on its own io_uring (see `ring`): every tick (see `schedule`) it
//! starts the checks that are due, and all checks in flight proceed concurrently as the kernel
//! completes their operations. It is the only writer of the backend table: whenever a server
//! changes state it publishes one new immutable snapshot holding everything, then logs the
//! transition once.
//!
//! Why its own io_uring rather than an async runtime. tokio-uring 0.5 does not cancel an
//! operation whose future is dropped, and the socket stays open until the kernel completes it: a
//! timed-out check of a server that drops SYNs would hold its socket for the kernel's whole SYN
//! retry time (about two minutes), one that accepts and never answers until the server closes;
//! 1,000 such servers checked every second would need far more descriptors than this process may
//! open. tokio on epoll cancels properly, but costs more than the budget allows: with 1,000
//! servers checked every second it measured 5.2-5.6 % of a core against about 4 % for the same
//! checks as io_uring chains, where the kernel's TCP work alone is 3.5-4 % (bench/README.md,
//! "Health prober cost"). Here every step carries a link timeout, so the kernel cancels what
//! overruns and the socket (a direct descriptor, outside the process descriptor limit) is closed
//! at once.
//!
//! Live traffic reports connect outcomes through a bounded channel (see `table`); the prober
//! drains it every tick. Operator commands and reloads arrive on channels of their own, read every
//! tick, and are answered once published. The prober never blocks the workers and never touches a
//! connection. It records each check's duration and each transition in the server's metric block.
//!
//! This file is the thread and its schedule: [`Prober`] and [`RunningProber`], the event loop, the
//! checks of one configuration and when each runs. What a result means for a server, and the
//! table built from every server's health, are the registry's (`registry`). The tests of this
//! file are in `prober/tests.rs`.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::Receiver;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use super::checks::Probe;
use super::commands::{Request, ServerControl};
use super::registry::{all_down_policy, CheckDone, Registry};
use super::ring::{CheckRing, Event, Target};
use super::schedule::{self, Rng, Schedule};
use crate::config::{Config, HealthCheck};
use crate::metrics::Metrics;
use crate::table::{ConnectReport, PassiveReports, SharedTable, TableError};

/// Capacity of the passive-report channel, which is drained every tick: a tick's worth of
/// connects at over 1.6 million per second. Beyond it reports are dropped, never waited for.
const PASSIVE_CAPACITY: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("health prober: cannot set up its io_uring: {0}")]
    Ring(io::Error),
    #[error("health prober: cannot start its thread: {0}")]
    Spawn(io::Error),
    #[error("{0}")]
    Table(#[from] TableError),
}

/// The prober, configured but not running: its initial table is already published, so the data
/// path can start on it (servers with `initial_state = "down"` are down from the first
/// connection on).
pub struct Prober {
    registry: Registry,
    reports: Receiver<ConnectReport>,
    checks: Vec<CheckSpec>,
    targets: Vec<Target>,
    commands: mpsc::Receiver<Request>,
    control: ServerControl,
}

/// The running prober thread; stopped by [`RunningProber::stop`] or on drop.
pub struct RunningProber {
    stop: Arc<AtomicBool>,
    reload: mpsc::UnboundedSender<ReloadRequest>,
    thread: Option<JoinHandle<()>>,
}

/// A new configuration for the prober, and where to say whether its table was published.
type ReloadRequest = (Config, std::sync::mpsc::Sender<Result<(), String>>);

/// How long `RunningProber::reload` waits for the prober to publish.
const RELOAD_WAIT: Duration = Duration::from_secs(5);

/// Which server check `i` (`targets[i]` in the ring) is for, and how often it runs.
struct CheckSpec {
    pool: usize,
    server: usize,
    interval: Duration,
}

impl Prober {
    /// The prober of `config`'s servers, which count in `metrics`' blocks.
    pub fn new(config: &Config, metrics: &Arc<Metrics>) -> Result<Prober, HealthError> {
        let (sender, reports) = crossbeam::channel::bounded(PASSIVE_CAPACITY);
        let registry = Registry::new(config, PassiveReports::new(sender), metrics)?;
        let (checks, targets) = check_specs(config);
        let (control, commands) = ServerControl::channel();
        Ok(Prober { registry, reports, checks, targets, commands, control })
    }

    /// The table the prober writes and the workers read.
    pub fn table(&self) -> SharedTable {
        self.registry.table()
    }

    /// Where the admin API sends server commands.
    pub fn control(&self) -> ServerControl {
        self.control.clone()
    }

    /// Starts the `ringlb-prober` thread.
    pub fn spawn(self) -> Result<RunningProber, HealthError> {
        for (pool, config) in self.registry.config().pools.iter().enumerate() {
            let checked = self.checks.iter().filter(|c| c.pool == pool).count();
            info!("pool {}: {}", config.name, describe(config, checked));
            if self.registry.all_down(pool) {
                warn!("pool {}: every server is down until its checks pass; {}", config.name, all_down_policy(config));
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (reload, reloads) = mpsc::unbounded_channel();
        // The ring is made on the thread that uses it: it is set up for a single issuer.
        let (ready, ring_made) = std::sync::mpsc::channel();
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ringlb-prober".to_owned())
            .spawn(move || {
                let Prober { registry, reports, checks, targets, commands, control } = self;
                // Commands come from the admin API's clones; this one only keeps the channel open.
                drop(control);
                match Checks::new(checks, targets) {
                    Ok(checks) => {
                        let _ = ready.send(Ok(()));
                        let channels = Channels { reports, commands, reloads };
                        run(registry, channels, checks, &stopped);
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                    }
                }
            })
            .map_err(HealthError::Spawn)?;
        let mut running = RunningProber { stop, reload, thread: Some(thread) };
        match ring_made.recv() {
            Ok(Ok(())) => Ok(running),
            Ok(Err(e)) => Err(HealthError::Ring(e)),
            Err(_) => {
                running.stop_and_join();
                Err(HealthError::Ring(io::Error::other("the prober thread ended during set-up")))
            }
        }
    }
}

/// What reaches the prober thread from outside.
struct Channels {
    reports: Receiver<ConnectReport>,
    commands: mpsc::Receiver<Request>,
    reloads: mpsc::UnboundedReceiver<ReloadRequest>,
}

/// The checks of one configuration: their ring (none when nothing is checked), their schedule,
/// and which server each is for.
struct Checks {
    specs: Vec<CheckSpec>,
    ring: Option<CheckRing>,
    schedule: Schedule,
    /// The tick each check was due at when it last started.
    due: Vec<u64>,
    /// Tick 0.
    origin: Instant,
    tick: Duration,
}

impl Checks {
    fn new(specs: Vec<CheckSpec>, targets: Vec<Target>) -> io::Result<Checks> {
        let ring = if targets.is_empty() { None } else { Some(CheckRing::new(targets)?) };
        let tick = schedule::tick(specs.iter().map(|c| c.interval));
        let periods = specs.iter().map(|c| schedule::period_ticks(c.interval, tick)).collect();
        let schedule = Schedule::new(periods, &mut Rng::from_clock());
        Ok(Checks { due: vec![0; specs.len()], specs, ring, schedule, origin: Instant::now(), tick })
    }

    fn tick_now(&self) -> u64 {
        (self.origin.elapsed().as_nanos() / self.tick.as_nanos()) as u64
    }

    fn instant_of(&self, tick: u64) -> Instant {
        self.origin + Duration::from_nanos((self.tick.as_nanos() as u64).saturating_mul(tick))
    }

    fn start(&mut self, check: usize, due: u64) {
        self.due[check] = due;
        if let Some(ring) = self.ring.as_mut() {
            ring.start(check);
        }
    }

    /// Starts every check due by tick `now`.
    fn start_due(&mut self, now: u64) {
        while let Some((check, due)) = self.schedule.pop_due(now) {
            self.start(check, due);
        }
    }

    /// Check `check` has nothing in flight any more: schedule it, or start it again at once.
    fn idle(&mut self, check: usize) {
        if let Some(now) = self.schedule.finished(check, self.due[check], self.tick_now()) {
            self.start(check, now);
        }
    }

    fn wait(&mut self, until: Instant, events: &mut Vec<Event>) -> io::Result<()> {
        match self.ring.as_mut() {
            Some(ring) => ring.wait(until, events),
            None => {
                std::thread::sleep(until.saturating_duration_since(Instant::now()));
                Ok(())
            }
        }
    }
}

/// The prober thread: ticks, checks, passive reports, commands, reloads, publishing; until `stop`
/// (seen within a tick).
fn run(mut registry: Registry, channels: Channels, mut checks: Checks, stop: &AtomicBool) {
    let Channels { reports, mut commands, mut reloads } = channels;
    let mut events = Vec::new();
    let mut replies = Vec::new();
    let mut next_tick = 0;
    let mut wait_failed = false;
    while !stop.load(Ordering::Relaxed) {
        if checks.tick_now() >= next_tick {
            while let Ok(request) = commands.try_recv() {
                replies.push(registry.on_command(request));
            }
            while let Ok((config, ack)) = reloads.try_recv() {
                let outcome = reload(&mut registry, &config).map(|new| {
                    // The old ring goes, and with it every check in flight.
                    checks = new;
                    // Reports about the old snapshot are ignored from now on.
                    while reports.try_recv().is_ok() {}
                });
                let _ = ack.send(outcome);
            }
            let now = checks.tick_now();
            checks.start_due(now);
            while let Ok(report) = reports.try_recv() {
                registry.on_report(report);
            }
            next_tick = now + 1;
        }
        if let Err(e) = checks.wait(checks.instant_of(next_tick), &mut events) {
            if !wait_failed {
                error!("health checks: io_uring wait failed: {e}");
                wait_failed = true;
            }
            std::thread::sleep(checks.instant_of(next_tick).saturating_duration_since(Instant::now()));
        }
        for event in events.drain(..) {
            match event {
                Event::Done { check, result, took } => {
                    let CheckSpec { pool, server, .. } = checks.specs[check];
                    registry.on_check(CheckDone { pool, server, result, took });
                }
                Event::Idle { check } => checks.idle(check),
            }
        }
        registry.publish();
        // Answered after the publish: the caller sees its change in effect.
        for (reply, result) in replies.drain(..) {
            let _ = reply.send(result);
        }
    }
}

/// Switches `registry` to `config` and returns the checks of the new configuration; on error
/// nothing changes.
fn reload(registry: &mut Registry, config: &Config) -> Result<Checks, String> {
    // Publish everything the current checks found first.
    registry.publish();
    let (specs, targets) = check_specs(config);
    // The new ring first: when it cannot be made, the registry is left as it was.
    let checks = Checks::new(specs, targets).map_err(|e| format!("health checks: cannot set up io_uring: {e}"))?;
    registry.reload(config).map_err(|e| e.to_string())?;
    Ok(checks)
}

impl RunningProber {
    /// Hands the prober a new configuration and waits until it has published the new table
    /// (servers that stay keep their health). An error leaves the running table as it was.
    pub fn reload(&self, config: &Config) -> Result<(), String> {
        let (ack, acked) = std::sync::mpsc::channel();
        self.reload.send((config.clone(), ack)).map_err(|_| "the health prober has stopped".to_string())?;
        match acked.recv_timeout(RELOAD_WAIT) {
            Ok(outcome) => outcome,
            Err(_) => Err("the health prober did not take the new configuration in time".to_string()),
        }
    }

    /// Stops the checks and waits for the thread.
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                error!("health prober thread panicked");
            }
        }
    }
}

impl Drop for RunningProber {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// `http checks every 2s (timeout 2s), rise 2, fall 3, passive_fall 3, on_all_down reject, 2 of
/// 2 servers checked`.
fn describe(pool: &crate::config::PoolConfig, checked: usize) -> String {
    let h = &pool.health;
    if h.check == HealthCheck::None {
        return "no health checks: every server is up".to_owned();
    }
    format!(
        "{} checks every {:?} (timeout {:?}), rise {}, fall {}, passive_fall {}, on_all_down {}, initial_state {}, \
         {checked} of {} servers checked",
        h.check.name(),
        h.interval,
        h.timeout,
        h.rise,
        h.fall,
        h.passive_fall,
        h.on_all_down.name(),
        h.initial_state.name(),
        pool.servers.len()
    )
}

/// One check per checked server of `config`, and what each does.
fn check_specs(config: &Config) -> (Vec<CheckSpec>, Vec<Target>) {
    let (mut checks, mut targets) = (Vec::new(), Vec::new());
    for (p, pool) in config.pools.iter().enumerate() {
        for (s, server) in pool.servers.iter().enumerate().filter(|(_, server)| server.check) {
            let Some(probe) = Probe::new(&pool.health.check, &server.addr) else { continue };
            checks.push(CheckSpec { pool: p, server: s, interval: pool.health.interval });
            targets.push(Target { probe, addr: server.check_addr().into(), timeout: pool.health.timeout });
        }
    }
    (checks, targets)
}

#[cfg(test)]
mod tests;
