//! Choosing a server and connecting to it: the pool's balancer picks (with the servers already
//! tried excluded), the connect chain socket -> setsockopt x2 -> connect (built by
//! [`crate::uring::ConnectChain`], as the prober's is) runs as one linked submission under a link
//! timeout, and a failed attempt gives its slot back and tries the next server. When every server
//! is at its max_connections the client waits in the worker's server queue (`Waiting::server`)
//! until a slot frees or its `queue_timeout` passes.
//!
//! `release_server` is the one place a reserved server slot is given back.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use io_uring::squeue;

use super::{errno_str, CloseCause, Conn, Ctx, Life, Phase};
use crate::balance::{Pick, WorkerBalanceState};
use crate::datapath::ops::Op;
use crate::metrics::ConnectFailure;
use crate::table::ConnectOutcome;
use crate::uring::{ConnectChain, ConnectUserData, SockOpt};

static ONE: libc::c_int = 1;

/// The connect chain's completions, gathered before deciding.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ConnectResults {
    /// Completions of the chain still to come.
    pub(super) pending: u8,
    socket: i32,
    sockopt: i32,
    connect: i32,
    timeout: i32,
}

impl Conn {
    /// Asks the pool's balancer for a server outside the ones already tried; `Server` reserves a
    /// slot on it, which `release_server` gives back.
    fn pick(&mut self, ctx: &mut Ctx<'_>) -> Pick {
        let Some(pool) = self.pool else { return Pick::NoneUsable };
        if ctx.balance.len() <= pool {
            let id = ctx.worker as u64;
            ctx.balance.resize_with(pool + 1, || WorkerBalanceState::new(id));
        }
        self.table.pools[pool].balancer.select(&mut ctx.balance[pool], self.peer.ip(), &self.exclude, ctx.now)
    }

    /// Gives back the connection's server slot (after a failed connect, or at close).
    pub(super) fn release_server(&mut self, now: Instant) {
        let Some(server) = self.reserved.take() else { return };
        if let Some(pool) = self.pool() {
            pool.balancer.release(server, now);
        }
    }

    /// Connects to the next server the balancer picks, queues the client when every server is
    /// full, or closes it when no attempt or server is left.
    pub(super) fn connect_next(&mut self, ctx: &mut Ctx<'_>) -> Life {
        let pick = if self.attempts_left > 0 { self.pick(ctx) } else { Pick::NoneUsable };
        let server = match pick {
            Pick::Server(server) => server,
            Pick::AllFull => {
                if self.queued_until.is_none() {
                    let Some(pool) = self.pool() else { return self.close(ctx, CloseCause::NoServer) };
                    pool.counters.queued.fetch_add(1, Ordering::Relaxed);
                    self.queued_until = Some(ctx.now + pool.queue_timeout);
                }
                self.phase = Phase::Queued;
                ctx.waiting.server.push_back((self.slot, self.gen));
                return Life::Open;
            }
            Pick::NoneUsable => {
                let cause = if self.attempts == 0 { CloseCause::NoServer } else { CloseCause::ConnectFailed };
                return self.close(ctx, cause);
            }
        };
        let Some(addr) = self.pool().and_then(|p| p.servers.get(server)).map(|s| s.addr) else {
            return self.close(ctx, CloseCause::NoServer);
        };
        self.phase = Phase::Connecting;
        self.reserved = Some(server);
        self.server = Some(server);
        self.exclude.insert(server);
        self.attempts += 1;
        self.attempts_left -= 1;
        let Some(chain) = self.connect_chain(addr) else { return self.close(ctx, CloseCause::ConnectFailed) };
        self.connect = ConnectResults { pending: chain.len() as u8, ..ConnectResults::default() };
        self.inflight += chain.len() as u32;
        ctx.ring.push(&chain);
        Life::Open
    }

    /// socket -> TCP_NODELAY -> IP_BIND_ADDRESS_NO_PORT -> connect, linked, under a link
    /// timeout. The address and the timespec live in the connection, which outlives the chain.
    fn connect_chain(&mut self, addr: SocketAddr) -> Option<[squeue::Entry; 5]> {
        let (domain, len) = write_sockaddr(addr, &mut self.addr);
        self.addr_len = len;
        ConnectChain {
            domain,
            slot: self.backend,
            sockopts: [
                SockOpt::new(libc::IPPROTO_TCP, libc::TCP_NODELAY, &ONE),
                SockOpt::new(libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, &ONE),
            ],
            addr: (&self.addr as *const libc::sockaddr_storage).cast(),
            addr_len: self.addr_len,
            timeout: &self.timeout_ts,
            user_data: ConnectUserData {
                socket: self.user_data(Op::Socket),
                sockopt: self.user_data(Op::SockOpt),
                connect: self.user_data(Op::Connect),
                timeout: self.user_data(Op::ConnectTimeout),
            },
        }
        .entries()
    }

