//! Data-path load tests of `ringlb run`: bulk transfer in both directions at once, byte-exact,
//! and 10,000 connections held at once through one process. Kept apart from tests/proxy.rs so
//! that their CPU use cannot skew that file's timing assertions (test binaries run one at a time).

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::backends::EchoServer;
use common::clients::{bulk_echo_exchange, open_many, request_on_all};
use common::{DemoBackend, PoolSpec, TestConfig};

const MIB: usize = 1024 * 1024;
const BULK_LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_64mib_each_way_at_once_is_byte_exact() {
    let echo = EchoServer::start().await;
    let lb = TestConfig::single(PoolSpec::new("back", &[echo.addr])).start();
    let start = Instant::now();
    tokio::time::timeout(BULK_LIMIT, bulk_echo_exchange(lb.addr(), 64 * MIB, 0xb01c))
        .await
        .expect("64 MiB each way in time");
    eprintln!("64 MiB each way through ringlb: {:?}", start.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_over_8_concurrent_connections_is_byte_exact() {
    let echo = EchoServer::start().await;
    let lb = TestConfig::single(PoolSpec::new("back", &[echo.addr])).start();
    let start = Instant::now();
    let exchanges: Vec<_> = (0..8).map(|seed| tokio::spawn(bulk_echo_exchange(lb.addr(), 8 * MIB, seed))).collect();
    tokio::time::timeout(BULK_LIMIT, async {
        for exchange in exchanges {
            exchange.await.expect("a bulk exchange");
        }
    })
    .await
    .expect("8 x 8 MiB each way in time");
    assert_eq!(echo.accepted(), 8);
    eprintln!("8 x 8 MiB each way through ringlb: {:?}", start.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_10000_concurrent_connections_with_few_threads() {
    const CONNS: usize = 10_000;
    const WORKERS: usize = 2;
    let demo1 = DemoBackend::start("demo1");
    let demo2 = DemoBackend::start("demo2");
    let lb = TestConfig::single(PoolSpec::new("back", &[demo1.addr, demo2.addr]))
        .workers(WORKERS)
        .max_connections(CONNS as u32 + 1_000)
        .start();
    let max_threads = WORKERS + 8;

    let start = Instant::now();
    let work = async {
        // ~2,000 connections per source address: 127.0.0.2 .. 127.0.0.6.
        let conns = open_many(lb.addr(), CONNS, 2_000, 500).await;
        let opened = start.elapsed();
        let threads_opened = lb.thread_count();
        let (open, names) = request_on_all(conns).await;
        // Every connection is still open (keep-alive) and proxied to a backend now.
        let threads_served = lb.thread_count();
        (opened, threads_opened, threads_served, open, names)
    };
    let (opened, threads_opened, threads_served, open, names) =
        tokio::time::timeout(Duration::from_secs(120), work).await.expect("10,000 connections in 120 s");
    let served = start.elapsed();

    assert_eq!(open.len(), CONNS);
    assert_eq!(names.values().sum::<usize>(), CONNS);
    let known: HashMap<&str, usize> =
        names.iter().filter(|(n, _)| *n == "demo1" || *n == "demo2").map(|(n, c)| (n.as_str(), *c)).collect();
    assert_eq!(known.len(), 2, "replies by backend: {names:?}");
    assert_eq!(known.values().sum::<usize>(), CONNS, "replies by backend: {names:?}");
    assert!(threads_opened <= max_threads, "{threads_opened} threads with {CONNS} connections open");
    assert!(threads_served <= max_threads, "{threads_served} threads with {CONNS} connections served");
    eprintln!(
        "{CONNS} connections through ringlb: opened in {opened:?}, all answered in {served:?}, \
         threads {threads_opened}/{threads_served}, by backend {names:?}"
    );
    drop(open);
}
