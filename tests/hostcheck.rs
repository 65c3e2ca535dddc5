//! The host check against real limits: this test executable runs itself again under
//! `prlimit --nofile=...` in child mode, where it checks the host for a load, prints the table
//! and exits 1 on a fatal report (what `ringlb check --host` will do).

mod common;

use std::process::{Command, Output};

use ringlb::control::hostcheck::{check_host, raise_nofile_limit};

/// Selects the child mode: "MAX_CONNECTIONS WORKERS [raise]".
const CHILD_ENV: &str = "RINGLB_HOSTCHECK_CHILD";

/// Child mode: when spawned by the tests below this is the whole child; otherwise a no-op.
#[test]
fn hostcheck_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let fields: Vec<&str> = spec.split_whitespace().collect();
    let (max, workers) = match fields[..] {
        [max, workers, ..] => (max.parse().expect("max"), workers.parse().expect("workers")),
        _ => panic!("bad {CHILD_ENV}: {spec:?}"),
    };
    if fields.get(2) == Some(&"raise") {
        let limit = raise_nofile_limit().expect("raise RLIMIT_NOFILE");
        println!("raised RLIMIT_NOFILE to {limit}");
    }
    let report = check_host(max, workers);
    print!("{}", report.render_table());
    for line in report.warnings() {
        println!("{line}");
    }
    std::process::exit(i32::from(report.fatal()));
}

fn prlimit_available() -> bool {
    Command::new("prlimit").arg("--version").output().is_ok_and(|o| o.status.success())
}

/// Runs the child under `prlimit --nofile=LIMIT` for `spec`.
fn run_child(nofile: &str, spec: &str) -> Output {
    let exe = std::env::current_exe().expect("test executable");
    Command::new("prlimit")
        .arg(format!("--nofile={nofile}"))
        .arg("--")
        .arg(exe)
        .args(["--exact", "hostcheck_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, spec)
        .output()
        .expect("run prlimit")
}

fn nofile_line(stdout: &str) -> &str {
    stdout
        .lines()
        .find(|l| l.starts_with("RLIMIT_NOFILE"))
        .unwrap_or_else(|| panic!("no RLIMIT_NOFILE row in:\n{stdout}"))
}

#[test]
fn too_few_descriptors_for_10k_connections_fail_the_check() {
    if !prlimit_available() {
        common::skip("prlimit (util-linux) not installed");
        return;
    }
    let out = run_child("1024:1024", "10000 1");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    // 2 x 10,000 sockets + 2 x 2,500 pipe ends + 64 spare slots in the one ring.
    let row = nofile_line(&stdout);
    assert!(row.contains("1024 (hard 1024)") && row.contains(">= 25064") && row.ends_with("FAIL"), "{row}");
    assert!(stdout.contains("host error: RLIMIT_NOFILE (soft) is 1024 (hard 1024), needs >= 25064"), "{stdout}");
}

#[test]
fn enough_descriptors_for_10k_connections_on_two_workers_pass() {
    if !prlimit_available() {
        common::skip("prlimit (util-linux) not installed");
        return;
    }
    // The per-ring need for 2 workers is 12,564 slots; this machine allows at most 20,000.
    let out = run_child("20000:20000", "10000 2");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let row = nofile_line(&stdout);
    assert!(row.contains(">= 12564") && row.ends_with("ok"), "{row}");
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(!stdout.contains("host error:"), "{stdout}");
}

#[test]
fn a_soft_limit_below_the_hard_one_is_raised_first() {
    if !prlimit_available() {
        common::skip("prlimit (util-linux) not installed");
        return;
    }
    // What systemd does without LimitNOFILE=: soft 1024, a higher hard limit.
    let out = run_child("1024:20000", "10000 2 raise");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("raised RLIMIT_NOFILE to 20000 (hard 20000)"), "{stdout}");
    assert!(nofile_line(&stdout).ends_with("ok"), "{stdout}");
    assert_eq!(out.status.code(), Some(0), "{stdout}");
}
