//! One direction of a proxied connection (client -> backend or backend -> client), as a pure
//! state machine: readiness and completion events go in, the next operations to submit come out.
//! It owns no descriptor and performs no I/O, so every rule below is unit-tested without a ring.
//!
//! Bytes go `src socket -> pipe -> dst socket` by two splices. io_uring runs every splice on an
//! io-wq kernel thread, so the flow is shaped to make as few of those trips as it can:
//! - Readiness comes from a one-shot poll, which the kernel evaluates inline when it is armed: it
//!   completes at once if bytes are waiting, so no splice is ever spent just to learn that a socket
//!   is empty. `readable` means "a poll said so and no splice-in has been submitted since"; every
//!   splice-in consumes it and the next poll, armed after the splice completes, re-checks.
//! - With an empty pipe and a writable destination, splice-in and splice-out go as one hard-linked
//!   pair (one io-wq trip moves a chunk end to end). The linked splice-out asks for a full pipe's
//!   worth and moves what the splice-in put there; its `EAGAIN` means "pipe empty" when the
//!   splice-in brought nothing, and "dst full" otherwise.
//! - `EAGAIN` from a plain splice-in on a pipe that already held bytes is ambiguous (socket empty,
//!   or pipe full): the flow waits for the pipe to drain (`wait_room`) before it polls again
//!   (HAProxy reasons the same way).
//! - `in_pipe` counts the bytes in the pipe; a pipe is given back only when it is empty and no
//!   splice on it is in flight.
//! - The source's FIN becomes `shutdown(SHUT_WR)` on `dst` once every byte before it is delivered.
//!
//! Copy mode: small messages are cheaper to copy than to hand to an io-wq thread, so a flow may
//! move bytes with `recv` into a pooled memory buffer and `send` from it, both completed inline by
//! the kernel. In `auto` mode a flow starts that way and switches to splice for good once a `recv`
//! fills the whole buffer (a bulk transfer), as HAProxy's `splice-auto` does. Either way the flow
//! holds its *buffer* (a pipe in splice mode, a memory buffer in copy mode) only while bytes are in it.

/// How many bytes one splice asks for (one default pipe's worth).
pub const SPLICE_LEN: u32 = 64 * 1024;
/// Size of a copy-mode buffer; a `recv` that fills it marks the flow as bulk.
pub const COPY_LEN: u32 = 16 * 1024;

/// How a flow moves bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Through a pipe with splice (io-wq).
    Splice,
    /// Through a memory buffer with recv/send (inline).
    Copy,
}

/// The next operation a flow wants submitted. The flow has already marked it in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The flow needs an empty buffer (a pipe, or a memory buffer in copy mode) before it can read.
    NeedBuffer,
    /// Arm a one-shot POLLIN on src.
    ArmPollIn,
    /// Splice up to `len` bytes from src into the pipe.
    SpliceIn { len: u32 },
    /// Splice-in hard-linked to a splice-out of whatever it brought (the pipe is empty).
    SpliceInOut { len: u32 },
    /// Splice `len` bytes from the pipe to dst.
    SpliceOut { len: u32 },
    /// Copy mode: recv up to `len` bytes into the (empty) memory buffer.
    Recv { len: u32 },
    /// Copy mode: send `len` bytes from offset `off` of the memory buffer.
    Send { off: u32, len: u32 },
    /// dst refused bytes: wait for POLLOUT on it.
    ArmPollOut,
    /// The buffer is empty and idle: give it back to its pool.
    ReleaseBuffer,
    /// Everything before src's FIN is delivered: shutdown(SHUT_WR) dst.
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shut {
    None,
    InFlight,
    Done,
}

#[derive(Debug, Clone)]
pub struct Flow {
    mode: Mode,
    /// Copy mode switches to splice when a recv fills the buffer.
    auto: bool,
    /// Switch to splice once the current memory buffer is released.
    go_splice: bool,
    /// Holding a buffer (bytes may be in it, or an operation on it in flight).
    pub has_pipe: bool,
    /// Bytes sitting in the buffer.
    pub in_pipe: u32,
    /// Copy mode: bytes the last recv put in the memory buffer (so `filled - in_pipe` were sent).
    filled: u32,
    readable: bool,
    poll_armed: bool,
    in_had_data: bool,
    wait_room: bool,
    writable: bool,
    in_flight_in: bool,
    in_flight_out: bool,
    /// The splice-out in flight is the linked half of a `SpliceInOut`.
    out_linked: bool,
    /// A linked splice-out result that arrived before its splice-in's.
    early_out: Option<i32>,
    pollout_armed: bool,
    waiting_pipe: bool,
    src_eof: bool,
    shut: Shut,
    /// Total bytes delivered to dst.
    pub delivered: u64,
}

