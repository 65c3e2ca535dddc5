//! Configuration: the TOML file as written by the operator, validated into typed structs.
//!
//! Owns parsing, defaults and validation. Every error names the file, line, column and key.
//! It never touches sockets or the data path; resolving server host names is the only I/O.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A validated configuration. Listeners and pools are kept in file order of their names
/// (sorted, as TOML tables are maps).
#[derive(Debug, Clone)]
pub struct Config {
    /// Path the configuration was read from (for messages and reload).
    pub path: PathBuf,
    pub runtime: RuntimeConfig,
    pub admin: AdminConfig,
    pub listeners: Vec<ListenerConfig>,
    pub pools: Vec<PoolConfig>,
}

#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Worker threads; 0 in the file means one per online core, resolved here.
    pub workers: usize,
    /// Process-wide limit of concurrent client connections.
    pub max_connections: u32,
    /// How long open connections may run after SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub bind: SocketAddr,
}

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub name: String,
    pub bind: SocketAddr,
    /// Name of a pool that exists in `Config::pools`.
    pub pool: String,
    /// Concurrent client connections on this listener (defaults to the runtime limit).
    pub max_connections: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
}

#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub name: String,
    pub balance: Balance,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// Extra attempts on other servers after a refused or timed-out connect.
    pub retries: u32,
    pub servers: Vec<ServerConfig>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `name` from the file, or the `addr` string when absent.
    pub name: String,
    /// The address as written (`host:port`, `1.2.3.4:80`, `[::1]:80`).
    pub addr: String,
    /// `addr` resolved at load time.
    pub resolved: SocketAddr,
    pub weight: u32,
}

/// Reads and validates a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let _ = path;
    todo!("config loading")
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Todo(String),
}
