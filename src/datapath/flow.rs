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

/// How many bytes one splice asks for (one default pipe's worth).
pub const SPLICE_LEN: u32 = 64 * 1024;

/// The next operation a flow wants submitted. The flow has already marked it in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The flow needs an empty pipe before it can read.
    NeedPipe,
    /// Arm a one-shot POLLIN on src.
    ArmPollIn,
    /// Splice up to `len` bytes from src into the pipe.
    SpliceIn { len: u32 },
    /// Splice-in hard-linked to a splice-out of whatever it brought (the pipe is empty).
    SpliceInOut { len: u32 },
    /// Splice `len` bytes from the pipe to dst.
    SpliceOut { len: u32 },
    /// dst refused bytes: wait for POLLOUT on it.
    ArmPollOut,
    /// The pipe is empty and idle: give it back to the pool.
    ReleasePipe,
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
    /// Holding a pipe (bytes may be in it, or a splice on it in flight).
    pub has_pipe: bool,
    /// Bytes sitting in the pipe.
    pub in_pipe: u32,
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
        Flow::new()
    }
}

impl Flow {
    pub fn new() -> Flow {
        Flow {
            has_pipe: false,
            in_pipe: 0,
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

    /// A pipe was handed over after `NeedPipe`.
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
                    out.push(Step::NeedPipe);
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
        } else if may_read && !self.poll_armed {
            self.poll_armed = true;
            out.push(Step::ArmPollIn);
        }
        if self.has_pipe {
            if !self.in_flight_out && self.in_pipe > 0 {
                if self.writable {
                    self.in_flight_out = true;
                    out.push(Step::SpliceOut { len: self.in_pipe });
                } else if !self.pollout_armed {
                    self.pollout_armed = true;
                    out.push(Step::ArmPollOut);
                }
            }
            if self.in_pipe == 0 && !self.in_flight_in && !self.in_flight_out {
                self.has_pipe = false;
                self.wait_room = false;
                out.push(Step::ReleasePipe);
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
        let mut f = Flow::new();
        assert_eq!(steps(&mut f), vec![Step::ArmPollIn]);
        f.on_readable();
        assert_eq!(steps(&mut f), vec![Step::NeedPipe]);
        f.on_pipe();
        f
    }

    #[test]
    fn idle_flow_only_polls_once() {
        let mut f = Flow::new();
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
        assert_eq!(steps(&mut f), vec![Step::ArmPollIn, Step::ReleasePipe]);
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
        assert_eq!(steps(&mut f), vec![Step::ArmPollIn, Step::ReleasePipe]);
        f.on_readable();
        assert_eq!(steps(&mut f), vec![Step::NeedPipe]);
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
        assert_eq!(steps(&mut f), vec![Step::ReleasePipe]);
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
        assert_eq!(steps(&mut f), vec![Step::ArmPollIn, Step::ReleasePipe]);
    }

    #[test]
    fn eagain_on_an_empty_pipe_means_the_socket_is_empty() {
        let mut f = readable_with_pipe();
        steps(&mut f);
        f.on_splice_in(-libc::EAGAIN);
        f.on_splice_out(-libc::EAGAIN);
        assert_eq!(steps(&mut f), vec![Step::ArmPollIn, Step::ReleasePipe]);
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
        assert_eq!(steps(&mut f), vec![Step::ReleasePipe, Step::ShutdownDst]);
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
        assert_eq!(steps(&mut f), vec![Step::ReleasePipe, Step::ShutdownDst]);
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
}
