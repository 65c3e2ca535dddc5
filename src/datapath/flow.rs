//! One direction of a proxied connection (client -> backend or backend -> client), as a pure
//! state machine: readiness and completion events go in, the next operations to submit come out.
//! It owns no descriptor and performs no I/O, so every rule below is unit-tested without a ring.
//!
//! Words: a flow *reads* from its source socket into its *buffer* and *writes* from the buffer to
//! its destination socket. The buffer is a pipe when the flow splices (read = splice-in, write =
//! splice-out) and a memory buffer when it copies (read = `recv`, write = `send`).
//!
//! Splicing: io_uring runs every splice on an io-wq kernel thread, so the flow is shaped to make
//! as few of those trips as it can:
//! - Readiness comes from a one-shot poll, which the kernel evaluates inline when it is armed: it
//!   completes at once if bytes are waiting, so no splice is ever spent just to learn that a socket
//!   is empty. [`Read::Readable`] means "a poll said so and no read has been tried since".
//! - With an empty pipe and a writable destination, read and write go as one hard-linked pair (one
//!   io-wq trip moves a chunk end to end). The linked write asks for a full pipe's worth and moves
//!   what the read put there; its `EAGAIN` means "pipe empty" when the read brought nothing, and
//!   "destination full" otherwise.
//! - `EAGAIN` from a read into a pipe that already held bytes is ambiguous (socket empty, or pipe
//!   full): the flow waits for the pipe to drain ([`Read::WaitingRoom`]) before it polls again
//!   (HAProxy reasons the same way).
//! - The buffer is given back only when it is empty and nothing on it is in flight.
//! - The source's FIN becomes `shutdown(SHUT_WR)` on the destination once every byte before it is
//!   delivered.
//!
//! Copying: small messages are cheaper to copy than to hand to an io-wq thread, so a flow may
//! move bytes with `recv` into a pooled memory buffer and `send` from it, both completed inline by
//! the kernel. In `auto` mode a flow starts that way and switches to splice for good once a `recv`
//! fills the whole buffer (a bulk transfer), as HAProxy's `splice-auto` does. Either way the flow
//! holds its buffer only while bytes are in it, so idle connections hold none.

/// How many bytes one splice asks for (one default pipe's worth).
pub const SPLICE_LEN: u32 = 64 * 1024;
/// Size of a copy-mode buffer; a `recv` that fills it marks an `auto` flow as bulk.
pub const COPY_LEN: u32 = 16 * 1024;

/// What a flow's buffer is, and so which operations read and write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    /// A pipe, with splice (io-wq).
    Splice,
    /// A memory buffer, with recv/send (inline).
    Copy,
}

/// How a flow chooses its transfer, for good or until it sees bulk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Splice,
    Copy,
    /// Copy until a `recv` fills the buffer, then splice.
    Auto,
    /// A `recv` filled the buffer: splice once this buffer is given back.
    AutoBulk,
}

impl Mode {
    fn transfer(self) -> Transfer {
        match self {
            Mode::Splice => Transfer::Splice,
            Mode::Copy | Mode::Auto | Mode::AutoBulk => Transfer::Copy,
        }
    }
}

/// The kinds of operation a flow puts in flight; with a [`super::direction::Dir`] they name an
/// [`super::ops::Op`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowOp {
    /// POLLIN on the source.
    PollIn,
    /// POLLOUT on the destination.
    PollOut,
    /// Source -> buffer.
    Read,
    /// Buffer -> destination.
    Write,
    /// shutdown(SHUT_WR) of the destination.
    Shutdown,
}

/// The next operation a flow wants submitted. The flow has already marked it in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The flow needs an empty buffer (of its [`Transfer`]) before it can read.
    NeedBuffer,
    /// The buffer is empty and idle: give it back to its pool.
    ReleaseBuffer,
    /// Arm a one-shot POLLIN on the source.
    ArmPollIn,
    /// Arm a one-shot POLLOUT on the destination (it refused bytes).
    ArmPollOut,
    /// Read up to `len` bytes into the buffer (splice-in or recv).
    Read { len: u32 },
    /// Write `len` bytes from offset `off` of the buffer (splice-out, which ignores `off`, or send).
    Write { off: u32, len: u32 },
    /// Splice only: a read hard-linked to a write of whatever it brought (the pipe is empty).
    ReadWrite { len: u32 },
    /// Everything before the source's FIN is delivered: shutdown(SHUT_WR) the destination.
    ShutdownDst,
}

