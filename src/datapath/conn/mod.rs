//! A proxied connection, its whole life in one module: open, pick and connect, the two flows while
//! proxying, and teardown. The worker hands each event to the connection with a [`Ctx`] (its ring,
//! pools and queues) and learns from the returned [`Life`] whether the slot is free again.
//!
//! ```text
//!   accept ─▶ open ─▶ connect ──────────▶ proxying ──▶ closing ──▶ (slot free)
//!                      │  ▲ retry on the     (two flows)     ▲
//!                      ▼  │ next server                      │ cancel what is in flight,
//!                     queued (every server full)             │ wait for the last completion
//! ```
//!
//! Files: `mod.rs` (the connection, its phases, completions and teardown), `connect.rs` (server
//! pick, the connect chain, retries and the server queue), `transfer.rs` (what each flow step
//! submits while proxying), `replay.rs` (`retry_on_empty_response`: a server that fails before its
//! first byte is replaced by another one, invisibly to the client).
//!
//! Ownership: a connection owns its client socket (registered slot from accept), its backend
//! socket (registered slot `layout.backend_slot(slot)`) and, per direction, at most one buffer (a
//! pipe or a memory buffer). It counts every operation it has in flight (`inflight`); teardown
//! cancels each one by its `user_data`, waits for `inflight` to reach zero, and only then closes
//! the descriptors, returns the buffers and frees the slot. Nothing is reused while the kernel
//! may still touch it, and the connection value (which in-flight operations point into: the
//! connect address, the link timeout) never moves: slots are boxed.
//!
//! Counting (see `crate::metrics`): a connect outcome, each chunk of bytes delivered, and each close
//! are counted in this worker's slot of the listener's, server's and pool's blocks: relaxed adds on
//! lines no other worker writes.

mod connect;
mod replay;
mod transfer;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types};
use tracing::debug;

use super::direction::{Dir, Side};
use super::flow::{Flow, FlowOp, Outcome, Step, Transfer};
use super::memory::MemoryPool;
use super::ops::{self, Op};
use super::pipes::{Pipe, PipePool};
use super::ring::Ring;
use super::warn::RateLimited;
use super::ListenerShared;
use crate::balance::{ExcludeSet, WorkerBalanceState};
use crate::config::SpliceMode;
pub use crate::metrics::CloseCause;
use crate::table::{BackendTable, PoolTable, ServerEntry};
use connect::ConnectResults;
use replay::Replay;

/// What a connection may use of its worker while it handles one event.
pub struct Ctx<'a> {
    pub worker: usize,
    pub now: Instant,
    pub ring: &'a mut Ring,
    pub pipes: &'a mut PipePool,
    pub memory: &'a mut MemoryPool,
    /// This worker's balancing state, per pool index (grown on demand).
    pub balance: &'a mut Vec<WorkerBalanceState>,
    pub waiting: &'a mut Waiting,
    pub logs: &'a mut Logs,
    /// Scratch for a flow's next steps.
    pub steps: &'a mut Vec<Step>,
    /// Buffers given back during this event: the worker wakes as many parked flows.
    pub freed_buffers: u32,
}

/// Connections parked on something the worker will hand out later, as (slot, gen, ...): the
/// generation tells a stale entry (the connection closed meanwhile) from a live one.
#[derive(Default)]
pub struct Waiting {
    /// Flows waiting for a pipe or memory buffer.
    pub buffer: VecDeque<(u32, u32, Dir)>,
    /// Clients waiting for a server below its max_connections.
    pub server: VecDeque<(u32, u32)>,
}

/// The connection path's rate-limited warnings.
pub struct Logs {
    pub pipe: RateLimited,
    pub connect: RateLimited,
}

impl Logs {
    pub const fn new() -> Logs {
        Logs { pipe: RateLimited::new(), connect: RateLimited::new() }
    }
}

/// Whether the connection still holds its slot after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Life {
    Open,
    /// Its last completion arrived and its descriptors are closing: the slot may be reused.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Every server is at its max_connections: waiting for a slot (up to `queue_timeout`).
    Queued,
    Connecting,
    Proxying,
    /// The server failed before its first byte: cancelling what is in flight, then connecting
    /// to another server with the client's bytes (see `replay`).
    Replaying,
    /// Cancelling what is in flight; freed at the last completion.
    Closing,
}

/// A direction's buffer, if it holds one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    None,
    Pipe(Pipe),
    Memory(u32),
}

