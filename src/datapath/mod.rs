//! The data path: one io_uring worker thread per core.
//!
//! Each worker owns one ring, one SO_REUSEPORT listening socket per listener, a connection slab and
//! pools of pipes and copy buffers. It reads the backend table snapshot (arc-swap) when it opens a
//! connection and shares nothing else with the other workers but the connection counters that
//! enforce `max_connections`. It depends only on config, the backend table and metrics (each
//! worker counts in its own blocks, see [`crate::metrics`]); the control plane talks to it through
//! [`DataPath`]: the table it publishes and `shutdown()`.
//!
//! Where things are:
//! - `conn/`: a connection's whole life (open, pick and connect, proxying, teardown);
//! - `flow` and `direction`: one direction's pure state machine, and the two directions;
//! - `worker/`: the event loop, the slab, timers, and the acceptors (`worker/accept.rs`);
//! - `ring` (submission backlog, registered-table layout), `ops` (what `user_data` means),
//!   `pipes` and `memory` (the two kinds of buffer pool), `listener` (sockets), `connlog`, `warn`.

mod conn;
mod connlog;
mod direction;
mod flow;
mod listener;
mod memory;
mod ops;
mod pipes;
mod ring;
mod warn;
mod worker;

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam::channel::Sender;

use crate::config::{Config, ListenerConfig};
use crate::metrics::{ListenerStats, Metrics};
use crate::table::{BackendTable, SharedTable};

/// State shared by every worker: live counters and the shutdown flag. Written rarely (once per
/// connection open/close, or by a reload), never per byte. The limits those counters are held to
/// are in the published table (see [`crate::table`]), with everything else a connection reads.
pub struct Shared {
    pub shutdown: AtomicBool,
    pub grace_ms: AtomicU64,
    pub active: AtomicU32,
}

/// One listener as every worker sees it. Workers keep it for as long as a connection accepted on
/// it is open, also after a reload removed the listener. Where its connections go is not here but
/// in the table's routes, so that a reload switches pools and routes at once.
pub struct ListenerShared {
    pub name: String,
    pub active: AtomicU32,
    /// Its metric block (each worker counts in its own slot), kept by name in the registry.
    pub stats: Arc<ListenerStats>,
}

impl ListenerShared {
    fn new(config: &ListenerConfig, metrics: &Metrics) -> ListenerShared {
        ListenerShared { name: config.name.clone(), active: AtomicU32::new(0), stats: metrics.listener(&config.name) }
    }
}

impl Shared {
    pub fn grace(&self) -> Duration {
        Duration::from_millis(self.grace_ms.load(Ordering::Relaxed))
    }

