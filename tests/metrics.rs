//! Metrics of `ringlb run`, read through its admin API: exact counts after a known load, byte
//! counters equal to the bytes sent, and a scrape that `promtool check metrics` (Debian package
//! `prometheus`) accepts without a warning and that names every declared metric.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::admin::{scrape, wait_for, Scrape};
use common::backends::{EchoServer, RefusingAddr};
use common::{PoolSpec, Ringlb, TestConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

const CONNECTIONS: usize = 1000;
/// Connections in flight at once.
const PARALLEL: usize = 25;
/// Every `BULK_EVERY`th connection sends this many bytes (a bulk transfer, which switches the
/// flow to splice); the others send a few hundred to a few thousand.
const BULK: usize = 300 * 1024;
const BULK_EVERY: usize = 100;
const STEP: Duration = Duration::from_secs(20);

fn size_of(i: usize) -> usize {
    if i % BULK_EVERY == 0 {
        BULK
    } else {
        1 + (i * 7919) % 4000
    }
}

/// Sends `len` bytes, reads their echo while sending, half-closes and reads to EOF.
async fn exchange(target: SocketAddr, i: usize, len: usize) {
    let stream = TcpStream::connect(target).await.unwrap_or_else(|e| panic!("connect #{i}: {e}"));
    let (mut read, mut write) = stream.into_split();
    let message: Vec<u8> = (0..len).map(|b| (b * 31 + i) as u8).collect();
    let expected = message.clone();
    let writer = async move {
        write.write_all(&message).await.unwrap_or_else(|e| panic!("write #{i}: {e}"));
        write.shutdown().await.unwrap_or_else(|e| panic!("half-close #{i}: {e}"));
    };
    let reader = async move {
        let mut back = Vec::with_capacity(len);
        read.read_to_end(&mut back).await.unwrap_or_else(|e| panic!("read #{i}: {e}"));
        back
    };
    let ((), back) = tokio::time::timeout(STEP, async { tokio::join!(writer, reader) })
        .await
        .unwrap_or_else(|_| panic!("connection #{i} not done after {STEP:?}"));
    assert!(back == expected, "connection #{i}: {} bytes echoed of {len}, or different ones", back.len());
}

/// Waits until every connection the listener accepted is closed; returns that scrape.
fn settled(lb: &Ringlb, accepted: u64) -> Scrape {
    wait_for(Duration::from_secs(10), "every connection counted as closed", || {
        let s = scrape(lb.admin_addr());
        let front = [("listener", "front")];
        let done = s.count("ringlb_listener_connections_accepted_total", &front) == accepted
            && s.count("ringlb_listener_connections_active", &front) == 0;
        done.then_some(s)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_are_counted_exactly_and_bytes_equal_what_was_sent() {
    let echo = EchoServer::start().await;
    let lb = TestConfig::single(PoolSpec::new("back", &[echo.addr])).start();
    let target = lb.addr();
    let mut tasks = JoinSet::new();
    let mut sent = 0u64;
    for i in 0..CONNECTIONS {
        if tasks.len() >= PARALLEL {
            tasks.join_next().await.expect("a task").expect("a connection");
        }
        let len = size_of(i);
        sent += len as u64;
        tasks.spawn(exchange(target, i, len));
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("a connection");
    }

    let s = tokio::task::spawn_blocking(move || {
        let s = settled(&lb, CONNECTIONS as u64);
        drop(lb);
        s
    })
    .await
    .expect("scrape");
    let n = CONNECTIONS as u64;
    let server = echo.addr.to_string();
    let server = [("pool", "back"), ("server", server.as_str())];
    let at = |direction| [server[0], server[1], ("direction", direction)];
    assert_eq!(s.count("ringlb_listener_connections_accepted_total", &[("listener", "front")]), n);
    assert_eq!(s.count("ringlb_listener_connections_closed_total", &[("listener", "front"), ("cause", "done")]), n);
    assert_eq!(s.count("ringlb_server_connections_total", &server), n);
    assert_eq!(s.count("ringlb_server_connections_active", &server), 0);
    assert_eq!(s.count("ringlb_server_bytes_total", &at("client_to_backend")), sent);
    assert_eq!(s.count("ringlb_server_bytes_total", &at("backend_to_client")), sent);
    assert_eq!(s.count("ringlb_pool_connection_duration_seconds_count", &[("pool", "back")]), n);
    assert_eq!(s.count("ringlb_pool_connection_duration_seconds_bucket", &[("pool", "back"), ("le", "+Inf")]), n);
    for cause in ["refused", "timeout", "reset", "other"] {
        assert_eq!(s.count("ringlb_server_connect_failures_total", &[server[0], server[1], ("cause", cause)]), 0);
    }
}

/// Runs `promtool check metrics` on `text`; returns its exit success and everything it printed.
fn promtool(text: &str) -> (bool, String) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            panic!("cannot run promtool ({e}); it is in the Debian package prometheus: apt-get install prometheus")
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        stdin.write_all(text.as_bytes()).expect("write to promtool");
    }
    let out = child.wait_with_output().expect("promtool output");
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), printed)
}

