//! Metrics: every metric ringlb exports, the counters behind them, and the Prometheus scrape.
//!
//! Files: `names` (every metric name, type, labels and help text, declared once), `cells` (the
//! counter blocks and the causes they count by), `scrape` (sums the blocks and renders Prometheus
//! text with metrics-exporter-prometheus).
//!
//! Who writes what: each data-path worker owns a [`WorkerStats`] block (its descriptor gauge) and
//! one slot, by worker id, of every [`ListenerStats`], [`ServerStats`] and [`PoolStats`]; the
//! prober records checks, health and transitions in [`ServerStats`]; a reload records the digest
//! of the configuration it put in effect ([`Metrics::set_config`]). Writes are relaxed atomic adds on
//! cache lines no other thread writes: no lock, no allocation, nothing shared between workers on
//! the hot path. Only the scrape reads them all.
//!
//! Listener, pool and server blocks are kept here by name, so that every table the prober
//! publishes (on each health change, and after a reload) carries the same block for the same pool
//! and server, and a listener a reload re-binds keeps its block: [`Metrics::server`] returns the
//! block a server had before, and its counters keep counting.
//!
//! This module never blocks a writer and never touches a socket; the admin API serves what
//! [`Metrics::render`] returns.

mod cells;
pub mod names;
mod scrape;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

pub use cells::{
    CloseCause, ConnectFailure, Direction, HealthView, HistogramSnapshot, ListenerStats, ListenerTotals, PoolCounters,
    PoolStats, PoolTotals, ServerStats, ServerTotals, WorkerStats,
};
pub use scrape::{PoolView, ServerView};

use crate::config::Config;

/// The registry of every counter block, created once at start-up and shared (`Arc`) by the data
/// path, the prober and the admin API.
#[derive(Debug)]
pub struct Metrics {
    /// Per-worker slots in each server and pool block (the data path's worker count).
    workers: usize,
    worker_stats: Vec<Arc<WorkerStats>>,
    /// Every listener served since start-up, by name (a scrape shows them all: the counters of
    /// a listener a reload removed stay, its open connections still count).
    listeners: Mutex<BTreeMap<String, Arc<ListenerStats>>>,
    pools: Mutex<HashMap<String, Arc<PoolStats>>>,
    servers: Mutex<HashMap<(String, String), Arc<ServerStats>>>,
    config_sha256: Mutex<String>,
    /// Configuration reloads since start-up: applied, failed.
    reloads: [AtomicU64; 2],
    started: SystemTime,
}

impl Metrics {
    /// Blocks for `config`'s workers; listeners, pools and servers get theirs on first use.
    pub fn new(config: &Config) -> Metrics {
        let workers = config.runtime.workers.max(1);
        Metrics {
            workers,
            worker_stats: (0..workers).map(|_| Arc::new(WorkerStats::default())).collect(),
            listeners: Mutex::new(BTreeMap::new()),
            pools: Mutex::new(HashMap::new()),
            servers: Mutex::new(HashMap::new()),
            config_sha256: Mutex::new(config.sha256.clone()),
            reloads: [AtomicU64::new(0), AtomicU64::new(0)],
            started: SystemTime::now(),
        }
    }

    /// Worker `id`'s block. An id the registry was not sized for gets a block of its own that no
    /// scrape sees (the data path is sized from the same config, so this does not happen).
    pub fn worker(&self, id: usize) -> Arc<WorkerStats> {
        match self.worker_stats.get(id) {
            Some(stats) => Arc::clone(stats),
            None => Arc::new(WorkerStats::default()),
        }
    }

    /// The block of listener `listener`: the same one for the same name.
    pub fn listener(&self, listener: &str) -> Arc<ListenerStats> {
        let mut listeners = self.listeners.lock().unwrap_or_else(PoisonError::into_inner);
        let stats = listeners.entry(listener.to_owned()).or_insert_with(|| Arc::new(ListenerStats::new(self.workers)));
        Arc::clone(stats)
    }

    /// The block of pool `pool`: the same one for the same name, for the life of the process.
    pub fn pool(&self, pool: &str) -> Arc<PoolStats> {
        let mut pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        let stats = pools.entry(pool.to_owned()).or_insert_with(|| Arc::new(PoolStats::new(self.workers)));
        Arc::clone(stats)
    }

    /// The block of server `server` of pool `pool`: the same one for the same names.
    pub fn server(&self, pool: &str, server: &str) -> Arc<ServerStats> {
        let mut servers = self.servers.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (pool.to_owned(), server.to_owned());
        Arc::clone(servers.entry(key).or_insert_with(|| Arc::new(ServerStats::new(self.workers))))
    }

    /// A reload put `config` in effect.
    pub fn set_config(&self, config: &Config) {
        *self.config_sha256.lock().unwrap_or_else(PoisonError::into_inner) = config.sha256.clone();
    }

    /// Counts a configuration reload that was applied (`ok`) or failed.
    pub fn reloaded(&self, ok: bool) {
        self.reloads[usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
    }

    /// Reloads since start-up: (applied, failed).
    pub fn reloads(&self) -> (u64, u64) {
        let [ok, failed] = &self.reloads;
        (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed))
    }

    /// The sha256 of the configuration file in effect.
    pub fn config_sha256(&self) -> String {
        self.config_sha256.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Every metric in the Prometheus text format, for `pools` (those of the current table).
    pub fn render(&self, pools: &[PoolView<'_>], draining: bool) -> String {
        scrape::render(self, pools, draining)
    }
}
