//! The shipped keepalived pieces (conf/keepalived/) against a real ringlb: the readiness watcher
//! that keepalived follows as a track_file, its one-shot form, its systemd unit and the config.
//! The failover scenarios themselves run in network namespaces: tests/ha/ (`make test-ha`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::admin::{post, wait_for};
use common::backends::RefusingAddr;
use common::{have, temp_path, DemoBackend, PoolSpec, Ringlb, TestConfig};

/// Long enough for a verdict (3 or 5 probes 0.1 s apart) on a busy machine.
const VERDICT: Duration = Duration::from_secs(5);

fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/keepalived").join(name)
}

fn ringlb_with_admin() -> (DemoBackend, Ringlb) {
    let backend = DemoBackend::start("one");
    let lb = TestConfig::single(PoolSpec::new("back", &[backend.addr])).start();
    (backend, lb)
}

/// `ringlb-ready --watch FILE URL`, killed on drop.
struct Watcher {
    child: Child,
    file: PathBuf,
}

impl Watcher {
    fn start(url: &str) -> Watcher {
        let file = temp_path("ready", "txt");
        let child = Command::new("bash")
            .arg(shipped("ringlb-ready"))
            .arg("--watch")
            .arg(&file)
            .arg(url)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("bash runs ringlb-ready");
        Watcher { child, file }
    }

    fn verdict(&self) -> Option<String> {
        std::fs::read_to_string(&self.file).ok().map(|s| s.trim_end().to_owned())
    }

    fn wait_verdict(&self, expected: &str, what: &str) {
        wait_for(VERDICT, what, || (self.verdict().as_deref() == Some(expected)).then_some(()));
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.file);
    }
}

fn ready_url(lb: &Ringlb) -> String {
    format!("http://{}/ready", lb.admin_addr())
}

#[test]
fn the_watcher_says_ready_then_not_ready_once_ringlb_drains() {
    let (_backend, lb) = ringlb_with_admin();
    let watcher = Watcher::start(&ready_url(&lb));
    watcher.wait_verdict("0", "ready (0) while /ready answers 200");
    assert_eq!(post(lb.admin_addr(), "/api/drain").status, 200);
    watcher.wait_verdict("1", "not ready (1) after the drain");
}

#[test]
fn the_watcher_says_not_ready_when_ringlb_dies() {
    let (_backend, mut lb) = ringlb_with_admin();
    let watcher = Watcher::start(&ready_url(&lb));
    watcher.wait_verdict("0", "ready (0) while ringlb runs");
    // SAFETY: kill(2) on the pid of a child the harness owns and has not reaped.
    assert_eq!(unsafe { libc::kill(lb.pid() as libc::pid_t, libc::SIGKILL) }, 0);
    assert!(lb.wait_exit(Duration::from_secs(5)).is_some(), "ringlb survived SIGKILL");
    watcher.wait_verdict("1", "not ready (1) once nothing answers");
}

#[test]
fn a_stopped_watcher_leaves_not_ready_behind() {
    let (_backend, lb) = ringlb_with_admin();
    let mut watcher = Watcher::start(&ready_url(&lb));
    watcher.wait_verdict("0", "ready (0) while ringlb runs");
    // SAFETY: kill(2) on the pid of our own child, not yet reaped.
    assert_eq!(unsafe { libc::kill(watcher.child.id() as libc::pid_t, libc::SIGTERM) }, 0);
    let status = wait_for(VERDICT, "the watcher to exit on SIGTERM", || watcher.child.try_wait().ok().flatten());
    assert!(status.success(), "{status:?}");
    // ringlb is still ready, but without a watcher nobody vouches for it: no virtual IP.
    assert_eq!(watcher.verdict().as_deref(), Some("1"));
}

#[test]
fn the_one_shot_check_exits_0_only_when_ready() {
    let check = |url: &str| {
        Command::new("bash").arg(shipped("ringlb-ready")).arg(url).stderr(Stdio::null()).status().expect("bash").code()
    };
    let (_backend, lb) = ringlb_with_admin();
    assert_eq!(check(&ready_url(&lb)), Some(0), "ready");
    assert_eq!(check(&format!("tcp://{}", lb.admin_addr())), Some(0), "tcp form: something listens");
    assert_eq!(post(lb.admin_addr(), "/api/drain").status, 200);
    assert_eq!(check(&ready_url(&lb)), Some(1), "draining: 503");
    // Bound but not listening, for as long as the check runs: connects are refused.
    let closed = RefusingAddr::new();
    assert_eq!(check(&format!("http://{}/ready", closed.addr)), Some(1), "nothing listens");
    assert_eq!(check("ftp://127.0.0.1:21/"), Some(2), "unknown scheme: usage");
}

#[test]
fn the_watcher_unit_verifies_clean() {
    if !have("systemd-analyze") {
        common::skip("systemd-analyze (package systemd) not installed");
        return;
    }
    // verify checks that ExecStart's program exists: point it at the script in the tree.
    let unit = std::fs::read_to_string(shipped("ringlb-ready.service")).expect("unit");
    assert!(unit.contains("ExecStart=/etc/keepalived/ringlb-ready --watch /run/ringlb-ready/ready "), "{unit}");
    assert!(unit.contains("ExecStopPost=/bin/sh -c 'echo 1 > /run/ringlb-ready/ready'"), "{unit}");
    let dir = temp_path("unit", "d");
    std::fs::create_dir_all(&dir).expect("unit dir");
    let copy = dir.join("ringlb-ready.service");
    let script = shipped("ringlb-ready");
    std::fs::write(&copy, unit.replace("/etc/keepalived/ringlb-ready", &script.to_string_lossy())).expect("copy");
    let out = Command::new("systemd-analyze").arg("verify").arg(&copy).output().expect("systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("ringlb-ready"), "systemd-analyze verify complained:\n{stderr}");
}

#[test]
fn the_keepalived_config_parses_for_both_nodes() {
    if !have("keepalived") {
        common::skip("keepalived not installed");
        return;
    }
    for node in ["lb1", "lb2"] {
        let out = Command::new("keepalived")
            .args(["--config-test", "--log-console", "-i", node, "-f"])
            .arg(shipped("keepalived.conf"))
            .output()
            .expect("keepalived");
        let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "keepalived -t -i {node}: {printed}");
    }
}
