//! End-to-end checks of the load generator: the real `ringlb-bench` binary against its own
//! backends on loopback ports chosen at run time. Every run is short and bounded; every backend
//! is killed when its guard is dropped, even when an assertion fails.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_ringlb-bench");

/// A backend process, killed on drop.
struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `ringlb-bench ARGS --bind 127.0.0.1:0` and reads the bound address from its start-up
/// line ("... listening on ADDR").
fn server(args: &[&str]) -> Server {
    let mut child = Command::new(BIN)
        .args(args)
        .args(["--bind", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
    let stderr = child.stderr.take().unwrap_or_else(|| panic!("no stderr"));
    let mut line = String::new();
    let _ = BufReader::new(stderr).read_line(&mut line);
    let addr = line.rsplit(' ').next().unwrap_or_default().trim().to_string();
    let server = Server { child, addr };
    assert!(server.addr.starts_with("127.0.0.1:"), "unexpected start-up line {line:?}");
    server
}

/// Runs a workload with `--json` and returns the parsed result and the exit status.
fn bench(args: &[&str]) -> (Value, bool) {
    let out = Command::new(BIN)
        .args(args)
        .args(["--json", "--quiet"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let value = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    }
    (value, out.status.success())
}

fn num(v: &Value, path: &[&str]) -> f64 {
    let mut cur = v;
    for p in path {
        cur = &cur[p];
    }
    cur.as_f64().unwrap_or_else(|| panic!("no number at {path:?} in {v}"))
}

#[test]
fn closed_loop_rr_answers_every_request_on_both_targets() {
    let a = server(&["http-backend", "--name", "a"]);
    let b = server(&["http-backend", "--name", "b"]);
    let (r, ok) = bench(&["rr", "--target", &a.addr, "--target", &b.addr, "--conns", "8", "--duration", "500ms"]);
    assert!(ok, "{r}");
    assert!(num(&r, &["ok"]) > 100.0, "{r}");
    assert_eq!(num(&r, &["errors"]), 0.0, "{r}");
    assert!(num(&r, &["latency", "p99_us"]) >= num(&r, &["latency", "p50_us"]));
    assert_eq!(r["params"]["sources"][0], "127.0.0.2");
}

#[test]
fn open_loop_latency_counts_the_time_requests_wait_for_a_slow_backend() {
    // One connection, a request due every 5 ms, each answer taking 20 ms: requests queue up, and
    // their latency from the due time grows far beyond the 20 ms a closed loop would report.
    let slow = server(&["http-backend", "--name", "slow", "--delay", "20ms"]);
    let (r, ok) =
        bench(&["rr", "--target", &slow.addr, "--conns", "1", "--threads", "1", "--rate", "200", "--duration", "1s"]);
    assert!(ok, "{r}");
    assert!(num(&r, &["latency", "max_us"]) > 200_000.0, "{r}");
    assert!(num(&r, &["latency", "p50_us"]) > 100_000.0, "{r}");
    // Requests due in the window but still queued at the end are reported, not dropped.
    assert!(num(&r, &["ok"]) + num(&r, &["unfinished"]) >= 150.0, "{r}");
}

#[test]
fn open_loop_rate_is_kept_when_the_target_keeps_up() {
    let a = server(&["http-backend", "--name", "a"]);
    let (r, ok) = bench(&["rr", "--target", &a.addr, "--conns", "4", "--rate", "1000", "--duration", "1s"]);
    assert!(ok, "{r}");
    let n = num(&r, &["ok"]);
    assert!((950.0..=1050.0).contains(&n), "{r}");
}

#[test]
fn conn_opens_a_connection_per_request() {
    let a = server(&["http-backend", "--name", "a"]);
    let (r, ok) = bench(&["conn", "--target", &a.addr, "--conns", "4", "--duration", "500ms"]);
    assert!(ok, "{r}");
    assert!(num(&r, &["ok"]) > 50.0, "{r}");
    assert_eq!(num(&r, &["errors"]), 0.0, "{r}");
}

#[test]
fn hold_split_over_two_processes_merges_their_results() {
    let a = server(&["http-backend", "--name", "a"]);
    let (r, ok) = bench(&[
        "hold",
        "--target",
        &a.addr,
        "--conns",
        "300",
        "--procs",
        "2",
        "--sources",
        "2",
        "--rate",
        "200",
        "--duration",
        "500ms",
    ]);
    assert!(ok, "{r}");
    assert_eq!(num(&r, &["hold", "served"]), 300.0, "{r}");
    assert_eq!(num(&r, &["hold", "connected"]), 300.0, "{r}");
    assert_eq!(num(&r, &["params", "procs"]), 2.0, "{r}");
    assert!(num(&r, &["ok"]) >= 90.0, "{r}");
    assert!(num(&r, &["latency", "count"]) >= 90.0, "{r}");
    assert_eq!(num(&r, &["errors"]), 0.0, "{r}");
    assert_eq!(r["params"]["sources"].as_array().map(Vec::len), Some(2));
}

#[test]
fn hold_reports_the_memory_of_the_target_process() {
    let a = server(&["http-backend", "--name", "a"]);
    let pid = a.child.id().to_string();
    let (r, ok) =
        bench(&["hold", "--target", &a.addr, "--conns", "500", "--rate", "0", "--duration", "200ms", "--pid", &pid]);
    assert!(ok, "{r}");
    assert_eq!(num(&r, &["hold", "served"]), 500.0, "{r}");
    assert!(num(&r, &["hold", "rss_held_kib"]) > 0.0, "{r}");
    let target = &r["targets"][0];
    assert_eq!(target["pid"].as_u64(), Some(u64::from(a.child.id())), "{r}");
    assert!(num(target, &["threads_peak"]) >= 1.0, "{r}");
}

#[test]
fn refused_connections_are_counted_not_fatal() {
    // A port that was free a moment ago, with nothing listening on it.
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(1);
    let target = format!("127.0.0.1:{port}");
    let (r, ok) = bench(&["rr", "--target", &target, "--conns", "2", "--duration", "300ms", "--timeout", "1s"]);
    assert!(ok, "{r}");
    assert_eq!(num(&r, &["ok"]), 0.0, "{r}");
    assert!(num(&r, &["error_kinds", "connection refused"]) > 0.0, "{r}");
}

#[test]
fn bulk_moves_bytes_both_ways() {
    let sink = server(&["sink"]);
    for direction in ["up", "down"] {
        let (r, ok) =
            bench(&["bulk", "--target", &sink.addr, "--streams", "2", "--direction", direction, "--duration", "300ms"]);
        assert!(ok, "{r}");
        assert!(num(&r, &["bulk", "bytes"]) > 1e6, "{direction}: {r}");
        assert_eq!(num(&r, &["errors"]), 0.0, "{direction}: {r}");
        assert_eq!(r["bulk"]["direction"], direction);
    }
}
