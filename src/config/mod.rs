//! Configuration: the TOML file as written by the operator, validated into typed structs.
//!
//! Owns parsing, defaults and validation. Every error names the file, line, column and key.
//! It never touches sockets or the data path; resolving server host names is the only I/O.
//!
//! The pipeline is `raw` (serde structs mirroring the file, every value with its span) ->
//! `validate` (defaults, ranges, cross references, name resolution) -> the typed structs below.
//! `locate` turns spans into `line:column` and, with the key map of `document`, names the key of
//! serde's own errors.

mod document;
mod duration;
mod keypath;
mod locate;
mod raw;
mod summary;
mod validate;

#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::balance::Policy;

pub use duration::DurationError;
pub use keypath::KeyPath;
pub use locate::Position;

/// `runtime.workers` when absent; 0 means one worker per online core.
pub const DEFAULT_WORKERS: usize = 0;
/// Upper bound of `runtime.workers`, a guard against typos (each worker owns a ring and its
/// descriptor table).
pub const MAX_WORKERS: usize = 1024;
/// `runtime.max_connections` when absent.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 100_000;
/// `runtime.shutdown_grace` when absent.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// `admin.bind` when absent: loopback only, the admin endpoints are not for the outside.
pub const DEFAULT_ADMIN_BIND: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9900);
/// `pools.*.balance` when absent.
pub const DEFAULT_BALANCE: Policy = Policy::RoundRobin;
/// `pools.*.connect_timeout` when absent.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// `pools.*.idle_timeout` when absent.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// `pools.*.retries` when absent.
pub const DEFAULT_RETRIES: u32 = 2;
/// Upper bound of `pools.*.retries`, a guard against typos.
pub const MAX_RETRIES: u32 = 100;
/// `pools.*.servers[].weight` when absent.
pub const DEFAULT_WEIGHT: u32 = 1;
/// Upper bound of `pools.*.servers[].weight`.
pub use crate::balance::MAX_WEIGHT;
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(5);
/// Servers one pool may have (the balancing policies index them with 16 bits and build tables
/// per pool; far beyond any real pool).
pub use crate::balance::MAX_SERVERS;
/// Maglev's lookup table: a prime well above the server count keeps the shares within 1 %.
pub use crate::balance::{DEFAULT_TABLE_SIZE as DEFAULT_HASH_TABLE_SIZE, MAX_TABLE_SIZE as MAX_HASH_TABLE_SIZE};
/// `pools.*.health.interval` when absent; `timeout` defaults to the interval.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// `pools.*.health.rise` when absent: consecutive successful checks that bring a server up.
pub const DEFAULT_RISE: u32 = 2;
/// `pools.*.health.fall` when absent: consecutive failed checks that take a server down.
pub const DEFAULT_FALL: u32 = 3;
/// `pools.*.health.passive_fall` when absent: consecutive connect failures seen by live
/// traffic that take a server down without waiting for a check.
pub const DEFAULT_PASSIVE_FALL: u32 = 3;
/// Upper bound of `rise`, `fall` and `passive_fall`, a guard against typos.
pub const MAX_RISE_FALL: u32 = 1000;
/// `pools.*.health.path` when absent.
pub const DEFAULT_CHECK_PATH: &str = "/";
/// `pools.*.health.expect_status` when absent: success and redirects, as HAProxy.
pub const DEFAULT_EXPECT_STATUS: StatusRanges = StatusRanges::from_static(&[(200, 399)]);
/// `pools.*.health.on_all_down` when absent.
pub const DEFAULT_ON_ALL_DOWN: OnAllDown = OnAllDown::Reject;
/// `pools.*.health.initial_state` when absent: servers take traffic until a check fails.
pub const DEFAULT_INITIAL_STATE: InitialState = InitialState::Up;

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
    /// The sha256 of the file's bytes in lowercase hex, as `sha256sum` prints it: two nodes run
    /// the same configuration when their digests are equal.
    pub sha256: String,
}

