//! Configuration reload (SIGHUP, `ringlb reload`): re-reads the file and applies it in place.
//! This is orchestration across the parts `main` composes (config, prober, data path, metrics),
//! so it sits next to the composition root rather than in `control/`, which keeps OS plumbing.
//!
//! An invalid file changes nothing: the error (`file:line:col: ...`) is logged and counted. A
//! valid one goes to the prober first: it publishes one table with the pools, servers, policies,
//! listener routes, limits and `[runtime]` settings of the new config, in which servers that stay
//! keep their health and connection counts; that single publish is the switch for every new
//! connection. Then the data path binds listeners that were added and retires those that left
//! (a client accepted on a leaving listener after the publish has no route and is closed, like
//! those still in its accept queue when its socket closes). Open connections are never touched:
//! each keeps the table snapshot it started with, so connections to servers that left the config
//! finish on their own. What cannot change without a restart (worker count, admin address) keeps
//! its running value and is reported.

use std::path::Path;

use tracing::{error, info, warn};

use crate::config::{self, Config};
use crate::datapath::DataPath;
use crate::health::RunningProber;
use crate::metrics::Metrics;

/// Re-reads `path` and applies it; returns the configuration now running (the old one when the
/// reload failed). Counts the outcome in `metrics`.
pub fn reload(
    path: &Path,
    running: Config,
    datapath: &mut DataPath,
    prober: &RunningProber,
    metrics: &Metrics,
) -> Config {
    match try_reload(path, &running, datapath, prober) {
        Ok(next) => {
            metrics.reloaded(true);
            metrics.set_config(&next);
            next
        }
        Err(e) => {
            metrics.reloaded(false);
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
