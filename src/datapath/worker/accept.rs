//! Accepting: one acceptor per listener in each worker, the state machine that keeps its accept
//! armed as the limits, back-off, reloads and shutdown call for, and the clients parked when
//! another worker took the last slot under a limit.
//!
//! Owns the listening sockets (ordinary descriptors, closed only when no accept is in flight on
//! them). Accepted clients land in the ring's registered table, in the range the kernel allocates
//! from (see `SlotLayout`).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use io_uring::{opcode, types};

use super::{Worker, UNKNOWN_PEER};
use crate::datapath::conn::close_entry;
use crate::datapath::ops::{self, Op};
use crate::datapath::ListenerShared;
use crate::metrics::{CloseCause, ListenerStats};
use crate::table::BackendTable;

/// Below this many free connection slots, accepts switch from multishot to one at a time, and at
/// the limit they stop, so that new clients wait in the kernel's accept queue. A client accepted
/// just as another worker took the last slot is parked (not connected to a backend) until a slot
/// frees: the limit on served connections is exact, and parked clients are bounded by the accepts
/// that were armed.
const MULTISHOT_MARGIN: u32 = 256;
/// How long accepts pause after EMFILE/ENFILE/ENOMEM.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AcceptState {
    Idle,
    Multi,
    Single,
    Cancelling,
}

pub(super) struct Acceptor {
    fd: RawFd,
    pub(super) listener: Arc<ListenerShared>,
    state: AcceptState,
    /// Removed by a reload: stop accepting, close the socket; connections go on.
    retired: bool,
    closed: bool,
    /// Where a single-shot accept writes the client's address (boxed: the kernel writes into it
    /// after submission). Only listeners whose pool hashes on the client address use it, as a
    /// multishot accept cannot return addresses and a direct descriptor has no getpeername.
    peer: Box<(libc::sockaddr_storage, libc::socklen_t)>,
}

impl Acceptor {
    pub(super) fn new(fd: RawFd, listener: Arc<ListenerShared>) -> Acceptor {
        Acceptor {
            fd,
            listener,
            state: AcceptState::Idle,
            retired: false,
            closed: false,
            // SAFETY: all-zero is a valid sockaddr_storage.
            peer: Box::new((unsafe { std::mem::zeroed() }, 0)),
        }
    }

    /// Its listening socket is closed (no accept can be in flight on it any more).
    pub(super) fn is_closed(&self) -> bool {
        self.closed
    }

    fn peer(&self) -> SocketAddr {
        let (storage, _) = &*self.peer;
        // SAFETY: the kernel wrote a sockaddr of the listener's family; both casts stay within
        // sockaddr_storage.
        unsafe {
            match i32::from(storage.ss_family) {
                libc::AF_INET => {
                    let sin = &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>();
                    let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                    SocketAddr::new(IpAddr::V4(ip), u16::from_be(sin.sin_port))
                }
                libc::AF_INET6 => {
                    let sin6 = &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>();
                    SocketAddr::new(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)), u16::from_be(sin6.sin6_port))
                }
                _ => UNKNOWN_PEER,
            }
        }
    }
}

impl Worker {
    /// A reload removed listener `name`: stop accepting on it; its connections go on.
    pub(super) fn retire_listener(&mut self, name: &str) {
        for a in self.acceptors.iter_mut().filter(|a| a.listener.name == name && !a.retired) {
            a.retired = true;
        }
    }

    /// Worker exit: close the listening sockets still open.
    pub(super) fn close_listening_sockets(&mut self) {
        for a in self.acceptors.iter_mut().filter(|a| !a.closed) {
            // SAFETY: the listening socket is owned by this worker.
            unsafe { libc::close(a.fd) };
            a.closed = true;
        }
    }

    /// Shutdown: parked clients were never served; close them with the listeners.
    pub(super) fn close_parked(&mut self) {
        while let Some((listener, client, _)) = self.parked.pop_front() {
            self.ring.push(&[close_entry(client)]);
            self.listener_stats(listener).closed(self.id, CloseCause::Shutdown);
        }
    }

    /// Connection slots this worker may still fill now. Nothing while a client is parked.
    fn accept_room(&self) -> u32 {
        if !self.parked.is_empty() {
            return 0;
        }
        let max = self.table.load().runtime.max_connections;
        let global = max.saturating_sub(self.shared.active.load(Ordering::Relaxed));
        let slab = self.layout.conns.saturating_sub(self.live);
        global.min(slab)
    }

    /// Whether listener `i` needs client addresses: its pool balances on them, or connections
    /// are logged. Then its accepts capture them.
    fn wants_peer(&self, table: &BackendTable, i: usize) -> bool {
        if table.runtime.log_connections {
            return true;
        }
        let route = table.route(&self.acceptors[i].listener.name);
        route
            .is_some_and(|r| matches!(table.pools[r.pool].balancer.policy(), crate::balance::Policy::SourceHash { .. }))
    }

    /// Starts parked clients while the limits allow, oldest first.
    pub(super) fn start_parked(&mut self) {
        while let Some(&(listener, client, ip)) = self.parked.front() {
            let table = self.table.load_full();
            if !self.shared.try_reserve(&self.acceptors[listener].listener, &table) {
                if table.route(&self.acceptors[listener].listener.name).is_none() {
                    // A reload removed its listener while it waited: nowhere to send it.
                    self.parked.pop_front();
                    self.ring.push(&[close_entry(client)]);
                    self.listener_stats(listener).closed(self.id, CloseCause::NoServer);
                    continue;
                }
                return;
            }
            self.parked.pop_front();
            self.open_connection(listener, client, ip, table);
        }
    }

