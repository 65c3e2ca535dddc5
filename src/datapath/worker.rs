//! One worker: its ring, registered-descriptor layout, event loop, accepts and timers.
//!
//! The worker owns every descriptor it uses: its listening sockets (ordinary descriptors), and in
//! its ring's registered table the client sockets, backend sockets and pipes. It never blocks but
//! in `submit_and_wait`, and never lets the kernel park a worker thread on a socket: every socket
//! is non-blocking and every splice waits for readiness first (see `flow`).

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types, IoUring};
use tracing::{debug, info, warn};

use super::accept::Acceptor;
use super::buffers::BufferPool;
use super::ops::{self, Op};
use super::pipes::PipePool;
use super::proxy::{CloseCause, Conn, Phase};
use super::{Control, DataPathError, ListenerShared, Shared};
use crate::metrics::WorkerStats;
use crate::table::SharedTable;

const SQ_ENTRIES: u32 = 4096;
const CQ_ENTRIES: u32 = 4 * SQ_ENTRIES;
/// io-wq threads per worker for unbounded work (socket splices, shutdowns). Every splice is
/// non-blocking, so a worker thread is never parked on a socket and two are plenty.
const IOWQ_UNBOUNDED: u32 = 2;
const IOWQ_BOUNDED: u32 = 1;
/// Most pipes one worker may hold (each is 16 pages by default; `fs.pipe-user-pages-soft`).
const MAX_PIPES: u32 = 1024;
/// Most copy-mode buffers one worker may hold (16 KiB each: 64 MiB).
const MAX_BUFFERS: u32 = 4096;
/// Idle pipes kept for reuse.
const MAX_IDLE_PIPES: usize = 64;
const TICK: Duration = Duration::from_millis(100);
/// The client address when the accept did not capture it.
pub const UNKNOWN_PEER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
/// Minimum interval between two copies of the same rate-limited warning.
const LOG_EVERY: Duration = Duration::from_secs(5);

pub struct WorkerSpec {
    pub id: usize,
    /// This worker's socket of each listener's SO_REUSEPORT group, with the listener's state.
    pub listen_fds: Vec<(RawFd, Arc<ListenerShared>)>,
    pub control: crossbeam::channel::Receiver<Control>,
    pub wake_fd: RawFd,
    pub table: SharedTable,
    pub shared: Arc<Shared>,
    pub max_connections: u32,
    pub stats: Arc<WorkerStats>,
}

/// Where things live in the ring's registered file table:
/// `[0, conns)` client sockets (kernel-allocated by accept), `[conns, 2*conns)` backend sockets
/// (slot `conns + i` belongs to connection slot `i`), then the pipes, two slots each.
#[derive(Debug, Clone, Copy)]
pub struct SlotLayout {
    pub conns: u32,
    pub pipes: u32,
}

impl SlotLayout {
    /// Fits the layout into a table of at most `limit` entries (RLIMIT_NOFILE caps one ring's
    /// table), with no more connection slots than `max_connections`.
    pub fn fit(limit: u32, max_connections: u32) -> SlotLayout {
        let pipes = (limit / 16).clamp(16, MAX_PIPES);
        let conns = (limit.saturating_sub(2 * pipes) / 2).min(max_connections).min(ops::MAX_SLOT);
        SlotLayout { conns, pipes }
    }
    pub fn backend_slot(&self, conn: u32) -> u32 {
        self.conns + conn
    }
    pub fn pipe_base(&self) -> u32 {
        2 * self.conns
    }
    pub fn table_size(&self) -> u32 {
        2 * self.conns + 2 * self.pipes
    }
}

/// A warning printed at most once per `LOG_EVERY`, with a count of what was suppressed.
pub struct RateLimited {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimited {
    pub const fn new() -> RateLimited {
        RateLimited { last: None, suppressed: 0 }
    }
    pub fn warn(&mut self, now: Instant, msg: std::fmt::Arguments<'_>) {
        if self.last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            self.suppressed += 1;
            return;
        }
        if self.suppressed > 0 {
            warn!("{msg} ({} similar suppressed)", self.suppressed);
        } else {
            warn!("{msg}");
        }
        self.last = Some(now);
        self.suppressed = 0;
    }
}

