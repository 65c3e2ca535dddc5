//! A proxied connection: its slot, the two flows (splice or copy) once connected, and teardown
//! (the connect chain is in `connect`).
//!
//! Ownership: a connection slot owns its client socket (registered slot from accept), its backend
//! socket (registered slot `layout.backend_slot(slot)`) and, per direction, at most one pipe or
//! copy buffer. It counts every operation it has in flight (`inflight`); teardown cancels everything on both sockets, waits for `inflight` to reach
//! zero, and only then closes the descriptors, returns the pipes and frees the slot. Nothing is
//! reused while the kernel may still touch it.
//!
//! Counting (see `crate::metrics`): a connect outcome, each chunk of bytes delivered, and each close
//! are counted in this worker's slot of the listener's, server's and pool's blocks: relaxed adds on
//! lines no other worker writes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types};
use tracing::debug;

use super::connect::ConnectResults;
use super::flow::{Flow, Mode, Outcome, Step};
use super::ops::{self, Op};
use super::pipes::Pipe;
use super::worker::Worker;
use crate::balance::ExcludeSet;
use crate::config::SpliceMode;
pub use crate::metrics::CloseCause;
use crate::metrics::Direction;
use crate::table::{BackendTable, ServerEntry};

const C2B: usize = 0;
const B2C: usize = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Free,
    /// Every server is at its max_connections: waiting for a slot (up to `queue_timeout`).
    Queued,
    Connecting,
    Proxying,
    Closing,
}

pub struct Conn {
    pub gen: u32,
    pub phase: Phase,
    pub(super) listener: usize,
    pub(super) pool: usize,
    pub table: Option<Arc<BackendTable>>,
    pub(super) server: usize,
    /// The server whose slot this connection holds in its pool's balancer (released once).
    pub(super) reserved: Option<usize>,
    pub(super) exclude: ExcludeSet,
    pub(super) attempts: u32,
    pub(super) attempts_left: u32,
    pub(super) peer: SocketAddr,
    pub queued_until: Option<Instant>,
    pub(super) client: u32,
    pub(super) backend_open: bool,
    pub(super) inflight: u32,
    pub(super) flows: [Flow; 2],
    pub(super) pipes: [Option<Pipe>; 2],
    pub(super) bufs: [Option<u32>; 2],
    pub(super) connect: ConnectResults,
    pub last_active: Instant,
    pub idle_timeout: Duration,
    /// When the client was accepted into this slot (for the connection duration).
    pub(super) opened: Instant,
    /// Connected to `server` (counted in its active connections until the close).
    pub(super) connected: bool,
    /// Why the connection is closing (the first cause wins).
    pub(super) cause: CloseCause,
    pub(super) addr: libc::sockaddr_storage,
    pub(super) addr_len: libc::socklen_t,
    pub(super) timeout_ts: types::Timespec,
}

impl Conn {
    pub fn new() -> Conn {
        Conn {
            gen: 0,
            phase: Phase::Free,
            listener: 0,
            pool: 0,
            table: None,
            server: 0,
            reserved: None,
            exclude: ExcludeSet::new(),
            attempts: 0,
            attempts_left: 0,
            peer: super::worker::UNKNOWN_PEER,
            queued_until: None,
            client: 0,
            backend_open: false,
            inflight: 0,
            flows: [Flow::default(), Flow::default()],
            pipes: [None, None],
            bufs: [None, None],
            connect: ConnectResults::default(),
            last_active: Instant::now(),
            idle_timeout: Duration::MAX,
            opened: Instant::now(),
            connected: false,
            cause: CloseCause::Done,
            // SAFETY: all-zero is a valid sockaddr_storage.
            addr: unsafe { std::mem::zeroed() },
            addr_len: 0,
            timeout_ts: types::Timespec::new(),
        }
    }
}

impl Default for Conn {
    fn default() -> Self {
        Conn::new()
    }
}