    /// Counts one more served connection against the process and listener limits of `table`, or
    /// fails if either is reached, or if the table no longer routes the listener (exact under
    /// concurrency: a compare-and-swap on each counter).
    pub fn try_reserve(&self, listener: &ListenerShared, table: &BackendTable) -> bool {
        let Some(route) = table.route(&listener.name) else { return false };
        if !reserve(&self.active, table.runtime.max_connections) {
            return false;
        }
        if !reserve(&listener.active, route.max_connections) {
            self.active.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Gives back a closed connection's count.
    pub fn release(&self, listener: &ListenerShared) {
        self.active.fetch_sub(1, Ordering::Relaxed);
        listener.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the control plane asks a running worker to do (sent with a wake-up of its eventfd).
pub enum Control {
    /// Serve a new listener on `fd`, this worker's socket of its SO_REUSEPORT group.
    AddListener { fd: RawFd, listener: Arc<ListenerShared> },
    /// Stop accepting on the listener named `name` and close its socket; its open connections go on.
    RetireListener { name: String },
}

fn reserve(counter: &AtomicU32, max: u32) -> bool {
    counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < max).then_some(n + 1)).is_ok()
}

/// A bound listener, as reported at start-up.
#[derive(Debug, Clone)]
pub struct BoundListener {
    pub name: String,
    pub addr: SocketAddr,
    pub pool: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DataPathError {
    #[error("listener {name}: cannot bind {addr}: {source}")]
    Bind { name: String, addr: SocketAddr, source: io::Error },
    #[error("{0}")]
    Startup(String),
    #[error("worker {worker}: {what}: {source}")]
    Worker { worker: usize, what: &'static str, source: io::Error },
}

/// Listening sockets bound by [`DataPath::bind`], not yet served.
pub struct Listeners {
    per_worker_fds: Vec<Vec<RawFd>>,
    pub bound: Vec<BoundListener>,
}

/// The running workers.
pub struct DataPath {
    shared: Arc<Shared>,
    workers: Vec<(JoinHandle<Result<(), DataPathError>>, RawFd)>,
    control: Vec<Sender<Control>>,
    /// The listeners being served, with their shared state.
    listeners: Vec<(BoundListener, Arc<ListenerShared>)>,
    pub bound: Vec<BoundListener>,
    /// Connections the workers can hold together: each ring's registered table is capped by
    /// RLIMIT_NOFILE, two sockets per connection plus the pipe range.
    pub capacity: u64,
    /// Where listeners added by a reload find their metric blocks.
    metrics: Arc<Metrics>,
}

impl DataPath {
    /// Binds every listener: one SO_REUSEPORT socket per worker. Done before privileges are
    /// dropped and before any ring exists (see `start`).
    pub fn bind(config: &Config) -> Result<Listeners, DataPathError> {
        let workers = config.runtime.workers.max(1);
        let mut bound = Vec::new();
        let mut per_worker_fds: Vec<Vec<RawFd>> = vec![Vec::new(); workers];
        for l in &config.listeners {
            let (fds, addr) = listener::bind_group(l.bind, workers).map_err(|source| {
                close_all(per_worker_fds.iter().flatten().copied());
                DataPathError::Bind { name: l.name.clone(), addr: l.bind, source }
            })?;
            for (w, fd) in fds.into_iter().enumerate() {
                per_worker_fds[w].push(fd);
            }
            bound.push(BoundListener { name: l.name.clone(), addr, pool: l.pool.clone() });
        }
        Ok(Listeners { per_worker_fds, bound })
    }

    /// Starts the workers on bound listeners. Rings are created here, in the worker threads, so
    /// after any privilege drop: io_uring's kernel threads keep the credentials of their creator.
    pub fn start(
        config: &Config,
        listeners: Listeners,
        table: SharedTable,
        metrics: Arc<Metrics>,
    ) -> Result<DataPath, DataPathError> {
        let Listeners { per_worker_fds, bound } = listeners;
        let workers = per_worker_fds.len();
        let shared = Arc::new(Shared {
            shutdown: AtomicBool::new(false),
            grace_ms: AtomicU64::new(config.runtime.shutdown_grace.as_millis() as u64),
            active: AtomicU32::new(0),
        });
        let listener_state: Vec<Arc<ListenerShared>> =
            config.listeners.iter().map(|l| Arc::new(ListenerShared::new(l, &metrics))).collect();
        let mut handles = Vec::with_capacity(workers);
        let mut control = Vec::with_capacity(workers);
        let (ready_tx, ready_rx) = crossbeam::channel::bounded(workers);
        for (id, fds) in per_worker_fds.into_iter().enumerate() {
            let wake = eventfd().map_err(|source| DataPathError::Worker { worker: id, what: "eventfd", source })?;
            let (control_tx, control_rx) = crossbeam::channel::unbounded();
            control.push(control_tx);
            let spec = worker::WorkerSpec {
                id,
                listen_fds: fds.into_iter().zip(listener_state.iter().cloned()).collect(),
                control: control_rx,
                wake_fd: wake,
                table: table.clone(),
                shared: shared.clone(),
                max_connections: config.runtime.max_connections,
                stats: metrics.worker(id),
            };
            let handle = std::thread::Builder::new()
                .name(format!("ringlb-w{id}"))
                .spawn({
                    let ready = ready_tx.clone();
                    move || worker::run(spec, ready)
                })
                .map_err(|source| DataPathError::Worker { worker: id, what: "spawn", source })?;
            handles.push((handle, wake));
        }
        let listeners = bound.iter().cloned().zip(listener_state).collect();
        let mut datapath = DataPath { shared, workers: handles, control, listeners, bound, capacity: 0, metrics };
        for _ in 0..workers {
            match ready_rx.recv() {
                Ok(Ok(conns)) => datapath.capacity += u64::from(conns),
                Ok(Err(message)) => {
                    datapath.shutdown();
                    let _ = datapath.join();
                    return Err(DataPathError::Startup(message));
                }
                Err(_) => {
                    datapath.shutdown();
                    let _ = datapath.join();
                    return Err(DataPathError::Startup("a worker exited during start-up".to_string()));
                }
            }
        }
        Ok(datapath)
    }

    /// Stops accepting; open connections get `shutdown_grace` to finish.
    pub fn shutdown(&self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.wake_all();
    }

    fn wake_all(&self) {
        for (_, wake) in &self.workers {
            let one: u64 = 1;
            // SAFETY: writing 8 bytes to an eventfd we own.
            unsafe { libc::write(*wake, (&one as *const u64).cast(), 8) };
        }
    }

    /// Applies a reloaded configuration's listeners to the running workers, without a new
    /// process and without touching open connections: listeners that left the config (or moved to
    /// another address) stop accepting and new ones are bound and served. Routes, limits and the
    /// splice mode are already in the table the prober published for this config (the caller
    /// publishes first, so a new listener finds its route at its first client). Returns one line
    /// per change. `runtime.workers` changes need a restart (reported by the caller).
    pub fn reload(&mut self, config: &Config) -> Result<Vec<String>, DataPathError> {
        let mut changes = Vec::new();
        self.shared.grace_ms.store(config.runtime.shutdown_grace.as_millis() as u64, Ordering::Relaxed);
        // Bind every new listener first: a failure leaves the running ones untouched.
        let workers = self.workers.len();
        let mut added = Vec::new();
        for l in &config.listeners {
            let kept = self.listeners.iter().any(|(b, _)| b.name == l.name && same_bind(b, l));
            if kept {
                continue;
            }
            match listener::bind_group(l.bind, workers) {
                Ok((fds, addr)) => added.push((l, fds, addr)),
                Err(source) => {
                    close_all(added.iter().flat_map(|(_, fds, _)| fds.iter().copied()));
                    return Err(DataPathError::Bind { name: l.name.clone(), addr: l.bind, source });
                }
            }
        }
        // Retire listeners that left or moved.
        let mut kept = Vec::new();
        for (bound, state) in std::mem::take(&mut self.listeners) {
            match config.listeners.iter().find(|l| l.name == bound.name && same_bind(&bound, l)) {
                Some(l) => {
                    if bound.pool != l.pool {
                        changes.push(format!("listener {} now sends to pool {}", l.name, l.pool));
                    }
                    kept.push((BoundListener { pool: l.pool.clone(), ..bound }, state));
                }
                None => {
                    changes.push(format!("listener {} ({}) stops accepting", bound.name, bound.addr));
                    for tx in &self.control {
                        let _ = tx.send(Control::RetireListener { name: bound.name.clone() });
                    }
                }
            }
        }
        for (l, fds, addr) in added {
            let state = Arc::new(ListenerShared::new(l, &self.metrics));
            for (tx, fd) in self.control.iter().zip(fds) {
                let _ = tx.send(Control::AddListener { fd, listener: state.clone() });
            }
            changes.push(format!("listener {} bound {} -> pool {}", l.name, addr, l.pool));
            kept.push((BoundListener { name: l.name.clone(), addr, pool: l.pool.clone() }, state));
        }
        self.listeners = kept;
        self.bound = self.listeners.iter().map(|(b, _)| b.clone()).collect();
        self.wake_all();
        Ok(changes)
    }

    /// True when some worker has exited (normally only after `shutdown`).
    pub fn any_finished(&self) -> bool {
        self.workers.iter().any(|(h, _)| h.is_finished())
    }

    pub fn active_connections(&self) -> u32 {
        self.shared.active.load(Ordering::Relaxed)
    }

    /// Waits for every worker; returns the first error.
    pub fn join(self) -> Result<(), DataPathError> {
        let mut result = Ok(());
        for (id, (handle, wake)) in self.workers.into_iter().enumerate() {
            let r = handle.join().unwrap_or_else(|_| {
                Err(DataPathError::Worker { worker: id, what: "panicked", source: io::Error::other("worker panicked") })
            });
            if result.is_ok() {
                result = r;
            }
            close_all([wake]);
        }
        result
    }
}

/// The listener keeps its sockets: the same address (a configured port 0 keeps the port it got).
fn same_bind(bound: &BoundListener, config: &ListenerConfig) -> bool {
    config.bind == bound.addr || (config.bind.port() == 0 && config.bind.ip() == bound.addr.ip())
}

fn eventfd() -> io::Result<RawFd> {
    // SAFETY: plain syscall.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

fn close_all(fds: impl IntoIterator<Item = RawFd>) {
    for fd in fds {
        // SAFETY: closing descriptors owned by the data path.
        unsafe { libc::close(fd) };
    }
}