/// What a completion meant for the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Bytes moved (activity, for the idle timer).
    Progress,
    /// Nothing moved; not an error.
    Idle,
    /// The socket failed (reset, broken pipe, ...): the connection must close. Carries -errno.
    Failed(i32),
}

/// The read side: what is known about the source and what is in flight on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// Nothing known: a poll is due.
    Unknown,
    /// POLLIN is armed on the source.
    Polling,
    /// A poll said the source has something (data, FIN or an error) and no read was tried since.
    Readable,
    /// A read is in flight. `after_bytes`: the buffer held bytes when it was submitted, so its
    /// `EAGAIN` may mean "buffer full" rather than "source empty".
    Reading { after_bytes: bool },
    /// A read into a non-empty buffer got `EAGAIN`: wait until a write drains it.
    WaitingRoom,
    /// The source sent its FIN: nothing more to read.
    Eof,
}

/// The write side: what is known about the destination and what is in flight on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// The destination takes bytes as far as is known; nothing in flight.
    Ready,
    /// A write is in flight. `linked`: the second half of a [`Step::ReadWrite`] pair.
    Writing { linked: bool },
    /// The linked write completed (with this result) before its read did: applied after it.
    Overtaken(i32),
    /// The destination refused bytes: a POLLOUT is due.
    Full,
    /// POLLOUT is armed on the destination.
    Polling,
}

/// The flow's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Buffer {
    None,
    /// Asked for with [`Step::NeedBuffer`]; the pool had none, or it is being handed over.
    Requested,
    /// Held. `len`: bytes in it not yet written; `filled`: bytes the last `recv` put in (copy
    /// mode: the unwritten bytes start at `filled - len`).
    Held {
        len: u32,
        filled: u32,
    },
}

/// The destination's write side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    Open,
    InFlight,
    Done,
}

#[derive(Debug, Clone)]
pub struct Flow {
    mode: Mode,
    read: Read,
    write: Write,
    buffer: Buffer,
    shutdown: Shutdown,
    /// Total bytes delivered to the destination.
    delivered: u64,
}

impl Flow {
    /// A flow that moves bytes by `transfer`; with `auto`, a copying flow turns to splice on bulk.
    pub fn new(transfer: Transfer, auto: bool) -> Flow {
        let mode = match (transfer, auto) {
            (Transfer::Splice, _) => Mode::Splice,
            (Transfer::Copy, false) => Mode::Copy,
            (Transfer::Copy, true) => Mode::Auto,
        };
        Flow {
            mode,
            read: Read::Unknown,
            write: Write::Ready,
            buffer: Buffer::None,
            shutdown: Shutdown::Open,
            delivered: 0,
        }
    }

    /// A copying flow that starts with `len` bytes already in its memory buffer (bytes replayed
    /// to a new server), its source finished if `eof`. The caller hands it a buffer holding them
    /// when `len > 0`.
    pub fn with_buffered(len: u32, eof: bool, auto: bool) -> Flow {
        let mut flow = Flow::new(Transfer::Copy, auto);
        if len > 0 {
            flow.buffer = Buffer::Held { len, filled: len };
        }
        if eof {
            flow.read = Read::Eof;
        }
        flow
    }

    /// The source sent its FIN.
    pub fn source_ended(&self) -> bool {
        self.read == Read::Eof
    }

    pub fn transfer(&self) -> Transfer {
        self.mode.transfer()
    }

    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Bytes in the buffer not yet written.
    pub fn buffered(&self) -> u32 {
        match self.buffer {
            Buffer::Held { len, .. } => len,
            Buffer::None | Buffer::Requested => 0,
        }
    }

