//! The integration-test harness: starts the real `ringlb` binary (and `ringlb demo-backend`) as
//! child processes on loopback, waits for their readiness lines on stderr, and cleans them up.
//!
//! Everything here talks to the processes the way an operator would: a config file, stderr lines,
//! signals and real sockets. It never reaches into ringlb's internals, and every process it starts
//! is killed when its handle is dropped, also when a test fails.

#![allow(dead_code)] // Each test binary uses its own subset of the harness.

pub mod admin;
pub mod backends;
pub mod clients;
pub mod scenarios;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

/// The binary under test, built by cargo for the integration tests.
pub const RINGLB: &str = env!("CARGO_BIN_EXE_ringlb");
/// How long a process may take to print its readiness line.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether `tool` runs (`ip` knows only `-V`, the others `--version`): tests that need a tool
/// from another package skip when it is missing (see `skip`).
pub fn have(tool: &str) -> bool {
    let flag = if tool == "ip" { "-V" } else { "--version" };
    Command::new(tool).arg(flag).output().is_ok_and(|o| o.status.success())
}

/// Says why a test (or a part of one) cannot run on this host, for a missing tool, privilege or
/// host feature; the caller then returns. With `CI=true` it panics instead: CI installs and
/// provides everything the tests need (.ci/run), so a skip there would pass without testing.
pub fn skip(reason: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true, so this test may not skip: {reason}");
    }
    eprintln!("skipped: {reason}");
}

/// A child process whose stderr is collected line by line in a background thread (so the pipe
/// never fills), each line with the instant it arrived; killed on drop unless it has already
/// exited.
pub struct Proc {
    child: Child,
    what: String,
    log: Arc<Mutex<Vec<(Instant, String)>>>,
    lines: Receiver<String>,
    status: Option<ExitStatus>,
}

impl Proc {
    pub fn spawn(what: &str, args: &[&str]) -> Proc {
        raise_nofile_limit();
        let mut child = Command::new(RINGLB)
            .args(args)
            .env("NO_COLOR", "1")
            // The default level, whatever the environment says: tests wait for info lines.
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what} ({RINGLB}): {e}"));
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, lines) = mpsc::channel();
        let thread_log = Arc::clone(&log);
        std::thread::spawn(move || collect_lines(stderr, &thread_log, &tx));
        Proc { child, what: what.to_string(), log, lines, status: None }
    }

    /// Waits until a stderr line satisfies `found` and returns what it extracted. Panics with the
    /// collected output if the process exits or `START_TIMEOUT` passes first.
    pub fn wait_for_line<T>(&mut self, mut found: impl FnMut(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(value) = found(&line) {
                        return value;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("{} not ready after {START_TIMEOUT:?}; stderr:\n{}", self.what, self.log())
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.wait_exit(Duration::from_secs(1));
                    panic!("{} exited ({status:?}) before it was ready; stderr:\n{}", self.what, self.log())
                }
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process wrote to stderr so far.
    pub fn log(&self) -> String {
        let lines = self.log.lock().unwrap_or_else(|e| e.into_inner());
        lines.iter().map(|(_, line)| line.as_str()).collect::<Vec<_>>().join("\n")
    }

    /// The first stderr line so far containing `text`, with the instant it arrived.
    pub fn find(&self, text: &str) -> Option<(Instant, String)> {
        let lines = self.log.lock().unwrap_or_else(|e| e.into_inner());
        lines.iter().find(|(_, line)| line.contains(text)).cloned()
    }

    /// How many stderr lines so far contain `text`.
    pub fn count(&self, text: &str) -> usize {
        let lines = self.log.lock().unwrap_or_else(|e| e.into_inner());
        lines.iter().filter(|(_, line)| line.contains(text)).count()
    }

    pub fn signal(&self, signal: libc::c_int) {
        if self.status.is_some() {
            return;
        }
        // SAFETY: kill(2) with a pid we own and have not reaped (status is None).
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill({}, {signal}) failed: {}", self.pid(), std::io::Error::last_os_error());
    }

    /// The exit status, waiting at most `timeout` for it; `None` if still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = wait_child(&mut self.child, timeout);
        }
        self.status
    }

    pub fn is_running(&mut self) -> bool {
        self.wait_exit(Duration::ZERO).is_none()
    }

    /// Threads of the process, from /proc/PID/task.
    pub fn thread_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/task", self.pid()))
            .map(|dir| dir.count())
            .unwrap_or_else(|e| panic!("cannot read the threads of {}: {e}", self.what))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.is_none() && self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- stderr of {} ---\n{}\n--- end ---", self.what, self.log());
        }
    }
}

