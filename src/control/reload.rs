//! Configuration reload (SIGHUP, `ringlb reload`): re-reads the file and applies it in place.
//!
//! An invalid file changes nothing: the error (`file:line:col: ...`) is logged and counted. A
//! valid one goes to the prober first (pools, servers, policies and health checks: it publishes
//! a table in which servers that stay keep their health and connection counts), then to the data
//! path (listeners added, removed or re-pointed; limits). Open connections are never touched:
//! each keeps the table snapshot it started with, so connections to servers that left the config
//! finish on their own. What cannot change without a restart (worker count, admin address) keeps
//! its running value and is reported.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::{error, info, warn};

use crate::config::{self, Config};
use crate::datapath::DataPath;
use crate::health::RunningProber;

/// Reloads since start-up, for metrics.
pub static RELOADS_OK: AtomicU64 = AtomicU64::new(0);
pub static RELOADS_FAILED: AtomicU64 = AtomicU64::new(0);

/// Re-reads `path` and applies it; returns the configuration now running (the old one when the
/// reload failed).
pub fn reload(path: &Path, running: Config, datapath: &mut DataPath, prober: &RunningProber) -> Config {
    match try_reload(path, &running, datapath, prober) {
        Ok(next) => {
            RELOADS_OK.fetch_add(1, Ordering::Relaxed);
            next
        }
        Err(e) => {
            RELOADS_FAILED.fetch_add(1, Ordering::Relaxed);
            error!("reload failed, the running configuration stays: {e}");
            running
        }
    }
}

fn try_reload(
    path: &Path,
    running: &Config,
    datapath: &mut DataPath,
    prober: &RunningProber,
) -> Result<Config, String> {
    let mut next = config::load(path).map_err(|e| e.to_string())?;
    if next.runtime.workers != running.runtime.workers {
        warn!(
            "reload: runtime.workers {} -> {} takes effect at the next restart",
            running.runtime.workers, next.runtime.workers
        );
        next.runtime.workers = running.runtime.workers;
    }
    if next.admin.bind != running.admin.bind {
        warn!("reload: admin.bind {} -> {} takes effect at the next restart", running.admin.bind, next.admin.bind);
        next.admin.bind = running.admin.bind;
    }
    if next.runtime.user != running.runtime.user {
        warn!("reload: runtime.user takes effect at the next restart");
        next.runtime.user.clone_from(&running.runtime.user);
    }
    prober.reload(&next)?;
    let changes = datapath.reload(&next).map_err(|e| e.to_string())?;
    for change in &changes {
        info!("reload: {change}");
    }
    for pool in &next.pools {
        let before = running.pools.iter().find(|p| p.name == pool.name);
        let servers: Vec<&str> = pool.servers.iter().map(|s| s.name.as_str()).collect();
        let changed = before.map_or(true, |b| {
            b.balance != pool.balance || b.servers.iter().map(|s| s.name.as_str()).ne(servers.iter().copied())
        });
        if changed {
            info!("reload: pool {}: {} over {}", pool.name, pool.balance.name(), servers.join(", "));
        }
    }
    info!("reloaded {}", path.display());
    Ok(next)
}