    /// Every byte before the source's FIN has been delivered and the destination is shut down.
    pub fn is_done(&self) -> bool {
        self.shutdown == Shutdown::Done
    }

    /// Parked until its pool has a buffer again.
    pub fn is_waiting_buffer(&self) -> bool {
        self.buffer == Buffer::Requested
    }

    /// The operations in flight, for a teardown that cancels each by its `user_data`.
    pub fn in_flight(&self) -> impl Iterator<Item = FlowOp> {
        [
            (self.read == Read::Polling, FlowOp::PollIn),
            (self.write == Write::Polling, FlowOp::PollOut),
            (matches!(self.read, Read::Reading { .. }), FlowOp::Read),
            (matches!(self.write, Write::Writing { .. }), FlowOp::Write),
            (self.shutdown == Shutdown::InFlight, FlowOp::Shutdown),
        ]
        .into_iter()
        .filter_map(|(armed, op)| armed.then_some(op))
    }

    /// The POLLIN poll on the source completed (data, FIN, error or cancel: a read tells which).
    pub fn on_readable(&mut self) {
        if self.read == Read::Polling {
            self.read = Read::Readable;
        }
    }

    /// POLLOUT (or an error condition) on the destination.
    pub fn on_writable(&mut self) {
        if self.write == Write::Polling {
            self.write = Write::Ready;
        }
    }

    /// A buffer was handed over after [`Step::NeedBuffer`].
    pub fn on_buffer(&mut self) {
        debug_assert_eq!(self.buffer, Buffer::Requested);
        self.buffer = Buffer::Held { len: 0, filled: 0 };
    }

    /// The pool has a buffer again: the next `next_steps` asks for it once more.
    pub fn retry_buffer(&mut self) {
        if self.buffer == Buffer::Requested {
            self.buffer = Buffer::None;
        }
    }

    /// The destination's shutdown completed (or was not needed). A failed shutdown (the peer is
    /// gone) ends the flow just the same.
    pub fn on_shutdown(&mut self) {
        self.shutdown = Shutdown::Done;
    }

    /// A read completed.
    pub fn on_read(&mut self, res: i32) -> Outcome {
        let after_bytes = matches!(self.read, Read::Reading { after_bytes: true });
        self.read = Read::Unknown;
        let outcome = match self.mode.transfer() {
            Transfer::Splice => self.on_splice_in(res, after_bytes),
            Transfer::Copy => self.on_recv(res),
        };
        let Write::Overtaken(out) = self.write else { return outcome };
        self.write = Write::Writing { linked: true };
        match (outcome, self.on_write(out)) {
            (failed @ Outcome::Failed(_), _) => failed,
            (outcome, Outcome::Idle) => outcome,
            (_, other) => other,
        }
    }

    fn on_splice_in(&mut self, res: i32, after_bytes: bool) -> Outcome {
        match res {
            n if n > 0 => {
                if let Buffer::Held { len, .. } = &mut self.buffer {
                    *len += n as u32;
                }
                Outcome::Progress
            }
            0 => {
                self.read = Read::Eof;
                Outcome::Idle
            }
            e if e == -libc::EAGAIN || e == -libc::EINTR => {
                if after_bytes && (self.buffered() > 0 || matches!(self.write, Write::Writing { .. })) {
                    self.read = Read::WaitingRoom;
                }
                // Otherwise the socket is empty (or the pipe drained meanwhile): poll again.
                Outcome::Idle
            }
            e => Outcome::Failed(e),
        }
    }

    /// Copy mode: the recv into the empty memory buffer completed.
    fn on_recv(&mut self, res: i32) -> Outcome {
        match res {
            n if n > 0 => {
                let n = n as u32;
                self.buffer = Buffer::Held { len: n, filled: n };
                if self.mode == Mode::Auto && n >= COPY_LEN {
                    self.mode = Mode::AutoBulk;
                }
                Outcome::Progress
            }
            0 => {
                self.read = Read::Eof;
                Outcome::Idle
            }
            // Nothing after all (a spurious wake-up): poll again.
            e if e == -libc::EAGAIN || e == -libc::EINTR => Outcome::Idle,
            e => Outcome::Failed(e),
        }
    }

