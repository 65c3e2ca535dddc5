//! One worker: its ring, the connection slab, the pools, the event loop and its timers, and its
//! acceptors (`accept`). Connections live their own life (see `conn`); the worker hands each of
//! their completions to them with a [`Ctx`] and frees a slot when its connection says
//! [`Life::Closed`].
//!
//! The worker owns every descriptor it uses: its listening sockets (ordinary descriptors), and in
//! its ring's registered table the client sockets, backend sockets and pipes. It never blocks but
//! in `submit_and_wait`, and never lets the kernel park a worker thread on a socket: every socket
//! is non-blocking and every splice waits for readiness first (see `flow`).

mod accept;

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};
use tracing::{debug, info, warn};

use super::conn::{close_entry, CloseCause, Conn, Ctx, Life, Logs, Waiting};
use super::flow::Step;
use super::memory::MemoryPool;
use super::ops::{self, Op};
use super::pipes::PipePool;
use super::ring::{Ring, SlotLayout, CQ_ENTRIES, SQ_ENTRIES};
use super::warn::RateLimited;
use super::{Control, DataPathError, ListenerShared, Shared};
use crate::balance::WorkerBalanceState;
use crate::metrics::WorkerStats;
use crate::table::{BackendTable, SharedTable};
use crate::uring::{self, RingOptions};
use accept::Acceptor;

/// io-wq threads per worker for unbounded work (socket splices, shutdowns). Every splice is
/// non-blocking, so a worker thread is never parked on a socket and two are plenty.
const IOWQ_UNBOUNDED: u32 = 2;
const IOWQ_BOUNDED: u32 = 1;
/// Most copy-mode buffers one worker may hold (16 KiB each: 64 MiB).
const MAX_BUFFERS: u32 = 4096;
/// Idle pipes kept for reuse.
const MAX_IDLE_PIPES: usize = 64;
const TICK: Duration = Duration::from_millis(100);
const IDLE_SWEEP_EVERY: Duration = Duration::from_millis(250);
/// The client address when the accept did not capture it.
pub const UNKNOWN_PEER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);

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

/// One entry of the slab. Boxed so that a connection never moves: in-flight operations point
/// into it (the connect address, the link timeout) while the slab grows.
struct Slot {
    /// Raised each time the slot is freed.
    gen: u32,
    conn: Option<Conn>,
}

