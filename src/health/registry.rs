//! The registry: every server's health, and the single writer of the published backend table.
//! It builds the table from the configuration and every server's record, applies what the
//! prober thread hands it (check results, passive connect reports, operator commands, reloads),
//! and publishes one new immutable snapshot through arc-swap whenever something changed, then
//! logs each transition once.
//!
//! It does no I/O and never waits: the thread, its ring and its schedule are in `prober`, which
//! owns the registry and calls it. Its tests are in `registry/tests.rs`.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tracing::{debug, error, info, warn};

use super::checks::{self, CheckFailure};
use super::commands::{AdminState, CommandError, Request, ServerChange, ServerCommand};
use super::state::{Health, ServerHealth, Thresholds};
use crate::config::{Config, HealthCheck, InitialState, OnAllDown};
use crate::metrics::{HealthView, Metrics};
use crate::table::{
    BackendTable, ConnectOutcome, ConnectReport, PassiveReports, PoolHandles, ServerState, SharedTable, TableError,
};

/// The first version published with the server list of the configuration. Reports about an
/// older version would name servers by indices of another list (a reload raises this).
pub(super) const FIRST_VERSION: u64 = 1;

/// One finished check.
pub(super) struct CheckDone {
    pub(super) pool: usize,
    pub(super) server: usize,
    pub(super) result: Result<(), CheckFailure>,
    pub(super) took: Duration,
}

/// Every server's health, and the table built from it.
pub(super) struct Registry {
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
    pub(super) fn new(
        config: &Config,
        passive: PassiveReports,
        metrics: &Arc<Metrics>,
    ) -> Result<Registry, TableError> {
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

    /// The table the registry writes and the workers read.
    pub(super) fn table(&self) -> SharedTable {
        self.table.clone()
    }

    /// The configuration the current table was built from.
    pub(super) fn config(&self) -> &Config {
        &self.config
    }

    /// Whether the published table has every server of pool `pool` down.
    pub(super) fn all_down(&self, pool: usize) -> bool {
        self.pools.get(pool).is_some_and(|p| p.all_down_since.is_some())
    }

    /// Takes a new configuration: servers that stay (same pool, name and address) keep their
    /// health, drain state and slow-start clock, new ones start at `initial_state`, and pools keep
    /// their shared counters by name. Publishes the new table at once; on error nothing changes.
    pub(super) fn reload(&mut self, config: &Config) -> Result<(), TableError> {
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

    pub(super) fn on_check(&mut self, done: CheckDone) {
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

    pub(super) fn on_report(&mut self, report: ConnectReport) {
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
    pub(super) fn on_command(
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
    pub(super) fn publish(&mut self) {
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

/// What new clients of `pool` get while every server is down.
pub(super) fn all_down_policy(pool: &crate::config::PoolConfig) -> &'static str {
    match pool.health.on_all_down {
        OnAllDown::Reject => "new clients are rejected",
        OnAllDown::FailOpen => "new clients go to any server (fail-open)",
    }
}

#[cfg(test)]
pub(super) mod tests;
