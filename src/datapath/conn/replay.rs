//! `retry_on_empty_response`: when a server resets or closes a connection before it has sent a
//! single byte, connect to another server and replay what the client sent, so that the client
//! never sees the failure.
//!
//! Why: a server that dies (or is restarted) with connections in its accept queue resets them
//! after the handshake, so ringlb has already connected and forwarded the client's first bytes
//! when the reset arrives. The connect succeeded, so `retries` alone cannot help. Measured with
//! tests/health.rs `a_flapping_backend_never_fails_a_client` (a server killed and restarted every
//! 300 ms under 250 new connections/s): without replay about one client in a few thousand got an
//! empty reply; with it, none (see README, "Retrying an empty response").
//!
//! When it is safe: the server sent nothing, so the client has seen nothing, but the server may
//! have acted on the bytes it received before it failed (a request that commits, then a crash).
//! Replaying is safe for idempotent requests, or where a request may run twice; it is not always
//! safe, so it is a pool option, off by default (HAProxy's `retry-on empty-response` makes the
//! same choice for HTTP).
//!
//! How: while the option is on and the server has sent nothing, every byte read from the client
//! is also copied into a replay buffer (one pooled memory buffer, at most `COPY_LEN` bytes). The
//! replay ends, and its buffer goes back, at the server's first byte, when the client has sent
//! more than the buffer holds, or when the client direction turns to splice (bytes that never
//! pass through memory cannot be replayed; with `splice = "always"` there is no replay). A reset or FIN from the server while a replay is held
//! (and an attempt is left) cancels everything in flight; at the last completion the client
//! direction starts over with the replayed bytes in its buffer, the server direction starts
//! fresh, and the connection connects to a server not tried yet.

use super::{CloseCause, Conn, Ctx, Held, Life, Phase};
use crate::datapath::direction::Dir;
use crate::datapath::flow::{Flow, COPY_LEN};

/// The client's bytes so far, while the server has sent nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Replay {
    /// Its memory buffer, taken at the first byte to hold.
    buf: Option<u32>,
    len: u32,
}

impl Replay {
    pub(super) const EMPTY: Replay = Replay { buf: None, len: 0 };
}

impl Conn {
    /// The client direction read `n` bytes into its memory buffer `from` (at offset 0): hold a
    /// copy, or end the replay when they do not fit.
    pub(super) fn hold_for_replay(&mut self, ctx: &mut Ctx<'_>, from: u32, n: u32) {
        let Some(replay) = &mut self.replay else { return };
        if replay.len + n > COPY_LEN {
            return self.end_replay(ctx);
        }
        let buf = match replay.buf {
            Some(buf) => buf,
            None => match ctx.memory.get() {
                Some(buf) => *replay.buf.insert(buf),
                None => return self.end_replay(ctx),
            },
        };
        if ctx.memory.copy(from, buf, replay.len, n) {
            replay.len += n;
        } else {
            self.end_replay(ctx);
        }
    }

    /// No replay from here on (the server answered, or the client's bytes cannot all be held).
    pub(super) fn end_replay(&mut self, ctx: &mut Ctx<'_>) {
        if let Some(Replay { buf: Some(buf), .. }) = self.replay.take() {
            ctx.memory.put(buf);
            ctx.freed_buffers += 1;
        }
    }

    /// The server failed or closed: true when a replay is held and an attempt is left.
    pub(super) fn may_replay(&self) -> bool {
        self.replay.is_some() && self.attempts_left > 0 && self.phase == Phase::Proxying
    }

    /// Abandons the server that answered nothing: cancel what is in flight; `reconnect` runs at
    /// the last completion.
    pub(super) fn start_replay(&mut self, ctx: &mut Ctx<'_>) -> Life {
        self.phase = Phase::Replaying;
        self.cancel_in_flight(ctx);
        if self.inflight == 0 {
            return self.reconnect(ctx);
        }
        Life::Open
    }

    /// A client read that completed while the replay was starting (it beat its cancel): its
    /// bytes must reach the next server too.
    pub(super) fn on_read_while_replaying(&mut self, ctx: &mut Ctx<'_>, res: i32) {
        let c2b = Dir::C2b.index();
        let outcome = self.flows[c2b].on_read(res);
        match (outcome, self.held[c2b]) {
            (super::Outcome::Failed(_), _) => {
                self.end_replay(ctx);
                self.replay_failure = CloseCause::ClientError;
            }
            (_, Held::Memory(buf)) if res > 0 => self.hold_for_replay(ctx, buf, res as u32),
            _ => {}
        }
    }

    /// Nothing is in flight any more: both directions start over, the client's with the held
    /// bytes, and the connection connects to the next server.
    pub(super) fn reconnect(&mut self, ctx: &mut Ctx<'_>) -> Life {
        if self.connected {
            if let Some(server) = self.server_entry() {
                server.stats.disconnected(ctx.worker);
            }
            self.connected = false;
        }
        self.release_server(ctx.now);
        self.give_back_buffers(ctx);
        let Some(replay) = self.replay.take() else {
            self.phase = Phase::Proxying;
            let cause = self.replay_failure;
            return self.close(ctx, cause);
        };
        let c2b = Dir::C2b.index();
        let eof = self.flows[c2b].source_ended();
        let (transfer, auto) = self.transfer;
        self.flows[Dir::B2c.index()] = Flow::new(transfer, auto);
        self.flows[c2b] = Flow::with_buffered(replay.len, eof, auto);
        match replay.buf {
            Some(buf) if replay.len > 0 => {
                self.held[c2b] = Held::Memory(buf);
                // Keep a copy, so that the next server may fail the same way and be replayed too.
                self.replay = Some(Replay::EMPTY);
                self.hold_for_replay(ctx, buf, replay.len);
            }
            Some(buf) => {
                ctx.memory.put(buf);
                ctx.freed_buffers += 1;
                self.replay = Some(Replay::EMPTY);
            }
            None => self.replay = Some(Replay::EMPTY),
        }
        self.phase = Phase::Connecting;
        self.connect_next(ctx)
    }
}