pub struct Worker {
    pub id: usize,
    pub ring: IoUring,
    backlog: VecDeque<Vec<squeue::Entry>>,
    pub layout: SlotLayout,
    pub shared: Arc<Shared>,
    pub table: SharedTable,
    /// This worker's own counters (only this worker writes them).
    pub stats: Arc<WorkerStats>,
    /// Never shrinks: a connection refers to its listener by index, also after a reload retired it.
    pub acceptors: Vec<Acceptor>,
    pub(super) control: crossbeam::channel::Receiver<Control>,
    pub(super) accept_backoff_until: Option<Instant>,
    /// Boxed so that a connection never moves: in-flight operations point into it (the connect
    /// address, the link timeout) while the slab grows.
    #[allow(clippy::vec_box)]
    pub conns: Vec<Box<Conn>>,
    free: Vec<u32>,
    pub live: u32,
    pub pipes: PipePool,
    pub buffers: BufferPool,
    /// Accepted clients waiting for a slot under the limits: (listener, client slot, client).
    pub(super) parked: VecDeque<(usize, u32, SocketAddr)>,
    /// Flows parked until a pipe or buffer frees up: (slot, gen, direction).
    pub pipe_waiters: VecDeque<(u32, u32, usize)>,
    /// Balancing state of this worker, per pool index (grown by `pick` as pools appear).
    pub balance: Vec<crate::balance::WorkerBalanceState>,
    /// Clients waiting for a server slot: (slot, gen).
    pub queue: VecDeque<(u32, u32)>,
    pub now: Instant,
    pub(super) shutting_down: Option<Instant>,
    tick_ts: types::Timespec,
    wake_fd: RawFd,
    last_idle_sweep: Instant,
    pub(super) accept_log: RateLimited,
    pub pipe_log: RateLimited,
    pub connect_log: RateLimited,
    /// Reusable scratch for flow steps.
    pub steps: Vec<super::flow::Step>,
}

/// Runs a worker until shutdown. `ready` hears once whether the ring could be set up (and how
/// many connections it can hold), so that start-up reports "running" only when every worker
/// really is.
pub fn run(spec: WorkerSpec, ready: crossbeam::channel::Sender<Result<u32, String>>) -> Result<(), DataPathError> {
    let id = spec.id;
    let err = |what: &'static str| move |source: io::Error| DataPathError::Worker { worker: id, what, source };
    let mut worker = match Worker::new(spec) {
        Ok(worker) => {
            let _ = ready.send(Ok(worker.layout.conns));
            worker
        }
        Err(e) => {
            let e = err("ring set-up")(e);
            let _ = ready.send(Err(e.to_string()));
            return Err(e);
        }
    };
    let result = worker.event_loop().map_err(err("event loop"));
    worker.pipes.clear(&worker.ring.submitter());
    for a in &worker.acceptors {
        if !a.closed {
            // SAFETY: the listening socket is owned by this worker.
            unsafe { libc::close(a.fd) };
        }
    }
    result
}

impl Worker {
    fn new(spec: WorkerSpec) -> io::Result<Worker> {
        let ring = build_ring()?;
        let limit = nofile_limit();
        let layout = SlotLayout::fit(limit, spec.max_connections.max(1));
        let submitter = ring.submitter();
        submitter.register_files_sparse(layout.table_size())?;
        register_alloc_range(&ring, 0, layout.conns)?;
        let mut iowq = [IOWQ_BOUNDED, IOWQ_UNBOUNDED];
        submitter.register_iowq_max_workers(&mut iowq)?;
        debug!(worker = spec.id, conns = layout.conns, pipes = layout.pipes, table = layout.table_size(), "ring ready");
        let now = Instant::now();
        Ok(Worker {
            id: spec.id,
            ring,
            backlog: VecDeque::new(),
            layout,
            pipes: PipePool::new(layout.pipe_base(), layout.pipes, MAX_IDLE_PIPES),
            buffers: BufferPool::new(MAX_BUFFERS),
            shared: spec.shared,
            table: spec.table,
            stats: spec.stats,
            acceptors: spec.listen_fds.into_iter().map(|(fd, listener)| Acceptor::new(fd, listener)).collect(),
            control: spec.control,
            accept_backoff_until: None,
            conns: Vec::new(),
            free: Vec::new(),
            live: 0,
            parked: VecDeque::new(),
            pipe_waiters: VecDeque::new(),
            balance: Vec::new(),
            queue: VecDeque::new(),
            now,
            shutting_down: None,
            tick_ts: types::Timespec::from(TICK),
            wake_fd: spec.wake_fd,
            last_idle_sweep: now,
            accept_log: RateLimited::new(),
            pipe_log: RateLimited::new(),
            connect_log: RateLimited::new(),
            steps: Vec::with_capacity(8),
        })
    }