impl Worker {
    /// A client was accepted into registered slot `client`; it is already counted against the
    /// limits (see `Shared::try_reserve`).
    pub fn open_connection(&mut self, listener: usize, client: u32, peer: SocketAddr) {
        let shared = self.shared.clone();
        self.live += 1;
        let Some(slot) = self.alloc_slot() else {
            // The slab is as large as the accept range, so this cannot happen; close rather than leak.
            self.push(&[close_entry(client)]);
            self.live -= 1;
            shared.release(&self.acceptors[listener].listener);
            self.listener_stats(listener).closed(self.id, CloseCause::NoServer);
            return;
        };
        let table = self.table.load_full();
        let pool = table.pool_index(&self.acceptors[listener].listener.pool.load());
        let now = self.now;
        let c = &mut self.conns[slot as usize];
        c.phase = Phase::Connecting;
        c.listener = listener;
        c.client = client;
        c.backend_open = false;
        c.inflight = 0;
        let (mode, auto) = match shared.splice_mode() {
            SpliceMode::Auto => (Mode::Copy, true),
            SpliceMode::Always => (Mode::Splice, false),
            SpliceMode::Never => (Mode::Copy, false),
        };
        c.flows = [Flow::new(mode, auto), Flow::new(mode, auto)];
        c.pipes = [None, None];
        c.bufs = [None, None];
        c.exclude.clear();
        c.attempts = 0;
        c.reserved = None;
        c.queued_until = None;
        c.peer = peer;
        c.last_active = now;
        c.opened = now;
        c.connected = false;
        c.cause = CloseCause::Done;
        let Some(pool) = pool else {
            self.begin_close(slot, CloseCause::NoServer);
            return;
        };
        let p = &table.pools[pool];
        if p.all_down {
            // `on_all_down`: `pick` then finds nothing (reject) or ignores health (fail-open).
            p.count_all_down();
        }
        c.pool = pool;
        c.attempts_left = p.retries + 1;
        c.idle_timeout = p.idle_timeout;
        c.timeout_ts = types::Timespec::from(p.connect_timeout);
        c.table = Some(table);
        self.connect_next(slot);
    }

    pub fn on_conn_completion(&mut self, op: Op, slot: u32, gen: u32, res: i32, more: bool) {
        let Some(c) = self.conns.get_mut(slot as usize) else { return };
        if c.gen != gen || c.phase == Phase::Free {
            debug!(worker = self.id, ?op, slot, "completion for a recycled slot ignored");
            return;
        }
        if !more {
            c.inflight -= 1;
        }
        if c.phase == Phase::Closing {
            if c.inflight == 0 {
                self.finish_close(slot);
            }
            return;
        }
        match op {
            Op::Socket | Op::SockOpt | Op::Connect | Op::ConnectTimeout => self.on_connect_step(slot, op, res),
            Op::ClientPoll => self.on_poll(slot, C2B),
            Op::BackendPoll => self.on_poll(slot, B2C),
            Op::BackendPollOut => self.on_pollout(slot, C2B),
            Op::ClientPollOut => self.on_pollout(slot, B2C),
            Op::C2bIn => self.on_flow(slot, C2B, res, true),
            Op::C2bOut => self.on_flow(slot, C2B, res, false),
            Op::B2cIn => self.on_flow(slot, B2C, res, true),
            Op::B2cOut => self.on_flow(slot, B2C, res, false),
            Op::ShutBackend => self.on_shutdown(slot, C2B),
            Op::ShutClient => self.on_shutdown(slot, B2C),
            Op::Cancel => {}
            Op::Accept | Op::AcceptCancel | Op::Tick | Op::Wake | Op::Close => {}
        }
    }

    fn on_poll(&mut self, slot: u32, dir: usize) {
        self.conns[slot as usize].flows[dir].on_readable();
        self.drive(slot);
    }

    fn on_pollout(&mut self, slot: u32, dir: usize) {
        self.conns[slot as usize].flows[dir].on_writable();
        self.drive(slot);
    }

    fn on_flow(&mut self, slot: u32, dir: usize, res: i32, is_in: bool) {
        let worker = self.id;
        let c = &mut self.conns[slot as usize];
        let flow = &mut c.flows[dir];
        let before = flow.delivered;
        let outcome = match (is_in, flow.mode()) {
            (true, Mode::Copy) => flow.on_recv(res),
            (true, Mode::Splice) => flow.on_splice_in(res),
            (false, _) => flow.on_splice_out(res),
        };
        let delivered = flow.delivered - before;
        if delivered > 0 {
            if let Some(server) = server_entry(c) {
                let direction = if dir == C2B { Direction::ClientToBackend } else { Direction::BackendToClient };
                server.stats.delivered(worker, direction, delivered);
            }
        }
        match outcome {
            Outcome::Progress => c.last_active = self.now,
            Outcome::Idle => {}
            Outcome::Failed(e) => {
                // A failed read names its source; a failed write its destination.
                let client_side = (dir == C2B) == is_in;
                debug!(worker = self.id, slot, error = %errno_str(e), client_side, "connection failed");
                let cause = if client_side { CloseCause::ClientError } else { CloseCause::BackendError };
                self.begin_close(slot, cause);
                return;
            }
        }
        self.drive(slot);
    }

