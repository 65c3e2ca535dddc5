//! The backend table: one immutable snapshot of everything a worker reads to serve a new
//! connection (every pool and server, where each listener sends its clients, the limits and the
//! `[runtime]` settings a connection keeps for its life), published through arc-swap. Workers
//! load it once per connection; the health prober is its single writer and publishes a new one
//! whenever a server changes state or a reload changes the config, so a reload is one atomic
//! switch: no client can see the new pools with the old routes. Nothing here blocks or allocates
//! on the workers' hot path beyond an `Arc` clone.
//!
//! A snapshot also carries what outlives it, shared by every snapshot of a pool: the counters of
//! clients that found every server down, and the channel on which workers report connect outcomes
//! to the prober (passive health detection). Reporting never blocks: a full channel drops the
//! report. Every pool and server also carries its metric block (`stats`), the same one in every
//! snapshot for the same pool and server name, so that counting survives each publish.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam::channel::Sender;

use crate::balance::{Balancer, BuildError, ServerSpec};
use crate::config::{Config, OnAllDown, PoolConfig, SpliceMode};
use crate::metrics::{PoolCounters, PoolStats, PoolView, ServerStats, ServerView};

#[derive(Debug, Default)]
pub struct BackendTable {
    pub pools: Vec<PoolTable>,
    /// Where each configured listener sends its connections, and its limit.
    pub routes: Vec<Route>,
    /// What `[runtime]` says about new connections.
    pub runtime: RuntimeView,
    /// Raised by every publish. Connect reports carry the version of the snapshot their
    /// connection used, so that a report about an older server list is never applied to a newer
    /// one.
    pub version: u64,
}

/// One listener's route: the pool its new connections go to.
#[derive(Debug)]
pub struct Route {
    pub listener: String,
    /// Index in `pools` (validation guarantees the pool exists).
    pub pool: usize,
    /// The listener's `max_connections`.
    pub max_connections: u32,
}

/// The `[runtime]` settings a worker reads per connection.
#[derive(Debug, Default)]
pub struct RuntimeView {
    pub splice: SpliceMode,
    pub log_connections: bool,
    /// The process-wide `max_connections`.
    pub max_connections: u32,
}

#[derive(Debug)]
pub struct PoolTable {
    pub name: String,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub retries: u32,
    /// How long a client may wait for a server slot when every server is at max_connections.
    pub queue_timeout: Duration,
    /// `retry_on_empty_response`: replay the client's first bytes to another server when this
    /// one resets or closes before its first byte.
    pub retry_on_empty_response: bool,
    /// The policy over this snapshot's servers (indices = `servers` indices). Shares its
    /// per-server connection counters with the previous snapshot's balancer, by server name.
    pub balancer: Balancer,
    /// What new clients get when no server is usable.
    pub on_all_down: OnAllDown,
    /// No server of the pool is usable in this snapshot.
    pub all_down: bool,
    /// Where workers report connect outcomes; `None` when passive detection is off.
    pub passive: Option<PassiveReports>,
    pub counters: Arc<PoolCounters>,
    /// The pool's metric block.
    pub stats: Arc<PoolStats>,
    pub servers: Vec<ServerEntry>,
}

#[derive(Debug)]
pub struct ServerEntry {
    pub name: String,
    pub addr: SocketAddr,
    pub weight: u32,
    /// Health and admin state, as last published by the prober.
    pub state: ServerState,
    /// The server's metric block.
    pub stats: Arc<ServerStats>,
}

/// A server's state in one snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// Takes new connections.
    Up,
    /// Failed its checks (or passive detection): no new connections.
    Down,
    /// Set aside by an operator: no new connections, open ones finish; checks go on.
    Draining,
    /// Put in maintenance by an operator: no new connections, open ones finish; check results
    /// are ignored until it is enabled again.
    Disabled,
}

impl ServerState {
    pub const ALL: [ServerState; 4] =
        [ServerState::Up, ServerState::Down, ServerState::Draining, ServerState::Disabled];

    pub fn name(self) -> &'static str {
        match self {
            ServerState::Up => "up",
            ServerState::Down => "down",
            ServerState::Draining => "draining",
            ServerState::Disabled => "disabled",
        }
    }
}

impl ServerEntry {
    /// May receive a new connection (health and weight; policies add their own limits).
    pub fn usable(&self) -> bool {
        self.state == ServerState::Up && self.weight > 0
    }