#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Worker threads; 0 in the file means one per online core, resolved here.
    pub workers: usize,
    /// Process-wide limit of concurrent client connections.
    pub max_connections: u32,
    /// How long open connections may run after SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
    /// Account to switch to after binding, when started as root.
    pub user: Option<String>,
    /// How the data path moves bytes.
    pub splice: SpliceMode,
    /// One log line per connection at close.
    pub log_connections: bool,
    /// Where `ringlb run` writes its process id (`ringlb reload` reads it); a relative path in
    /// the file is taken relative to the file's directory.
    pub pid_file: Option<PathBuf>,
}

/// `runtime.splice`: when the data path uses splice (through pipes, on io-wq kernel threads)
/// rather than recv/send through a memory buffer (completed inline).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SpliceMode {
    /// Copy small messages; splice a direction once it carries a bulk transfer.
    #[default]
    Auto,
    /// Splice everything.
    Always,
    /// Copy everything.
    Never,
}

impl SpliceMode {
    pub fn name(self) -> &'static str {
        match self {
            SpliceMode::Auto => "auto",
            SpliceMode::Always => "always",
            SpliceMode::Never => "never",
        }
    }
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

#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub name: String,
    /// `balance`, with `hash_table_size` in its source-hash variant.
    pub balance: Policy,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// Extra attempts on other servers after a refused or timed-out connect.
    pub retries: u32,
    /// How long a client waits for a server slot when every server is at its max_connections.
    pub queue_timeout: Duration,
    /// When a server resets or closes a connection before its first byte, replay the client's
    /// bytes (if they are all still held) to another server. See `conn::replay`.
    pub retry_on_empty_response: bool,
    pub health: HealthConfig,
    pub servers: Vec<ServerConfig>,
}

/// `[pools.NAME.health]`: how the prober decides which servers are up.
#[derive(Debug, Clone)]
pub struct HealthConfig {
    pub check: HealthCheck,
    /// Time between the starts of two checks of one server (at most; see the prober's jitter).
    pub interval: Duration,
    /// How long one check may take, connect included.
    pub timeout: Duration,
    /// Consecutive successful checks that bring a down server up.
    pub rise: u32,
    /// Consecutive failed checks that take an up server down.
    pub fall: u32,
    /// Consecutive connect failures seen by live traffic that take a server down at once;
    /// 0 = off. Always 0 when `check` is none, as nothing would bring the server back.
    pub passive_fall: u32,
    pub on_all_down: OnAllDown,
    pub initial_state: InitialState,
}

/// What one health check does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheck {
    /// No checks: every server is always up.
    None,
    /// A TCP connect.
    Tcp,
    /// `GET path` answered with a status in `expect_status`.
    Http { path: String, expect_status: StatusRanges, host: Option<String> },
    /// `send` written (nothing when empty), then a reply starting with `expect`.
    SendExpect { send: String, expect: String },
}

impl HealthCheck {
    /// The spelling used in the file.
    pub fn name(&self) -> &'static str {
        match self {
            HealthCheck::None => "none",
            HealthCheck::Tcp => "tcp",
            HealthCheck::Http { .. } => "http",
            HealthCheck::SendExpect { .. } => "send-expect",
        }
    }
}

/// The HTTP statuses an http check accepts, as inclusive ranges (`"200-399"`, `"200,204"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRanges(Cow<'static, [(u16, u16)]>);

impl StatusRanges {
    pub const fn from_static(ranges: &'static [(u16, u16)]) -> StatusRanges {
        StatusRanges(Cow::Borrowed(ranges))
    }

    pub fn from_ranges(ranges: Vec<(u16, u16)>) -> StatusRanges {
        StatusRanges(Cow::Owned(ranges))
    }

    pub fn contains(&self, status: u16) -> bool {
        self.0.iter().any(|&(low, high)| (low..=high).contains(&status))
    }
}

impl std::fmt::Display for StatusRanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, &(low, high)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if low == high {
                write!(f, "{low}")?;
            } else {
                write!(f, "{low}-{high}")?;
            }
        }
        Ok(())
    }
}

/// What new clients of a pool get when every server is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnAllDown {
    /// Closed at once.
    Reject,
    /// Sent to any server, health ignored (a drained server is still skipped).
    FailOpen,
}

