//! The checks' I/O: one io_uring, on the prober thread, runs every check in flight. A check is a
//! short series of linked operations on a direct descriptor: socket -> SO_LINGER 0 -> connect,
//! then, for HTTP and send-expect, send -> recv until the reply can be judged, then close, which
//! resets the connection (checks leave no TIME_WAIT sockets on this host). Every step carries a
//! link timeout for what is left of the check's `timeout`: the kernel cancels a step that
//! overruns, so a check ends on time and its socket is closed at once, whatever the server does.
//!
//! Ownership: check `i` owns slot `i` of the ring's file table, its reply buffer and its timespec.
//! It counts the completions it still expects (`pending`) and starts again only once every one of
//! them has arrived, its close included, so nothing the kernel may still use is ever reused.
//! Targets (request bytes, addresses) never move once the ring exists. This file never decides
//! what a result means for a server; it reports results and idle checks as [`Event`]s.
//!
//! The ring's set-up, the `user_data` fields and the connect chain come from [`crate::uring`],
//! shared with the data path's workers; the send/recv steps and the close are the prober's own.

use std::io;
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types, IoUring};
use socket2::SockAddr;

use super::checks::{self, CheckFailure, Probe};
use crate::uring::{self, ConnectChain, ConnectUserData, Field, OpKind, RingOptions, SockOpt};

/// SO_LINGER {on, 0}: close sends a reset.
static LINGER: libc::linger = libc::linger { l_onoff: 1, l_linger: 0 };

/// One server's check: what to do, where, and how long it may take.
pub struct Target {
    pub probe: Probe,
    pub addr: SockAddr,
    pub timeout: Duration,
}

/// What the ring reports.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A check has its verdict (its socket may still be closing).
    Done { check: usize, result: Result<(), CheckFailure>, took: Duration },
    /// A check has nothing in flight any more and may start again.
    Idle { check: usize },
}

/// What a check does once every completion of its step is in.
enum Next {
    /// Nothing: the slot was idle already.
    Wait,
    /// Its close completed: it may start again.
    Idle,
    Step(Op),
    Finish(Result<(), CheckFailure>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Idle,
    Connecting,
    Sending,
    Receiving,
    Closing,
}

/// An operation in flight; with the check index it makes the `user_data`: `[ op: 32 | check: 32 ]`
/// ([`OP`], [`CHECK`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Op {
    Socket = 1,
    SockOpt,
    Connect,
    Send,
    Recv,
    /// The link timeout of the step.
    Timeout,
    Close,
}

const OP: Field = Field::new(32, 32);
const CHECK: Field = Field::new(0, 32);

impl OpKind for Op {
    const KINDS: &'static [Op] = &Op::ALL;

    fn code(self) -> u64 {
        self as u64
    }
}

impl Op {
    const ALL: [Op; 7] = [Op::Socket, Op::SockOpt, Op::Connect, Op::Send, Op::Recv, Op::Timeout, Op::Close];

    fn encode(self, check: usize) -> u64 {
        OP.pack(self.code()) | CHECK.pack(check as u64)
    }

    fn decode(user_data: u64) -> Option<(Op, usize)> {
        let op = Op::from_code(OP.unpack(user_data))?;
        Some((op, CHECK.unpack(user_data) as usize))
    }
}

struct Slot {
    stage: Stage,
    /// Completions still expected.
    pending: u32,
    started: Instant,
    deadline: Instant,
    /// Results of the current step (0 until they arrive).
    socket: i32,
    sockopt: i32,
    main: i32,
    timer: i32,
    /// Request bytes sent so far.
    sent: usize,
    /// Reply bytes read so far; the capacity is fixed, so the kernel's pointer into it stays valid.
    reply: Vec<u8>,
    /// The link timeout of the step in flight (the kernel reads it at submission).
    timespec: types::Timespec,
}

/// The ring and every check's state.
pub struct CheckRing {
    ring: IoUring,
    targets: Vec<Target>,
    slots: Vec<Slot>,
    /// Reused between reaps.
    completions: Vec<(u64, i32)>,
}