    /// Its share of new connections now: its weight while usable, else 0 (slow start is the
    /// balancer's and not counted here).
    pub fn effective_weight(&self) -> u32 {
        if self.usable() {
            self.weight
        } else {
            0
        }
    }
}

/// How one connect attempt to a server ended, as a worker saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectOutcome {
    Connected,
    /// `connect_timeout` expired.
    TimedOut,
    /// The connect failed with this errno (positive), e.g. ECONNREFUSED.
    Failed(i32),
}

/// One connect outcome, naming the server by its indices in the snapshot of `version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectReport {
    pub version: u64,
    pub pool: u32,
    pub server: u32,
    pub outcome: ConnectOutcome,
}

/// The sending side of the passive-report channel (bounded; the prober drains it).
#[derive(Debug, Clone)]
pub struct PassiveReports(Sender<ConnectReport>);

impl PassiveReports {
    pub fn new(sender: Sender<ConnectReport>) -> PassiveReports {
        PassiveReports(sender)
    }
}

/// What every snapshot of one pool shares; created once by the table's writer.
#[derive(Debug, Clone, Default)]
pub struct PoolHandles {
    pub passive: Option<PassiveReports>,
    pub counters: Arc<PoolCounters>,
    /// The pool's metric block (`None`: a fresh one, seen by no scrape).
    pub stats: Option<Arc<PoolStats>>,
    /// The metric blocks of the pool's servers, in config order (missing ones: fresh blocks).
    pub servers: Vec<Arc<ServerStats>>,
}

impl PoolHandles {
    /// Handles whose metric blocks are those `metrics` keeps for `pool` and its servers (by name,
    /// so a reloaded pool gets the blocks it had).
    pub fn with_metrics(pool: &PoolConfig, metrics: &crate::metrics::Metrics) -> PoolHandles {
        PoolHandles {
            stats: Some(metrics.pool(&pool.name)),
            servers: pool.servers.iter().map(|s| metrics.server(&pool.name, &s.name)).collect(),
            ..PoolHandles::default()
        }
    }
}

