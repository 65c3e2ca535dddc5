//! One direction of a proxied connection (client -> backend or backend -> client), as a pure
//! state machine: readiness and completion events go in, the next operations to submit come out.
//! It owns no descriptor and performs no I/O, so every rule below is unit-tested without a ring.
//!
//! Bytes go `src socket -> pipe -> dst socket` by two splices, which may run at the same time.
//! The rules that keep it correct:
//! - Readiness: a multishot poll on `src` bumps `rd_seq` on every wake-up. `readable` is cleared
//!   only by an `EAGAIN` from a splice-in submitted after the latest wake-up, so a wake-up that
//!   races with a splice is never lost.
//! - `EAGAIN` from splice-in is ambiguous (socket empty, or pipe full). If the pipe held bytes when
//!   the splice was submitted we assume "pipe full" and wait for the pipe to drain (`wait_room`);
//!   only an `EAGAIN` on an empty pipe means the socket is empty (HAProxy reasons the same way).
//! - `in_pipe` counts the bytes in the pipe; a pipe is given back only when it is empty and no
//!   splice on it is in flight.
//! - The source's FIN becomes `shutdown(SHUT_WR)` on `dst` once every byte before it is delivered.

/// How many bytes one splice-in asks for (one default pipe's worth).
pub const SPLICE_LEN: u32 = 64 * 1024;