    fn on_shutdown(&mut self, slot: u32, dir: usize) {
        // A failed shutdown (peer already gone) ends the flow just the same.
        self.conns[slot as usize].flows[dir].on_shutdown();
        self.drive(slot);
    }

    /// Submits whatever both flows can do now; closes the connection when both are done.
    pub fn drive(&mut self, slot: u32) {
        for dir in [C2B, B2C] {
            loop {
                let mut steps = std::mem::take(&mut self.steps);
                steps.clear();
                self.conns[slot as usize].flows[dir].next_steps(&mut steps);
                let mut again = false;
                for &step in &steps {
                    again |= self.execute(slot, dir, step);
                }
                self.steps = steps;
                if !again {
                    break;
                }
            }
        }
        let c = &self.conns[slot as usize];
        if c.phase == Phase::Proxying && c.flows[C2B].is_done() && c.flows[B2C].is_done() {
            self.begin_close(slot, CloseCause::Done);
        }
    }

    /// Performs one step; returns true when the flow should be asked again (it got a pipe).
    fn execute(&mut self, slot: u32, dir: usize, step: Step) -> bool {
        let backend = self.layout.backend_slot(slot);
        let c = &mut self.conns[slot as usize];
        let (src, dst) = if dir == C2B { (c.client, backend) } else { (backend, c.client) };
        let gen = c.gen;
        let flags = libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE;
        let entry = match step {
            Step::NeedBuffer if c.flows[dir].mode() == Mode::Copy => {
                if let Some(buf) = self.buffers.get() {
                    let c = &mut self.conns[slot as usize];
                    c.bufs[dir] = Some(buf);
                    c.flows[dir].on_pipe();
                    return true;
                }
                self.pipe_waiters.push_back((slot, gen, dir));
                return false;
            }
            Step::NeedBuffer => {
                let got = self.pipes.get(&self.ring.submitter());
                match got {
                    Ok(Some(pipe)) => {
                        let c = &mut self.conns[slot as usize];
                        c.pipes[dir] = Some(pipe);
                        c.flows[dir].on_pipe();
                        return true;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        let now = self.now;
                        let id = self.id;
                        self.pipe_log.warn(now, format_args!("worker {id}: cannot create a pipe: {e}"));
                    }
                }
                self.pipe_waiters.push_back((slot, gen, dir));
                return false;
            }
            Step::ReleaseBuffer => {
                if let Some(buf) = c.bufs[dir].take() {
                    self.buffers.put(buf);
                    self.wake_pipe_waiter();
                } else if let Some(pipe) = c.pipes[dir].take() {
                    self.pipes.put(&self.ring.submitter(), pipe);
                    self.wake_pipe_waiter();
                }
                return false;
            }
            Step::Recv { len } => {
                let Some(buf) = c.bufs[dir] else { return false };
                let op = if dir == C2B { Op::C2bIn } else { Op::B2cIn };
                opcode::Recv::new(types::Fixed(src), self.buffers.ptr(buf, 0), len)
                    .build()
                    .user_data(ops::encode(op, slot, gen))
            }
            Step::Send { off, len } => {
                let Some(buf) = c.bufs[dir] else { return false };
                let op = if dir == C2B { Op::C2bOut } else { Op::B2cOut };
                opcode::Send::new(types::Fixed(dst), self.buffers.ptr(buf, off), len)
                    .flags(libc::MSG_NOSIGNAL)
                    .build()
                    .user_data(ops::encode(op, slot, gen))
            }
            Step::ArmPollIn => {
                let op = if dir == C2B { Op::ClientPoll } else { Op::BackendPoll };
                opcode::PollAdd::new(types::Fixed(src), (libc::POLLIN | libc::POLLRDHUP) as u32)
                    .build()
                    .user_data(ops::encode(op, slot, gen))
            }
            Step::SpliceInOut { len } => {
                let Some(pipe) = c.pipes[dir] else { return false };
                let (op_in, op_out) = if dir == C2B { (Op::C2bIn, Op::C2bOut) } else { (Op::B2cIn, Op::B2cOut) };
                // A hard link runs the splice-out even when the splice-in is short or fails.
                let pair = [
                    opcode::Splice::new(types::Fixed(src), -1, types::Fixed(pipe.write()), -1, len)
                        .flags(flags)
                        .build()
                        .flags(squeue::Flags::IO_HARDLINK)
                        .user_data(ops::encode(op_in, slot, gen)),
                    opcode::Splice::new(types::Fixed(pipe.read()), -1, types::Fixed(dst), -1, len)
                        .flags(flags)
                        .build()
                        .user_data(ops::encode(op_out, slot, gen)),
                ];
                c.inflight += 2;
                self.push(&pair);
                return false;
            }
            Step::SpliceIn { len } => {
                let Some(pipe) = c.pipes[dir] else { return false };
                let op = if dir == C2B { Op::C2bIn } else { Op::B2cIn };
                opcode::Splice::new(types::Fixed(src), -1, types::Fixed(pipe.write()), -1, len)
                    .flags(flags)
                    .build()
                    .user_data(ops::encode(op, slot, gen))
            }
            Step::SpliceOut { len } => {
                let Some(pipe) = c.pipes[dir] else { return false };
                let op = if dir == C2B { Op::C2bOut } else { Op::B2cOut };
                opcode::Splice::new(types::Fixed(pipe.read()), -1, types::Fixed(dst), -1, len)
                    .flags(flags)
                    .build()
                    .user_data(ops::encode(op, slot, gen))
            }
            Step::ArmPollOut => {
                let op = if dir == C2B { Op::BackendPollOut } else { Op::ClientPollOut };
                opcode::PollAdd::new(types::Fixed(dst), libc::POLLOUT as u32)
                    .build()
                    .user_data(ops::encode(op, slot, gen))
            }
            Step::ShutdownDst if c.flows[1 - dir].is_done() => {
                // The other direction is finished too: the close that follows sends the FIN,
                // so skip a shutdown (which io_uring would run on an io-wq thread).
                c.flows[dir].on_shutdown();
                return false;
            }
            Step::ShutdownDst => {
                let op = if dir == C2B { Op::ShutBackend } else { Op::ShutClient };
                opcode::Shutdown::new(types::Fixed(dst), libc::SHUT_WR).build().user_data(ops::encode(op, slot, gen))
            }
        };
        c.inflight += 1;
        self.push(&[entry]);
        false
    }

