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

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam::channel::Receiver;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use super::checks::{self, CheckFailure, Probe};
use super::commands::{AdminState, CommandError, Request, ServerChange, ServerCommand, ServerControl};
use super::ring::{CheckRing, Event, Target};
use super::schedule::{self, Rng, Schedule};
use super::state::{Health, ServerHealth, Thresholds};
use crate::config::{Config, HealthCheck, InitialState, OnAllDown};
use crate::metrics::{HealthView, Metrics};
use crate::table::{
    BackendTable, ConnectOutcome, ConnectReport, PassiveReports, PoolHandles, ServerState, SharedTable, TableError,
};

/// Capacity of the passive-report channel, which is drained every tick: a tick's worth of
/// connects at over 1.6 million per second. Beyond it reports are dropped, never waited for.
const PASSIVE_CAPACITY: usize = 16 * 1024;
/// The first version published with the server list of the configuration. Reports about an
/// older version would name servers by indices of another list (a reload raises this).
const FIRST_VERSION: u64 = 1;

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

/// One finished check.
struct CheckDone {
    pool: usize,
    server: usize,
    result: Result<(), CheckFailure>,
    took: Duration,
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
        self.registry.table.clone()
    }

    /// Where the admin API sends server commands.
    pub fn control(&self) -> ServerControl {
        self.control.clone()
    }

    /// Starts the `ringlb-prober` thread.
    pub fn spawn(self) -> Result<RunningProber, HealthError> {
        for (pool, config) in self.registry.config.pools.iter().enumerate() {
            let checked = self.checks.iter().filter(|c| c.pool == pool).count();
            info!("pool {}: {}", config.name, describe(config, checked));
            if self.registry.pools[pool].all_down_since.is_some() {
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

/// The health records and shared handles of `config`'s pools, carried over from `old` for the
/// servers and pools that stay; metric blocks come from `metrics` by name.
fn records(
    config: &Config,
    passive: &PassiveReports,
    old: Option<&Registry>,
    metrics: &Metrics,
) -> (Vec<PoolHandles>, Vec<PoolRecord>) {
    let mut handles = Vec::new();
    let mut pools = Vec::new();
    for pool in &config.pools {
        let h = &pool.health;
        let active = h.check != HealthCheck::None;
        let before = old.and_then(|r| {
            let i = r.config.pools.iter().position(|p| p.name == pool.name)?;
            Some((&r.config.pools[i], &r.pools[i], &r.handles[i]))
        });
        let servers: Vec<ServerRecord> = pool
            .servers
            .iter()
            .map(|server| {
                let checked = active && server.check;
                let kept = before.and_then(|(old_pool, old_records, _)| {
                    let i =
                        old_pool.servers.iter().position(|o| o.name == server.name && o.resolved == server.resolved)?;
                    let record = &old_records.servers[i];
                    (record.checked == checked).then(|| record.clone())
                });
                kept.unwrap_or_else(|| {
                    let health = ServerHealth::new(initial_health(pool, checked));
                    ServerRecord { health, checked, admin: AdminState::Active, last_check: None, up_since: None }
                })
            })
            .collect();
        let counters = before.map(|(_, _, handles)| handles.counters.clone()).unwrap_or_default();
        let passive = (h.passive_fall > 0).then(|| passive.clone());
        let pool_handles = PoolHandles { passive, counters, ..PoolHandles::with_metrics(pool, metrics) };
        for (record, stats) in servers.iter().zip(&pool_handles.servers) {
            stats.set_health(record.health_view());
        }
        handles.push(pool_handles);
        let thresholds = Thresholds { rise: h.rise, fall: h.fall, passive_fall: h.passive_fall };
        pools.push(PoolRecord { thresholds, servers, all_down_since: None });
    }
    (handles, pools)
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

/// What new clients of `pool` get while every server is down.
fn all_down_policy(pool: &crate::config::PoolConfig) -> &'static str {
    match pool.health.on_all_down {
        OnAllDown::Reject => "new clients are rejected",
        OnAllDown::FailOpen => "new clients go to any server (fail-open)",
    }
}

/// Every server's health, and the table built from it.
struct Registry {
    config: Config,
    table: SharedTable,
    handles: Vec<PoolHandles>,
    pools: Vec<PoolRecord>,
    version: u64,
    /// Passive reports about older snapshots are ignored: a reload may have moved the indices.
    min_report_version: u64,
    /// The sender handed to every pool with passive detection.
    passive: PassiveReports,
    /// Transitions since the last publish, logged right after it.
    pending: Vec<Transition>,
    /// An operator command changed a server's state since the last publish.
    commanded: bool,
    /// Where pools and servers (also those a reload adds) find their metric blocks.
    metrics: Arc<Metrics>,
}

struct PoolRecord {
    thresholds: Thresholds,
    servers: Vec<ServerRecord>,
    /// Set while the published table has every server down: the pool's counter at that moment.
    all_down_since: Option<u64>,
}

#[derive(Clone)]
struct ServerRecord {
    health: ServerHealth,
    /// False for `check = false` and pools without checks: always up, traffic reports ignored.
    checked: bool,
    /// What an operator set (see `commands`).
    admin: AdminState,
    last_check: Option<Duration>,
    /// When the server last came back up (slow start ramps its weight from then).
    up_since: Option<std::time::Instant>,
}

impl ServerRecord {
    fn state(&self) -> ServerState {
        match (self.admin, self.health.health()) {
            (AdminState::Draining, _) => ServerState::Draining,
            (AdminState::Disabled, _) => ServerState::Disabled,
            (AdminState::Active, Health::Up) => ServerState::Up,
            (AdminState::Active, Health::Down) => ServerState::Down,
        }
    }

    fn health_view(&self) -> HealthView {
        match (self.admin, self.health.health()) {
            (AdminState::Disabled, _) => HealthView::Unknown,
            (_, Health::Up) => HealthView::Up,
            (_, Health::Down) => HealthView::Down,
        }
    }
}

struct Transition {
    pool: usize,
    server: usize,
    from: Health,
    to: Health,
    reason: String,
}

impl Registry {
    /// The health of every server before any check, published as the first table.
    fn new(config: &Config, passive: PassiveReports, metrics: &Arc<Metrics>) -> Result<Registry, HealthError> {
        let (handles, pools) = records(config, &passive, None, metrics);
        let mut registry = Registry {
            config: config.clone(),
            table: Arc::new(ArcSwap::from_pointee(BackendTable::default())),
            handles,
            pools,
            version: FIRST_VERSION,
            min_report_version: FIRST_VERSION,
            passive,
            pending: Vec::new(),
            commanded: false,
            metrics: Arc::clone(metrics),
        };
        let first = registry.build(None)?;
        for (p, pool) in first.pools.iter().enumerate() {
            if pool.all_down {
                registry.pools[p].all_down_since = Some(registry.all_down_count(p));
            }
        }
        registry.table.store(Arc::new(first));
        Ok(registry)
    }

    /// Takes a new configuration: servers that stay (same pool, name and address) keep their
    /// health, drain state and slow-start clock, new ones start at `initial_state`, and pools keep
    /// their shared counters by name. Publishes the new table at once; on error nothing changes.
    fn reload(&mut self, config: &Config) -> Result<(), TableError> {
        let (handles, pools) = records(config, &self.passive, Some(self), &self.metrics);
        let previous = std::mem::replace(
            self,
            Registry {
                config: config.clone(),
                table: self.table.clone(),
                handles,
                pools,
                version: self.version + 1,
                min_report_version: self.version + 1,
                passive: self.passive.clone(),
                pending: Vec::new(),
                commanded: false,
                metrics: Arc::clone(&self.metrics),
            },
        );
        let current = self.table.load_full();
        match self.build(Some(&current)) {
            Ok(table) => {
                for (p, pool) in table.pools.iter().enumerate() {
                    self.pools[p].all_down_since = pool.all_down.then(|| self.all_down_count(p));
                }
                self.table.store(Arc::new(table));
                Ok(())
            }
            Err(e) => {
                *self = previous;
                Err(e)
            }
        }
    }

    fn build(&self, previous: Option<&BackendTable>) -> Result<BackendTable, TableError> {
        // The records are indexed like the config's pools and servers.
        BackendTable::build(&self.config, self.version, &self.handles, previous, |p, s| {
            let record = &self.pools[p].servers[s];
            (record.state(), record.up_since)
        })
    }

    fn on_check(&mut self, done: CheckDone) {
        let CheckDone { pool: p, server: s, result, took } = done;
        let Some(pool) = self.pools.get_mut(p) else { return };
        let thresholds = pool.thresholds;
        let Some(record) = pool.servers.get_mut(s) else { return };
        record.last_check = Some(took);
        if let Some(stats) = self.handles.get(p).and_then(|h| h.servers.get(s)) {
            stats.record_check(took);
        }
        if let Err(failure) = &result {
            // Every failure, also those that do not (yet) change the state: RUST_LOG=debug.
            let (pool, server) = (&self.config.pools[p].name, &self.config.pools[p].servers[s].name);
            debug!("pool {pool} server {server}: check failed: {failure}; took {:.1}ms", took.as_secs_f64() * 1000.0);
        }
        if record.admin == AdminState::Disabled {
            return;
        }
        let from = record.health.health();
        let Some(to) = record.health.on_check(result.is_ok(), &thresholds) else { return };
        if to == Health::Up {
            record.up_since = Some(std::time::Instant::now());
        }
        let reason = match result {
            Ok(()) => format!("{} consecutive checks passed", thresholds.rise),
            Err(failure) => failure.to_string(),
        };
        self.pending.push(Transition { pool: p, server: s, from, to, reason });
    }

    fn on_report(&mut self, report: ConnectReport) {
        if report.version < self.min_report_version {
            return;
        }
        let (p, s) = (report.pool as usize, report.server as usize);
        let Some(pool) = self.pools.get_mut(p) else { return };
        let thresholds = pool.thresholds;
        let Some(record) = pool.servers.get_mut(s).filter(|r| r.checked && r.admin != AdminState::Disabled) else {
            return;
        };
        let from = record.health.health();
        let connected = report.outcome == ConnectOutcome::Connected;
        let Some(to) = record.health.on_connect(connected, &thresholds) else { return };
        let last = match report.outcome {
            ConnectOutcome::Failed(errno) => checks::connect_error_text(errno),
            ConnectOutcome::TimedOut | ConnectOutcome::Connected => "connect timeout".to_owned(),
        };
        let reason = format!("passive: {} consecutive connect failures (last: {last})", thresholds.passive_fall);
        self.pending.push(Transition { pool: p, server: s, from, to, reason });
    }

    /// Applies an operator command; the caller publishes, then sends the answer.
    #[allow(clippy::type_complexity)]
    fn on_command(
        &mut self,
        request: Request,
    ) -> (tokio::sync::oneshot::Sender<Result<ServerChange, CommandError>>, Result<ServerChange, CommandError>) {
        let Request { pool, server, command, reply } = request;
        let result = self.command(pool, server, command);
        (reply, result)
    }

    fn command(&mut self, pool: String, server: String, command: ServerCommand) -> Result<ServerChange, CommandError> {
        let Some(p) = self.config.pools.iter().position(|c| c.name == pool) else {
            return Err(CommandError::NoSuchPool(pool));
        };
        let Some(s) = self.config.pools[p].servers.iter().position(|c| c.name == server) else {
            return Err(CommandError::NoSuchServer { pool, server });
        };
        let initial = initial_health(&self.config.pools[p], self.pools[p].servers[s].checked);
        let record = &mut self.pools[p].servers[s];
        let before = record.state();
        match command {
            ServerCommand::Drain => record.admin = AdminState::Draining,
            ServerCommand::Disable => record.admin = AdminState::Disabled,
            ServerCommand::Enable => {
                if record.admin == AdminState::Disabled {
                    // Its health is unknown after the checks were ignored: start over.
                    record.health = ServerHealth::new(initial);
                    record.up_since = (initial == Health::Up).then(std::time::Instant::now);
                }
                record.admin = AdminState::Active;
            }
        }
        let (state, health) = (record.state(), record.health_view());
        if let Some(stats) = self.handles[p].servers.get(s) {
            stats.set_health(health);
        }
        if state != before {
            self.commanded = true;
            info!("pool {pool} server {server}: {} -> {} (admin API)", before.name(), state.name());
        }
        Ok(ServerChange { pool, server, state, health })
    }

    /// Publishes a new table if anything changed, then logs what did.
    fn publish(&mut self) {
        if self.pending.is_empty() && !self.commanded {
            return;
        }
        self.commanded = false;
        self.version += 1;
        let current = self.table.load_full();
        let table = match self.build(Some(&current)) {
            Ok(table) => table,
            Err(e) => {
                // Unreachable with a validated config; keep serving from the current table.
                error!("cannot publish a new backend table: {e}");
                return;
            }
        };
        let all_down: Vec<bool> = table.pools.iter().map(|p| p.all_down).collect();
        self.table.store(Arc::new(table));
        for t in std::mem::take(&mut self.pending) {
            if let Some(stats) = self.handles[t.pool].servers.get(t.server) {
                stats.transition(t.to == Health::Up);
                stats.set_health(self.pools[t.pool].servers[t.server].health_view());
            }
            self.log(&t);
        }
        for (p, down) in all_down.into_iter().enumerate() {
            let name = &self.config.pools[p].name;
            let policy = self.config.pools[p].health.on_all_down;
            let count = self.all_down_count(p);
            let pool = &mut self.pools[p];
            match (pool.all_down_since, down) {
                (None, true) => {
                    warn!("pool {name}: every server is down; {}", all_down_policy(&self.config.pools[p]));
                    pool.all_down_since = Some(count);
                }
                (Some(before), false) => {
                    let what = match policy {
                        OnAllDown::Reject => "rejected",
                        OnAllDown::FailOpen => "sent to a server anyway",
                    };
                    let clients = count.saturating_sub(before);
                    info!(
                        "pool {name}: a server is up again; {clients} clients were {what} while every server was down"
                    );
                    pool.all_down_since = None;
                }
                _ => {}
            }
        }
    }

    /// The all-down counter of pool `p` that its policy raises.
    fn all_down_count(&self, p: usize) -> u64 {
        let counters = &self.handles[p].counters;
        let counter = match self.config.pools[p].health.on_all_down {
            OnAllDown::Reject => &counters.rejected,
            OnAllDown::FailOpen => &counters.failed_open,
        };
        counter.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `pool web server app2: up -> down: connect refused; last check took 0.2ms`.
    fn log(&self, t: &Transition) {
        let pool = &self.config.pools[t.pool];
        let server = &pool.servers[t.server].name;
        let took = match self.pools[t.pool].servers[t.server].last_check {
            Some(took) => format!("last check took {:.1}ms", took.as_secs_f64() * 1000.0),
            None => "no check yet".to_owned(),
        };
        let (pool, from, to, reason) = (&pool.name, t.from.name(), t.to.name(), &t.reason);
        match t.to {
            Health::Down => warn!("pool {pool} server {server}: {from} -> {to}: {reason}; {took}"),
            Health::Up => info!("pool {pool} server {server}: {from} -> {to}: {reason}; {took}"),
        }
    }
}

/// A server's health at start-up (or when a reload adds it), and again when it is enabled after
/// being disabled.
fn initial_health(pool: &crate::config::PoolConfig, checked: bool) -> Health {
    match pool.health.initial_state {
        InitialState::Down if checked => Health::Down,
        _ => Health::Up,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use ServerState::{Down, Up};

    /// Pools sort by name: `plain` (no checks, one server) is pool 0, `web` pool 1.
    const PLAIN: usize = 0;
    const WEB: usize = 1;
    const REFUSED: ConnectOutcome = ConnectOutcome::Failed(libc::ECONNREFUSED);

    /// Pool `web` (tcp, rise 2, fall 3, passive_fall 3 unless `health` says otherwise): servers
    /// a, b checked, c with `check = false`; pool `plain` without checks.
    fn config(health: &str) -> Config {
        let text = format!(
            "[listeners.web]\nbind = \"127.0.0.1:0\"\npool = \"web\"\n[pools.web.health]\n{health}\n\
             [[pools.web.servers]]\naddr = \"127.0.0.1:9001\"\nname = \"a\"\n\
             [[pools.web.servers]]\naddr = \"127.0.0.1:9002\"\nname = \"b\"\n\
             [[pools.web.servers]]\naddr = \"127.0.0.1:9003\"\nname = \"c\"\ncheck = false\n\
             [pools.plain.health]\ncheck = \"none\"\n[[pools.plain.servers]]\naddr = \"127.0.0.1:9004\"\n"
        );
        crate::config::parse(&text, Path::new("x.toml")).expect("valid config")
    }

    fn prober(config: &Config) -> Prober {
        Prober::new(config, &Arc::new(Metrics::new(config))).expect("valid pools")
    }

    fn registry(health: &str) -> (Registry, SharedTable) {
        let Prober { registry, .. } = prober(&config(health));
        let table = registry.table.clone();
        (registry, table)
    }

    fn states(table: &SharedTable, pool: usize) -> Vec<ServerState> {
        table.load().pools[pool].servers.iter().map(|s| s.state).collect()
    }

    /// One check result for a server of `web`, then a publish.
    fn check(registry: &mut Registry, server: usize, passed: bool) {
        let result = if passed { Ok(()) } else { Err(CheckFailure::Refused) };
        registry.on_check(CheckDone { pool: WEB, server, result, took: Duration::from_millis(1) });
        registry.publish();
    }

    fn report(server: u32, outcome: ConnectOutcome) -> ConnectReport {
        ConnectReport { version: FIRST_VERSION, pool: WEB as u32, server, outcome }
    }

    #[test]
    fn the_first_table_follows_initial_state_and_check_settings() {
        let prober = prober(&config("initial_state = \"down\""));
        let table = prober.table();
        assert_eq!(table.load().version, FIRST_VERSION);
        assert_eq!(states(&table, PLAIN), [Up]);
        // Unchecked servers are always up, so the pool is not all down.
        assert_eq!(states(&table, WEB), [Down, Down, Up]);
        assert!(!table.load().pools[WEB].all_down);
        let checked: Vec<_> = prober.checks.iter().map(|c| (c.pool, c.server)).collect();
        assert_eq!(checked, [(WEB, 0), (WEB, 1)]);
        // Passive reports only where passive detection is on.
        let passive: Vec<bool> = table.load().pools.iter().map(|p| p.passive.is_some()).collect();
        assert_eq!(passive, [false, true]);
    }

    #[test]
    fn a_change_publishes_one_new_snapshot_and_no_change_publishes_none() {
        let (mut registry, table) = registry("");
        check(&mut registry, 0, false);
        check(&mut registry, 0, false);
        check(&mut registry, 1, true);
        assert_eq!(table.load().version, FIRST_VERSION, "nothing changed yet");
        check(&mut registry, 0, false);
        assert_eq!(table.load().version, FIRST_VERSION + 1);
        assert_eq!(states(&table, WEB), [Down, Up, Up]);
        check(&mut registry, 0, true);
        check(&mut registry, 0, true);
        assert_eq!(table.load().version, FIRST_VERSION + 2);
        assert_eq!(states(&table, WEB), [Up, Up, Up]);
    }

    #[test]
    fn changes_applied_together_publish_together() {
        let (mut registry, table) = registry("fall = 1");
        for server in [0, 1] {
            let result = Err(CheckFailure::Timeout(Duration::from_secs(2)));
            registry.on_check(CheckDone { pool: WEB, server, result, took: Duration::from_secs(2) });
        }
        registry.publish();
        assert_eq!(states(&table, WEB), [Down, Down, Up]);
        assert_eq!(table.load().version, FIRST_VERSION + 1);
    }

    #[test]
    fn passive_failures_take_a_server_down_without_a_check() {
        let (mut registry, table) = registry("");
        for outcome in [REFUSED, ConnectOutcome::Connected, REFUSED, ConnectOutcome::TimedOut] {
            registry.on_report(report(1, outcome));
        }
        registry.publish();
        assert_eq!(states(&table, WEB), [Up, Up, Up]);
        registry.on_report(report(1, REFUSED));
        registry.on_report(report(0, REFUSED));
        registry.publish();
        assert_eq!(states(&table, WEB), [Up, Down, Up]);
        assert_eq!(table.load().version, FIRST_VERSION + 1);
        // The checks bring it back.
        check(&mut registry, 1, true);
        check(&mut registry, 1, true);
        assert_eq!(states(&table, WEB), [Up, Up, Up]);
    }

    #[test]
    fn reports_that_cannot_name_a_checked_server_are_ignored() {
        let (mut registry, table) = registry("passive_fall = 1");
        let web = WEB as u32;
        let ignored = [
            // From a table older than this server list.
            ConnectReport { version: 0, pool: web, server: 0, outcome: REFUSED },
            // About a server that is never checked: nothing would bring it back.
            ConnectReport { version: FIRST_VERSION, pool: web, server: 2, outcome: REFUSED },
            // Indices that do not exist.
            ConnectReport { version: FIRST_VERSION, pool: web, server: 9, outcome: REFUSED },
            ConnectReport { version: FIRST_VERSION, pool: 7, server: 0, outcome: REFUSED },
            // A pool without checks.
            ConnectReport { version: FIRST_VERSION, pool: PLAIN as u32, server: 0, outcome: REFUSED },
        ];
        for report in ignored {
            registry.on_report(report);
        }
        registry.publish();
        assert_eq!(states(&table, WEB), [Up, Up, Up]);
        assert_eq!(states(&table, PLAIN), [Up]);
        assert_eq!(table.load().version, FIRST_VERSION);
        // The same report from the current list counts.
        registry.on_report(report(0, REFUSED));
        registry.publish();
        assert_eq!(states(&table, WEB), [Down, Up, Up]);
    }

    #[test]
    fn every_server_down_is_tracked_with_the_pool_counter() {
        let text = "[listeners.web]\nbind = \"127.0.0.1:0\"\npool = \"web\"\n[pools.web.health]\nfall = 1\n\
                    [[pools.web.servers]]\naddr = \"127.0.0.1:9001\"\n";
        let config = crate::config::parse(text, Path::new("x.toml")).expect("valid");
        let Prober { mut registry, .. } = prober(&config);
        let table = registry.table.clone();
        let check = |registry: &mut Registry, passed| {
            let result = if passed { Ok(()) } else { Err(CheckFailure::Refused) };
            registry.on_check(CheckDone { pool: 0, server: 0, result, took: Duration::from_millis(1) });
            registry.publish();
        };
        check(&mut registry, false);
        assert!(table.load().pools[0].all_down);
        assert_eq!(registry.pools[0].all_down_since, Some(0));
        table.load().pools[0].count_all_down();
        table.load().pools[0].count_all_down();
        assert_eq!(registry.all_down_count(0), 2);
        check(&mut registry, true);
        check(&mut registry, true);
        assert!(!table.load().pools[0].all_down);
        assert_eq!(registry.pools[0].all_down_since, None);
    }

    fn command(registry: &mut Registry, server: &str, command: ServerCommand) -> Result<ServerChange, CommandError> {
        let result = registry.command("web".to_owned(), server.to_owned(), command);
        registry.publish();
        result
    }

    #[test]
    fn drain_and_enable_publish_at_once_and_checks_go_on_meanwhile() {
        use ServerState::Draining;
        let (mut registry, table) = registry("fall = 1");
        let change = command(&mut registry, "a", ServerCommand::Drain).expect("drain");
        assert_eq!((change.state, change.health), (Draining, HealthView::Up));
        assert_eq!(states(&table, WEB), [Draining, Up, Up]);
        assert_eq!(table.load().version, FIRST_VERSION + 1);
        // Draining twice changes nothing, so publishes nothing.
        command(&mut registry, "a", ServerCommand::Drain).expect("drain again");
        assert_eq!(table.load().version, FIRST_VERSION + 1);
        // Its checks still count: it fails one while drained, and comes back down.
        check(&mut registry, 0, false);
        assert_eq!(states(&table, WEB), [Draining, Up, Up]);
        let change = command(&mut registry, "a", ServerCommand::Enable).expect("enable");
        assert_eq!((change.state, change.health), (Down, HealthView::Down));
        assert_eq!(states(&table, WEB), [Down, Up, Up]);
    }

    #[test]
    fn a_disabled_server_ignores_its_checks_and_starts_over_when_enabled() {
        use ServerState::Disabled;
        let (mut registry, table) = registry("fall = 1\npassive_fall = 1\ninitial_state = \"down\"");
        check(&mut registry, 1, true);
        check(&mut registry, 1, true);
        assert_eq!(states(&table, WEB), [Down, Up, Up]);
        let change = command(&mut registry, "b", ServerCommand::Disable).expect("disable");
        assert_eq!((change.state, change.health), (Disabled, HealthView::Unknown));
        check(&mut registry, 1, false);
        registry.on_report(report(1, REFUSED));
        registry.publish();
        assert_eq!(states(&table, WEB), [Down, Disabled, Up]);
        // The checks are still timed.
        assert_eq!(table.load().pools[WEB].servers[1].stats.checks().count(), 3);
        // Enabled: down (initial_state) until `rise` checks pass.
        let change = command(&mut registry, "b", ServerCommand::Enable).expect("enable");
        assert_eq!((change.state, change.health), (Down, HealthView::Down));
        check(&mut registry, 1, true);
        check(&mut registry, 1, true);
        assert_eq!(states(&table, WEB), [Down, Up, Up]);
    }

    #[test]
    fn commands_name_pools_and_servers_exactly() {
        let (mut registry, table) = registry("");
        let no_pool = registry.command("nope".to_owned(), "a".to_owned(), ServerCommand::Drain);
        assert_eq!(no_pool, Err(CommandError::NoSuchPool("nope".to_owned())));
        let no_server = registry.command("web".to_owned(), "A".to_owned(), ServerCommand::Drain);
        assert_eq!(no_server, Err(CommandError::NoSuchServer { pool: "web".to_owned(), server: "A".to_owned() }));
        registry.publish();
        assert_eq!(table.load().version, FIRST_VERSION);
    }

    #[test]
    fn transitions_and_health_are_counted_in_the_servers_metric_block() {
        let (mut registry, table) = registry("fall = 1");
        let stats = table.load().pools[WEB].servers[0].stats.clone();
        assert_eq!(stats.health(), HealthView::Up);
        check(&mut registry, 0, false);
        assert_eq!((stats.health(), stats.transitions()), (HealthView::Down, (0, 1)));
        check(&mut registry, 0, true);
        check(&mut registry, 0, true);
        assert_eq!((stats.health(), stats.transitions()), (HealthView::Up, (1, 1)));
        // The same block in every snapshot.
        assert!(Arc::ptr_eq(&stats, &table.load().pools[WEB].servers[0].stats));
    }

    #[test]
    fn the_running_prober_takes_a_dead_server_down_and_stops_on_request() {
        let dead = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a closed port");
        let alive = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let text = format!(
            "[listeners.web]\nbind = \"127.0.0.1:0\"\npool = \"web\"\n[pools.web.health]\ninterval = \"20ms\"\n\
             fall = 1\n[[pools.web.servers]]\naddr = \"{dead}\"\n[[pools.web.servers]]\naddr = \"{}\"\n",
            alive.local_addr().expect("addr")
        );
        let config = crate::config::parse(&text, Path::new("x.toml")).expect("valid");
        let prober = prober(&config);
        let table = prober.table();
        let running = prober.spawn().expect("spawn");
        let deadline = Instant::now() + Duration::from_secs(5);
        while states(&table, 0) != [Down, Up] {
            assert!(Instant::now() < deadline, "still {:?}", states(&table, 0));
            std::thread::sleep(Duration::from_millis(5));
        }
        let version = table.load().version;
        running.stop();
        assert_eq!(table.load().version, version, "nothing published after the stop");
    }
}