impl OnAllDown {
    /// The spelling used in the file.
    pub fn name(self) -> &'static str {
        match self {
            OnAllDown::Reject => "reject",
            OnAllDown::FailOpen => "fail-open",
        }
    }
}

/// A server's state before its first check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialState {
    /// Up until a check fails.
    Up,
    /// Down until `rise` checks succeed.
    Down,
}

impl InitialState {
    /// The spelling used in the file.
    pub fn name(self) -> &'static str {
        match self {
            InitialState::Up => "up",
            InitialState::Down => "down",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `name` from the file, or the `addr` string when absent.
    pub name: String,
    /// The address as written (`host:port`, `1.2.3.4:80`, `[::1]:80`).
    pub addr: String,
    /// `addr` resolved at load time.
    pub resolved: SocketAddr,
    /// 0 = no new connections (draining by configuration).
    pub weight: u32,
    /// Used only when no non-backup server of the pool is usable.
    pub backup: bool,
    /// Concurrent connections to this server; 0 = unlimited.
    pub max_connections: u32,
    /// After the server comes (back) up, its effective weight ramps up over this long; zero = off.
    pub slow_start: Duration,
    /// False (`check = false`): never checked, always up.
    pub check: bool,
    /// The port checks connect to instead of the server's own (`check_port`).
    pub check_port: Option<u16>,
}

impl ServerConfig {
    /// Where the health checks of this server connect.
    pub fn check_addr(&self) -> SocketAddr {
        SocketAddr::new(self.resolved.ip(), self.check_port.unwrap_or(self.resolved.port()))
    }
}

/// Reads and validates a configuration file. Server host names are resolved with the system
/// resolver.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let read_error = |source| ConfigError::Read { path: path.to_owned(), source };
    let bytes = std::fs::read(path).map_err(read_error)?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        // The prefix is valid UTF-8 by definition; the fallback only keeps this free of panics.
        let valid = std::str::from_utf8(valid).unwrap_or_default();
        ConfigError::Invalid {
            path: path.to_owned(),
            at: Position::of(valid, valid.len()),
            problem: Box::new(Problem::Syntax("not valid UTF-8".to_owned())),
        }
    })?;
    parse(&text, path)
}

/// Validates configuration text; `path` is only used in messages and kept in [`Config::path`].
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    parse_with(text, path, &system_resolve)
}

/// Turns a host name and port into addresses. The first address is the one used.
pub(crate) type Resolve<'a> = &'a dyn Fn(&str, u16) -> io::Result<Vec<SocketAddr>>;

fn system_resolve(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    Ok((host, port).to_socket_addrs()?.collect())
}

/// [`parse`] with a chosen resolver, so that tests never depend on DNS.
pub(crate) fn parse_with(text: &str, path: &Path, resolve: Resolve) -> Result<Config, ConfigError> {
    let invalid = |(offset, problem)| ConfigError::Invalid {
        path: path.to_owned(),
        at: Position::of(text, offset),
        problem: Box::new(problem),
    };
    // The untyped read accepts any valid TOML, so its failure is a syntax error; it is also the
    // map that names the key of a serde error in the typed read.
    let document: document::Document = toml::from_str(text).map_err(|e| invalid(locate::explain(&e, None)))?;
    let raw: raw::RawConfig = toml::from_str(text).map_err(|e| invalid(locate::explain(&e, Some(&document))))?;
    let mut config = validate::validate(raw, text, path, resolve).map_err(invalid)?;
    config.sha256 = sha256_hex(text.as_bytes());
    Ok(config)
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes).iter().fold(String::with_capacity(64), |mut hex, byte| {
        hex.push_str(&format!("{byte:02x}"));
        hex
    })
}

/// Why a configuration was refused. Displays as one line: `FILE: reason` when the file could not
/// be read, `FILE:LINE:COLUMN: problem` otherwise.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: {}", path.display(), io_reason(source))]
    Read { path: PathBuf, source: io::Error },
    #[error("{}:{at}: {problem}", path.display())]
    Invalid { path: PathBuf, at: Position, problem: Box<Problem> },
}

impl ConfigError {
    /// The problem and its position, for errors found in the text.
    pub fn problem(&self) -> Option<(Position, &Problem)> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Invalid { at, problem, .. } => Some((*at, &**problem)),
        }
    }
}