fn collect_lines(stderr: ChildStderr, log: &Mutex<Vec<(Instant, String)>>, tx: &mpsc::Sender<String>) {
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        let arrived = Instant::now();
        let line = strip_ansi(&line);
        log.lock().unwrap_or_else(|e| e.into_inner()).push((arrived, line.clone()));
        // Nobody listens after start-up; the line stays in `log`.
        let _ = tx.send(line);
    }
}

/// Removes terminal colour sequences (`ESC [ ... letter`) so log lines can be parsed.
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Waits for a child to exit without busy polling: a pidfd becomes readable when it exits.
fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
    // SAFETY: a non-negative return is a descriptor that nothing else owns.
    let pidfd = (raw >= 0).then(|| unsafe { OwnedFd::from_raw_fd(raw as i32) });
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        match &pidfd {
            Some(fd) => {
                let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut pfd, 1, ms) };
            }
            None => std::thread::sleep(left.min(Duration::from_millis(5))),
        }
    }
}

/// Raises this process's soft descriptor limit to the hard one (children inherit it).
pub fn raise_nofile_limit() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: valid out-pointer; setrlimit with values read from getrlimit.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
                lim.rlim_cur = lim.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            }
        }
    });
}

/// A listener as announced by `listener NAME bound ADDR -> pool POOL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub name: String,
    pub addr: SocketAddr,
    pub pool: String,
}

/// Finds `listener NAME bound ADDR -> pool POOL` anywhere in a log line.
pub fn parse_listener_line(line: &str) -> Option<Listener> {
    let clean = |s: &str| s.trim_matches(|c| c == '"' || c == '\'' || c == ',').to_string();
    let words: Vec<&str> = line.split_whitespace().collect();
    words.windows(7).find_map(|w| match w {
        ["listener", name, "bound", addr, "->", "pool", pool] => {
            Some(Listener { name: clean(name), addr: clean(addr).parse().ok()?, pool: clean(pool) })
        }
        _ => None,
    })
}

/// Finds `admin listening on ADDR` anywhere in a log line.
pub fn parse_admin_line(line: &str) -> Option<SocketAddr> {
    let rest = line.split_once("admin listening on ")?.1;
    rest.split_whitespace().next()?.parse().ok()
}

/// A running `ringlb run -c FILE`, ready (its `ringlb running with` line was printed).
pub struct Ringlb {
    proc: Proc,
    config_path: PathBuf,
    listeners: Vec<Listener>,
    admin: Option<SocketAddr>,
}

impl Ringlb {
    pub fn start(config_toml: &str) -> Ringlb {
        let config_path = temp_path("ringlb", "toml");
        std::fs::write(&config_path, config_toml)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", config_path.display()));
        let path = config_path.to_string_lossy().into_owned();
        let mut proc = Proc::spawn("ringlb", &["run", "-c", &path]);
        let mut listeners = Vec::new();
        let mut admin = None;
        proc.wait_for_line(|line| {
            if let Some(listener) = parse_listener_line(line) {
                listeners.push(listener);
            }
            admin = admin.or_else(|| parse_admin_line(line));
            line.contains("ringlb running with").then_some(())
        });
        assert!(!listeners.is_empty(), "ringlb announced no listener; stderr:\n{}", proc.log());
        Ringlb { proc, config_path, listeners, admin }
    }

