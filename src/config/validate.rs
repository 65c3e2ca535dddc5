//! Raw configuration -> typed [`Config`]: defaults, ranges, names, cross references and the
//! resolution of server addresses.
//!
//! Every problem found is recorded with the byte offset it concerns and the earliest one in the
//! file is reported, like a compiler's first error, whatever order the checks run in. Nothing
//! here reads files or binds sockets; the resolver it is given is its only I/O.

mod health;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::keypath::KeyPath;
use super::locate::Position;
use super::raw::{Int, RawAdmin, RawConfig, RawPool, RawRuntime, RawServer};
use super::{
    duration, AdminConfig, Config, ListenerConfig, PoolConfig, Problem, Resolve, RuntimeConfig, ServerConfig,
    SpliceMode, DEFAULT_ADMIN_BIND, DEFAULT_BALANCE, DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_RETRIES, DEFAULT_SHUTDOWN_GRACE, DEFAULT_WEIGHT, DEFAULT_WORKERS, MAX_RETRIES,
    MAX_WEIGHT, MAX_WORKERS,
};
use super::{DEFAULT_HASH_TABLE_SIZE, DEFAULT_QUEUE_TIMEOUT, MAX_HASH_TABLE_SIZE, MAX_SERVERS};
use crate::balance::Policy;

/// The longest listener or pool name; names end up in logs and metric labels.
const MAX_NAME_LEN: usize = 64;
const NAME_RULE: &str = "1 to 64 characters among A-Z a-z 0-9 _ . -";
const MAX_SERVER_NAME_LEN: usize = 128;
const SERVER_NAME_RULE: &str = "1 to 128 characters, no spaces or control characters";

pub(super) fn validate(raw: RawConfig, text: &str, path: &Path, resolve: Resolve) -> Result<Config, (usize, Problem)> {
    let mut check = Checker { text, problems: Vec::new() };
    let runtime = check.runtime(&raw.runtime, path);
    let (admin, admin_bind) = check.admin(&raw.admin);
    let pools = raw.pools.iter().map(|(name, pool)| check.pool(name, pool, resolve)).collect();
    let (listeners, listener_binds) = check.listeners(&raw, &runtime);
    check.duplicate_binds(admin_bind.into_iter().chain(listener_binds).collect());

    match check.problems.iter().min_by_key(|(offset, _)| *offset) {
        Some(earliest) => Err(earliest.clone()),
        None => Ok(Config { path: path.to_owned(), runtime, admin, listeners, pools, sha256: String::new() }),
    }
}

/// An address something will bind, for the duplicate check.
struct BindUse {
    /// Where the address is written; `None` for a default.
    offset: Option<usize>,
    addr: SocketAddr,
    key: KeyPath,
    /// Who binds it, as the other party of a duplicate will read it.
    owner: String,
}

struct Checker<'a> {
    text: &'a str,
    problems: Vec<(usize, Problem)>,
}