impl Default for Flow {
    fn default() -> Self {
        Flow::new(Mode::Splice, false)
    }
}

impl Flow {
    /// A flow starting in `mode`; with `auto`, a copy-mode flow turns to splice on bulk.
    pub fn new(mode: Mode, auto: bool) -> Flow {
        Flow {
            mode,
            auto: auto && mode == Mode::Copy,
            go_splice: false,
            has_pipe: false,
            in_pipe: 0,
            filled: 0,
            readable: false,
            poll_armed: false,
            in_had_data: false,
            wait_room: false,
            writable: true,
            in_flight_in: false,
            in_flight_out: false,
            out_linked: false,
            early_out: None,
            pollout_armed: false,
            waiting_pipe: false,
            src_eof: false,
            shut: Shut::None,
            delivered: 0,
        }
    }

    /// The POLLIN poll on src completed (data, FIN, error or cancel: a splice tells which).
    pub fn on_readable(&mut self) {
        self.poll_armed = false;
        self.readable = true;
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// A buffer was handed over after `NeedBuffer`.
    pub fn on_pipe(&mut self) {
        debug_assert!(!self.has_pipe && self.in_pipe == 0);
        self.has_pipe = true;
        self.waiting_pipe = false;
    }

    pub fn on_splice_in(&mut self, res: i32) -> Outcome {
        self.in_flight_in = false;
        let outcome = match res {
            n if n > 0 => {
                self.in_pipe += n as u32;
                Outcome::Progress
            }
            0 => {
                self.src_eof = true;
                Outcome::Idle
            }
            e if e == -libc::EAGAIN || e == -libc::EINTR => {
                if self.in_had_data && (self.in_pipe > 0 || self.in_flight_out) {
                    self.wait_room = true;
                }
                // Otherwise the socket is empty (or the pipe drained meanwhile): poll again.
                Outcome::Idle
            }
            e => Outcome::Failed(e),
        };
        let Some(out) = self.early_out.take() else { return outcome };
        match (outcome, self.on_splice_out(out)) {
            (failed @ Outcome::Failed(_), _) => failed,
            (outcome, Outcome::Idle) => outcome,
            (_, other) => other,
        }
    }

    /// Copy mode: the recv into the empty memory buffer completed.
    pub fn on_recv(&mut self, res: i32) -> Outcome {
        self.in_flight_in = false;
        match res {
            n if n > 0 => {
                let n = n as u32;
                self.in_pipe = n;
                self.filled = n;
                if self.auto && n >= COPY_LEN {
                    self.go_splice = true;
                }
                Outcome::Progress
            }
            0 => {
                self.src_eof = true;
                Outcome::Idle
            }
            // Nothing after all (a spurious wake-up): poll again.
            e if e == -libc::EAGAIN || e == -libc::EINTR => Outcome::Idle,
            e => Outcome::Failed(e),
        }
    }

    /// A splice-out or (copy mode) a send completed.
    pub fn on_splice_out(&mut self, res: i32) -> Outcome {
        if self.out_linked && self.in_flight_in {
            // The linked splice-out's completion overtook the splice-in's: apply it after.
            self.early_out = Some(res);
            return Outcome::Idle;
        }
        let linked = std::mem::take(&mut self.out_linked);
        self.in_flight_out = false;
        match res {
            n if n > 0 => {
                let n = (n as u32).min(self.in_pipe);
                self.in_pipe -= n;
                self.delivered += u64::from(n);
                self.wait_room = false;
                Outcome::Progress
            }
            // A linked splice-out finding the pipe empty: the splice-in brought nothing.
            e if linked && self.in_pipe == 0 && (e == -libc::EAGAIN || e == 0) => Outcome::Idle,
            // After a failed splice-in the linked half has nothing to say.
            _ if linked && self.src_eof && self.in_pipe == 0 => Outcome::Idle,
            e if e == -libc::EAGAIN => {
                self.writable = false;
                Outcome::Idle
            }
            e if e == -libc::EINTR => Outcome::Idle,
            // The pipe had bytes, so 0 would mean the kernel lost them: treat as a failure.
            0 => Outcome::Failed(-libc::EIO),
            e => Outcome::Failed(e),
        }
    }

    /// POLLOUT (or an error condition) on dst.
    pub fn on_writable(&mut self) {
        self.pollout_armed = false;
        self.writable = true;
    }

    pub fn on_shutdown(&mut self) {
        self.shut = Shut::Done;
    }

    /// Every byte before src's FIN has been delivered and dst has been shut down.
    pub fn is_done(&self) -> bool {
        self.shut == Shut::Done
    }

    /// The pool has a pipe again: the next `next_steps` asks for it once more.
    pub fn clear_waiting_pipe(&mut self) {
        self.waiting_pipe = false;
    }

    /// The operations this flow has in flight, for a teardown that cancels each by its
    /// `user_data`: (POLLIN on src, POLLOUT on dst, splice-in or recv, splice-out or send, shutdown).
    pub fn in_flight(&self) -> [bool; 5] {
        [self.poll_armed, self.pollout_armed, self.in_flight_in, self.in_flight_out, self.shut == Shut::InFlight]
    }

    /// True when the flow is parked waiting for a pipe from the pool.
    pub fn is_waiting_pipe(&self) -> bool {
        self.waiting_pipe
    }

    /// Computes the operations to submit now, marking them in flight. At most one of each kind.
    pub fn next_steps(&mut self, out: &mut Vec<Step>) {
        let may_read = !self.src_eof && !self.wait_room && !self.in_flight_in;
        if may_read && self.readable {
            if !self.has_pipe {
                if !self.waiting_pipe {
                    self.waiting_pipe = true;
                    out.push(Step::NeedBuffer);
                }
            } else if self.mode == Mode::Copy {
                // One recv per buffer: read again once everything read before has been sent.
                if self.in_pipe == 0 && !self.in_flight_out {
                    self.readable = false;
                    self.in_flight_in = true;
                    out.push(Step::Recv { len: COPY_LEN });
                }
            } else if self.in_pipe == 0 && self.writable && !self.in_flight_out {
                self.readable = false;
                self.in_flight_in = true;
                self.in_flight_out = true;
                self.out_linked = true;
                self.in_had_data = false;
                out.push(Step::SpliceInOut { len: SPLICE_LEN });
            } else if self.in_pipe < SPLICE_LEN {
                self.readable = false;
                self.in_flight_in = true;
                self.in_had_data = self.in_pipe > 0;
                out.push(Step::SpliceIn { len: SPLICE_LEN });
            }
        } else if may_read && !self.readable && !self.poll_armed {
            self.poll_armed = true;
            out.push(Step::ArmPollIn);
        }
        if self.has_pipe {
            if !self.in_flight_out && self.in_pipe > 0 {
                if self.writable {
                    self.in_flight_out = true;
                    out.push(match self.mode {
                        Mode::Splice => Step::SpliceOut { len: self.in_pipe },
                        Mode::Copy => Step::Send { off: self.filled - self.in_pipe, len: self.in_pipe },
                    });
                } else if !self.pollout_armed {
                    self.pollout_armed = true;
                    out.push(Step::ArmPollOut);
                }
            }
            if self.in_pipe == 0 && !self.in_flight_in && !self.in_flight_out {
                self.has_pipe = false;
                self.wait_room = false;
                out.push(Step::ReleaseBuffer);
                if std::mem::take(&mut self.go_splice) {
                    self.mode = Mode::Splice;
                }
            }
        }
        if self.src_eof && !self.has_pipe && !self.in_flight_in && self.shut == Shut::None {
            self.shut = Shut::InFlight;
            out.push(Step::ShutdownDst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEN: u32 = SPLICE_LEN;

    fn steps(flow: &mut Flow) -> Vec<Step> {
        let mut out = Vec::new();
        flow.next_steps(&mut out);
        out
    }

    /// A flow whose src just became readable and which holds a pipe.
    fn readable_with_pipe() -> Flow {
        let mut f = Flow::new(Mode::Splice, false);
        assert_eq!(steps(&mut f), vec![Step::ArmPollIn]);
        f.on_readable();
        assert_eq!(steps(&mut f), vec![Step::NeedBuffer]);
        f.on_pipe();
        f
    }

    #[test]
    fn idle_flow_only_polls_once() {
        let mut f = Flow::new(Mode::Splice, false);
        assert_eq!(steps(&mut f), vec![Step::ArmPollIn]);
        assert!(steps(&mut f).is_empty(), "one poll at a time");
    }

    #[test]
    fn a_request_moves_in_one_linked_pair_then_polls_again() {
        let mut f = readable_with_pipe();
        assert_eq!(steps(&mut f), vec![Step::SpliceInOut { len: LEN }]);
        assert!(steps(&mut f).is_empty(), "nothing more while the pair is in flight");
        assert_eq!(f.on_splice_in(100), Outcome::Progress);
        assert_eq!(f.on_splice_out(100), Outcome::Progress);
        assert_eq!(steps(&mut f), vec![Step::ArmPollIn, Step::ReleaseBuffer]);
        assert_eq!(f.delivered, 100);
    }

    #[test]
    fn linked_out_overtaking_its_splice_in_is_applied_after_it() {
        let mut f = readable_with_pipe();
        steps(&mut f);
        assert_eq!(f.on_splice_out(100), Outcome::Idle);
        assert_eq!(f.on_splice_in(100), Outcome::Progress);
        assert_eq!(f.in_pipe, 0);
        assert_eq!(f.delivered, 100);
    }

    #[test]
    fn linked_out_on_an_empty_pipe_is_not_a_full_destination() {
        let mut f = readable_with_pipe();
        steps(&mut f);
        assert_eq!(f.on_splice_in(-libc::EAGAIN), Outcome::Idle);
        assert_eq!(f.on_splice_out(-libc::EAGAIN), Outcome::Idle);
        // Still writable: the next chunk goes as a linked pair again.
        assert_eq!(steps(&mut f), vec![Step::ArmPollIn, Step::ReleaseBuffer]);
        f.on_readable();
        assert_eq!(steps(&mut f), vec![Step::NeedBuffer]);
        f.on_pipe();
        assert_eq!(steps(&mut f), vec![Step::SpliceInOut { len: LEN }]);
    }

    #[test]
    fn short_linked_write_sends_the_rest() {
        let mut f = readable_with_pipe();
        steps(&mut f);
        f.on_splice_in(1000);
        f.on_splice_out(600);
        assert_eq!(steps(&mut f), vec![Step::ArmPollIn, Step::SpliceOut { len: 400 }]);
        f.on_splice_out(400);
        assert_eq!(steps(&mut f), vec![Step::ReleaseBuffer]);
    }

    #[test]
    fn full_destination_waits_for_pollout_without_busy_looping() {
        let mut f = readable_with_pipe();
        steps(&mut f);
        f.on_splice_in(4096);
        assert_eq!(f.on_splice_out(-libc::EAGAIN), Outcome::Idle);
        assert_eq!(steps(&mut f), vec![Step::ArmPollIn, Step::ArmPollOut]);
        assert!(steps(&mut f).is_empty());
        f.on_readable();
        // More data while dst is full: read into the pipe (no linked pair: the pipe has bytes).
        assert_eq!(steps(&mut f), vec![Step::SpliceIn { len: LEN }]);
        // EAGAIN with bytes in the pipe is ambiguous (pipe full?): wait for room, don't poll.
        f.on_splice_in(-libc::EAGAIN);
        assert!(steps(&mut f).is_empty());
        f.on_writable();
        assert_eq!(steps(&mut f), vec![Step::SpliceOut { len: 4096 }]);
        f.on_splice_out(4096);
        // Room again: poll (it completes at once if bytes are still waiting).
        assert_eq!(steps(&mut f), vec![Step::ArmPollIn, Step::ReleaseBuffer]);
    }

    #[test]
    fn eagain_on_an_empty_pipe_means_the_socket_is_empty() {
        let mut f = readable_with_pipe();
        steps(&mut f);
        f.on_splice_in(-libc::EAGAIN);
        f.on_splice_out(-libc::EAGAIN);
        assert_eq!(steps(&mut f), vec![Step::ArmPollIn, Step::ReleaseBuffer]);
    }

    #[test]
    fn fin_is_forwarded_after_the_last_byte() {
        let mut f = readable_with_pipe();
        steps(&mut f);
        f.on_splice_in(10);
        f.on_splice_out(-libc::EAGAIN); // dst full for now
        assert_eq!(steps(&mut f), vec![Step::ArmPollIn, Step::ArmPollOut]);
        f.on_readable();
        assert_eq!(steps(&mut f), vec![Step::SpliceIn { len: LEN }]);
        assert_eq!(f.on_splice_in(0), Outcome::Idle); // FIN
        assert!(steps(&mut f).is_empty(), "shutdown must wait for the bytes in the pipe");
        f.on_writable();
        assert_eq!(steps(&mut f), vec![Step::SpliceOut { len: 10 }]);
        f.on_splice_out(10);
        assert_eq!(steps(&mut f), vec![Step::ReleaseBuffer, Step::ShutdownDst]);
        assert!(!f.is_done());
        f.on_shutdown();
        assert!(f.is_done());
        f.on_readable();
        assert!(steps(&mut f).is_empty(), "nothing is read after FIN");
    }

    #[test]
    fn fin_in_a_linked_pair_shuts_down_dst() {
        let mut f = readable_with_pipe();
        steps(&mut f);
        assert_eq!(f.on_splice_in(0), Outcome::Idle);
        assert_eq!(f.on_splice_out(-libc::EAGAIN), Outcome::Idle);
        assert_eq!(steps(&mut f), vec![Step::ReleaseBuffer, Step::ShutdownDst]);
    }

    #[test]
    fn socket_errors_fail_the_flow() {
        let mut f = readable_with_pipe();
        steps(&mut f);
        assert_eq!(f.on_splice_in(-libc::ECONNRESET), Outcome::Failed(-libc::ECONNRESET));
        let mut f = readable_with_pipe();
        steps(&mut f);
        f.on_splice_in(5);
        assert_eq!(f.on_splice_out(-libc::EPIPE), Outcome::Failed(-libc::EPIPE));
    }

    fn readable_copy(auto: bool) -> Flow {
        let mut f = Flow::new(Mode::Copy, auto);
        assert_eq!(steps(&mut f), vec![Step::ArmPollIn]);
        f.on_readable();
        assert_eq!(steps(&mut f), vec![Step::NeedBuffer]);
        f.on_pipe();
        f
    }

    #[test]
    fn copy_mode_recvs_then_sends_the_rest_then_polls() {
        let mut f = readable_copy(false);
        assert_eq!(steps(&mut f), vec![Step::Recv { len: COPY_LEN }]);
        assert_eq!(f.on_recv(300), Outcome::Progress);
        assert_eq!(steps(&mut f), vec![Step::ArmPollIn, Step::Send { off: 0, len: 300 }]);
        f.on_splice_out(100);
        assert_eq!(steps(&mut f), vec![Step::Send { off: 100, len: 200 }]);
        f.on_readable();
        assert!(steps(&mut f).is_empty(), "no recv into a buffer that still holds bytes");
        f.on_splice_out(200);
        assert_eq!(steps(&mut f), vec![Step::Recv { len: COPY_LEN }]);
        assert_eq!(f.on_recv(-libc::EAGAIN), Outcome::Idle);
        assert_eq!(steps(&mut f), vec![Step::ArmPollIn, Step::ReleaseBuffer]);
        assert_eq!(f.delivered, 300);
    }

    #[test]
    fn auto_mode_turns_to_splice_after_a_full_buffer() {
        let mut f = readable_copy(true);
        steps(&mut f);
        f.on_recv(COPY_LEN as i32);
        assert_eq!(steps(&mut f), vec![Step::ArmPollIn, Step::Send { off: 0, len: COPY_LEN }]);
        f.on_splice_out(COPY_LEN as i32);
        assert_eq!(f.mode(), Mode::Copy, "the memory buffer is still held");
        assert_eq!(steps(&mut f), vec![Step::ReleaseBuffer]);
        assert_eq!(f.mode(), Mode::Splice);
        f.on_readable();
        assert_eq!(steps(&mut f), vec![Step::NeedBuffer]);
        f.on_pipe();
        assert_eq!(steps(&mut f), vec![Step::SpliceInOut { len: LEN }]);
    }

    #[test]
    fn copy_mode_without_auto_never_splices() {
        let mut f = readable_copy(false);
        steps(&mut f);
        f.on_recv(COPY_LEN as i32);
        steps(&mut f);
        f.on_splice_out(COPY_LEN as i32);
        steps(&mut f);
        assert_eq!(f.mode(), Mode::Copy);
    }

    #[test]
    fn copy_mode_fin_and_errors() {
        let mut f = readable_copy(true);
        steps(&mut f);
        assert_eq!(f.on_recv(0), Outcome::Idle);
        assert_eq!(steps(&mut f), vec![Step::ReleaseBuffer, Step::ShutdownDst]);
        let mut f = readable_copy(true);
        steps(&mut f);
        assert_eq!(f.on_recv(-libc::ECONNRESET), Outcome::Failed(-libc::ECONNRESET));
    }
}
