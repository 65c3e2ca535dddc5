//! One connection slot of the engine: its socket, where it is in an exchange, and the requests
//! queued on it. A slot keeps its place (and its source address and target) across reconnects;
//! `gen` tells events of the current socket from those of a closed one.

use std::collections::VecDeque;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};

use socket2::Socket;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No socket (not opened yet, or waiting to reopen after a failure).
    Idle,
    Connecting,
    Writing,
    Reading,
    /// Connected and waiting for a request (keep-alive).
    Ready,
    /// Failed in a hold run: never reopened.
    Dead,
}

#[derive(Debug)]
pub struct Slot {
    pub src: Option<Ipv4Addr>,
    pub dst: SocketAddr,
    pub sock: Option<Socket>,
    pub gen: u32,
    pub state: State,
    /// Part of a response that arrived in pieces.
    pub buf: Vec<u8>,
    /// Bytes of the request already written.
    pub written: usize,
    /// When the request in flight was due (its latency is counted from here).
    pub due: u64,
    /// When the current connect or request began (for timeouts).
    pub started: u64,
    /// Open-loop requests that fell due while this connection was busy.
    pub pending: VecDeque<u64>,
    /// The current connection attempt (and its probe) belongs to the ramp.
    pub in_ramp: bool,
    /// Answered its probe.
    pub served: bool,
    /// When to reopen after a failure; 0 = not scheduled.
    pub retry_at: u64,
}

impl Slot {
    pub fn new(src: Option<Ipv4Addr>, dst: SocketAddr) -> Self {
        Self {
            src,
            dst,
            sock: None,
            gen: 0,
            state: State::Idle,
            buf: Vec::new(),
            written: 0,
            due: 0,
            started: 0,
            pending: VecDeque::new(),
            in_ramp: false,
            served: false,
            retry_at: 0,
        }
    }

    /// A connect or a request is in flight.
    pub fn busy(&self) -> bool {
        matches!(self.state, State::Connecting | State::Writing | State::Reading)
    }

    /// Closes the socket (which also removes it from the epoll set) and forgets partial data.
    pub fn close(&mut self) {
        self.sock = None;
        self.buf.clear();
        self.state = State::Idle;
    }
}

/// A short, stable name for a socket error, used as a key of the error counts.
pub fn error_kind(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "connection refused",
        Some(libc::ECONNRESET) => "connection reset",
        Some(libc::EPIPE) => "broken pipe",
        Some(libc::ETIMEDOUT) => "timeout",
        Some(libc::EADDRNOTAVAIL) => "no source port",
        Some(libc::EMFILE) | Some(libc::ENFILE) => "out of descriptors",
        Some(libc::EHOSTUNREACH) | Some(libc::ENETUNREACH) => "unreachable",
        _ => "other socket error",
    }
}

/// Error-count key for an HTTP status other than 200.
pub fn status_kind(status: u16) -> &'static str {
    match status {
        500..=599 => "http 5xx",
        400..=499 => "http 4xx",
        _ => "http other",
    }
}