    /// The address of the admin API, as announced by `admin listening on ADDR`.
    pub fn admin_addr(&self) -> SocketAddr {
        match self.admin {
            Some(addr) => addr,
            None => panic!("ringlb announced no admin address; stderr:\n{}", self.log()),
        }
    }

    pub fn config_path(&self) -> &std::path::Path {
        &self.config_path
    }

    pub fn listeners(&self) -> &[Listener] {
        &self.listeners
    }

    /// The bound address of the listener called `name`.
    pub fn addr_of(&self, name: &str) -> SocketAddr {
        match self.listeners.iter().find(|l| l.name == name) {
            Some(l) => l.addr,
            None => panic!("no listener {name:?} among {:?}", self.listeners),
        }
    }

    /// The bound address of the only listener.
    pub fn addr(&self) -> SocketAddr {
        assert_eq!(self.listeners.len(), 1, "several listeners: {:?}", self.listeners);
        self.listeners[0].addr
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn thread_count(&self) -> usize {
        self.proc.thread_count()
    }

    pub fn sigterm(&self) {
        self.proc.signal(libc::SIGTERM);
    }

    /// Replaces the configuration file and sends SIGHUP (a reload).
    pub fn reload_with(&self, config_toml: &str) {
        std::fs::write(&self.config_path, config_toml)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", self.config_path.display()));
        self.proc.signal(libc::SIGHUP);
    }

    /// Waits (up to `START_TIMEOUT`) for a stderr line containing `text` printed after this call
    /// or before it; returns the line.
    pub fn wait_for_log(&mut self, text: &str) -> String {
        if let Some((_, line)) = self.proc.find(text) {
            return line;
        }
        self.proc.wait_for_line(|line| line.contains(text).then(|| line.to_string()))
    }

    /// For async tests (it never blocks the runtime): waits up to `within` for a stderr line
    /// containing `text`, printed before this call or after it; returns the first such line and
    /// the instant it arrived. Panics with the log after `within`.
    pub async fn wait_for_log_async(&self, text: &str, within: Duration) -> (Instant, String) {
        match admin::poll(within, || self.find(text)).await {
            Some(found) => found,
            None => panic!("no log line with {text:?} within {within:?}:\n{}", self.log()),
        }
    }

    /// The first stderr line so far containing `text`, with the instant it arrived.
    pub fn find(&self, text: &str) -> Option<(Instant, String)> {
        self.proc.find(text)
    }

    /// How many stderr lines so far contain `text`.
    pub fn count(&self, text: &str) -> usize {
        self.proc.count(text)
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.proc.wait_exit(timeout)
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    pub fn log(&self) -> String {
        self.proc.log()
    }
}

impl Drop for Ringlb {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config_path);
    }
}

/// A `ringlb demo-backend` process, ready (its `listening on` line was printed).
pub struct DemoBackend {
    proc: Proc,
    pub name: String,
    pub addr: SocketAddr,
}

impl DemoBackend {
    pub fn start(name: &str) -> DemoBackend {
        DemoBackend::start_at(name, "127.0.0.1:0")
    }

    pub fn start_at(name: &str, bind: &str) -> DemoBackend {
        let what = format!("demo-backend {name}");
        let mut proc = Proc::spawn(&what, &["demo-backend", "--bind", bind, "--name", name]);
        let marker = format!("demo-backend {name} listening on ");
        let addr = proc.wait_for_line(|line| {
            let rest = line.split_once(&marker)?.1;
            rest.trim().parse::<SocketAddr>().ok()
        });
        DemoBackend { proc, name: name.to_string(), addr }
    }

    pub fn proc(&mut self) -> &mut Proc {
        &mut self.proc
    }
}

/// A fresh path in cargo's scratch directory for integration tests.
pub fn temp_path(stem: &str, ext: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{stem}-{}-{n}.{ext}", std::process::id()))
}

