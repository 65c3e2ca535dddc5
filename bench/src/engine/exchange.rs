//! The socket side of an engine thread: opening connections, writing requests, reading and
//! parsing responses, and deciding what a slot does after a success or a failure.
//!
//! An `impl` block of [`Engine`] kept apart from the phase and schedule logic in `mod.rs`; it
//! owns no state of its own.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use super::slot::{self, State};
use super::{sys, ConnMode, Engine, RETRY_NS};
use crate::http::{self, Parse};
use crate::stats;

impl Engine<'_> {
    pub(super) fn open(&mut self, i: usize, in_ramp: bool, now: u64) {
        let s = &mut self.slots[i];
        s.in_ramp = in_ramp;
        s.started = now;
        match sys::connect(s.src, s.dst) {
            Ok((sock, connected)) => {
                s.gen = s.gen.wrapping_add(1);
                let token = (u64::from(s.gen) << 32) | i as u64;
                if let Err(e) = self.epoll.add(sock.as_raw_fd(), token) {
                    drop(sock);
                    self.fail(i, slot::error_kind(&e), now);
                    return;
                }
                s.sock = Some(sock);
                s.state = State::Connecting;
                if connected {
                    self.on_connected(i, now);
                }
            }
            Err(e) => self.fail(i, slot::error_kind(&e), now),
        }
    }

    pub(super) fn on_event(&mut self, i: usize, flags: u32) {
        let now = sys::monotonic_ns();
        let gen = self.slots[i].gen;
        let err = flags & (libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0;
        if self.slots[i].state == State::Connecting && (flags & libc::EPOLLOUT as u32 != 0 || err) {
            match self.slots[i].sock.as_ref().map(|s| s.take_error()) {
                Some(Ok(None)) => self.on_connected(i, now),
                Some(Ok(Some(e))) | Some(Err(e)) => return self.fail(i, slot::error_kind(&e), now),
                None => return,
            }
        }
        if self.slots[i].gen != gen {
            return;
        }
        if self.slots[i].state == State::Writing && flags & libc::EPOLLOUT as u32 != 0 {
            self.try_write(i, now);
        }
        let readable = flags & (libc::EPOLLIN | libc::EPOLLRDHUP) as u32 != 0 || err;
        if readable && self.slots[i].gen == gen && self.slots[i].sock.is_some() {
            self.try_read(i, now);
        }
    }

    pub(super) fn on_connected(&mut self, i: usize, now: u64) {
        self.tally.connected += 1;
        match self.plan.mode {
            ConnMode::PerRequest => self.write_request(i, now),
            ConnMode::KeepAlive => {
                if self.slots[i].in_ramp && self.plan.probe {
                    self.slots[i].due = now;
                    self.write_request(i, now);
                } else {
                    self.slots[i].state = State::Ready;
                    if self.slots[i].in_ramp {
                        self.slots[i].in_ramp = false;
                        self.ramp_settle(now);
                    } else {
                        self.next_request(i, now);
                    }
                }
            }
        }
    }

    pub(super) fn try_write(&mut self, i: usize, now: u64) {
        let req = Arc::clone(&self.plan.request);
        loop {
            let s = &mut self.slots[i];
            let Some(sock) = s.sock.as_ref() else { return };
            match std::io::Write::write(&mut &*sock, &req[s.written..]) {
                Ok(n) => {
                    s.written += n;
                    if s.written == req.len() {
                        s.state = State::Reading;
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return self.fail(i, slot::error_kind(&e), now),
            }
        }
    }

    pub(super) fn try_read(&mut self, i: usize, now: u64) {
        let gen = self.slots[i].gen;
        loop {
            let s = &mut self.slots[i];
            if s.gen != gen {
                return;
            }
            let Some(sock) = s.sock.as_ref() else { return };
            let n = match std::io::Read::read(&mut &*sock, &mut self.scratch) {
                Ok(0) => {
                    let kind = if s.state == State::Ready { "closed by peer" } else { "eof before response" };
                    return self.fail(i, kind, now);
                }
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return self.fail(i, slot::error_kind(&e), now),
            };
            if s.state != State::Reading {
                return self.fail(i, "unexpected data", now);
            }
            let parsed = if s.buf.is_empty() {
                match http::parse_response(&self.scratch[..n]) {
                    Parse::Incomplete => {
                        s.buf.extend_from_slice(&self.scratch[..n]);
                        continue;
                    }
                    p => (p, n),
                }
            } else {
                s.buf.extend_from_slice(&self.scratch[..n]);
                (http::parse_response(&s.buf), s.buf.len())
            };
            match parsed {
                (Parse::Incomplete, _) => continue,
                (Parse::Invalid(why), _) => return self.fail(i, why, now),
                (Parse::Complete { len, .. }, have) if len != have => return self.fail(i, "data after response", now),
                (Parse::Complete { status, .. }, _) if status != 200 => {
                    return self.fail(i, slot::status_kind(status), now);
                }
                (Parse::Complete { .. }, _) => {
                    self.slots[i].buf.clear();
                    self.on_response(i, now);
                }
            }
        }
    }

    pub(super) fn on_response(&mut self, i: usize, now: u64) {
        let s = &mut self.slots[i];
        if s.in_ramp {
            s.in_ramp = false;
            s.served = true;
            s.state = State::Ready;
            self.tally.served += 1;
            self.ramp_settle(now);
            return;
        }
        if s.due >= self.steady_at && s.due < self.end {
            self.tally.ok += 1;
            stats::record(&mut self.tally.hist, now - s.due);
        }
        match self.plan.mode {
            ConnMode::KeepAlive => {
                s.state = State::Ready;
                self.next_request(i, now);
            }
            ConnMode::PerRequest => {
                s.close();
                self.slot_free(i, now);
            }
        }
    }

    /// Counts a failure of slot `i` and decides what the slot does next.
    pub(super) fn fail(&mut self, i: usize, kind: &str, now: u64) {
        self.tally.error(kind);
        let s = &mut self.slots[i];
        s.close();
        let was_ramp = s.in_ramp;
        s.in_ramp = false;
        if self.plan.hold {
            if s.served && !was_ramp {
                self.tally.dropped += 1;
            }
            s.state = State::Dead;
            // Requests already queued on a dead connection will never be sent.
            let lost = s.pending.len();
            s.pending.clear();
            for _ in 0..lost {
                self.tally.error("connection lost");
            }
        } else {
            s.state = State::Idle;
            s.retry_at = now + RETRY_NS;
        }
        if was_ramp {
            self.ramp_settle(now);
        }
    }
}