    /// Queues entries that must reach the kernel together (a linked chain stays in one batch).
    pub fn push(&mut self, entries: &[squeue::Entry]) {
        if self.backlog.is_empty() && self.sq_room() < entries.len() {
            // Make room now rather than split a chain; errors surface at the next submit.
            let _ = self.ring.submit();
        }
        if self.backlog.is_empty() && self.sq_room() >= entries.len() {
            let mut sq = self.ring.submission();
            for e in entries {
                // SAFETY: every pointer in an entry (addresses, timespecs, option values) points
                // into a boxed connection or the worker, which outlive the operation.
                let pushed = unsafe { sq.push(e) };
                debug_assert!(pushed.is_ok());
            }
        } else {
            self.backlog.push_back(entries.to_vec());
        }
    }

    fn sq_room(&mut self) -> usize {
        let sq = self.ring.submission();
        sq.capacity() - sq.len()
    }

    fn flush_backlog(&mut self) {
        while let Some(len) = self.backlog.front().map(Vec::len) {
            if self.sq_room() < len {
                return;
            }
            let chain = self.backlog.pop_front().unwrap_or_default();
            let mut sq = self.ring.submission();
            for e in &chain {
                // SAFETY: as in `push`.
                let _ = unsafe { sq.push(e) };
            }
        }
    }

    fn event_loop(&mut self) -> io::Result<()> {
        self.arm_tick();
        self.arm_wake();
        self.update_accepts();
        let mut cqes: Vec<(u64, i32, u32)> = Vec::with_capacity(CQ_ENTRIES as usize);
        loop {
            self.flush_backlog();
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN)) => {}
                Err(e) => return Err(e),
            }
            self.now = Instant::now();
            cqes.clear();
            cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result(), c.flags())));
            for &(user_data, res, flags) in &cqes {
                self.dispatch(user_data, res, flags);
            }
            if self.finished() {
                // Push out the last closes before the ring goes away.
                self.flush_backlog();
                let _ = self.ring.submit();
                return Ok(());
            }
        }
    }

    fn finished(&self) -> bool {
        self.shutting_down.is_some()
            && self.live == 0
            && self.parked.is_empty()
            && self.acceptors.iter().all(|a| a.closed)
    }

    fn dispatch(&mut self, user_data: u64, res: i32, flags: u32) {
        let Some((op, slot, gen)) = ops::decode(user_data) else {
            warn!(worker = self.id, user_data, "completion with unknown user_data");
            return;
        };
        let more = io_uring::cqueue::more(flags);
        match op {
            Op::Accept => self.on_accept(slot as usize, res, more),
            Op::AcceptCancel => {}
            Op::Tick => self.on_tick(),
            Op::Wake => self.on_wake(more),
            Op::Close => {
                if res < 0 {
                    debug!(worker = self.id, res, "close of a registered descriptor failed");
                }
            }
            _ => self.on_conn_completion(op, slot, gen, res, more),
        }
    }

    fn arm_tick(&mut self) {
        let e = opcode::Timeout::new(&self.tick_ts).build().user_data(ops::encode(Op::Tick, 0, 0));
        self.push(&[e]);
    }

    fn arm_wake(&mut self) {
        let e = opcode::PollAdd::new(types::Fd(self.wake_fd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(ops::encode(Op::Wake, 0, 0));
        self.push(&[e]);
    }

    fn on_wake(&mut self, more: bool) {
        let mut buf = 0u64;
        // SAFETY: reading 8 bytes from our non-blocking eventfd into a u64.
        unsafe { libc::read(self.wake_fd, (&mut buf as *mut u64).cast(), 8) };
        while let Ok(message) = self.control.try_recv() {
            match message {
                Control::AddListener { fd, listener } => {
                    debug!(worker = self.id, listener = %listener.name, "listener added");
                    self.acceptors.push(Acceptor::new(fd, listener));
                }
                Control::RetireListener { name } => {
                    for a in self.acceptors.iter_mut().filter(|a| a.listener.name == name && !a.retired) {
                        a.retired = true;
                    }
                }
            }
            self.update_accepts();
        }
        if self.shared.shutdown.load(Ordering::SeqCst) && self.shutting_down.is_none() {
            self.shutting_down = Some(self.now + self.shared.grace());
            debug!(worker = self.id, live = self.live, "stopping: no new connections");
            // Parked clients were never served: close them with the listeners.
            while let Some((listener, client, _)) = self.parked.pop_front() {
                let e = opcode::Close::new(types::Fixed(client)).build().user_data(ops::encode(Op::Close, 0, 0));
                self.push(&[e]);
                self.listener_stats(listener).closed(self.id, CloseCause::Shutdown);
            }
            self.update_accepts();
            return;
        }
        if !more {
            self.arm_wake();
        }
    }

    fn on_tick(&mut self) {
        self.arm_tick();
        // Client sockets (served and parked), backend sockets, and both ends of each pipe.
        let in_use = 2 * u64::from(self.live) + self.parked.len() as u64 + 2 * u64::from(self.pipes.installed());
        self.stats.set_descriptors(in_use, u64::from(self.layout.table_size()));
        if let Some(deadline) = self.shutting_down {
            if self.now >= deadline && self.live > 0 {
                info!(worker = self.id, open = self.live, "shutdown grace over: closing open connections");
                self.close_all(CloseCause::Shutdown);
            }
        }
        if self.accept_backoff_until.is_some_and(|t| self.now >= t) {
            self.accept_backoff_until = None;
        }
        self.process_queue();
        if self.shutting_down.is_none() {
            self.start_parked();
        }
        self.update_accepts();
        self.retry_pipe_waiters();
        let sweep_every = Duration::from_millis(250);
        if self.now.duration_since(self.last_idle_sweep) >= sweep_every {
            self.last_idle_sweep = self.now;
            self.sweep_idle();
        }
    }

    /// A free connection slot, growing the slab up to the layout's limit.
    pub fn alloc_slot(&mut self) -> Option<u32> {
        if let Some(slot) = self.free.pop() {
            return Some(slot);
        }
        let next = self.conns.len() as u32;
        if next >= self.layout.conns {
            return None;
        }
        self.conns.push(Box::new(Conn::new()));
        Some(next)
    }

    pub fn release_slot(&mut self, slot: u32) {
        let conn = &mut self.conns[slot as usize];
        conn.gen = conn.gen.wrapping_add(1);
        conn.phase = Phase::Free;
        conn.table = None;
        self.free.push(slot);
    }

    fn sweep_idle(&mut self) {
        let now = self.now;
        for slot in 0..self.conns.len() as u32 {
            let c = &self.conns[slot as usize];
            if c.phase == Phase::Proxying && now.duration_since(c.last_active) >= c.idle_timeout {
                self.begin_close(slot, CloseCause::IdleTimeout);
            }
        }
    }

    fn close_all(&mut self, cause: CloseCause) {
        for slot in 0..self.conns.len() as u32 {
            if matches!(self.conns[slot as usize].phase, Phase::Connecting | Phase::Proxying) {
                self.begin_close(slot, cause);
            }
        }
    }
}

fn build_ring() -> io::Result<IoUring> {
    let fast = IoUring::builder()
        .setup_cqsize(CQ_ENTRIES)
        .setup_submit_all()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(SQ_ENTRIES);
    match fast {
        Ok(ring) => Ok(ring),
        // Older kernels lack DEFER_TASKRUN (6.1) or SINGLE_ISSUER (6.0).
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            IoUring::builder().setup_cqsize(CQ_ENTRIES).setup_submit_all().build(SQ_ENTRIES)
        }
        Err(e) => Err(e),
    }
}