impl PoolTable {
    /// Counts a new client that found every server down (call once per client).
    pub fn count_all_down(&self) {
        let counter = match self.on_all_down {
            OnAllDown::Reject => &self.counters.rejected,
            OnAllDown::FailOpen => &self.counters.failed_open,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl BackendTable {
    /// A snapshot of `config`'s pools with `handles[pool]` and `status(pool, server)` (state, and
    /// when the server last came up, for slow start). Each pool's balancer carries the connection
    /// counts of `previous`'s pool of the same name over to the new snapshot.
    pub fn build(
        config: &Config,
        version: u64,
        handles: &[PoolHandles],
        previous: Option<&BackendTable>,
        status: impl Fn(usize, usize) -> (ServerState, Option<Instant>),
    ) -> Result<BackendTable, TableError> {
        let workers = config.runtime.workers;
        let mut pools = Vec::with_capacity(config.pools.len());
        for (p, pool) in config.pools.iter().enumerate() {
            let handles = handles.get(p).cloned().unwrap_or_default();
            let statuses: Vec<(ServerState, Option<Instant>)> = (0..pool.servers.len()).map(|s| status(p, s)).collect();
            let servers: Vec<ServerEntry> = pool
                .servers
                .iter()
                .zip(&statuses)
                .enumerate()
                .map(|(s, (server, &(state, _)))| ServerEntry {
                    name: server.name.clone(),
                    addr: server.resolved,
                    weight: server.weight,
                    state,
                    stats: handles.servers.get(s).cloned().unwrap_or_else(|| Arc::new(ServerStats::new(workers))),
                })
                .collect();
            let all_down = !servers.iter().any(ServerEntry::usable);
            let fail_open = all_down && pool.health.on_all_down == OnAllDown::FailOpen;
            let specs: Vec<ServerSpec> = pool
                .servers
                .iter()
                .zip(&statuses)
                .map(|(server, &(state, up_since))| ServerSpec {
                    name: server.name.clone(),
                    addr: server.resolved,
                    weight: server.weight,
                    backup: server.backup,
                    max_connections: server.max_connections,
                    slow_start: server.slow_start,
                    // Failing open ignores health, never an operator's drain.
                    up: state == ServerState::Up || (fail_open && state == ServerState::Down),
                    up_since,
                })
                .collect();
            let before = previous.and_then(|t| t.pools.iter().find(|old| old.name == pool.name));
            let balancer = Balancer::build(pool.balance, &specs, before.map(|old| &old.balancer))
                .map_err(|source| TableError { pool: pool.name.clone(), source })?;
            pools.push(PoolTable {
                name: pool.name.clone(),
                connect_timeout: pool.connect_timeout,
                idle_timeout: pool.idle_timeout,
                retries: pool.retries,
                queue_timeout: pool.queue_timeout,
                retry_on_empty_response: pool.retry_on_empty_response,
                balancer,
                on_all_down: pool.health.on_all_down,
                all_down,
                passive: handles.passive,
                counters: handles.counters,
                stats: handles.stats.unwrap_or_else(|| Arc::new(PoolStats::new(workers))),
                servers,
            });
        }
        let routes = config
            .listeners
            .iter()
            .filter_map(|l| {
                let pool = pools.iter().position(|p| p.name == l.pool)?;
                Some(Route { listener: l.name.clone(), pool, max_connections: l.max_connections })
            })
            .collect();
        let runtime = RuntimeView {
            splice: config.runtime.splice,
            log_connections: config.runtime.log_connections,
            max_connections: config.runtime.max_connections,
        };
        Ok(BackendTable { pools, routes, runtime, version })
    }

    pub fn pool_index(&self, name: &str) -> Option<usize> {
        self.pools.iter().position(|p| p.name == name)
    }

    /// What a metrics scrape shows of this table's pools and servers.
    pub fn scrape_view(&self) -> Vec<PoolView<'_>> {
        self.pools
            .iter()
            .map(|p| PoolView {
                name: &p.name,
                stats: &p.stats,
                counters: &p.counters,
                servers: p
                    .servers
                    .iter()
                    .map(|s| ServerView {
                        name: &s.name,
                        stats: &s.stats,
                        states: ServerState::ALL.map(|state| (state.name(), s.state == state)),
                        effective_weight: s.effective_weight(),
                        usable: s.usable(),
                    })
                    .collect(),
            })
            .collect()
    }

    /// The route of the listener named `listener`; `None` once a reload removed it.
    pub fn route(&self, listener: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.listener == listener)
    }

    /// Tells the prober how a connect to `servers[server]` of `pools[pool]` ended, if the pool
    /// has passive detection. Never blocks: when the channel is full the report is dropped.
    pub fn report_connect(&self, pool: usize, server: usize, outcome: ConnectOutcome) {
        let Some(passive) = self.pools.get(pool).and_then(|p| p.passive.as_ref()) else { return };
        let report = ConnectReport { version: self.version, pool: pool as u32, server: server as u32, outcome };
        // Full (the prober is behind) or disconnected (it stopped): either way nothing to do.
        let _ = passive.0.try_send(report);
    }
}

/// A pool whose servers the balancing policy refuses (validation keeps this from happening).
#[derive(Debug, thiserror::Error)]
#[error("pool {pool}: {source}")]
pub struct TableError {
    pub pool: String,
    pub source: BuildError,
}

/// The handle shared by the control plane (writer) and every worker (readers).
pub type SharedTable = Arc<ArcSwap<BackendTable>>;

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::path::Path;

    use crate::balance::{ExcludeSet, Pick, WorkerBalanceState};

    use super::*;

    fn config(on_all_down: &str) -> Config {
        let text = format!(
            "[listeners.web]\nbind = \"127.0.0.1:0\"\npool = \"web\"\n[pools.web.health]\non_all_down = \
             \"{on_all_down}\"\n[[pools.web.servers]]\naddr = \"127.0.0.1:9001\"\n[[pools.web.servers]]\naddr = \
             \"127.0.0.1:9002\"\n[[pools.web.servers]]\naddr = \"127.0.0.1:9003\"\n"
        );
        crate::config::parse(&text, Path::new("x.toml")).expect("valid config")
    }

    fn table(on_all_down: &str, states: [ServerState; 3]) -> BackendTable {
        let handles = [PoolHandles::default()];
        BackendTable::build(&config(on_all_down), 1, &handles, None, |_, s| (states[s], None)).expect("valid pool")
    }

    /// The servers the pool's balancer hands new connections to (each picked once, then
    /// excluded), as a mask in config order.
    fn eligible(table: &BackendTable) -> Vec<bool> {
        let pool = &table.pools[0];
        let mut worker = WorkerBalanceState::new(0);
        let mut tried = ExcludeSet::new();
        let client = IpAddr::from([192, 0, 2, 1]);
        let now = Instant::now();
        while let Pick::Server(server) = pool.balancer.select(&mut worker, client, &tried, now) {
            pool.balancer.release(server, now);
            assert!(tried.insert(server), "picked twice: {server}");
        }
        (0..pool.servers.len()).map(|s| tried.contains(s)).collect()
    }