impl CheckRing {
    /// A ring for `targets` (check `i` is `targets[i]`), none of them running.
    pub fn new(targets: Vec<Target>) -> io::Result<CheckRing> {
        // Room for every check's largest step (4 entries) at once: pushing never has to wait.
        let entries = (4 * targets.len()).next_power_of_two().clamp(64, 32_768) as u32;
        let ring = uring::build_ring(RingOptions { entries, cq_entries: None })?;
        if !targets.is_empty() {
            ring.submitter().register_files_sparse(targets.len() as u32)?;
        }
        // Not in `crate::uring`: the workers must get their io-wq limits, here a refusal is harmless.
        // Nothing here should reach io-wq (every socket is non-blocking); if something does, it
        // gets one kernel thread, not one per check. Older kernels may refuse: no harm.
        let _ = ring.submitter().register_iowq_max_workers(&mut [1, 1]);
        let now = Instant::now();
        let slots = targets
            .iter()
            .map(|target| Slot {
                stage: Stage::Idle,
                pending: 0,
                started: now,
                deadline: now,
                socket: 0,
                sockopt: 0,
                main: 0,
                timer: 0,
                sent: 0,
                reply: Vec::with_capacity(target.probe.reply_limit()),
                timespec: types::Timespec::new(),
            })
            .collect();
        Ok(CheckRing { ring, targets, slots, completions: Vec::new() })
    }

    pub fn is_idle(&self, check: usize) -> bool {
        self.slots.get(check).is_some_and(|slot| slot.stage == Stage::Idle)
    }

    /// Starts check `check` if it is idle (a check runs once at a time).
    pub fn start(&mut self, check: usize) {
        if !self.is_idle(check) {
            return;
        }
        let target = &self.targets[check];
        let slot = &mut self.slots[check];
        let now = Instant::now();
        slot.timespec = types::Timespec::from(target.timeout);
        let chain = ConnectChain {
            domain: if target.addr.is_ipv6() { libc::AF_INET6 } else { libc::AF_INET },
            slot: check as u32,
            sockopts: [SockOpt::new(libc::SOL_SOCKET, libc::SO_LINGER, &LINGER)],
            addr: target.addr.as_ptr().cast(),
            addr_len: target.addr.len(),
            timeout: &slot.timespec,
            user_data: ConnectUserData {
                socket: Op::Socket.encode(check),
                sockopt: Op::SockOpt.encode(check),
                connect: Op::Connect.encode(check),
                timeout: Op::Timeout.encode(check),
            },
        };
        let Some(chain): Option<[squeue::Entry; 4]> = chain.entries() else { return };
        slot.stage = Stage::Connecting;
        slot.started = now;
        slot.deadline = now + target.timeout;
        (slot.socket, slot.sockopt, slot.main, slot.timer, slot.sent) = (0, 0, 0, 0, 0);
        slot.reply.clear();
        slot.pending = chain.len() as u32;
        self.push(&chain);
    }