    /// Brings every acceptor to the state the limits, back-off and shutdown call for.
    pub(super) fn update_accepts(&mut self) {
        let room = self.accept_room();
        let table = self.table.load();
        for i in 0..self.acceptors.len() {
            let listener = &self.acceptors[i].listener;
            // A listener without a route is one a reload removed: it is about to be retired.
            let lmax = table.route(&listener.name).map_or(0, |r| r.max_connections);
            let lroom = lmax.saturating_sub(listener.active.load(Ordering::Relaxed));
            let room = room.min(lroom);
            let stopping = self.shutting_down.is_some() || self.acceptors[i].retired;
            let want = if stopping || self.accept_backoff_until.is_some() || room == 0 {
                AcceptState::Idle
            } else if room > MULTISHOT_MARGIN && !self.wants_peer(&table, i) {
                AcceptState::Multi
            } else {
                AcceptState::Single
            };
            let a = &self.acceptors[i];
            if a.closed {
                continue;
            }
            if stopping && a.state == AcceptState::Idle {
                // SAFETY: no accept is in flight on this socket any more; closing it makes the
                // kernel refuse new connections to this worker.
                unsafe { libc::close(a.fd) };
                self.acceptors[i].closed = true;
                continue;
            }
            match (a.state, want) {
                (AcceptState::Cancelling, _) => {}
                (s, w) if s == w => {}
                (AcceptState::Idle, AcceptState::Multi) => {
                    let e = opcode::AcceptMulti::new(types::Fd(a.fd))
                        .allocate_file_index(true)
                        .flags(libc::SOCK_NONBLOCK)
                        .build()
                        .user_data(ops::encode(Op::Accept, i as u32, 0));
                    self.acceptors[i].state = AcceptState::Multi;
                    self.ring.push(&[e]);
                }
                (AcceptState::Idle, AcceptState::Single) => {
                    let a = &mut self.acceptors[i];
                    a.peer.1 = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                    let (addr, len) = &mut *a.peer;
                    let e = opcode::Accept::new(
                        types::Fd(a.fd),
                        (addr as *mut libc::sockaddr_storage).cast(),
                        len as *mut libc::socklen_t,
                    )
                    .file_index(Some(types::DestinationSlot::auto_target()))
                    .flags(libc::SOCK_NONBLOCK)
                    .build()
                    .user_data(ops::encode(Op::Accept, i as u32, 0));
                    self.acceptors[i].state = AcceptState::Single;
                    self.ring.push(&[e]);
                }
                (AcceptState::Idle, _) => {}
                (AcceptState::Single, AcceptState::Multi) => {} // upgrades when the single one completes
                (AcceptState::Multi | AcceptState::Single, _) => {
                    let e = opcode::AsyncCancel::new(ops::encode(Op::Accept, i as u32, 0))
                        .build()
                        .user_data(ops::encode(Op::AcceptCancel, i as u32, 0));
                    self.acceptors[i].state = AcceptState::Cancelling;
                    self.ring.push(&[e]);
                }
            }
        }
    }

    pub(super) fn on_accept(&mut self, listener: usize, res: i32, more: bool) {
        if !more {
            self.acceptors[listener].state = AcceptState::Idle;
        }
        if res >= 0 {
            self.listener_stats(listener).accepted(self.id);
        }
        if res >= 0 && self.shutting_down.is_some() {
            // Accepted just before the cancel landed: too late to serve.
            self.ring.push(&[close_entry(res as u32)]);
            self.listener_stats(listener).closed(self.id, CloseCause::Shutdown);
        } else if res >= 0 {
            // Another worker may have taken the last slot since this accept was armed: then the
            // client waits here, unconnected, exactly as it would in the kernel's accept queue.
            // A multishot accept leaves the address unset (only source-hash and the connection
            // log need it, and their listeners accept one at a time).
            let ip = if more { UNKNOWN_PEER } else { self.acceptors[listener].peer() };
            let table = self.table.load_full();
            if table.route(&self.acceptors[listener].listener.name).is_none() {
                // Its listener left the config in a reload and is being retired.
                self.ring.push(&[close_entry(res as u32)]);
                self.listener_stats(listener).closed(self.id, CloseCause::NoServer);
            } else if self.parked.is_empty() && self.shared.try_reserve(&self.acceptors[listener].listener, &table) {
                self.open_connection(listener, res as u32, ip, table);
            } else {
                self.parked.push_back((listener, res as u32, ip));
            }
        } else {
            if !matches!(-res, libc::ECANCELED | libc::EINTR | libc::EAGAIN) {
                self.listener_stats(listener).accept_error(self.id, -res);
            }
            match -res {
                libc::ECANCELED | libc::ECONNABORTED | libc::EINTR | libc::EAGAIN => {}
                e @ (libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS) => {
                    self.accept_backoff_until = Some(self.now + ACCEPT_BACKOFF);
                    let now = self.now;
                    let err = io::Error::from_raw_os_error(e);
                    self.accept_log.warn(
                        now,
                        format_args!(
                            "worker {}: accept failed ({err}); pausing accepts for {ACCEPT_BACKOFF:?}",
                            self.id
                        ),
                    );
                    if more {
                        // A multishot accept that reports an error usually ends; make sure.
                        self.acceptors[listener].state = AcceptState::Multi;
                    }
                }
                e => {
                    // Unexpected: back off as well rather than re-arm into the same failure.
                    self.accept_backoff_until = Some(self.now + ACCEPT_BACKOFF);
                    let now = self.now;
                    let err = io::Error::from_raw_os_error(e);
                    self.accept_log.warn(now, format_args!("worker {}: accept failed: {err}", self.id));
                }
            }
        }
        self.update_accepts();
    }

    /// The metric block of the listener with acceptor index `listener`.
    fn listener_stats(&self, listener: usize) -> &ListenerStats {
        &self.acceptors[listener].listener.stats
    }
}