    #[test]
    fn only_up_servers_are_eligible_while_one_is_up() {
        use ServerState::*;
        for policy in ["reject", "fail-open"] {
            let t = table(policy, [Down, Up, Draining]);
            assert!(!t.pools[0].all_down);
            assert_eq!(eligible(&t), [false, true, false], "{policy}");
        }
    }

    #[test]
    fn every_server_down_rejects_or_fails_open_but_never_to_a_drained_server() {
        use ServerState::*;
        let t = table("reject", [Down, Down, Draining]);
        assert!(t.pools[0].all_down);
        assert_eq!(eligible(&t), [false, false, false]);
        let t = table("fail-open", [Down, Down, Draining]);
        assert_eq!(eligible(&t), [true, true, false]);
        let t = table("fail-open", [Down, Disabled, Draining]);
        assert!(t.pools[0].all_down);
        assert_eq!(eligible(&t), [true, false, false]);
    }

    #[test]
    fn all_down_clients_are_counted_per_policy_across_snapshots() {
        use ServerState::*;
        let handles = [PoolHandles::default()];
        let config = config("reject");
        for version in 1..=3 {
            let t = BackendTable::build(&config, version, &handles, None, |_, _| (Down, None)).expect("valid pool");
            t.pools[0].count_all_down();
        }
        assert_eq!(handles[0].counters.rejected.load(Ordering::Relaxed), 3);
        assert_eq!(handles[0].counters.failed_open.load(Ordering::Relaxed), 0);
        let t = table("fail-open", [Down, Down, Down]);
        t.pools[0].count_all_down();
        assert_eq!(t.pools[0].counters.failed_open.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn reports_carry_the_snapshot_version_and_never_block() {
        let (sender, receiver) = crossbeam::channel::bounded(1);
        let handles = [PoolHandles { passive: Some(PassiveReports::new(sender)), ..PoolHandles::default() }];
        let t = BackendTable::build(&config("reject"), 7, &handles, None, |_, _| (ServerState::Up, None))
            .expect("valid pool");
        t.report_connect(0, 2, ConnectOutcome::Failed(libc::ECONNREFUSED));
        // The channel is full: dropped, not blocked on.
        t.report_connect(0, 1, ConnectOutcome::Connected);
        let expected = ConnectReport { version: 7, pool: 0, server: 2, outcome: ConnectOutcome::Failed(111) };
        assert_eq!(receiver.try_recv(), Ok(expected));
        assert!(receiver.try_recv().is_err());
        // No passive detection, or a pool that does not exist: nothing sent, nothing broken.
        let quiet = table("reject", [ServerState::Up; 3]);
        quiet.report_connect(0, 0, ConnectOutcome::TimedOut);
        t.report_connect(5, 0, ConnectOutcome::TimedOut);
        drop(receiver);
        t.report_connect(0, 0, ConnectOutcome::TimedOut);
    }

    #[test]
    fn the_table_routes_listeners_and_carries_the_runtime_settings() {
        let text = "[runtime]\nmax_connections = 70\nsplice = \"never\"\nlog_connections = true\n\
                    [listeners.web]\nbind = \"127.0.0.1:0\"\npool = \"b\"\nmax_connections = 5\n\
                    [listeners.api]\nbind = \"127.0.0.1:0\"\npool = \"a\"\n\
                    [[pools.a.servers]]\naddr = \"127.0.0.1:9001\"\n[[pools.b.servers]]\naddr = \"127.0.0.1:9002\"\n";
        let config = crate::config::parse(text, Path::new("x.toml")).expect("valid config");
        let handles = [PoolHandles::default(), PoolHandles::default()];
        let t = BackendTable::build(&config, 1, &handles, None, |_, _| (ServerState::Up, None)).expect("valid");
        let web = t.route("web").expect("web is routed");
        assert_eq!((t.pools[web.pool].name.as_str(), web.max_connections), ("b", 5));
        assert_eq!(t.pools[t.route("api").expect("api is routed").pool].name, "a");
        assert!(t.route("gone").is_none(), "a listener outside the config has no route");
        assert_eq!(t.runtime.splice, SpliceMode::Never);
        assert!(t.runtime.log_connections);
        assert_eq!(t.runtime.max_connections, 70);
    }
}
