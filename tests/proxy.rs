//! Data-path tests of `ringlb run`: the real binary on loopback between real clients and real
//! backends. Half-close, retries past refusing servers, connect and idle timeouts, resets,
//! graceful shutdown and IPv6. (Bulk transfer and 10,000 connections: tests/proxy_load.rs.)
//!
//! Every client and backend used here is first proven against the backends directly in
//! tests/direct.rs.

mod common;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::backends::{Blackhole, EchoServer, RefusingAddr};
use common::clients::{bulk_echo_exchange, wait_closed, HttpConn};
use common::scenarios::{BackendClosesFirst, ClientClosesFirst, ResettingBackend};
use common::{DemoBackend, PoolSpec, TestConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bound for any client step that should finish at once.
const STEP: Duration = Duration::from_secs(10);

async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(value) => value,
        Err(_) => panic!("{what}: not done after {limit:?}"),
    }
}

async fn connect(addr: SocketAddr) -> TcpStream {
    within(STEP, "connect", TcpStream::connect(addr)).await.unwrap_or_else(|e| panic!("connect {addr}: {e}"))
}

/// Sends `message`, reads exactly its echo, half-closes and expects EOF.
async fn echo_once(addr: SocketAddr, message: &[u8]) {
    let mut stream = connect(addr).await;
    within(STEP, "echo", async {
        stream.write_all(message).await.expect("send");
        let mut back = vec![0u8; message.len()];
        stream.read_exact(&mut back).await.expect("read the echo");
        assert_eq!(back, message);
        stream.shutdown().await.expect("half-close");
        assert_eq!(stream.read(&mut [0u8; 16]).await.expect("read EOF"), 0);
    })
    .await;
}