/// The system's words for an I/O error without Rust's " (os error N)" suffix, as `nginx -t` or
/// `cat` would say it.
fn io_reason(error: &io::Error) -> String {
    let text = error.to_string();
    match error.raw_os_error() {
        Some(code) => text.strip_suffix(&format!(" (os error {code})")).unwrap_or(&text).to_owned(),
        None => text,
    }
}

/// What is wrong in the configuration text. Every variant that concerns a key names it by its full
/// path (`pools.web.connect_timeout`); the position is carried by [`ConfigError::Invalid`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// Not TOML (or not UTF-8), in the TOML parser's words.
    #[error("{0}")]
    Syntax(String),
    #[error("unknown key `{key}` in {}, {}", table.table(), expected_keys(expected))]
    UnknownKey { key: String, table: KeyPath, expected: String },
    #[error("missing key `{key}` in {}", table.table())]
    MissingKey { table: KeyPath, key: String },
    /// A value of the wrong TOML type, in serde's words.
    #[error("{key}: {message}")]
    BadValue { key: KeyPath, message: String },
    #[error("{key}: must be between {min} and {max}, got {value}")]
    OutOfRange { key: KeyPath, value: i64, min: i64, max: i64 },
    #[error("{key}: invalid duration {text:?} ({})", duration_hint(*reason))]
    BadDuration { key: KeyPath, text: String, reason: DurationError },
    #[error("{key}: must be longer than 0ms")]
    ZeroDuration { key: KeyPath },
    #[error("{key}: invalid socket address {text:?} (use e.g. \"0.0.0.0:8080\" or \"[::]:8080\")")]
    BadBind { key: KeyPath, text: String },
    /// Two binds on one address; `first` says where the other one is.
    #[error("{key}: {bind} is already the bind of {first}")]
    DuplicateBind { key: KeyPath, bind: SocketAddr, first: String },
    #[error("{key}: no pool named {pool:?}")]
    NoSuchPool { key: KeyPath, pool: String },
    #[error("{key}: unknown balance {text:?}, expected {}", Policy::EXPECTED)]
    UnknownBalance { key: KeyPath, text: String },
    #[error("{key}: {value} is not a prime (source-hash needs a prime table size, e.g. 65537)")]
    NotPrime { key: KeyPath, value: u32 },
    #[error("{pool}: {count} servers; at most {max} per pool")]
    TooManyServers { pool: KeyPath, count: usize, max: usize },
    #[error("{pool}: no servers (add a [[{pool}.servers]] table with an addr)")]
    NoServers { pool: KeyPath },
    #[error("{key}: invalid address {addr:?}: {reason}")]
    BadAddr { key: KeyPath, addr: String, reason: String },
    #[error("{key}: cannot resolve {addr:?}: {reason}")]
    Unresolved { key: KeyPath, addr: String, reason: String },
    #[error("{key}: server name {name:?} is already used in {pool} on line {first_line}")]
    DuplicateServerName { key: KeyPath, name: String, pool: KeyPath, first_line: usize },
    #[error("{key}: invalid name {name:?} ({rule})")]
    BadName { key: KeyPath, name: String, rule: &'static str },
    #[error("no listeners: add a [listeners.NAME] table with a bind and a pool")]
    NoListeners,
    #[error("{key}: unknown value {text:?}, expected {expected}")]
    UnknownChoice { key: KeyPath, text: String, expected: &'static str },
    /// A key that only means something with another kind of check.
    #[error("{key}: only used with check = {check:?}")]
    NotForCheck { key: KeyPath, check: &'static str },
    #[error("{key}: needs an active check (with check = \"none\" nothing would bring a server back up)")]
    NeedsActiveCheck { key: KeyPath },
}

fn expected_keys(expected: &str) -> String {
    if expected.is_empty() {
        "which takes no keys".to_owned()
    } else {
        format!("expected one of {expected}")
    }
}

fn duration_hint(reason: DurationError) -> String {
    match reason {
        DurationError::Overflow => reason.to_string(),
        _ => r#"use e.g. "500ms", "2s", "5m", "1h""#.to_owned(),
    }
}