    fn wake_pipe_waiter(&mut self) {
        while let Some((slot, gen, dir)) = self.pipe_waiters.pop_front() {
            let Some(c) = self.conns.get_mut(slot as usize) else { continue };
            if c.gen != gen || c.phase != Phase::Proxying || !c.flows[dir].is_waiting_pipe() {
                continue;
            }
            // Let the flow ask again; it will get the pipe just returned.
            c.flows[dir].clear_waiting_pipe();
            self.drive(slot);
            return;
        }
    }

    /// Periodic retry for flows parked on the pipe pool (e.g. after pipe creation failed).
    pub fn retry_pipe_waiters(&mut self) {
        let n = self.pipe_waiters.len();
        for _ in 0..n {
            let before = self.pipe_waiters.len();
            self.wake_pipe_waiter();
            if self.pipe_waiters.len() >= before {
                break;
            }
        }
    }

    /// Starts teardown: cancel everything on both sockets; `finish_close` runs at zero in flight.
    pub fn begin_close(&mut self, slot: u32, cause: CloseCause) {
        let c = &mut self.conns[slot as usize];
        if matches!(c.phase, Phase::Closing | Phase::Free) {
            return;
        }
        // A queued client has nothing in flight; it leaves the queue lazily (phase check).
        debug!(worker = self.id, slot, ?cause, "closing");
        c.phase = Phase::Closing;
        c.cause = cause;
        if c.inflight == 0 {
            self.finish_close(slot);
            return;
        }
        // Cancel each request in flight by its user_data, which the kernel finds in a hash table.
        // (Cancelling by descriptor makes it walk every armed request of the ring: measured at
        // about 1 ms of CPU per reset with 15,000 connections held; see bench/README.md.)
        // Requests that complete on their own (non-blocking splices, sends, recvs) may beat the
        // cancel; it then finds nothing, which is harmless: every cancel has its own completion.
        let gen = c.gen;
        let mut ops = Vec::with_capacity(8);
        let per_flow = [
            [Op::ClientPoll, Op::BackendPollOut, Op::C2bIn, Op::C2bOut, Op::ShutBackend],
            [Op::BackendPoll, Op::ClientPollOut, Op::B2cIn, Op::B2cOut, Op::ShutClient],
        ];
        for (flow, names) in c.flows.iter().zip(per_flow) {
            ops.extend(flow.in_flight().into_iter().zip(names).filter(|(armed, _)| *armed).map(|(_, op)| op));
        }
        if c.connect.pending > 0 {
            ops.push(Op::Connect);
        }
        let entries: Vec<squeue::Entry> = ops.into_iter().map(|op| cancel_op(op, slot, gen)).collect();
        c.inflight += entries.len() as u32;
        self.push(&entries);
    }