pub struct Worker {
    id: usize,
    ring: Ring,
    layout: SlotLayout,
    shared: Arc<Shared>,
    table: SharedTable,
    /// This worker's own counters (only this worker writes them).
    stats: Arc<WorkerStats>,
    /// Never shrinks: a reload's retired listener keeps its index until its socket is closed.
    acceptors: Vec<Acceptor>,
    control: crossbeam::channel::Receiver<Control>,
    accept_backoff_until: Option<Instant>,
    #[allow(clippy::vec_box)]
    slots: Vec<Box<Slot>>,
    free: Vec<u32>,
    /// Connections holding a slot.
    live: u32,
    pipes: PipePool,
    memory: MemoryPool,
    /// Accepted clients waiting for a slot under the limits: (listener, client slot, client).
    parked: std::collections::VecDeque<(usize, u32, SocketAddr)>,
    waiting: Waiting,
    /// Balancing state of this worker, per pool index (grown by the connections as pools appear).
    balance: Vec<WorkerBalanceState>,
    now: Instant,
    shutting_down: Option<Instant>,
    tick_ts: types::Timespec,
    wake_fd: RawFd,
    last_idle_sweep: Instant,
    accept_log: RateLimited,
    logs: Logs,
    steps: Vec<Step>,
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
    worker.close_listening_sockets();
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
            ring: Ring::new(ring),
            layout,
            pipes: PipePool::new(layout.pipe_base(), layout.pipes, MAX_IDLE_PIPES),
            memory: MemoryPool::new(MAX_BUFFERS),
            shared: spec.shared,
            table: spec.table,
            stats: spec.stats,
            acceptors: spec.listen_fds.into_iter().map(|(fd, listener)| Acceptor::new(fd, listener)).collect(),
            control: spec.control,
            accept_backoff_until: None,
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            parked: Default::default(),
            waiting: Waiting::default(),
            balance: Vec::new(),
            now,
            shutting_down: None,
            tick_ts: types::Timespec::from(TICK),
            wake_fd: spec.wake_fd,
            last_idle_sweep: now,
            accept_log: RateLimited::new(),
            logs: Logs::new(),
            steps: Vec::with_capacity(8),
        })
    }

    fn event_loop(&mut self) -> io::Result<()> {
        self.arm_tick();
        self.arm_wake();
        self.update_accepts();
        let mut cqes: Vec<(u64, i32, u32)> = Vec::with_capacity(CQ_ENTRIES as usize);
        loop {
            self.ring.flush_backlog();
            self.ring.submit_and_wait()?;
            self.now = Instant::now();
            self.ring.reap(&mut cqes);
            for &(user_data, res, flags) in &cqes {
                self.dispatch(user_data, res, flags);
            }
            if self.finished() {
                // Push out the last closes before the ring goes away.
                self.ring.submit();
                return Ok(());
            }
        }
    }

    fn finished(&self) -> bool {
        self.shutting_down.is_some()
            && self.live == 0
            && self.parked.is_empty()
            && self.acceptors.iter().all(Acceptor::is_closed)
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
            _ => {
                if self.conn(slot, gen).is_none() {
                    debug!(worker = self.id, ?op, slot, "completion for a recycled slot ignored");
                    return;
                }
                self.with_conn(slot, |conn, ctx| conn.on_completion(ctx, op, res, more));
            }
        }
    }

    /// The connection in `slot` if it is still generation `gen`.
    fn conn(&self, slot: u32, gen: u32) -> Option<&Conn> {
        let entry = self.slots.get(slot as usize)?;
        (entry.gen == gen).then_some(entry.conn.as_ref()?)
    }

    /// Hands the connection in `slot` one event, then does what its outcome asks of the worker:
    /// wake flows parked on the buffers it gave back, and when it closed, free its slot and let
    /// queued and parked clients have it.
    fn with_conn(&mut self, slot: u32, event: impl FnOnce(&mut Conn, &mut Ctx<'_>) -> Life) {
        let Some(conn) = self.slots.get_mut(slot as usize).and_then(|s| s.conn.as_mut()) else { return };
        let mut ctx = Ctx {
            worker: self.id,
            now: self.now,
            ring: &mut self.ring,
            pipes: &mut self.pipes,
            memory: &mut self.memory,
            balance: &mut self.balance,
            waiting: &mut self.waiting,
            logs: &mut self.logs,
            steps: &mut self.steps,
            freed_buffers: 0,
        };
        let life = event(conn, &mut ctx);
        let freed = ctx.freed_buffers;
        if life == Life::Closed {
            self.free_slot(slot);
        }
        for _ in 0..freed {
            self.wake_buffer_waiter();
        }
        if life == Life::Closed {
            self.process_queue();
            self.start_parked();
            self.update_accepts();
        }
    }

    /// A client was accepted into registered slot `client`; it is already counted against the
    /// limits (see `Shared::try_reserve`).
    fn open_connection(&mut self, listener: usize, client: u32, peer: SocketAddr, table: Arc<BackendTable>) {
        let listener = self.acceptors[listener].listener.clone();
        let Some(slot) = self.alloc_slot() else {
            // The slab is as large as the accept range, so this cannot happen; close rather than leak.
            self.ring.push(&[close_entry(client)]);
            self.shared.release(&listener);
            listener.stats.closed(self.id, CloseCause::NoServer);
            return;
        };
        let backend = self.layout.backend_slot(slot);
        let entry = &mut self.slots[slot as usize];
        entry.conn = Some(Conn::new(slot, entry.gen, backend, listener, client, peer, table, self.now));
        self.live += 1;
        self.with_conn(slot, |conn, ctx| conn.start(ctx));
    }

    /// A free connection slot, growing the slab up to the layout's limit.
    fn alloc_slot(&mut self) -> Option<u32> {
        if let Some(slot) = self.free.pop() {
            return Some(slot);
        }
        let next = self.slots.len() as u32;
        if next >= self.layout.conns {
            return None;
        }
        self.slots.push(Box::new(Slot { gen: 0, conn: None }));
        Some(next)
    }

    /// The slot's connection has closed: give back its counts and the slot.
    fn free_slot(&mut self, slot: u32) {
        let entry = &mut self.slots[slot as usize];
        let Some(conn) = entry.conn.take() else { return };
        entry.gen = entry.gen.wrapping_add(1);
        self.free.push(slot);
        self.live -= 1;
        self.shared.release(conn.listener());
    }

    /// Gives a buffer just returned to the first flow still parked on one.
    fn wake_buffer_waiter(&mut self) {
        while let Some((slot, gen, dir)) = self.waiting.buffer.pop_front() {
            if !self.conn(slot, gen).is_some_and(|c| c.is_waiting_buffer(dir)) {
                continue;
            }
            self.with_conn(slot, |conn, ctx| conn.resume(ctx, dir));
            return;
        }
    }

    /// Periodic retry for flows parked on the buffer pools (e.g. after pipe creation failed).
    fn retry_buffer_waiters(&mut self) {
        for _ in 0..self.waiting.buffer.len() {
            let before = self.waiting.buffer.len();
            self.wake_buffer_waiter();
            if self.waiting.buffer.len() >= before {
                break;
            }
        }
    }

    /// Retries queued clients (a slot may have freed, here or in another worker) and closes those
    /// whose `queue_timeout` has passed. Runs on every tick and after every local close.
    fn process_queue(&mut self) {
        for _ in 0..self.waiting.server.len() {
            let Some((slot, gen)) = self.waiting.server.pop_front() else { return };
            if self.conn(slot, gen).is_some_and(Conn::is_queued) {
                self.with_conn(slot, |conn, ctx| conn.retry_queued(ctx));
            }
        }
    }

    fn arm_tick(&mut self) {
        let e = opcode::Timeout::new(&self.tick_ts).build().user_data(ops::encode(Op::Tick, 0, 0));
        self.ring.push(&[e]);
    }

    fn arm_wake(&mut self) {
        let e = opcode::PollAdd::new(types::Fd(self.wake_fd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(ops::encode(Op::Wake, 0, 0));
        self.ring.push(&[e]);
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
                Control::RetireListener { name } => self.retire_listener(&name),
            }
            self.update_accepts();
        }
        if self.shared.shutdown.load(Ordering::SeqCst) && self.shutting_down.is_none() {
            self.shutting_down = Some(self.now + self.shared.grace());
            debug!(worker = self.id, live = self.live, "stopping: no new connections");
            self.close_parked();
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
                self.close_every(|_| true, CloseCause::Shutdown);
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
        self.retry_buffer_waiters();
        if self.now.duration_since(self.last_idle_sweep) >= IDLE_SWEEP_EVERY {
            self.last_idle_sweep = self.now;
            let now = self.now;
            self.close_every(|conn| conn.is_idle(now), CloseCause::IdleTimeout);
        }
    }

    /// Closes every open connection that `which` selects.
    fn close_every(&mut self, which: impl Fn(&Conn) -> bool, cause: CloseCause) {
        for slot in 0..self.slots.len() as u32 {
            let selected = self.slots[slot as usize].conn.as_ref().is_some_and(|c| c.is_open() && which(c));
            if selected {
                self.with_conn(slot, |conn, ctx| conn.close(ctx, cause));
            }
        }
    }
}

/// The worker's ring: `SQ_ENTRIES` submissions, `CQ_ENTRIES` (four times as many) completions.
fn build_ring() -> io::Result<IoUring> {
    uring::build_ring(RingOptions { entries: SQ_ENTRIES, cq_entries: Some(CQ_ENTRIES) })
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
