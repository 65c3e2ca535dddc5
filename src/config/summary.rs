//! The summary `ringlb check` prints for a valid configuration: what will listen where and
//! where its connections will go, one line per listener and per pool.
//!
//! Formatting only; it never validates anything.

use std::fmt::Write as _;

use super::duration;
use super::{Config, PoolConfig, ServerConfig, DEFAULT_WEIGHT};

impl Config {
    /// `FILE: ok`, then the runtime, the admin endpoint, each listener and each pool.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; the results are ignored for that reason only.
        let _ = writeln!(out, "{}: ok", self.path.display());
        let runtime = &self.runtime;
        let _ = writeln!(
            out,
            "runtime: {} workers, max {} connections, shutdown_grace {}",
            runtime.workers,
            runtime.max_connections,
            duration::display(runtime.shutdown_grace)
        );
        if let Some(pid_file) = &runtime.pid_file {
            let _ = writeln!(out, "pid_file {}", pid_file.display());
        }
        let _ = writeln!(out, "admin {}", self.admin.bind);
        for listener in &self.listeners {
            let _ = writeln!(
                out,
                "listener {} {} -> pool {} (max {} connections)",
                listener.name, listener.bind, listener.pool, listener.max_connections
            );
        }
        for pool in &self.pools {
            let _ = writeln!(out, "{}", pool_line(pool));
        }
        out
    }
}

/// `pool web: round-robin over 2 servers (127.0.0.1:9001, 127.0.0.1:9002), connect_timeout 2s,
/// idle_timeout 5m, retries 2`.
fn pool_line(pool: &PoolConfig) -> String {
    let servers: Vec<String> = pool.servers.iter().map(server_text).collect();
    format!(
        "pool {}: {} over {} server{} ({}), connect_timeout {}, idle_timeout {}, retries {}",
        pool.name,
        pool.balance.name(),
        pool.servers.len(),
        if pool.servers.len() == 1 { "" } else { "s" },
        servers.join(", "),
        duration::display(pool.connect_timeout),
        duration::display(pool.idle_timeout),
        pool.retries
    )
}

/// The address as written, what a host name resolved to, and a weight other than the default.
fn server_text(server: &ServerConfig) -> String {
    let mut text = server.addr.clone();
    if server.resolved.to_string() != server.addr {
        let _ = write!(text, " = {}", server.resolved);
    }
    if server.weight != DEFAULT_WEIGHT {
        let _ = write!(text, " weight {}", server.weight);
    }
    text
}