    /// A write completed.
    pub fn on_write(&mut self, res: i32) -> Outcome {
        let linked = matches!(self.write, Write::Writing { linked: true });
        if linked && matches!(self.read, Read::Reading { .. }) {
            // The linked write's completion overtook its read's: apply it after.
            self.write = Write::Overtaken(res);
            return Outcome::Idle;
        }
        self.write = Write::Ready;
        let len = self.buffered();
        match res {
            n if n > 0 => {
                let n = (n as u32).min(len);
                if let Buffer::Held { len, .. } = &mut self.buffer {
                    *len -= n;
                }
                self.delivered += u64::from(n);
                if self.read == Read::WaitingRoom {
                    self.read = Read::Unknown;
                }
                Outcome::Progress
            }
            // A linked write finding the pipe empty: the read brought nothing.
            e if linked && len == 0 && (e == -libc::EAGAIN || e == 0) => Outcome::Idle,
            // After a read that ended the source, the linked half has nothing to say.
            _ if linked && self.read == Read::Eof && len == 0 => Outcome::Idle,
            e if e == -libc::EAGAIN => {
                self.write = Write::Full;
                Outcome::Idle
            }
            e if e == -libc::EINTR => Outcome::Idle,
            // The buffer had bytes, so 0 would mean the kernel lost them: treat as a failure.
            0 => Outcome::Failed(-libc::EIO),
            e => Outcome::Failed(e),
        }
    }

    /// Computes the operations to submit now, marking them in flight. At most one of each kind.
    pub fn next_steps(&mut self, out: &mut Vec<Step>) {
        let writing = matches!(self.write, Write::Writing { .. } | Write::Overtaken(_));
        match (self.read, self.buffer) {
            (Read::Unknown, _) => {
                self.read = Read::Polling;
                out.push(Step::ArmPollIn);
            }
            (Read::Readable, Buffer::None) => {
                self.buffer = Buffer::Requested;
                out.push(Step::NeedBuffer);
            }
            (Read::Readable, Buffer::Held { len, .. }) => match self.mode.transfer() {
                // One recv per buffer: read again once everything read before has been written.
                Transfer::Copy if len == 0 && !writing => {
                    self.read = Read::Reading { after_bytes: false };
                    out.push(Step::Read { len: COPY_LEN });
                }
                Transfer::Copy => {}
                Transfer::Splice if len == 0 && self.write == Write::Ready => {
                    self.read = Read::Reading { after_bytes: false };
                    self.write = Write::Writing { linked: true };
                    out.push(Step::ReadWrite { len: SPLICE_LEN });
                }
                Transfer::Splice if len < SPLICE_LEN => {
                    self.read = Read::Reading { after_bytes: len > 0 };
                    out.push(Step::Read { len: SPLICE_LEN });
                }
                Transfer::Splice => {}
            },
            _ => {}
        }
        if let Buffer::Held { len, filled } = self.buffer {
            let writing = matches!(self.write, Write::Writing { .. } | Write::Overtaken(_));
            if len > 0 && self.write == Write::Ready {
                self.write = Write::Writing { linked: false };
                let off = match self.mode.transfer() {
                    Transfer::Splice => 0,
                    Transfer::Copy => filled - len,
                };
                out.push(Step::Write { off, len });
            } else if len > 0 && self.write == Write::Full {
                self.write = Write::Polling;
                out.push(Step::ArmPollOut);
            }
            if len == 0 && !matches!(self.read, Read::Reading { .. }) && !writing {
                self.buffer = Buffer::None;
                if self.read == Read::WaitingRoom {
                    self.read = Read::Unknown;
                }
                out.push(Step::ReleaseBuffer);
                if self.mode == Mode::AutoBulk {
                    self.mode = Mode::Splice;
                }
            }
        }
        if self.read == Read::Eof && self.buffer == Buffer::None && self.shutdown == Shutdown::Open {
            self.shutdown = Shutdown::InFlight;
            out.push(Step::ShutdownDst);
        }
    }
}

#[cfg(test)]
mod tests;