    /// Submits what is queued, then waits for completions until some check has news or `until`
    /// has come; the news is appended to `events`.
    pub fn wait(&mut self, until: Instant, events: &mut Vec<Event>) -> io::Result<()> {
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let timespec = types::Timespec::from(left);
            let args = types::SubmitArgs::new().timespec(&timespec);
            // Always ask for a completion: with DEFER_TASKRUN that is what runs the kernel's
            // deferred work; a zero timeout returns at once.
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)) => {}
                Err(e) => return Err(e),
            }
            self.reap(events);
            if !events.is_empty() || Instant::now() >= until {
                return Ok(());
            }
        }
    }

    fn reap(&mut self, events: &mut Vec<Event>) {
        let mut completions = std::mem::take(&mut self.completions);
        completions.clear();
        completions.extend(self.ring.completion().map(|cqe| (cqe.user_data(), cqe.result())));
        for &(user_data, res) in &completions {
            if let Some((op, check)) = Op::decode(user_data).filter(|&(_, check)| check < self.slots.len()) {
                self.on_completion(check, op, res, events);
            }
        }
        self.completions = completions;
    }

    fn on_completion(&mut self, check: usize, op: Op, res: i32, events: &mut Vec<Event>) {
        let slot = &mut self.slots[check];
        match op {
            Op::Socket => slot.socket = res,
            Op::SockOpt => slot.sockopt = res,
            Op::Connect | Op::Send | Op::Recv => slot.main = res,
            Op::Timeout => slot.timer = res,
            Op::Close => {}
        }
        slot.pending = slot.pending.saturating_sub(1);
        if slot.pending == 0 {
            self.advance(check, events);
        }
    }

    /// Every completion of the step is in: decide, or take the next step.
    fn advance(&mut self, check: usize, events: &mut Vec<Event>) {
        match self.next(check) {
            Next::Wait => {}
            Next::Idle => events.push(Event::Idle { check }),
            Next::Step(op) => self.step(check, op, events),
            Next::Finish(result) => self.finish(check, result, events),
        }
    }

    fn next(&mut self, check: usize) -> Next {
        let target = &self.targets[check];
        let slot = &mut self.slots[check];
        // A step cut short by its link timeout ends in ECANCELED, its timer in ETIME.
        let timed_out = slot.main < 0 && slot.timer == -libc::ETIME;
        let failed = |stage| {
            Next::Finish(Err(if timed_out {
                CheckFailure::Timeout(target.timeout)
            } else if stage == "connect" {
                checks::connect_failure(slot.main)
            } else {
                checks::io_failure(stage, slot.main)
            }))
        };
        match slot.stage {
            Stage::Idle => Next::Wait,
            Stage::Closing => {
                slot.stage = Stage::Idle;
                Next::Idle
            }
            Stage::Connecting if slot.socket < 0 => Next::Finish(Err(checks::io_failure("socket", slot.socket))),
            Stage::Connecting if slot.sockopt < 0 => Next::Finish(Err(checks::io_failure("setsockopt", slot.sockopt))),
            Stage::Connecting if slot.main < 0 => failed("connect"),
            Stage::Connecting if !target.probe.request().is_empty() => Next::Step(Op::Send),
            Stage::Connecting if target.probe.reply_limit() > 0 => Next::Step(Op::Recv),
            Stage::Connecting => Next::Finish(Ok(())),
            Stage::Sending if slot.main < 0 => failed("send"),
            Stage::Sending => {
                slot.sent += slot.main as usize;
                Next::Step(if slot.sent < target.probe.request().len() { Op::Send } else { Op::Recv })
            }
            Stage::Receiving if slot.main < 0 => failed("read"),
            Stage::Receiving => {
                let read = slot.main as usize;
                let len = slot.reply.len() + read;
                if len <= slot.reply.capacity() {
                    // SAFETY: the kernel wrote `read` bytes right after the `len - read` already
                    // there, within the spare capacity the recv was given.
                    unsafe { slot.reply.set_len(len) };
                }
                match target.probe.judge(&slot.reply, read == 0) {
                    Some(verdict) => Next::Finish(verdict),
                    None => Next::Step(Op::Recv),
                }
            }
        }
    }

    /// Submits the next send or recv with a link timeout for what is left of the check's time.
    fn step(&mut self, check: usize, op: Op, events: &mut Vec<Event>) {
        let target = &self.targets[check];
        let slot = &mut self.slots[check];
        let left = slot.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let failure = CheckFailure::Timeout(target.timeout);
            return self.finish(check, Err(failure), events);
        }
        slot.timespec = types::Timespec::from(left);
        (slot.main, slot.timer) = (0, 0);
        let file = types::Fixed(check as u32);
        let entry = match op {
            Op::Send => {
                slot.stage = Stage::Sending;
                let rest = &target.probe.request()[slot.sent..];
                opcode::Send::new(file, rest.as_ptr(), rest.len() as u32).build()
            }
            _ => {
                slot.stage = Stage::Receiving;
                let room = slot.reply.spare_capacity_mut();
                opcode::Recv::new(file, room.as_mut_ptr().cast(), room.len() as u32).build()
            }
        };
        let pair = [
            entry.flags(squeue::Flags::IO_LINK).user_data(op.encode(check)),
            opcode::LinkTimeout::new(&slot.timespec).build().user_data(Op::Timeout.encode(check)),
        ];
        slot.pending = pair.len() as u32;
        self.push(&pair);
    }

    /// Reports the verdict and closes the socket (if one was made).
    fn finish(&mut self, check: usize, result: Result<(), CheckFailure>, events: &mut Vec<Event>) {
        let slot = &mut self.slots[check];
        events.push(Event::Done { check, result, took: slot.started.elapsed() });
        if slot.socket < 0 {
            slot.stage = Stage::Idle;
            events.push(Event::Idle { check });
            return;
        }
        slot.stage = Stage::Closing;
        slot.pending = 1;
        let close = opcode::Close::new(types::Fixed(check as u32)).build().user_data(Op::Close.encode(check));
        self.push(&[close]);
    }

    /// Queues entries that must reach the kernel together (a linked chain stays in one batch).
    fn push(&mut self, entries: &[squeue::Entry]) {
        loop {
            // SAFETY: every pointer in these entries (address, request, reply buffer, timespec,
            // LINGER) points into the targets, the slots or a static, none of which moves or is
            // reused before the operation's completion has arrived.
            if unsafe { self.ring.submission().push_multiple(entries) }.is_ok() {
                return;
            }
            // Full (only with more than 8,192 checks): hand the queue to the kernel first.
            if let Err(e) = self.ring.submit() {
                if !matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY | libc::EAGAIN)) {
                    tracing::error!("health checks: cannot submit to io_uring: {e}");
                    return;
                }
            }
        }
    }
}

