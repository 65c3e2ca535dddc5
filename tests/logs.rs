//! Logs: `--log-format json` prints one JSON object per line, and `[runtime] log_connections`
//! adds one line per connection at close with client, listener, pool, server, bytes each way,
//! duration and a termination code.

mod common;

use std::time::Duration;

use common::backends::RefusingAddr;
use common::clients::HttpConn;
use common::{DemoBackend, Proc};

fn config(servers: &str) -> String {
    format!(
        "[runtime]\nworkers = 2\nlog_connections = true\n[admin]\nbind = \"127.0.0.1:0\"\n\
         [listeners.front]\nbind = \"127.0.0.1:0\"\npool = \"back\"\n\
         [pools.back]\nretries = 0\n[pools.back.health]\ncheck = \"none\"\n{servers}"
    )
}

fn start(config: &str, format: &str) -> (Proc, std::net::SocketAddr) {
    let path = common::temp_path("logs", "toml");
    std::fs::write(&path, config).expect("write config");
    let mut proc = Proc::spawn("ringlb", &["run", "-c", path.to_str().expect("utf-8 path"), "--log-format", format]);
    let addr = proc.wait_for_line(|line| {
        let line = line.replace("\\\"", "\"");
        let rest = line.split_once("listener front bound ")?.1;
        rest.split_whitespace().next()?.parse().ok()
    });
    (proc, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_connection_log_names_both_ends_and_counts_bytes() {
    let demo = DemoBackend::start("d1");
    let servers = format!("[[pools.back.servers]]\naddr = \"{}\"\nname = \"d1\"\n", demo.addr);
    let (mut lb, addr) = start(&config(&servers), "json");
    let mut conn = HttpConn::connect(addr).await.expect("connect");
    let request = b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    conn.send(request).await.expect("send");
    let reply = conn.read_reply(false).await.expect("reply");
    assert_eq!(reply.status, 200);
    let client = conn_local_addr(&conn);
    drop(conn);
    let line = lb.wait_for_line(|line| line.contains("\"ringlb::conn\"").then(|| line.to_string()));
    let json: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    let f = &json["fields"];
    assert_eq!(f["client"], client.to_string(), "{line}");
    assert_eq!(f["listener"], "front");
    assert_eq!(f["pool"], "back");
    assert_eq!(f["server"], "d1");
    assert_eq!(f["c2b_bytes"], request.len() as u64, "{line}");
    assert!(f["b2c_bytes"].as_u64().is_some_and(|n| n > 0), "{line}");
    assert_eq!(f["termination"], "--");
    // Every other line is JSON too.
    for other in lb.log().lines() {
        assert!(serde_json::from_str::<serde_json::Value>(other).is_ok(), "not JSON: {other}");
    }
}

fn conn_local_addr(conn: &HttpConn) -> std::net::SocketAddr {
    conn.stream.local_addr().expect("local address")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_connection_log_says_why_a_connection_ended() {
    let refusing = RefusingAddr::new();
    let servers = format!("[[pools.back.servers]]\naddr = \"{}\"\nname = \"gone\"\n", refusing.addr);
    let (mut lb, addr) = start(&config(&servers), "text");
    let mut conn = HttpConn::connect(addr).await.expect("connect");
    let _ = conn.send(b"GET / HTTP/1.1\r\n\r\n").await;
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_reply(false)).await;
    let line = lb.wait_for_line(|line| line.contains("ringlb::conn").then(|| line.to_string()));
    assert!(line.contains("termination=\"SC\"") || line.contains("termination=SC"), "{line}");
    assert!(line.contains("server=\"gone\"") || line.contains("server=gone"), "{line}");
    assert!(!line.contains('\u{1b}'), "no colour codes when stderr is not a terminal: {line:?}");
}
