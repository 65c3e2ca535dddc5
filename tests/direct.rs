//! The direct path: every test client, backend and scenario used by the proxy tests, pointed
//! straight at the backend. If these fail, the harness is wrong, not ringlb.

mod common;

use std::io;
use std::time::{Duration, Instant};

use common::backends::{Blackhole, EchoServer, RefusingAddr};
use common::clients::{bulk_echo_exchange, Closed};
use common::scenarios::{BackendClosesFirst, ClientClosesFirst, ResettingBackend};
use common::{parse_listener_line, strip_ansi, Listener};
use tokio::net::TcpStream;

const MIB: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_echo_64mib_each_way_direct() {
    let echo = EchoServer::start().await;
    let start = Instant::now();
    bulk_echo_exchange(echo.addr, 64 * MIB, 0x5eed).await;
    eprintln!("64 MiB each way direct: {:?}", start.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_echo_8_connections_direct() {
    let echo = EchoServer::start().await;
    let mut tasks = Vec::new();
    for seed in 0..8 {
        tasks.push(tokio::spawn(bulk_echo_exchange(echo.addr, 8 * MIB, seed)));
    }
    for task in tasks {
        task.await.expect("a bulk exchange");
    }
    assert_eq!(echo.accepted(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_client_first_direct() {
    let scenario = ClientClosesFirst::start().await;
    let target = scenario.backend;
    scenario.run(target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_backend_first_direct() {
    let scenario = BackendClosesFirst::start().await;
    let target = scenario.backend;
    scenario.run(target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_reset_is_seen_direct() {
    let scenario = ResettingBackend::start().await;
    let target = scenario.backend;
    let (how, after) = scenario.run(target).await;
    // The reset is reported once: to the writer or to the reader, who then sees EOF.
    assert!(matches!(how, Closed::Eof | Closed::Error(io::ErrorKind::ConnectionReset)), "{how:?}");
    assert!(after < Duration::from_secs(1), "reset seen after {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusing_addr_refuses() {
    let refusing = RefusingAddr::new();
    for _ in 0..3 {
        let err = TcpStream::connect(refusing.addr).await.expect_err("connect must fail");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackhole_connect_hangs() {
    let blackhole = Blackhole::new();
    let start = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(blackhole.addr)).await;
    assert!(outcome.is_err(), "connect to the blackhole ended: {outcome:?}");
    assert!(start.elapsed() >= Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_over_ipv6_direct() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        common::skip("::1 is not available");
        return;
    }
    let echo = EchoServer::start_at("[::1]:0").await;
    bulk_echo_exchange(echo.addr, MIB, 6).await;
}

#[test]
fn listener_lines_are_parsed() {
    let line = "2025-01-01T00:00:00Z  INFO ringlb: listener web bound 127.0.0.1:41234 -> pool app";
    assert_eq!(
        parse_listener_line(line),
        Some(Listener { name: "web".into(), addr: "127.0.0.1:41234".parse().unwrap(), pool: "app".into() })
    );
    let v6 = parse_listener_line("listener v6 bound [::1]:8080 -> pool back").map(|l| l.addr);
    assert_eq!(v6, Some("[::1]:8080".parse().unwrap()));
    assert_eq!(parse_listener_line("listener web bound nowhere -> pool app"), None);
    assert_eq!(parse_listener_line("ringlb running with 2 workers"), None);
}

#[test]
fn ansi_colours_are_stripped() {
    assert_eq!(strip_ansi("\u{1b}[2m2025\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m listener"), "2025  INFO listener");
}