/// Asserts that `elapsed` is within `tolerance` (a fraction) of `expected`.
fn assert_near(elapsed: Duration, expected: Duration, tolerance: f64, what: &str) {
    let low = expected.mul_f64(1.0 - tolerance);
    let high = expected.mul_f64(1.0 + tolerance);
    assert!(low <= elapsed && elapsed <= high, "{what}: {elapsed:?}, expected {expected:?} ± {tolerance}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_client_first_reply_still_arrives() {
    let scenario = ClientClosesFirst::start().await;
    let lb = TestConfig::single(PoolSpec::new("back", &[scenario.backend])).start();
    scenario.run(lb.addr()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_backend_first_client_can_still_send() {
    let scenario = BackendClosesFirst::start().await;
    let lb = TestConfig::single(PoolSpec::new("back", &[scenario.backend])).start();
    scenario.run(lb.addr()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusing_server_is_skipped_by_retries() {
    let refusing = RefusingAddr::new();
    let echo = EchoServer::start().await;
    let pool = PoolSpec::new("back", &[refusing.addr, echo.addr]).retries(2);
    let lb = TestConfig::single(pool).start();
    for i in 0..20 {
        echo_once(lb.addr(), format!("connection {i}").as_bytes()).await;
    }
    assert_eq!(echo.accepted(), 20, "every connection served by the working server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_servers_refusing_closes_the_client_promptly() {
    let (first, second) = (RefusingAddr::new(), RefusingAddr::new());
    let pool = PoolSpec::new("back", &[first.addr, second.addr]).retries(1);
    let mut lb = TestConfig::single(pool).start();
    for _ in 0..5 {
        let mut stream = connect(lb.addr()).await;
        // A proxy may wait for the first bytes before connecting; give it some. (The write may
        // already fail if the proxy was quicker.)
        let _ = stream.write_all(b"hello").await;
        let (_, elapsed, bytes) = wait_closed(&mut stream, Duration::from_secs(1)).await;
        assert_eq!(bytes, 0, "nothing may reach the client");
        assert!(elapsed < Duration::from_secs(1));
    }
    assert!(lb.is_running(), "ringlb exited; stderr:\n{}", lb.log());
}

/// Connects through ringlb to a pool of blackholes and returns how long until it closes the
/// client.
async fn time_until_closed(lb_addr: SocketAddr) -> Duration {
    let mut stream = connect(lb_addr).await;
    let start = Instant::now();
    let _ = stream.write_all(b"hello").await;
    let (_, _, bytes) = wait_closed(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(bytes, 0);
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_closes_the_client() {
    let blackhole = Blackhole::new();
    let pool = PoolSpec::new("back", &[blackhole.addr]).connect_timeout("1s").retries(0);
    let lb = TestConfig::single(pool).start();
    let elapsed = time_until_closed(lb.addr()).await;
    assert_near(elapsed, Duration::from_secs(1), 0.2, "connect timeout, no retry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_each_retry_waits_again() {
    let (first, second) = (Blackhole::new(), Blackhole::new());
    let pool = PoolSpec::new("back", &[first.addr, second.addr]).connect_timeout("1s").retries(1);
    let lb = TestConfig::single(pool).start();
    let elapsed = time_until_closed(lb.addr()).await;
    assert_near(elapsed, Duration::from_secs(2), 0.2, "connect timeout, one retry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_idle_but_not_busy_connections() {
    let echo = EchoServer::start().await;
    let lb = TestConfig::single(PoolSpec::new("back", &[echo.addr]).idle_timeout("1s")).start();
    let addr = lb.addr();

    let idle = async {
        let mut stream = connect(addr).await;
        stream.write_all(b"x").await.expect("send");
        let mut one = [0u8; 1];
        within(STEP, "first echo", stream.read_exact(&mut one)).await.expect("echo");
        let (_, elapsed, bytes) = wait_closed(&mut stream, Duration::from_secs(3)).await;
        assert_eq!(bytes, 0);
        elapsed
    };
    let busy = async {
        let mut stream = connect(addr).await;
        let start = Instant::now();
        let mut sent = 0u8;
        // One byte every 300 ms for 2 s (and a last one after), each echoed back.
        while start.elapsed() < Duration::from_secs(2) + Duration::from_millis(100) {
            stream.write_all(&[sent]).await.expect("busy connection still writable");
            let mut one = [0u8; 1];
            within(STEP, "busy echo", stream.read_exact(&mut one))
                .await
                .unwrap_or_else(|e| panic!("busy connection closed after {:?}: {e}", start.elapsed()));
            assert_eq!(one[0], sent);
            sent = sent.wrapping_add(1);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        sent
    };
    let (idle_elapsed, busy_sent) = tokio::join!(idle, busy);
    assert!(
        Duration::from_millis(900) <= idle_elapsed && idle_elapsed < Duration::from_millis(2500),
        "idle connection closed after {idle_elapsed:?}"
    );
    assert!(busy_sent >= 7, "only {busy_sent} bytes echoed on the busy connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_reset_closes_the_client_promptly() {
    let scenario = ResettingBackend::start().await;
    let mut lb = TestConfig::single(PoolSpec::new("back", &[scenario.backend])).start();
    let (_, after_reset) = scenario.run(lb.addr()).await;
    assert!(after_reset < Duration::from_secs(1), "client closed {after_reset:?} after the reset");
    assert!(lb.is_running(), "ringlb exited; stderr:\n{}", lb.log());
}

/// Connects until the connection is refused; panics if it is still accepted after `limit`.
async fn refused_within(addr: SocketAddr, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        match TcpStream::connect(addr).await {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return start.elapsed(),
            // Caught while the listener was closing: accepted by the kernel, then reset.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("connect {addr}: unexpected error {e}"),
            Ok(stream) => drop(stream),
        }
        assert!(start.elapsed() < limit, "{addr} still accepts {limit:?} after SIGTERM");
        // Nothing to wait on for a listener to close: poll briefly.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn ok_reply(conn: &mut HttpConn, name: &str) {
    let reply = within(STEP, "request", conn.get("/")).await.expect("a reply");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body_text(), format!("{name}\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_refuses_new_connections_and_exits_when_the_last_closes() {
    let backend = DemoBackend::start("demo1");
    let mut lb = TestConfig::single(PoolSpec::new("back", &[backend.addr])).shutdown_grace("5s").start();
    let addr = lb.addr();
    let mut conn = HttpConn::connect(addr).await.expect("connect");
    ok_reply(&mut conn, "demo1").await;

    lb.sigterm();
    let signalled = Instant::now();
    let refused_after = refused_within(addr, Duration::from_secs(1)).await;
    ok_reply(&mut conn, "demo1").await;
    drop(conn);
    let closed = Instant::now();

    let status = lb.wait_exit(Duration::from_secs(3)).expect("ringlb exits once its last connection closed");
    assert!(status.success(), "{status:?}; stderr:\n{}", lb.log());
    let exit_after_close = closed.elapsed();
    assert!(exit_after_close < Duration::from_secs(2), "exit {exit_after_close:?} after the close");
    assert!(signalled.elapsed() < Duration::from_secs(4), "exit not well before the grace ended");
    eprintln!("refused {refused_after:?} after SIGTERM, exited {exit_after_close:?} after the close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_grace_ends_a_connection_that_never_closes() {
    let backend = DemoBackend::start("demo1");
    let mut lb = TestConfig::single(PoolSpec::new("back", &[backend.addr])).shutdown_grace("5s").start();
    let mut conn = HttpConn::connect(lb.addr()).await.expect("connect");
    ok_reply(&mut conn, "demo1").await;

    lb.sigterm();
    let signalled = Instant::now();
    // Still served well into the grace period.
    tokio::time::sleep(Duration::from_secs(4)).await;
    ok_reply(&mut conn, "demo1").await;

    let left = Duration::from_secs(6).saturating_sub(signalled.elapsed());
    let status = lb.wait_exit(left).expect("ringlb exits within grace + 1 s");
    assert!(status.success(), "{status:?}; stderr:\n{}", lb.log());
    let exited_after = signalled.elapsed();
    wait_closed(&mut conn.stream, Duration::from_secs(1)).await;
    eprintln!("exited {exited_after:?} after SIGTERM with a connection open");
}

fn ipv6_loopback_available() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_listener_to_ipv4_backend_and_back() {
    if !ipv6_loopback_available() {
        common::skip("::1 is not available");
        return;
    }
    let echo4 = EchoServer::start().await;
    let echo6 = EchoServer::start_at("[::1]:0").await;
    let lb = TestConfig::new()
        .listener("v6", "[::1]:0", "to_v4")
        .listener("v4", "127.0.0.1:0", "to_v6")
        .pool(PoolSpec::new("to_v4", &[echo4.addr]))
        .pool(PoolSpec::new("to_v6", &[echo6.addr]))
        .start();
    assert!(lb.addr_of("v6").is_ipv6() && lb.addr_of("v4").is_ipv4(), "{:?}", lb.listeners());

    within(STEP, "IPv6 client to IPv4 backend", bulk_echo_exchange(lb.addr_of("v6"), 1 << 20, 1)).await;
    assert_eq!((echo4.accepted(), echo6.accepted()), (1, 0));
    within(STEP, "IPv4 client to IPv6 backend", bulk_echo_exchange(lb.addr_of("v4"), 1 << 20, 2)).await;
    assert_eq!((echo4.accepted(), echo6.accepted()), (1, 1));
}