/// The soft RLIMIT_NOFILE, which caps one ring's registered table.
fn nofile_limit() -> u32 {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit fills the struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return 1024;
    }
    rl.rlim_cur.min(1 << 24) as u32
}

/// IORING_REGISTER_FILE_ALLOC_RANGE: confines the kernel's slot allocator (accept) to
/// `[off, off + len)`, so that backend and pipe slots, which ringlb picks itself, never collide.
fn register_alloc_range(ring: &IoUring, off: u32, len: u32) -> io::Result<()> {
    #[repr(C)]
    struct Range {
        off: u32,
        len: u32,
        resv: u64,
    }
    const IORING_REGISTER_FILE_ALLOC_RANGE: libc::c_uint = 25;
    let range = Range { off, len, resv: 0 };
    use std::os::fd::AsRawFd;
    // SAFETY: the kernel reads a struct io_uring_file_index_range from `range`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            ring.as_raw_fd(),
            IORING_REGISTER_FILE_ALLOC_RANGE,
            &range as *const Range,
            0,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_fits_the_descriptor_limit() {
        let l = SlotLayout::fit(20_000, 100_000);
        assert!(l.table_size() <= 20_000);
        assert_eq!(l.pipes, 1024);
        assert_eq!(l.conns, 8976);
        assert_eq!(l.backend_slot(0), l.conns);
        assert!(l.pipe_base() + 2 * l.pipes <= l.table_size());
    }

    #[test]
    fn layout_never_exceeds_max_connections() {
        assert_eq!(SlotLayout::fit(1 << 20, 1000).conns, 1000);
    }

    #[test]
    fn layout_survives_a_tiny_limit() {
        let l = SlotLayout::fit(64, 100);
        assert!(l.table_size() <= 64);
    }
}