    pub(super) fn on_connect_step(&mut self, ctx: &mut Ctx<'_>, op: Op, res: i32) -> Life {
        let r = &mut self.connect;
        match op {
            Op::Socket => {
                r.socket = res;
                self.backend_open |= res >= 0;
            }
            Op::SockOpt if res < 0 && r.sockopt == 0 => r.sockopt = res,
            Op::Connect => r.connect = res,
            Op::ConnectTimeout => r.timeout = res,
            _ => {}
        }
        r.pending -= 1;
        if r.pending > 0 {
            return Life::Open;
        }
        let r = *r;
        let outcome = match r.connect {
            0 => ConnectOutcome::Connected,
            _ if r.timeout == -libc::ETIME => ConnectOutcome::TimedOut,
            e => ConnectOutcome::Failed(-e),
        };
        let (Some(pool), Some(server)) = (self.pool, self.server) else { return self.close(ctx, CloseCause::NoServer) };
        if r.socket >= 0 && r.sockopt >= 0 {
            // Passive health: the prober hears of every connect that reached the network.
            self.table.report_connect(pool, server, outcome);
        }
        if let Some(entry) = self.server_entry() {
            let worker = ctx.worker;
            if self.attempts > 1 {
                entry.stats.retried(worker);
            }
            match outcome {
                _ if r.socket < 0 || r.sockopt < 0 => entry.stats.connect_failed(worker, ConnectFailure::Other),
                ConnectOutcome::Connected => entry.stats.connected(worker),
                ConnectOutcome::TimedOut => entry.stats.connect_failed(worker, ConnectFailure::Timeout),
                ConnectOutcome::Failed(errno) => entry.stats.connect_failed(worker, ConnectFailure::from_errno(errno)),
            }
        }
        if r.connect == 0 {
            self.phase = Phase::Proxying;
            self.connected = true;
            self.last_active = ctx.now;
            // Both flows start by polling their source.
            return self.drive(ctx);
        }
        let reason = if r.socket < 0 {
            format!("socket: {}", errno_str(r.socket))
        } else if r.sockopt < 0 {
            format!("setsockopt: {}", errno_str(r.sockopt))
        } else if r.timeout == -libc::ETIME {
            "connect timeout".to_string()
        } else {
            errno_str(r.connect)
        };
        let name = self.server_entry().map_or("", |s| s.name.as_str());
        let worker = ctx.worker;
        ctx.logs.connect.warn(ctx.now, format_args!("worker {worker}: connect to server {name} failed: {reason}"));
        self.release_server(ctx.now);
        if r.socket < 0 && matches!(-r.socket, libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS) {
            // Out of resources locally: another server will not help.
            return self.close(ctx, CloseCause::ConnectFailed);
        }
        // The next attempt's socket replaces this one in the same registered slot.
        self.connect_next(ctx)
    }

    /// The worker's server queue came round to this client: retry (a slot may have freed, here
    /// or in another worker), or close it when its `queue_timeout` has passed.
    pub fn retry_queued(&mut self, ctx: &mut Ctx<'_>) -> Life {
        if self.phase != Phase::Queued {
            return Life::Open;
        }
        if self.queued_until.is_some_and(|t| ctx.now >= t) {
            if let Some(pool) = self.pool() {
                pool.counters.queue_timeouts.fetch_add(1, Ordering::Relaxed);
            }
            return self.close(ctx, CloseCause::QueueTimeout);
        }
        // Re-queues itself when still full.
        self.connect_next(ctx)
    }
}

/// Writes `addr` as a C sockaddr; returns (domain, length).
fn write_sockaddr(addr: SocketAddr, out: &mut libc::sockaddr_storage) -> (i32, libc::socklen_t) {
    let sa = socket2::SockAddr::from(addr);
    let len = sa.len();
    // SAFETY: SockAddr holds a valid sockaddr of `len` bytes, and sockaddr_storage is large
    // enough for any of them.
    unsafe {
        std::ptr::copy_nonoverlapping(
            sa.as_ptr().cast::<u8>(),
            (out as *mut libc::sockaddr_storage).cast::<u8>(),
            len as usize,
        );
    }
    let domain = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    (domain, len)
}