#[test]
fn promtool_catches_a_bad_scrape() {
    // The check below means something only if promtool really lints.
    let (ok, printed) = promtool("# HELP requests R.\n# TYPE requests counter\nrequests 1\n");
    assert!(!ok && printed.contains("_total"), "{printed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scrape_passes_promtool_and_every_declared_metric_is_in_it_and_in_the_readme() {
    let echo = EchoServer::start().await;
    let refusing = RefusingAddr::new();
    // Pool `back`: a refusing server first, so that retries and failures are counted; no health
    // checks, so that it stays in rotation. Pool `checked`: tcp checks, for the check histogram.
    let config = format!(
        "[runtime]\nworkers = 2\n[admin]\nbind = \"127.0.0.1:0\"\n\
         [listeners.front]\nbind = \"127.0.0.1:0\"\npool = \"back\"\n\
         [listeners.side]\nbind = \"127.0.0.1:0\"\npool = \"checked\"\n\
         [pools.back]\nretries = 1\n[pools.back.health]\ncheck = \"none\"\n\
         [[pools.back.servers]]\naddr = \"{}\"\nname = \"refusing\"\n\
         [[pools.back.servers]]\naddr = \"{}\"\nname = \"echo\"\n\
         [pools.checked.health]\ncheck = \"tcp\"\ninterval = \"50ms\"\n\
         [[pools.checked.servers]]\naddr = \"{}\"\nname = \"echo\"\n",
        refusing.addr, echo.addr, echo.addr
    );
    let lb = Ringlb::start(&config);
    for i in 0..10 {
        exchange(lb.addr_of("front"), i, 100).await;
    }
    let s = tokio::task::spawn_blocking(move || {
        settled(&lb, 10);
        // Wait for a few checks, so that the check histogram has observations.
        wait_for(Duration::from_secs(5), "health checks observed", || {
            let s = scrape(lb.admin_addr());
            let checks = [("pool", "checked"), ("server", "echo")];
            (s.count("ringlb_server_check_duration_seconds_count", &checks) >= 3).then_some(s)
        })
    })
    .await
    .expect("scrape");

    // Every connect to `refusing` failed and was retried on `echo`.
    let failures = s.count(
        "ringlb_server_connect_failures_total",
        &[("pool", "back"), ("server", "refusing"), ("cause", "refused")],
    );
    assert!(failures >= 1, "round robin tried the refusing server at least once");
    assert_eq!(s.count("ringlb_server_retries_total", &[("pool", "back"), ("server", "echo")]), failures);
    assert_eq!(s.count("ringlb_server_connections_total", &[("pool", "back"), ("server", "echo")]), 10);
    assert_eq!(s.count("ringlb_server_connections_total", &[("pool", "back"), ("server", "refusing")]), 0);
    assert_eq!(s.count("ringlb_server_state", &[("pool", "checked"), ("server", "echo"), ("state", "up")]), 1);
    assert_eq!(s.count("ringlb_workers", &[]), 2);

    let (ok, printed) = promtool(&s.0);
    assert!(ok && printed.trim() == "", "promtool check metrics:\n{printed}\n--- scrape ---\n{}", s.0);

    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md");
    for def in ringlb::metrics::names::ALL {
        assert!(s.0.contains(&format!("# HELP {} ", def.name)), "{} is not in the scrape", def.name);
        assert!(readme.contains(&format!("`{}`", def.name)), "{} is not in README.md", def.name);
    }
    for line in s.0.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split(' ').nth(2).unwrap_or_default();
        assert!(ringlb::metrics::names::ALL.iter().any(|d| d.name == name), "{name} is not declared in metrics::names");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_carry_over_a_reload_and_the_config_digest_follows_it() {
    use sha2::{Digest, Sha256};
    let echo = EchoServer::start().await;
    let mut lb = TestConfig::single(PoolSpec::new("back", &[echo.addr])).start();
    for i in 0..5 {
        exchange(lb.addr(), i, 100).await;
    }
    // The same pool and server, and a second listener.
    let text = std::fs::read_to_string(lb.config_path()).expect("config")
        + "[listeners.extra]\nbind = \"127.0.0.1:0\"\npool = \"back\"\n";
    let digest: String = Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    lb.reload_with(&text);
    let line = lb.wait_for_log("listener extra bound");
    let extra = common::parse_listener_line(&line).expect("the new listener's line").addr;
    lb.wait_for_log("reloaded ");
    for i in 5..10 {
        exchange(lb.addr_of("front"), i, 100).await;
    }
    for i in 10..13 {
        exchange(extra, i, 100).await;
    }
    let s = tokio::task::spawn_blocking(move || {
        settled(&lb, 10);
        wait_for(Duration::from_secs(10), "the extra listener's connections closed", || {
            let s = scrape(lb.admin_addr());
            (s.count("ringlb_listener_connections_closed_total", &[("listener", "extra"), ("cause", "done")]) == 3)
                .then_some(s)
        })
    })
    .await
    .expect("scrape");
    let server = echo.addr.to_string();
    assert_eq!(s.count("ringlb_server_connections_total", &[("pool", "back"), ("server", server.as_str())]), 13);
    assert_eq!(s.count("ringlb_listener_connections_accepted_total", &[("listener", "extra")]), 3);
    assert_eq!(s.count("ringlb_config_reloads_total", &[("result", "ok")]), 1);
    assert_eq!(s.count("ringlb_config_info", &[("sha256", digest.as_str())]), 1);
}
