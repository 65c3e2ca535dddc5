//! Choosing a server and connecting to it: the pool's balancer picks (with the servers already
//! tried excluded), the connect chain socket -> setsockopt x2 -> connect runs as one linked
//! submission under a link timeout, and a failed attempt gives its slot back and tries the next
//! server. When every server is at its max_connections the client waits in the worker's queue.
//!
//! Owns nothing but the decision: the backend socket's registered slot belongs to the connection
//! (see `proxy`), and `release_server` is the one place a reserved server slot is given back.

use std::net::SocketAddr;
use std::time::Duration;

use io_uring::{opcode, squeue, types};

use super::ops::{self, Op};
use super::proxy::{errno_str, server_entry, CloseCause, Phase};
use super::worker::Worker;
use crate::balance::Pick;
use crate::metrics::ConnectFailure;
use crate::table::ConnectOutcome;

static ONE: libc::c_int = 1;

/// The connect chain's five completions, gathered before deciding.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ConnectResults {
    pub(super) pending: u8,
    pub(super) socket: i32,
    pub(super) sockopt: i32,
    pub(super) connect: i32,
    pub(super) timeout: i32,
}

impl Worker {
    /// Asks the pool's balancer for a server outside the ones already tried; `Server` reserves a
    /// slot on it, which `release_server` gives back.
    fn pick(&mut self, slot: u32) -> Pick {
        let c = &self.conns[slot as usize];
        let Some(table) = c.table.as_ref() else { return Pick::NoneUsable };
        let pool = c.pool;
        if self.balance.len() <= pool {
            let id = self.id as u64;
            self.balance.resize_with(pool + 1, || crate::balance::WorkerBalanceState::new(id));
        }
        table.pools[pool].balancer.select(&mut self.balance[pool], c.peer.ip(), &c.exclude, self.now)
    }

    /// Gives back the connection's server slot (after a failed connect, or at close).
    pub(super) fn release_server(&mut self, slot: u32) {
        let now = self.now;
        let c = &mut self.conns[slot as usize];
        if let (Some(server), Some(table)) = (c.reserved.take(), c.table.as_ref()) {
            table.pools[c.pool].balancer.release(server, now);
        }
    }