/// Each kind of check against real servers on loopback ports.
#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};

    use super::*;
    use crate::config::{HealthCheck, DEFAULT_EXPECT_STATUS};

    const SECOND: Duration = Duration::from_secs(1);

    /// A server that reads once, writes `reply` and closes, for every connection.
    fn server(reply: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for mut stream in listener.incoming().map_while(Result::ok) {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf);
                let _ = stream.write_all(reply);
            }
        });
        addr
    }

    /// A server that accepts and never answers; it keeps every connection open.
    fn silent_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            let held: Vec<TcpStream> = listener.incoming().map_while(Result::ok).collect();
            drop(held);
        });
        addr
    }

    fn closed_port() -> SocketAddr {
        TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind")
    }

    fn http() -> Probe {
        let check = HealthCheck::Http { path: "/".to_owned(), expect_status: DEFAULT_EXPECT_STATUS, host: None };
        Probe::new(&check, "127.0.0.1:1").expect("probe")
    }

    fn send_expect(send: &str, expect: &str) -> Probe {
        let check = HealthCheck::SendExpect { send: send.to_owned(), expect: expect.to_owned() };
        Probe::new(&check, "x:1").expect("probe")
    }

    /// Runs every check once, concurrently; returns each result and duration, after every check
    /// has gone idle again (its socket closed).
    fn run(checks: Vec<(Probe, SocketAddr, Duration)>) -> Vec<(Result<(), CheckFailure>, Duration)> {
        let n = checks.len();
        let targets =
            checks.into_iter().map(|(probe, addr, timeout)| Target { probe, addr: addr.into(), timeout }).collect();
        let mut ring = CheckRing::new(targets).expect("ring");
        (0..n).for_each(|check| ring.start(check));
        let mut results = vec![None; n];
        let mut idle = 0;
        let mut events = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while idle < n {
            assert!(Instant::now() < deadline, "checks did not finish: {results:?}");
            ring.wait(Instant::now() + Duration::from_millis(100), &mut events).expect("wait");
            for event in events.drain(..) {
                match event {
                    Event::Done { check, result, took } => {
                        assert!(results[check].is_none(), "two verdicts for check {check}");
                        results[check] = Some((result, took));
                    }
                    Event::Idle { check } => {
                        assert!(results[check].is_some(), "idle before its verdict");
                        assert!(ring.is_idle(check));
                        idle += 1;
                    }
                }
            }
        }
        results.into_iter().map(|r| r.expect("a verdict")).collect()
    }

    fn one(probe: Probe, addr: SocketAddr, timeout: Duration) -> Result<(), CheckFailure> {
        run(vec![(probe, addr, timeout)]).remove(0).0
    }

    #[test]
    fn tcp_passes_on_a_listener_and_fails_refused_on_a_closed_port() {
        assert_eq!(one(Probe::Tcp, server(b""), SECOND), Ok(()));
        assert_eq!(one(Probe::Tcp, closed_port(), SECOND), Err(CheckFailure::Refused));
    }

    #[test]
    fn http_checks_the_status() {
        assert_eq!(one(http(), server(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), SECOND), Ok(()));
        assert_eq!(
            one(http(), server(b"HTTP/1.1 503 Service Unavailable\r\n\r\n"), SECOND),
            Err(CheckFailure::Status(503))
        );
        assert_eq!(one(http(), server(b""), SECOND), Err(CheckFailure::Closed));
    }

    #[test]
    fn send_expect_compares_the_reply() {
        assert_eq!(one(send_expect("PING\r\n", "+PONG"), server(b"+PONG\r\n"), SECOND), Ok(()));
        assert_eq!(
            one(send_expect("PING\r\n", "+PONG"), server(b"-ERR unknown\r\n"), SECOND),
            Err(CheckFailure::Unexpected("-ERR unknown".to_owned()))
        );
        assert_eq!(one(send_expect("PING\r\n", "+PONG"), server(b"+PO"), SECOND), Err(CheckFailure::Closed));
    }

    #[test]
    fn send_expect_with_nothing_to_send_reads_a_banner() {
        // The server reads first here, so it needs a byte; a server that speaks first is the
        // real case. Either way the check must read without writing.
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for mut stream in listener.incoming().map_while(Result::ok) {
                let _ = stream.write_all(b"SSH-2.0-test\r\n");
            }
        });
        assert_eq!(one(send_expect("", "SSH-2.0"), addr, SECOND), Ok(()));
    }

    #[test]
    fn a_server_that_never_answers_times_out_at_the_timeout() {
        let timeout = Duration::from_millis(200);
        let (result, took) = run(vec![(http(), silent_server(), timeout)]).remove(0);
        assert_eq!(result, Err(CheckFailure::Timeout(timeout)));
        assert!(took >= timeout && took < timeout + Duration::from_millis(50), "{took:?}");
    }

    #[test]
    fn checks_run_concurrently_and_start_again_once_idle() {
        let ok = server(b"HTTP/1.1 204 No Content\r\n\r\n");
        let silent = silent_server();
        let timeout = Duration::from_millis(300);
        // Fifty checks at once, ten of them against a silent server: the others do not wait.
        let checks: Vec<_> = (0..50).map(|i| (http(), if i % 5 == 0 { silent } else { ok }, timeout)).collect();
        let results = run(checks);
        for (i, (result, took)) in results.iter().enumerate() {
            if i % 5 == 0 {
                assert_eq!(result, &Err(CheckFailure::Timeout(timeout)));
            } else {
                assert_eq!(result, &Ok(()));
                assert!(*took < timeout, "check {i} took {took:?}");
            }
        }
        // The same slot, twice in a row.
        let targets = vec![Target { probe: Probe::Tcp, addr: ok.into(), timeout }];
        let mut ring = CheckRing::new(targets).expect("ring");
        for _ in 0..2 {
            ring.start(0);
            ring.start(0); // already running: ignored
            let mut events = Vec::new();
            while !events.contains(&Event::Idle { check: 0 }) {
                ring.wait(Instant::now() + SECOND, &mut events).expect("wait");
            }
            assert!(matches!(events[0], Event::Done { check: 0, result: Ok(()), .. }), "{events:?}");
        }
    }

    #[test]
    fn user_data_round_trips() {
        for op in Op::ALL {
            assert_eq!(Op::decode(op.encode(4711)), Some((op, 4711)));
        }
        assert_eq!(Op::decode(0), None);
    }
}
