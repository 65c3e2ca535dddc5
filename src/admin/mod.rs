//! The admin API: metrics, liveness and readiness, and operator commands, over HTTP/1.1 on
//! `[admin] bind`.
//!
//! A control-plane module. One thread, `ringlb-admin`, runs a single-threaded tokio runtime that
//! serves each connection as a task: one request per connection, a head of at most 8 KiB, a
//! deadline on reading and on writing, at most `MAX_CONNECTIONS` at once. It reads the published
//! table and the metric blocks, sends server commands to the prober, and owns the process-wide
//! drain flag ([`Status`]). It never touches the data path, and nothing in the data path imports
//! it. A malformed, oversized or slow request gets a 4xx and never a panic.
//!
//! Files: `http` (the request parser and answers), `api` (the endpoints), `client` (what
//! `ringlb drain` uses to call a running ringlb).

mod api;
pub mod client;
mod http;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Semaphore};
use tracing::{debug, error, warn};

use crate::health::ServerControl;
use crate::metrics::Metrics;
use crate::table::SharedTable;

/// Connections served at once; more are answered 503 at once.
const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client may take to read the answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// After answering, input still arriving is read and dropped for up to this long (and this many
/// bytes) before the socket closes, so that unread input does not reset the answer away.
const LINGER: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin.bind: cannot bind {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("admin API: cannot build its runtime: {0}")]
    Runtime(io::Error),
    #[error("admin API: cannot start its thread: {0}")]
    Spawn(io::Error),
}

/// What the process as a whole is doing, as /ready reports it.
#[derive(Debug, Default)]
pub struct Status {
    draining: AtomicBool,
    stopping: AtomicBool,
}

impl Status {
    /// Planned failover: /ready answers 503 while everything is still served.
    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Relaxed);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// SIGTERM/SIGINT: the listeners are closing.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }
}

/// Everything the endpoints read or act on.
pub struct AdminContext {
    pub table: SharedTable,
    pub metrics: Arc<Metrics>,
    pub status: Arc<Status>,
    pub servers: ServerControl,
}

/// The admin listening socket, bound (before privileges are dropped) but not yet served.
pub struct AdminListener {
    listener: std::net::TcpListener,
    addr: SocketAddr,
}

impl AdminListener {
    pub fn bind(addr: SocketAddr) -> Result<AdminListener, AdminError> {
        let bind_error = |source| AdminError::Bind { addr, source };
        let listener = std::net::TcpListener::bind(addr).map_err(bind_error)?;
        listener.set_nonblocking(true).map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        Ok(AdminListener { listener, addr })
    }

    /// The address actually bound (the kernel's port when the config says 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts the `ringlb-admin` thread serving `ctx`.
    pub fn spawn(self, ctx: AdminContext) -> Result<RunningAdmin, AdminError> {
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(AdminError::Runtime)?;
        let (stop, stopped) = oneshot::channel();
        let addr = self.addr;
        let thread = std::thread::Builder::new()
            .name("ringlb-admin".to_owned())
            .spawn(move || runtime.block_on(serve(self.listener, Arc::new(ctx), stopped)))
            .map_err(AdminError::Spawn)?;
        Ok(RunningAdmin { addr, stop: Some(stop), thread: Some(thread) })
    }
}

/// The running admin thread; stopped by [`RunningAdmin::stop`] or on drop.
pub struct RunningAdmin {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl RunningAdmin {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes the listener, drops the connections in progress and waits for the thread.
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                error!("admin API thread panicked");
            }
        }
    }
}

impl Drop for RunningAdmin {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

async fn serve(listener: std::net::TcpListener, ctx: Arc<AdminContext>, mut stop: oneshot::Receiver<()>) {
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            error!("admin API: cannot serve its socket: {e}");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // EMFILE and the like: wait a little rather than spin on the error.
                        warn!("admin API: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let ctx = Arc::clone(&ctx);
                match Arc::clone(&slots).try_acquire_owned() {
                    Ok(permit) => {
                        connections.spawn(async move {
                            connection(stream, &ctx).await;
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        debug!(%peer, "admin API: too many connections");
                        connections.spawn(answer_and_close(stream, http::Response::text(503, "too many admin connections"), false));
                    }
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
}

async fn connection(mut stream: TcpStream, ctx: &AdminContext) {
    let (response, head_only) = match http::read_request(&mut stream, READ_TIMEOUT).await {
        Ok(None) => return,
        Ok(Some(request)) => (api::handle(ctx, &request).await, request.method == http::Method::Head),
        Err(e) => (http::Response::error(&e), false),
    };
    answer_and_close(stream, response, head_only).await;
}

async fn answer_and_close(mut stream: TcpStream, response: http::Response, head_only: bool) {
    let bytes = response.encode(head_only);
    let written = tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        return;
    }
    let _ = tokio::time::timeout(LINGER, async {
        let mut sink = [0u8; 4096];
        let mut read = 0;
        while read < LINGER_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
    })
    .await;
}