/// A pool in a test configuration.
#[derive(Debug, Clone)]
pub struct PoolSpec {
    pub name: String,
    pub servers: Vec<SocketAddr>,
    pub connect_timeout: String,
    pub idle_timeout: String,
    pub retries: u32,
}

impl PoolSpec {
    pub fn new(name: &str, servers: &[SocketAddr]) -> PoolSpec {
        PoolSpec {
            name: name.to_string(),
            servers: servers.to_vec(),
            connect_timeout: "2s".to_string(),
            idle_timeout: "60s".to_string(),
            retries: 0,
        }
    }

    pub fn connect_timeout(mut self, value: &str) -> PoolSpec {
        self.connect_timeout = value.to_string();
        self
    }

    pub fn idle_timeout(mut self, value: &str) -> PoolSpec {
        self.idle_timeout = value.to_string();
        self
    }

    pub fn retries(mut self, value: u32) -> PoolSpec {
        self.retries = value;
        self
    }
}

/// A ringlb configuration for tests, rendered to TOML in one place.
#[derive(Debug, Clone)]
pub struct TestConfig {
    pub workers: usize,
    pub max_connections: Option<u32>,
    pub shutdown_grace: String,
    /// (name, bind, pool)
    pub listeners: Vec<(String, String, String)>,
    pub pools: Vec<PoolSpec>,
}

impl TestConfig {
    pub fn new() -> TestConfig {
        TestConfig {
            workers: 2,
            max_connections: None,
            shutdown_grace: "2s".to_string(),
            listeners: Vec::new(),
            pools: Vec::new(),
        }
    }

    /// One listener `front` on 127.0.0.1:0 to the pool `pool`.
    pub fn single(pool: PoolSpec) -> TestConfig {
        TestConfig::new().listener("front", "127.0.0.1:0", &pool.name.clone()).pool(pool)
    }

    pub fn workers(mut self, n: usize) -> TestConfig {
        self.workers = n;
        self
    }

    pub fn max_connections(mut self, n: u32) -> TestConfig {
        self.max_connections = Some(n);
        self
    }

    pub fn shutdown_grace(mut self, value: &str) -> TestConfig {
        self.shutdown_grace = value.to_string();
        self
    }

    pub fn listener(mut self, name: &str, bind: &str, pool: &str) -> TestConfig {
        self.listeners.push((name.to_string(), bind.to_string(), pool.to_string()));
        self
    }

    pub fn pool(mut self, pool: PoolSpec) -> TestConfig {
        self.pools.push(pool);
        self
    }

    pub fn to_toml(&self) -> String {
        let mut s = String::new();
        s += "[runtime]\n";
        s += &format!("workers = {}\n", self.workers);
        if let Some(n) = self.max_connections {
            s += &format!("max_connections = {n}\n");
        }
        s += &format!("shutdown_grace = \"{}\"\n\n", self.shutdown_grace);
        s += "[admin]\nbind = \"127.0.0.1:0\"\n\n";
        for (name, bind, pool) in &self.listeners {
            s += &format!("[listeners.{name}]\nbind = \"{bind}\"\npool = \"{pool}\"\n\n");
        }
        for pool in &self.pools {
            s += &format!("[pools.{}]\n", pool.name);
            s += &format!("connect_timeout = \"{}\"\n", pool.connect_timeout);
            s += &format!("idle_timeout = \"{}\"\n", pool.idle_timeout);
            s += &format!("retries = {}\n\n", pool.retries);
            // No health checks: tests that count what the backends accept see only clients.
            s += &format!("[pools.{}.health]\ncheck = \"none\"\n\n", pool.name);
            for server in &pool.servers {
                s += &format!("[[pools.{}.servers]]\naddr = \"{server}\"\n\n", pool.name);
            }
        }
        s
    }

    pub fn start(&self) -> Ringlb {
        Ringlb::start(&self.to_toml())
    }
}

impl Default for TestConfig {
    fn default() -> TestConfig {
        TestConfig::new()
    }
}