/// The next operation a flow wants submitted. The flow has already marked it in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The flow needs an empty pipe before it can read.
    NeedPipe,
    /// Splice up to `len` bytes from src into the pipe.
    SpliceIn { len: u32 },
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
    rd_seq: u32,
    in_seq: u32,
    in_had_data: bool,
    wait_room: bool,
    writable: bool,
    in_flight_in: bool,
    in_flight_out: bool,
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
            rd_seq: 0,
            in_seq: 0,
            in_had_data: false,
            wait_room: false,
            writable: true,
            in_flight_in: false,
            in_flight_out: false,
            pollout_armed: false,
            waiting_pipe: false,
            src_eof: false,
            shut: Shut::None,
            delivered: 0,
        }
    }

    /// src reported readiness (data, FIN or error: the next splice-in tells which).
    pub fn on_readable(&mut self) {
        self.readable = true;
        self.rd_seq = self.rd_seq.wrapping_add(1);
    }

    /// A pipe was handed over after `NeedPipe`.
    pub fn on_pipe(&mut self) {
        debug_assert!(!self.has_pipe && self.in_pipe == 0);
        self.has_pipe = true;
        self.waiting_pipe = false;
    }

    pub fn on_splice_in(&mut self, res: i32) -> Outcome {
        self.in_flight_in = false;
        match res {
            n if n > 0 => {
                self.in_pipe += n as u32;
                Outcome::Progress
            }
            0 => {
                self.src_eof = true;
                Outcome::Idle
            }
            e if e == -libc::EAGAIN || e == -libc::EINTR => {
                if self.rd_seq != self.in_seq || e == -libc::EINTR {
                    // A wake-up arrived after this splice was submitted: still readable.
                } else if !self.in_had_data {
                    self.readable = false;
                } else if self.in_pipe > 0 || self.in_flight_out {
                    self.wait_room = true;
                }
                // else: the pipe drained meanwhile; retry, the next EAGAIN is unambiguous.
                Outcome::Idle
            }
            e => Outcome::Failed(e),
        }
    }

    pub fn on_splice_out(&mut self, res: i32) -> Outcome {
        self.in_flight_out = false;
        match res {
            n if n > 0 => {
                let n = (n as u32).min(self.in_pipe);
                self.in_pipe -= n;
                self.delivered += u64::from(n);
                self.wait_room = false;
                Outcome::Progress
            }
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
        let wants_read = self.readable && !self.src_eof && !self.wait_room && !self.in_flight_in;
        if !self.has_pipe {
            if wants_read && !self.waiting_pipe {
                self.waiting_pipe = true;
                out.push(Step::NeedPipe);
            }
        } else {
            if wants_read && self.in_pipe < SPLICE_LEN {
                self.in_flight_in = true;
                self.in_seq = self.rd_seq;
                self.in_had_data = self.in_pipe > 0;
                out.push(Step::SpliceIn { len: SPLICE_LEN });
            }
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
        if self.src_eof && !self.has_pipe && self.in_pipe == 0 && !self.in_flight_in && self.shut == Shut::None {
            self.shut = Shut::InFlight;
            out.push(Step::ShutdownDst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(flow: &mut Flow) -> Vec<Step> {
        let mut out = Vec::new();
        flow.next_steps(&mut out);
        out
    }

    fn flow_with_pipe() -> Flow {
        let mut f = Flow::new();
        f.on_readable();
        assert_eq!(steps(&mut f), vec![Step::NeedPipe]);
        f.on_pipe();
        f
    }

    #[test]
    fn idle_flow_asks_for_nothing() {
        assert!(steps(&mut Flow::new()).is_empty());
    }

    #[test]
    fn readable_flow_reads_then_writes_then_releases_the_pipe() {
        let mut f = flow_with_pipe();
        assert_eq!(steps(&mut f), vec![Step::SpliceIn { len: SPLICE_LEN }]);
        assert_eq!(f.on_splice_in(100), Outcome::Progress);
        // Still readable until EAGAIN proves otherwise: read more and write at once.
        assert_eq!(steps(&mut f), vec![Step::SpliceIn { len: SPLICE_LEN }, Step::SpliceOut { len: 100 }]);
        assert_eq!(f.on_splice_out(100), Outcome::Progress);
        assert_eq!(f.on_splice_in(-libc::EAGAIN), Outcome::Idle);
        // The pipe held bytes when that splice-in was submitted (ambiguous), but it has drained
        // since: retry, and that EAGAIN is unambiguous.
        assert_eq!(steps(&mut f), vec![Step::SpliceIn { len: SPLICE_LEN }]);
        assert_eq!(f.on_splice_in(-libc::EAGAIN), Outcome::Idle);
        // On an empty pipe EAGAIN is unambiguous: not readable any more.
        assert_eq!(steps(&mut f), vec![Step::ReleasePipe]);
        assert!(steps(&mut f).is_empty());
        assert_eq!(f.delivered, 100);
    }

    #[test]
    fn wakeup_racing_with_a_splice_is_not_lost() {
        let mut f = flow_with_pipe();
        assert_eq!(steps(&mut f), vec![Step::SpliceIn { len: SPLICE_LEN }]);
        f.on_readable(); // data arrived while the splice was running
        f.on_splice_in(-libc::EAGAIN);
        assert_eq!(steps(&mut f), vec![Step::SpliceIn { len: SPLICE_LEN }]);
    }

    #[test]
    fn eagain_with_bytes_in_the_pipe_waits_for_room() {
        let mut f = flow_with_pipe();
        steps(&mut f);
        f.on_splice_in(4096);
        // dst is full: the write gets EAGAIN, the read too (pipe full or socket empty).
        assert_eq!(steps(&mut f), vec![Step::SpliceIn { len: SPLICE_LEN }, Step::SpliceOut { len: 4096 }]);
        f.on_splice_out(-libc::EAGAIN);
        f.on_splice_in(-libc::EAGAIN);
        assert_eq!(steps(&mut f), vec![Step::ArmPollOut]);
        assert!(steps(&mut f).is_empty(), "no busy loop while waiting");
        f.on_writable();
        assert_eq!(steps(&mut f), vec![Step::SpliceOut { len: 4096 }]);
        f.on_splice_out(4096);
        // Drained: reading resumes (the flow was never marked unreadable).
        assert_eq!(steps(&mut f), vec![Step::SpliceIn { len: SPLICE_LEN }]);
    }

    #[test]
    fn fin_is_forwarded_after_the_last_byte() {
        let mut f = flow_with_pipe();
        steps(&mut f);
        f.on_splice_in(10);
        assert_eq!(steps(&mut f), vec![Step::SpliceIn { len: SPLICE_LEN }, Step::SpliceOut { len: 10 }]);
        assert_eq!(f.on_splice_in(0), Outcome::Idle); // FIN
        assert!(steps(&mut f).is_empty(), "shutdown must wait for the bytes in the pipe");
        f.on_splice_out(10);
        assert_eq!(steps(&mut f), vec![Step::ReleasePipe, Step::ShutdownDst]);
        assert!(!f.is_done());
        f.on_shutdown();
        assert!(f.is_done());
        f.on_readable();
        assert!(steps(&mut f).is_empty(), "nothing is read after FIN");
    }

    #[test]
    fn short_write_sends_the_rest() {
        let mut f = flow_with_pipe();
        steps(&mut f);
        f.on_splice_in(1000);
        f.on_splice_in_eof_free();
        assert_eq!(steps(&mut f), vec![Step::SpliceOut { len: 1000 }]);
        f.on_splice_out(600);
        assert_eq!(steps(&mut f), vec![Step::SpliceOut { len: 400 }]);
    }

    #[test]
    fn socket_errors_fail_the_flow() {
        let mut f = flow_with_pipe();
        steps(&mut f);
        assert_eq!(f.on_splice_in(-libc::ECONNRESET), Outcome::Failed(-libc::ECONNRESET));
        assert_eq!(f.on_splice_out(-libc::EPIPE), Outcome::Failed(-libc::EPIPE));
    }

    impl Flow {
        /// Test helper: mark src as drained without a FIN.
        fn on_splice_in_eof_free(&mut self) {
            self.readable = false;
        }
    }
}