    /// Last completion arrived: close the sockets, give back the pipes, free the slot.
    fn finish_close(&mut self, slot: u32) {
        if self.shared.log_connections.load(std::sync::atomic::Ordering::Relaxed) {
            self.log_connection(slot);
        }
        let backend = self.layout.backend_slot(slot);
        let c = &mut self.conns[slot as usize];
        let mut entries = vec![close_entry(c.client)];
        if c.backend_open {
            entries.push(close_entry(backend));
        }
        let listener = c.listener;
        let worker = self.id;
        if let Some(pool) = c.table.as_ref().and_then(|t| t.pools.get(c.pool)) {
            pool.stats.closed(worker, self.now.saturating_duration_since(c.opened));
        }
        if c.connected {
            if let Some(server) = server_entry(c) {
                server.stats.disconnected(worker);
            }
        }
        self.acceptors[listener].listener.stats.closed(worker, c.cause);
        let pipes = [c.pipes[0].take(), c.pipes[1].take()];
        let bufs = [c.bufs[0].take(), c.bufs[1].take()];
        let flows_empty = [c.flows[0].in_pipe == 0, c.flows[1].in_pipe == 0];
        self.push(&entries);
        for (pipe, empty) in pipes.into_iter().zip(flows_empty) {
            if let Some(pipe) = pipe {
                if empty {
                    self.pipes.put(&self.ring.submitter(), pipe);
                } else {
                    self.pipes.destroy(&self.ring.submitter(), pipe);
                }
                self.wake_pipe_waiter();
            }
        }
        for buf in bufs.into_iter().flatten() {
            // Nothing is in flight any more, so the buffer is free whatever it holds.
            self.buffers.put(buf);
            self.wake_pipe_waiter();
        }
        self.release_server(slot);
        self.release_slot(slot);
        self.live -= 1;
        self.shared.release(&self.acceptors[listener].listener);
        self.process_queue();
        self.start_parked();
        self.update_accepts();
    }
}

impl Worker {
    fn log_connection(&self, slot: u32) {
        let c = &self.conns[slot as usize];
        let pool = c.table.as_ref().map(|t| &t.pools[c.pool]);
        let entry = super::connlog::Entry {
            client: c.peer,
            listener: &self.acceptors[c.listener].listener.name,
            pool: pool.map_or("-", |p| p.name.as_str()),
            server: if c.attempts > 0 { pool.map(|p| p.servers[c.server].name.as_str()) } else { None },
            c2b: c.flows[C2B].delivered,
            b2c: c.flows[B2C].delivered,
            duration: self.now.saturating_duration_since(c.opened),
            cause: c.cause,
        };
        super::connlog::write(&entry);
    }
}

/// The server the connection is connecting or connected to, in its snapshot.
pub(super) fn server_entry(c: &Conn) -> Option<&ServerEntry> {
    c.table.as_ref()?.pools.get(c.pool)?.servers.get(c.server)
}

/// Cancels the request `op` of connection `conn` (generation `gen`), found by its user_data.
fn cancel_op(op: Op, conn: u32, gen: u32) -> squeue::Entry {
    opcode::AsyncCancel::new(ops::encode(op, conn, gen)).build().user_data(ops::encode(Op::Cancel, conn, gen))
}

fn close_entry(slot: u32) -> squeue::Entry {
    opcode::Close::new(types::Fixed(slot)).build().user_data(ops::encode(Op::Close, 0, 0))
}

pub(super) fn errno_str(res: i32) -> String {
    std::io::Error::from_raw_os_error(-res).to_string()
}
