//! Limits and resource hygiene of `ringlb run`: `max_connections` (per listener and process-wide)
//! makes new connections wait in the kernel backlog rather than be accepted and dropped, and after
//! every kind of connection ending (clean close, client reset, refused backend, idle timeout) no
//! registered descriptor and no in-flight operation is left behind.
//!
//! Leaks are read from io_uring's own bookkeeping: `/proc/PID/fdinfo/FD` of each ring lists every
//! registered file (`N: socket:[...]`, `N: pipe:[...]`) and every armed poll (`PollList`).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::backends::{EchoServer, RefusingAddr};
use common::clients::HttpConn;
use common::{DemoBackend, Ringlb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const STEP: Duration = Duration::from_secs(10);

/// A connect timeout well above the 1 s SYN retransmission: a burst of clients can overflow the
/// in-process backends' accept queues, and a dropped SYN must not fail the connection. No health
/// checks: the rings counted are the workers' alone, and a refusing server stays in the rotation
/// (passive detection would take it out) so that connections keep going past refusals.
fn config(runtime_max: u32, listener_max: u32, backends: &[SocketAddr], idle: &str) -> String {
    let servers: String = backends.iter().map(|b| format!("[[pools.back.servers]]\naddr = \"{b}\"\n")).collect();
    format!(
        "[runtime]\nworkers = 2\nmax_connections = {runtime_max}\nshutdown_grace = \"2s\"\n\
         [admin]\nbind = \"127.0.0.1:0\"\n\
         [listeners.front]\nbind = \"127.0.0.1:0\"\npool = \"back\"\nmax_connections = {listener_max}\n\
         [pools.back]\nconnect_timeout = \"5s\"\nidle_timeout = \"{idle}\"\nretries = 1\n\
         [pools.back.health]\ncheck = \"none\"\n{servers}"
    )
}

async fn served(addr: SocketAddr) -> HttpConn {
    let mut conn =
        tokio::time::timeout(STEP, HttpConn::connect(addr)).await.expect("connect in time").expect("connect");
    let reply = tokio::time::timeout(STEP, conn.get("/")).await.expect("reply in time").expect("reply");
    assert_eq!(reply.status, 200);
    conn
}

/// The connection is established (the kernel completed the handshake) but nobody answers it
/// within `wait`; returns it for later use.
async fn waits_in_backlog(addr: SocketAddr, wait: Duration) -> HttpConn {
    let mut conn =
        tokio::time::timeout(STEP, HttpConn::connect(addr)).await.expect("connect in time").expect("connect");
    conn.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").await.expect("send");
    let early = tokio::time::timeout(wait, conn.read_reply(false)).await;
    assert!(early.is_err(), "a connection past max_connections was served (or closed) at once: {early:?}");
    conn
}

async fn limit_holds_and_the_waiting_client_is_served_later(runtime_max: u32, listener_max: u32) {
    let demo = DemoBackend::start("d1");
    let lb = Ringlb::start(&config(runtime_max, listener_max, &[demo.addr], "60s"));
    let limit = runtime_max.min(listener_max) as usize;
    let mut held = Vec::new();
    for _ in 0..limit {
        held.push(served(lb.addr()).await);
    }
    let mut waiting = waits_in_backlog(lb.addr(), Duration::from_millis(500)).await;
    // One held connection ends: the waiting one is accepted and served.
    drop(held.pop());
    let started = Instant::now();
    let reply = tokio::time::timeout(STEP, waiting.read_reply(false)).await.expect("served after a slot freed");
    assert_eq!(reply.expect("reply").status, 200);
    println!("served {:?} after a slot freed", started.elapsed());
    // The others still work: nothing was dropped.
    for conn in &mut held {
        assert_eq!(conn.get("/").await.expect("reply").status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_max_connections_makes_new_clients_wait_not_fail() {
    limit_holds_and_the_waiting_client_is_served_later(1000, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_max_connections_makes_new_clients_wait_not_fail() {
    limit_holds_and_the_waiting_client_is_served_later(4, 1000).await;
}

/// What one ring's fdinfo says is registered and armed.
#[derive(Debug, Default)]
struct RingState {
    sockets: usize,
    pipes: usize,
    polls: usize,
}

fn ring_states(pid: u32) -> Vec<RingState> {
    let mut rings = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("read fds").flatten() {
        let is_ring = std::fs::read_link(entry.path()).is_ok_and(|t| t.to_string_lossy().contains("io_uring"));
        if !is_ring {
            continue;
        }
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", entry.file_name().to_string_lossy()))
            .expect("read fdinfo");
        let mut state = RingState::default();
        let mut section = "";
        for line in info.lines() {
            if !line.starts_with(' ') && line.contains(':') {
                section = line.split(':').next().unwrap_or("");
                continue;
            }
            match section {
                "UserFiles" if line.contains("socket:") => state.sockets += 1,
                "UserFiles" if line.contains("pipe:") => state.pipes += 1,
                "PollList" if line.contains("op=") => state.polls += 1,
                _ => {}
            }
        }
        rings.push(state);
    }
    rings
}

/// Polls until no ring holds a registered socket; returns the final states.
fn wait_until_no_sockets(pid: u32, limit: Duration) -> Vec<RingState> {
    let start = Instant::now();
    loop {
        let rings = ring_states(pid);
        if rings.iter().all(|r| r.sockets == 0) || start.elapsed() > limit {
            return rings;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_descriptor_or_operation_outlives_its_connection() {
    let echo = EchoServer::start().await;
    let refusing = RefusingAddr::new();
    // Refusing first, echo second: every connection retries once, half of them past a refusal.
    let lb = Ringlb::start(&config(100_000, 100_000, &[refusing.addr, echo.addr], "1s"));
    let baseline = ring_states(lb.pid());
    assert_eq!(baseline.len(), 2, "one ring per worker: {baseline:?}");
    assert!(baseline.iter().all(|r| r.sockets == 0), "{baseline:?}");

    // Clean closes, with bulk enough to switch some directions to splice (pipes).
    let mut tasks = Vec::new();
    for i in 0..200usize {
        let addr = lb.addr();
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            let payload = vec![i as u8; if i % 4 == 0 { 256 * 1024 } else { 100 }];
            let (mut r, mut w) = s.split();
            let write = async {
                w.write_all(&payload).await.expect("send");
                w.shutdown().await.expect("half-close");
            };
            let mut back = Vec::new();
            let read = r.read_to_end(&mut back);
            let (_, got) = tokio::join!(write, read);
            got.expect("read echo");
            assert_eq!(back, payload);
        }));
    }
    // Client resets mid-connection.
    for _ in 0..100 {
        let addr = lb.addr();
        tasks.push(tokio::spawn(async move {
            let s = TcpStream::connect(addr).await.expect("connect");
            let sock = socket2::SockRef::from(&s);
            sock.set_linger(Some(Duration::ZERO)).expect("linger 0");
            let mut s = s;
            s.write_all(b"hello").await.expect("send");
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.expect("echo");
            drop(s); // RST
        }));
    }
    for t in tasks {
        tokio::time::timeout(STEP * 3, t).await.expect("client in time").expect("client ok");
    }
    // Idle connections, closed by the 1 s idle timeout.
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(lb.addr()).await.expect("connect"));
    }
    for s in &mut idle {
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("closed by idle timeout");
        assert!(matches!(n, Ok(0) | Err(_)), "idle connection got data: {n:?}");
    }

    let rings = wait_until_no_sockets(lb.pid(), Duration::from_secs(5));
    for (ring, base) in rings.iter().zip(&baseline) {
        assert_eq!(ring.sockets, 0, "registered sockets left: {rings:?}");
        assert_eq!(ring.polls, base.polls, "armed polls differ from the idle baseline: {rings:?} vs {baseline:?}");
        // Idle pipes stay pooled (bounded); each pipe is two registered ends.
        assert!(ring.pipes % 2 == 0 && ring.pipes <= 2 * 64, "pipes: {rings:?}");
    }
}