impl Checker<'_> {
    fn fail(&mut self, offset: usize, problem: Problem) {
        self.problems.push((offset, problem));
    }

    fn line(&self, offset: usize) -> usize {
        Position::of(self.text, offset).line
    }

    fn runtime(&mut self, raw: &RawRuntime, path: &Path) -> RuntimeConfig {
        let key = KeyPath::root().key("runtime");
        let workers = self.int(&raw.workers, key.key("workers"), 0, MAX_WORKERS);
        let workers = match workers.unwrap_or(DEFAULT_WORKERS) {
            // Without a core count (a restricted /proc or cgroup) one worker is the safe choice.
            0 => std::thread::available_parallelism().map_or(1, |cores| cores.get()),
            workers => workers,
        };
        let max_connections =
            self.int(&raw.max_connections, key.key("max_connections"), 1, u32::MAX).unwrap_or(DEFAULT_MAX_CONNECTIONS);
        let shutdown_grace =
            self.duration(&raw.shutdown_grace, key.key("shutdown_grace"), true).unwrap_or(DEFAULT_SHUTDOWN_GRACE);
        let user = match &raw.user {
            Some(user) if user.get_ref().is_empty() => {
                let message = "must not be empty".to_string();
                self.fail(user.span().start, Problem::BadValue { key: key.key("user"), message });
                None
            }
            user => user.as_ref().map(|u| u.get_ref().clone()),
        };
        let splice = match &raw.splice {
            None => SpliceMode::Auto,
            Some(v) => match v.get_ref().as_str() {
                "auto" => SpliceMode::Auto,
                "always" => SpliceMode::Always,
                "never" => SpliceMode::Never,
                other => {
                    let message = format!("unknown value {other:?} (expected \"auto\", \"always\" or \"never\")");
                    self.fail(v.span().start, Problem::BadValue { key: key.key("splice"), message });
                    SpliceMode::Auto
                }
            },
        };
        let pid_file = match &raw.pid_file {
            Some(file) if file.get_ref().is_empty() => {
                let message = "must not be empty".to_string();
                self.fail(file.span().start, Problem::BadValue { key: key.key("pid_file"), message });
                None
            }
            // Relative to the file's directory, so that `ringlb reload -c FILE` finds the file
            // `ringlb run -c FILE` wrote wherever each is started from.
            Some(file) => Some(path.parent().unwrap_or(Path::new("")).join(file.get_ref())),
            None => None,
        };
        let log_connections = raw.log_connections.as_ref().is_some_and(|v| *v.get_ref());
        RuntimeConfig { workers, max_connections, shutdown_grace, user, splice, log_connections, pid_file }
    }

    /// The admin section and its bind for the duplicate check (none when the bind is invalid).
    fn admin(&mut self, raw: &RawAdmin) -> (AdminConfig, Option<BindUse>) {
        let key = KeyPath::root().key("admin").key("bind");
        let Some(written) = &raw.bind else {
            let owner = "the admin endpoint (default admin.bind)".to_owned();
            let bind = BindUse { offset: None, addr: DEFAULT_ADMIN_BIND, key, owner };
            return (AdminConfig { bind: DEFAULT_ADMIN_BIND }, Some(bind));
        };
        let Some(addr) = self.bind(written, key.clone()) else {
            return (AdminConfig { bind: DEFAULT_ADMIN_BIND }, None);
        };
        let offset = written.span().start;
        let owner = format!("the admin endpoint (line {})", self.line(offset));
        (AdminConfig { bind: addr }, Some(BindUse { offset: Some(offset), addr, key, owner }))
    }

    /// Every listener (sorted by name) and, for the duplicate check, their binds.
    fn listeners(&mut self, raw: &RawConfig, runtime: &RuntimeConfig) -> (Vec<ListenerConfig>, Vec<BindUse>) {
        let listeners_key = KeyPath::root().key("listeners");
        if raw.listeners.is_empty() {
            self.fail(0, Problem::NoListeners);
        }
        let mut listeners = Vec::new();
        let mut binds = Vec::new();
        for (name, listener) in &raw.listeners {
            let key = listeners_key.key(name.get_ref());
            self.name(name, &key, MAX_NAME_LEN, NAME_RULE, is_name_char);
            let pool = listener.pool.get_ref();
            if !raw.pools.contains_key(pool.as_str()) {
                let problem = Problem::NoSuchPool { key: key.key("pool"), pool: pool.clone() };
                self.fail(listener.pool.span().start, problem);
            }
            let max_connections = self
                .int(&listener.max_connections, key.key("max_connections"), 1, u32::MAX)
                .unwrap_or(runtime.max_connections);
            let Some(bind) = self.bind(&listener.bind, key.key("bind")) else {
                continue;
            };
            let offset = listener.bind.span().start;
            let owner = format!("listener {} (line {})", KeyPath::root().key(name.get_ref()), self.line(offset));
            binds.push(BindUse { offset: Some(offset), addr: bind, key: key.key("bind"), owner });
            listeners.push(ListenerConfig { name: name.get_ref().clone(), bind, pool: pool.clone(), max_connections });
        }
        (listeners, binds)
    }

    /// An optional integer in `min..=max`; `None` when absent or out of range (the latter
    /// recorded as a problem).
    fn int<T: TryFrom<i64> + TryInto<i64>>(
        &mut self,
        value: &Option<Spanned<Int>>,
        key: KeyPath,
        min: T,
        max: T,
    ) -> Option<T> {
        let value = value.as_ref()?;
        let Int(number) = *value.get_ref();
        // Every bound used here fits in an i64; saturating keeps this total anyway.
        let min = min.try_into().unwrap_or(i64::MIN);
        let max = max.try_into().unwrap_or(i64::MAX);
        if (min..=max).contains(&number) {
            if let Ok(number) = T::try_from(number) {
                return Some(number);
            }
        }
        self.fail(value.span().start, Problem::OutOfRange { key, value: number, min, max });
        None
    }

    fn duration(&mut self, value: &Option<Spanned<String>>, key: KeyPath, zero_allowed: bool) -> Option<Duration> {
        let value = value.as_ref()?;
        let start = value.span().start;
        match duration::parse(value.get_ref()) {
            Ok(parsed) if parsed.is_zero() && !zero_allowed => {
                self.fail(start, Problem::ZeroDuration { key });
                None
            }
            Ok(parsed) => Some(parsed),
            Err(reason) => {
                let text = value.get_ref().clone();
                self.fail(start, Problem::BadDuration { key, text, reason });
                None
            }
        }
    }

    /// A socket address literal to listen on: `0.0.0.0:8080`, `[::]:8080`; port 0 lets the
    /// kernel choose.
    fn bind(&mut self, value: &Spanned<String>, key: KeyPath) -> Option<SocketAddr> {
        match value.get_ref().parse() {
            Ok(addr) => Some(addr),
            Err(_) => {
                let text = value.get_ref().clone();
                self.fail(value.span().start, Problem::BadBind { key, text });
                None
            }
        }
    }

    fn name(
        &mut self,
        name: &Spanned<String>,
        key: &KeyPath,
        max_len: usize,
        rule: &'static str,
        allowed: fn(char) -> bool,
    ) {
        let text = name.get_ref();
        if text.is_empty() || text.chars().count() > max_len || !text.chars().all(allowed) {
            let problem = Problem::BadName { key: key.clone(), name: text.clone(), rule };
            self.fail(name.span().start, problem);
        }
    }

    fn pool(&mut self, name: &Spanned<String>, pool: &RawPool, resolve: Resolve) -> PoolConfig {
        let key = KeyPath::root().key("pools").key(name.get_ref());
        self.name(name, &key, MAX_NAME_LEN, NAME_RULE, is_name_char);
        let balance = match pool.balance.as_ref().map(|text| (text, text.get_ref().parse::<Policy>())) {
            None => DEFAULT_BALANCE,
            Some((_, Ok(policy))) => policy,
            Some((text, Err(_))) => {
                let problem = Problem::UnknownBalance { key: key.key("balance"), text: text.get_ref().clone() };
                self.fail(text.span().start, problem);
                DEFAULT_BALANCE
            }
        };
        let connect_timeout =
            self.duration(&pool.connect_timeout, key.key("connect_timeout"), false).unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let idle_timeout =
            self.duration(&pool.idle_timeout, key.key("idle_timeout"), false).unwrap_or(DEFAULT_IDLE_TIMEOUT);
        let retries = self.int(&pool.retries, key.key("retries"), 0, MAX_RETRIES).unwrap_or(DEFAULT_RETRIES);
        let queue_timeout =
            self.duration(&pool.queue_timeout, key.key("queue_timeout"), true).unwrap_or(DEFAULT_QUEUE_TIMEOUT);
        let hash_table_size = match self.int(&pool.hash_table_size, key.key("hash_table_size"), 2, MAX_HASH_TABLE_SIZE)
        {
            Some(size) if !is_prime(size) => {
                let offset = pool.hash_table_size.as_ref().map_or(0, |v| v.span().start);
                self.fail(offset, Problem::NotPrime { key: key.key("hash_table_size"), value: size });
                DEFAULT_HASH_TABLE_SIZE
            }
            size => size.unwrap_or(DEFAULT_HASH_TABLE_SIZE),
        };
        let balance = match balance {
            Policy::SourceHash { .. } => Policy::SourceHash { table_size: hash_table_size },
            other => other,
        };
        if pool.servers.len() > MAX_SERVERS {
            let problem = Problem::TooManyServers { pool: key.clone(), count: pool.servers.len(), max: MAX_SERVERS };
            self.fail(name.span().start, problem);
        }
        let health = self.health(pool.health.as_deref(), &key.key("health"));

        if pool.servers.is_empty() {
            self.fail(name.span().start, Problem::NoServers { pool: key.clone() });
        }
        let mut servers = Vec::new();
        // Server name -> offset of its first use.
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (i, server) in pool.servers.iter().enumerate() {
            let server_key = key.key("servers").index(i);
            let Some(server) = self.server(server, &server_key, resolve) else {
                continue;
            };
            let (name, offset) = server;
            match seen.get(&name.name) {
                Some(&first) => {
                    let problem = Problem::DuplicateServerName {
                        key: server_key.key("name"),
                        name: name.name.clone(),
                        pool: key.clone(),
                        first_line: self.line(first),
                    };
                    self.fail(offset, problem);
                }
                None => {
                    seen.insert(name.name.clone(), offset);
                }
            }
            servers.push(name);
        }
        PoolConfig {
            name: name.get_ref().clone(),
            balance,
            connect_timeout,
            idle_timeout,
            retries,
            queue_timeout,
            retry_on_empty_response: pool.retry_on_empty_response.as_ref().is_some_and(|v| *v.get_ref()),
            health,
            servers,
        }
    }

    /// A validated server and the offset of the text its name comes from (the `name` value, or
    /// the `addr` value when the name defaults to it).
    fn server(&mut self, server: &RawServer, key: &KeyPath, resolve: Resolve) -> Option<(ServerConfig, usize)> {
        let weight = match &server.weight {
            None => Some(DEFAULT_WEIGHT),
            Some(_) => self.int(&server.weight, key.key("weight"), 0, MAX_WEIGHT),
        };
        let (name, name_offset) = match &server.name {
            Some(name) => {
                self.name(name, &key.key("name"), MAX_SERVER_NAME_LEN, SERVER_NAME_RULE, |c| {
                    !c.is_whitespace() && !c.is_control()
                });
                (name.get_ref().clone(), name.span().start)
            }
            None => (server.addr.get_ref().clone(), server.addr.span().start),
        };
        let addr = server.addr.get_ref();
        let resolved = match resolve_server(addr, resolve) {
            Ok(resolved) => Some(resolved),
            Err(error) => {
                let problem = error.into_problem(key.key("addr"), addr.clone());
                self.fail(server.addr.span().start, problem);
                None
            }
        };
        let check = server.check.as_ref().map_or(true, |check| *check.get_ref());
        // An invalid port is recorded as a problem; the config is refused then.
        let check_port = self.int(&server.check_port, key.key("check_port"), 1, u16::MAX);
        let backup = server.backup.as_ref().is_some_and(|b| *b.get_ref());
        let max_connections = self.int(&server.max_connections, key.key("max_connections"), 0, u32::MAX).unwrap_or(0);
        let slow_start = self.duration(&server.slow_start, key.key("slow_start"), true).unwrap_or(Duration::ZERO);
        let server = ServerConfig {
            name,
            addr: addr.clone(),
            resolved: resolved?,
            weight: weight?,
            backup,
            max_connections,
            slow_start,
            check,
            check_port,
        };
        Some((server, name_offset))
    }

    /// Reports every bind address used twice, at the later use, naming the earlier one. Port 0
    /// is never a duplicate: each such bind gets its own port from the kernel.
    fn duplicate_binds(&mut self, mut binds: Vec<BindUse>) {
        // `None` (a default, not in the file) sorts first.
        binds.sort_by_key(|bind| bind.offset);
        let mut owners: HashMap<SocketAddr, String> = HashMap::new();
        for BindUse { offset, addr, key, owner } in binds {
            if addr.port() == 0 {
                continue;
            }
            match owners.get(&addr) {
                Some(first) => {
                    let problem = Problem::DuplicateBind { key, bind: addr, first: first.clone() };
                    self.fail(offset.unwrap_or(0), problem);
                }
                None => {
                    owners.insert(addr, owner);
                }
            }
        }
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// Why a server address was refused, before it is attached to its key.
enum AddrError {
    Bad(&'static str),
    Unresolved(String),
}

impl AddrError {
    fn into_problem(self, key: KeyPath, addr: String) -> Problem {
        match self {
            AddrError::Bad(reason) => Problem::BadAddr { key, addr, reason: reason.to_owned() },
            AddrError::Unresolved(reason) => Problem::Unresolved { key, addr, reason },
        }
    }
}

const PORT_ZERO: &str = "port 0 cannot be connected to";

/// `1.2.3.4:80`, `[::1]:80` or `host:80`; a host name is resolved with `resolve` and its first
/// address is used.
fn resolve_server(addr: &str, resolve: Resolve) -> Result<SocketAddr, AddrError> {
    if let Ok(literal) = addr.parse::<SocketAddr>() {
        return match literal.port() {
            0 => Err(AddrError::Bad(PORT_ZERO)),
            _ => Ok(literal),
        };
    }
    let Some((host, port)) = addr.rsplit_once(':').filter(|_| !addr.ends_with(']')) else {
        return Err(AddrError::Bad(r#"expected host:port, e.g. "127.0.0.1:9001", "[::1]:9001""#));
    };
    if host.contains(':') && !host.starts_with('[') {
        return Err(AddrError::Bad(r#"IPv6 addresses are written in brackets, e.g. "[::1]:9001""#));
    }
    let port: u16 = port.parse().map_err(|_| AddrError::Bad("invalid port"))?;
    if port == 0 {
        return Err(AddrError::Bad(PORT_ZERO));
    }
    if host.starts_with('[') {
        return Err(AddrError::Bad("invalid IPv6 address"));
    }
    if !is_host_name(host) {
        return Err(AddrError::Bad("invalid host name"));
    }
    let addrs = resolve(host, port).map_err(|e| AddrError::Unresolved(e.to_string()))?;
    addrs.first().copied().ok_or_else(|| AddrError::Unresolved("no addresses".to_owned()))
}

/// A DNS name (letters, digits, `-` and `_` in dot-separated labels of at most 63 characters),
/// and not all digits and dots: "1.2.3.400" is a broken IPv4 address, never a name to look up.
fn is_host_name(host: &str) -> bool {
    let labels_ok = host.len() <= 253
        && host.trim_end_matches('.').split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    labels_ok && !host.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

fn is_prime(n: u32) -> bool {
    n >= 2 && (2..).take_while(|d: &u32| u64::from(*d) * u64::from(*d) <= u64::from(n)).all(|d| n % d != 0)
}