pub struct Conn {
    /// Its slot in the worker's slab and the slot's generation, which make its `user_data`.
    slot: u32,
    gen: u32,
    phase: Phase,
    listener: Arc<ListenerShared>,
    /// The snapshot it started with; it keeps it to the end, also across reloads.
    table: Arc<BackendTable>,
    /// Its pool in `table`; `None` when the listener's pool is not in it.
    pool: Option<usize>,
    /// The server of the current (or last) connect attempt.
    server: Option<usize>,
    /// The server whose slot this connection holds in its pool's balancer (released once).
    reserved: Option<usize>,
    /// Connected to `server` (counted in its active connections until the close).
    connected: bool,
    exclude: ExcludeSet,
    attempts: u32,
    attempts_left: u32,
    /// When a client queued for a server slot gives up; set at its first queueing.
    queued_until: Option<Instant>,
    peer: SocketAddr,
    /// Registered slots of the two sockets.
    client: u32,
    backend: u32,
    backend_open: bool,
    inflight: u32,
    flows: [Flow; 2],
    held: [Held; 2],
    /// How new flows move bytes: (transfer, auto).
    transfer: (Transfer, bool),
    /// The client's bytes so far while the server has sent nothing (`retry_on_empty_response`).
    replay: Option<Replay>,
    /// Why to close if a replay cannot go on.
    replay_failure: CloseCause,
    connect: ConnectResults,
    last_active: Instant,
    idle_timeout: Duration,
    /// When the client was accepted (for the connection duration).
    opened: Instant,
    /// Why the connection is closing (the first cause wins).
    cause: CloseCause,
    /// The backend's address and the connect's link timeout: the kernel reads both after
    /// submission, so they live here, in the boxed slot.
    addr: libc::sockaddr_storage,
    addr_len: libc::socklen_t,
    timeout_ts: types::Timespec,
}

