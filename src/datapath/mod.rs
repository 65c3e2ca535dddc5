//! The data path: one io_uring worker thread per core.
//!
//! Each worker owns one ring, one SO_REUSEPORT listening socket per listener, a slab of
//! connections and a pipe pool. It reads the backend table snapshot (arc-swap) when it picks a
//! server and shares nothing else with the other workers but the connection counters that enforce
//! `max_connections`. It depends only on config, the backend table and metrics (each worker counts
//! in its own blocks, see [`crate::metrics`]); the control plane talks to it through [`DataPath`]:
//! the table it publishes and `shutdown()`.
//!
//! Files: `listener` (sockets), `worker` (ring set-up, event loop, accepts, timers), `proxy`
//! (connect chain, splicing, teardown), `flow` (one direction's pure state machine), `pipes` and
//! `buffers` (pools),
//! `ops` (what `user_data` means).

mod buffers;
mod flow;
mod listener;
mod ops;
mod pipes;
mod proxy;
mod worker;

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::config::{Config, SpliceMode};
use crate::metrics::Metrics;
use crate::table::SharedTable;

/// State shared by every worker: limits, live counters and the shutdown flag. Written rarely
/// (once per connection open/close), never per byte.
pub struct Shared {
    pub shutdown: AtomicBool,
    pub splice: SpliceMode,
    pub grace: Duration,
    pub max_connections: u32,
    pub active: AtomicU32,
    pub listeners: Vec<ListenerShared>,
}

pub struct ListenerShared {
    pub name: String,
    pub pool: String,
    pub max_connections: u32,
    pub active: AtomicU32,
}

impl Shared {
    /// Counts one more served connection against the process and listener limits, or fails if
    /// either is reached (exact under concurrency: a compare-and-swap on each counter).
    pub fn try_reserve(&self, listener: usize) -> bool {
        if !reserve(&self.active, self.max_connections) {
            return false;
        }
        let l = &self.listeners[listener];
        if !reserve(&l.active, l.max_connections) {
            self.active.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Gives back a closed connection's count.
    pub fn release(&self, listener: usize) {
        self.active.fetch_sub(1, Ordering::Relaxed);
        self.listeners[listener].active.fetch_sub(1, Ordering::Relaxed);
    }
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
    pub bound: Vec<BoundListener>,
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
        metrics: &Metrics,
    ) -> Result<DataPath, DataPathError> {
        let Listeners { per_worker_fds, bound } = listeners;
        let workers = per_worker_fds.len();
        let shared = Arc::new(Shared {
            shutdown: AtomicBool::new(false),
            splice: config.runtime.splice,
            grace: config.runtime.shutdown_grace,
            max_connections: config.runtime.max_connections,
            active: AtomicU32::new(0),
            listeners: config
                .listeners
                .iter()
                .map(|l| ListenerShared {
                    name: l.name.clone(),
                    pool: l.pool.clone(),
                    max_connections: l.max_connections,
                    active: AtomicU32::new(0),
                })
                .collect(),
        });
        let mut handles = Vec::with_capacity(workers);
        let (ready_tx, ready_rx) = crossbeam::channel::bounded(workers);
        for (id, fds) in per_worker_fds.into_iter().enumerate() {
            let wake = eventfd().map_err(|source| DataPathError::Worker { worker: id, what: "eventfd", source })?;
            let spec = worker::WorkerSpec {
                id,
                listen_fds: fds,
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
        let datapath = DataPath { shared, workers: handles, bound };
        for _ in 0..workers {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
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
        for (_, wake) in &self.workers {
            let one: u64 = 1;
            // SAFETY: writing 8 bytes to an eventfd we own.
            unsafe { libc::write(*wake, (&one as *const u64).cast(), 8) };
        }
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