    /// Connects to the next server the balancer picks, queues the client when every server is
    /// full, or closes it when no attempt or server is left.
    pub(super) fn connect_next(&mut self, slot: u32) {
        let c = &self.conns[slot as usize];
        let pick = if c.attempts_left > 0 { self.pick(slot) } else { Pick::NoneUsable };
        let c = &mut self.conns[slot as usize];
        let server = match pick {
            Pick::Server(server) => server,
            Pick::AllFull => {
                if c.queued_until.is_none() {
                    let timeout = c.table.as_ref().map_or(Duration::ZERO, |t| t.pools[c.pool].queue_timeout);
                    c.queued_until = Some(self.now + timeout);
                    if let Some(t) = c.table.as_ref() {
                        t.pools[c.pool].counters.queued.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                c.phase = Phase::Queued;
                let gen = c.gen;
                self.queue.push_back((slot, gen));
                return;
            }
            Pick::NoneUsable => {
                let cause = if c.attempts == 0 { CloseCause::NoServer } else { CloseCause::ConnectFailed };
                self.begin_close(slot, cause);
                return;
            }
        };
        c.phase = Phase::Connecting;
        c.reserved = Some(server);
        c.exclude.insert(server);
        c.attempts += 1;
        let backend = self.layout.backend_slot(slot);
        let c = &mut self.conns[slot as usize];
        c.attempts_left -= 1;
        c.server = server;
        let Some(table) = c.table.as_ref() else { return };
        let addr = table.pools[c.pool].servers[server].addr;
        let (domain, len) = write_sockaddr(addr, &mut c.addr);
        c.addr_len = len;
        c.connect = ConnectResults { pending: 5, ..Default::default() };
        c.inflight += 5;
        let gen = c.gen;
        let ud = |op| ops::encode(op, slot, gen);
        let Ok(dest) = types::DestinationSlot::try_from_slot_target(backend) else { return };
        let link = squeue::Flags::IO_LINK;
        let chain = [
            opcode::Socket::new(domain, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, libc::IPPROTO_TCP)
                .file_index(Some(dest))
                .build()
                .flags(link)
                .user_data(ud(Op::Socket)),
            sockopt(backend, libc::IPPROTO_TCP, libc::TCP_NODELAY).flags(link).user_data(ud(Op::SockOpt)),
            sockopt(backend, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT).flags(link).user_data(ud(Op::SockOpt)),
            opcode::Connect::new(types::Fixed(backend), (&c.addr as *const libc::sockaddr_storage).cast(), c.addr_len)
                .build()
                .flags(link)
                .user_data(ud(Op::Connect)),
            opcode::LinkTimeout::new(&c.timeout_ts).build().user_data(ud(Op::ConnectTimeout)),
        ];
        self.push(&chain);
    }

    pub(super) fn on_connect_step(&mut self, slot: u32, op: Op, res: i32) {
        let c = &mut self.conns[slot as usize];
        match op {
            Op::Socket => {
                c.connect.socket = res;
                c.backend_open |= res >= 0;
            }
            Op::SockOpt if res < 0 && c.connect.sockopt == 0 => c.connect.sockopt = res,
            Op::Connect => c.connect.connect = res,
            Op::ConnectTimeout => c.connect.timeout = res,
            _ => {}
        }
        c.connect.pending -= 1;
        if c.connect.pending > 0 {
            return;
        }
        let r = c.connect;
        let outcome = match r.connect {
            0 => ConnectOutcome::Connected,
            _ if r.timeout == -libc::ETIME => ConnectOutcome::TimedOut,
            e => ConnectOutcome::Failed(-e),
        };
        if r.socket >= 0 && r.sockopt >= 0 {
            // Passive health: the prober hears of every connect that reached the network.
            if let Some(table) = &c.table {
                table.report_connect(c.pool, c.server, outcome);
            }
        }
        if let Some(server) = server_entry(c) {
            let worker = self.id;
            if c.attempts > 1 {
                server.stats.retried(worker);
            }
            match outcome {
                _ if r.socket < 0 || r.sockopt < 0 => server.stats.connect_failed(worker, ConnectFailure::Other),
                ConnectOutcome::Connected => server.stats.connected(worker),
                ConnectOutcome::TimedOut => server.stats.connect_failed(worker, ConnectFailure::Timeout),
                ConnectOutcome::Failed(errno) => server.stats.connect_failed(worker, ConnectFailure::from_errno(errno)),
            }
        }
        if r.connect == 0 {
            c.phase = Phase::Proxying;
            c.connected = true;
            c.last_active = self.now;
            // Both flows start by polling their source.
            self.drive(slot);
            return;
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
        let server = c.table.as_ref().map(|t| t.pools[c.pool].servers[c.server].name.clone()).unwrap_or_default();
        let now = self.now;
        let id = self.id;
        self.connect_log.warn(now, format_args!("worker {id}: connect to server {server} failed: {reason}"));
        self.release_server(slot);
        if r.socket < 0 && matches!(-r.socket, libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS) {
            // Out of resources locally: another server will not help.
            self.begin_close(slot, CloseCause::ConnectFailed);
            return;
        }
        self.connect_next(slot);
    }

    /// Retries queued clients (a slot may have freed, here or in another worker) and closes those
    /// whose `queue_timeout` has passed. Runs on every tick and after every local close.
    pub fn process_queue(&mut self) {
        for _ in 0..self.queue.len() {
            let Some((slot, gen)) = self.queue.pop_front() else { return };
            let c = &self.conns[slot as usize];
            if c.gen != gen || c.phase != Phase::Queued {
                continue;
            }
            if c.queued_until.is_some_and(|t| self.now >= t) {
                if let Some(t) = c.table.as_ref() {
                    t.pools[c.pool].counters.queue_timeouts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                self.begin_close(slot, CloseCause::QueueTimeout);
                continue;
            }
            // Re-queues itself when still full.
            self.connect_next(slot);
        }
    }
}

fn sockopt(slot: u32, level: libc::c_int, name: libc::c_int) -> squeue::Entry {
    opcode::SetSockOpt::new(
        types::Fixed(slot),
        level as u32,
        name as u32,
        (&ONE as *const libc::c_int).cast(),
        std::mem::size_of::<libc::c_int>() as u32,
    )
    .build()
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