impl Conn {
    /// A client accepted into registered slot `client`, already counted against the limits;
    /// nothing is submitted until [`Conn::start`].
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        slot: u32,
        gen: u32,
        backend: u32,
        listener: Arc<ListenerShared>,
        client: u32,
        peer: SocketAddr,
        table: Arc<BackendTable>,
        now: Instant,
    ) -> Conn {
        let (transfer, auto) = match table.runtime.splice {
            SpliceMode::Auto => (Transfer::Copy, true),
            SpliceMode::Always => (Transfer::Splice, false),
            SpliceMode::Never => (Transfer::Copy, false),
        };
        let pool = table.route(&listener.name).map(|r| r.pool);
        Conn {
            slot,
            gen,
            phase: Phase::Connecting,
            listener,
            table,
            pool,
            server: None,
            reserved: None,
            connected: false,
            exclude: ExcludeSet::new(),
            attempts: 0,
            attempts_left: 0,
            queued_until: None,
            peer,
            client,
            backend,
            backend_open: false,
            inflight: 0,
            flows: [Flow::new(transfer, auto), Flow::new(transfer, auto)],
            held: [Held::None; 2],
            transfer: (transfer, auto),
            replay: None,
            replay_failure: CloseCause::BackendError,
            connect: ConnectResults::default(),
            last_active: now,
            idle_timeout: Duration::MAX,
            opened: now,
            cause: CloseCause::Done,
            // SAFETY: all-zero is a valid sockaddr_storage.
            addr: unsafe { std::mem::zeroed() },
            addr_len: 0,
            timeout_ts: types::Timespec::new(),
        }
    }

    pub fn listener(&self) -> &Arc<ListenerShared> {
        &self.listener
    }

    /// Picks a server and connects (or queues, or closes when the pool has no usable server).
    pub fn start(&mut self, ctx: &mut Ctx<'_>) -> Life {
        let Some(pool) = self.pool() else { return self.close(ctx, CloseCause::NoServer) };
        if pool.all_down {
            // `on_all_down`: `pick` then finds nothing (reject) or ignores health (fail-open).
            pool.count_all_down();
        }
        let (attempts, idle_timeout, connect_timeout) = (pool.retries + 1, pool.idle_timeout, pool.connect_timeout);
        if pool.retry_on_empty_response && self.transfer.0 == Transfer::Copy {
            self.replay = Some(Replay::EMPTY);
        }
        self.attempts_left = attempts;
        self.idle_timeout = idle_timeout;
        self.timeout_ts = types::Timespec::from(connect_timeout);
        self.connect_next(ctx)
    }

    /// Not closing: the worker may still close it (idle sweep, end of the shutdown grace).
    pub fn is_open(&self) -> bool {
        self.phase != Phase::Closing
    }

    pub fn is_queued(&self) -> bool {
        self.phase == Phase::Queued
    }

    /// Proxying, with no byte either way for its `idle_timeout`.
    pub fn is_idle(&self, now: Instant) -> bool {
        self.phase == Phase::Proxying && now.duration_since(self.last_active) >= self.idle_timeout
    }

    /// Flow `dir` is parked until a buffer frees up.
    pub fn is_waiting_buffer(&self, dir: Dir) -> bool {
        self.phase == Phase::Proxying && self.flows[dir.index()].is_waiting_buffer()
    }

    /// A buffer was given back: flow `dir`, parked for one, asks again.
    pub fn resume(&mut self, ctx: &mut Ctx<'_>, dir: Dir) -> Life {
        self.flows[dir.index()].retry_buffer();
        self.drive(ctx)
    }

    /// One of its operations completed (`more`: a multishot one that stays armed).
    pub fn on_completion(&mut self, ctx: &mut Ctx<'_>, op: Op, res: i32, more: bool) -> Life {
        if !more {
            self.inflight -= 1;
        }
        match self.phase {
            Phase::Closing => return if self.inflight == 0 { self.finish(ctx) } else { Life::Open },
            Phase::Replaying => {
                if op == Op::C2bRead {
                    self.on_read_while_replaying(ctx, res);
                }
                return if self.inflight == 0 { self.reconnect(ctx) } else { Life::Open };
            }
            Phase::Queued | Phase::Connecting | Phase::Proxying => {}
        }
        match op {
            Op::Socket | Op::SockOpt | Op::Connect | Op::ConnectTimeout => self.on_connect_step(ctx, op, res),
            _ => match op.as_flow() {
                Some((dir, kind)) => self.on_flow(ctx, dir, kind, res),
                None => Life::Open,
            },
        }
    }

    fn on_flow(&mut self, ctx: &mut Ctx<'_>, dir: Dir, kind: FlowOp, res: i32) -> Life {
        let flow = &mut self.flows[dir.index()];
        let before = flow.delivered();
        let outcome = match kind {
            FlowOp::PollIn => {
                flow.on_readable();
                Outcome::Idle
            }
            FlowOp::PollOut => {
                flow.on_writable();
                Outcome::Idle
            }
            FlowOp::Shutdown => {
                flow.on_shutdown();
                Outcome::Idle
            }
            FlowOp::Read => flow.on_read(res),
            FlowOp::Write => flow.on_write(res),
        };
        let delivered = flow.delivered() - before;
        if kind == FlowOp::Read && self.replay.is_some() {
            match (dir, self.held[dir.index()]) {
                (Dir::C2b, Held::Memory(buf)) if res > 0 => self.hold_for_replay(ctx, buf, res as u32),
                // The server's first byte: nothing will be replayed.
                (Dir::B2c, _) if res > 0 => self.end_replay(ctx),
                (Dir::B2c, _) if res == 0 && self.may_replay() => return self.start_replay(ctx),
                _ => {}
            }
        }
        if delivered > 0 {
            if let Some(server) = self.server_entry() {
                server.stats.delivered(ctx.worker, dir.metric(), delivered);
            }
        }
        match outcome {
            Outcome::Progress => self.last_active = ctx.now,
            Outcome::Idle => {}
            Outcome::Failed(e) => {
                // A failed read names its source; a failed write its destination.
                let side = if kind == FlowOp::Read { dir.source() } else { dir.destination() };
                debug!(worker = ctx.worker, slot = self.slot, error = %errno_str(e), ?side, "connection failed");
                if side == Side::Backend && self.may_replay() {
                    return self.start_replay(ctx);
                }
                let cause = match side {
                    Side::Client => CloseCause::ClientError,
                    Side::Backend => CloseCause::BackendError,
                };
                return self.close(ctx, cause);
            }
        }
        self.drive(ctx)
    }

    /// Starts teardown: cancel everything in flight; [`Conn::finish`] runs at the last completion.
    pub fn close(&mut self, ctx: &mut Ctx<'_>, cause: CloseCause) -> Life {
        if self.phase == Phase::Closing {
            return Life::Open;
        }
        // A queued client has nothing in flight; it leaves the queue lazily (phase check).
        debug!(worker = ctx.worker, slot = self.slot, ?cause, "closing");
        self.phase = Phase::Closing;
        self.cause = cause;
        if self.inflight == 0 {
            return self.finish(ctx);
        }
        self.cancel_in_flight(ctx);
        Life::Open
    }

    fn cancel_in_flight(&mut self, ctx: &mut Ctx<'_>) {
        // Cancel each request in flight by its user_data, which the kernel finds in a hash table.
        // (Cancelling by descriptor makes it walk every armed request of the ring: measured at
        // about 1 ms of CPU per reset with 15,000 connections held; see bench/README.md.)
        // Requests that complete on their own (non-blocking splices, sends, recvs) may beat the
        // cancel; it then finds nothing, which is harmless: every cancel has its own completion.
        let mut cancels: Vec<squeue::Entry> = Vec::with_capacity(6);
        for dir in Dir::BOTH {
            let flow = &self.flows[dir.index()];
            cancels.extend(flow.in_flight().map(|kind| self.cancel(Op::flow(dir, kind))));
        }
        if self.connect.pending > 0 {
            cancels.push(self.cancel(Op::Connect));
        }
        self.inflight += cancels.len() as u32;
        ctx.ring.push(&cancels);
    }

    /// The last completion arrived: close the sockets, give back the buffers and the server slot.
    fn finish(&mut self, ctx: &mut Ctx<'_>) -> Life {
        if self.table.runtime.log_connections {
            self.log(ctx.now);
        }
        let mut closes = vec![close_entry(self.client)];
        if self.backend_open {
            closes.push(close_entry(self.backend));
        }
        ctx.ring.push(&closes);
        let worker = ctx.worker;
        if let Some(pool) = self.pool() {
            pool.stats.closed(worker, ctx.now.saturating_duration_since(self.opened));
        }
        if self.connected {
            if let Some(server) = self.server_entry() {
                server.stats.disconnected(worker);
            }
        }
        self.listener.stats.closed(worker, self.cause);
        self.give_back_buffers(ctx);
        self.end_replay(ctx);
        self.release_server(ctx.now);
        Life::Closed
    }

    /// Nothing is in flight: both directions' buffers go back to their pools.
    fn give_back_buffers(&mut self, ctx: &mut Ctx<'_>) {
        for dir in Dir::BOTH {
            match std::mem::replace(&mut self.held[dir.index()], Held::None) {
                Held::None => continue,
                // Nothing is in flight any more, so the memory is free whatever it holds.
                Held::Memory(buf) => ctx.memory.put(buf),
                // A pipe that still holds bytes is destroyed, never pooled.
                Held::Pipe(pipe) if self.flows[dir.index()].buffered() == 0 => {
                    ctx.pipes.put(&ctx.ring.submitter(), pipe)
                }
                Held::Pipe(pipe) => ctx.pipes.destroy(&ctx.ring.submitter(), pipe),
            }
            ctx.freed_buffers += 1;
        }
    }

    fn pool(&self) -> Option<&PoolTable> {
        self.table.pools.get(self.pool?)
    }

    /// The server the connection is connecting or connected to, in its snapshot.
    fn server_entry(&self) -> Option<&ServerEntry> {
        self.pool()?.servers.get(self.server?)
    }

    fn user_data(&self, op: Op) -> u64 {
        ops::encode(op, self.slot, self.gen)
    }

    /// Cancels this connection's request `op`, found by its user_data.
    fn cancel(&self, op: Op) -> squeue::Entry {
        opcode::AsyncCancel::new(self.user_data(op)).build().user_data(self.user_data(Op::Cancel))
    }

    fn log(&self, now: Instant) {
        let pool = self.pool();
        let entry = super::connlog::Entry {
            client: self.peer,
            listener: &self.listener.name,
            pool: pool.map_or("-", |p| p.name.as_str()),
            server: self.server_entry().map(|s| s.name.as_str()),
            c2b: self.flows[Dir::C2b.index()].delivered(),
            b2c: self.flows[Dir::B2c.index()].delivered(),
            duration: now.saturating_duration_since(self.opened),
            cause: self.cause,
        };
        super::connlog::write(&entry);
    }
}

/// Closes a registered descriptor whose owner no longer waits for the result.
pub fn close_entry(slot: u32) -> squeue::Entry {
    opcode::Close::new(types::Fixed(slot)).build().user_data(ops::encode(Op::Close, 0, 0))
}

fn errno_str(res: i32) -> String {
    std::io::Error::from_raw_os_error(-res).to_string()
}
