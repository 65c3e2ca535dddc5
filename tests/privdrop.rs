//! Dropping root for real: a child process (this test executable again, in child mode) binds a
//! loopback listener on a privileged port, drops to `nobody`, and then serves one connection.
//! The parent checks the child's ids in /proc and talks to it over the socket.
//!
//! Needs root and a user nobody; skipped with a message otherwise (a failure with CI=true, see
//! `common::skip`). Traffic stays on 127.0.0.1.

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ringlb::control::privdrop::{drop_privileges, lookup_user, status_ids};

/// Selects the child mode and names the user to become.
const CHILD_ENV: &str = "RINGLB_PRIVDROP_CHILD";
/// Selects the variant of the child that creates an io_uring worker before dropping.
const EARLY_RING_ENV: &str = "RINGLB_PRIVDROP_EARLY_RING";
const WAIT: Duration = Duration::from_secs(10);

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The lowest port an unprivileged process may bind (1024 unless the host lowered it).
fn unprivileged_port_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024)
}

/// Binds the first free loopback port in 600..1000, so that the bind needs privilege.
fn bind_privileged() -> std::io::Result<TcpListener> {
    let mut last = std::io::Error::new(ErrorKind::AddrInUse, "no free port in 600..1000");
    for port in 600..1000 {
        match TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Creates a ring and runs one request on an io-wq worker thread (IOSQE_ASYNC), which is
/// created with the credentials the process has at that moment.
fn start_ring_worker() -> io_uring::IoUring {
    let mut ring = io_uring::IoUring::new(4).expect("ring");
    let nop = io_uring::opcode::Nop::new().build().flags(io_uring::squeue::Flags::ASYNC);
    // SAFETY: a nop refers to no memory.
    unsafe { ring.submission().push(&nop) }.expect("push");
    ring.submit_and_wait(1).expect("submit");
    ring
}

/// Child mode: when spawned by the tests below this is the whole child; otherwise a no-op.
#[test]
fn privdrop_child() {
    let Ok(user) = std::env::var(CHILD_ENV) else {
        return;
    };
    let listener = bind_privileged().expect("bind a privileged loopback port");
    let port = listener.local_addr().expect("local addr").port();
    println!("port {port}");
    let _ring = std::env::var_os(EARLY_RING_ENV).map(|_| start_ring_worker());
    match drop_privileges(&user) {
        Ok(()) => println!("privdrop-ok"),
        Err(e) => {
            println!("privdrop-failed: {e}");
            std::process::exit(3);
        }
    }
    std::io::stdout().flush().expect("flush");

    let (mut conn, _) = listener.accept().expect("accept after the drop");
    // SAFETY: getters without preconditions.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let rebind = match bind_privileged() {
        Err(e) if e.kind() == ErrorKind::PermissionDenied => "denied".to_string(),
        Err(e) => format!("failed otherwise: {e}"),
        Ok(l) => format!("allowed on {:?}", l.local_addr()),
    };
    writeln!(conn, "uid {uid} gid {gid} privileged-bind {rebind}").expect("reply");
}

/// Kills and reaps the child on every exit path of a test.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the child for `user`; returns it and a channel of its stdout lines.
fn spawn_child(user: &str, early_ring: bool) -> (ChildGuard, mpsc::Receiver<String>) {
    let exe = std::env::current_exe().expect("test executable");
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", "privdrop_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, user)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if early_ring {
        cmd.env(EARLY_RING_ENV, "1");
    }
    let mut child = cmd.spawn().expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (ChildGuard(child), rx)
}

/// Waits for a line containing one of `markers` and returns it from the marker on (libtest
/// prints "test privdrop_child ... " before the child's first line).
fn wait_line(rx: &mpsc::Receiver<String>, markers: &[&str]) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(at) = markers.iter().find_map(|m| line.find(m)) {
                    return line[at..].to_string();
                }
            }
            Err(e) => panic!("child said none of {markers:?}: {e}"),
        }
    }
}

fn wait_exit(child: &mut ChildGuard) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.0.try_wait().expect("try_wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "child did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn root_binds_a_privileged_port_drops_to_nobody_and_serves() {
    if !is_root() {
        common::skip("dropping privileges needs root");
        return;
    }
    let Ok(nobody) = lookup_user("nobody") else {
        common::skip("no user nobody");
        return;
    };
    let (mut child, rx) = spawn_child("nobody", false);
    let port: u16 = wait_line(&rx, &["port "])[5..].parse().expect("port number");
    assert_eq!(wait_line(&rx, &["privdrop-ok", "privdrop-failed"]), "privdrop-ok");

    let pid = child.0.id();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("child tasks") {
        let status = std::fs::read_to_string(task.expect("task").path().join("status")).expect("task status");
        assert_eq!(status_ids(&status, "Uid:"), [nobody.uid; 4], "{status}");
        assert_eq!(status_ids(&status, "Gid:"), [nobody.gid; 4], "{status}");
        assert_eq!(status_ids(&status, "Groups:"), [nobody.gid], "{status}");
    }

    let mut conn = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect");
    conn.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut reply = String::new();
    conn.read_to_string(&mut reply).expect("reply");
    let expected_bind = if port < unprivileged_port_start() { "denied" } else { "allowed" };
    assert!(
        reply.starts_with(&format!("uid {} gid {} privileged-bind {expected_bind}", nobody.uid, nobody.gid)),
        "{reply}"
    );
    assert!(wait_exit(&mut child).success());
}

#[test]
fn a_ring_worker_created_before_the_drop_is_caught() {
    if !is_root() {
        common::skip("dropping privileges needs root");
        return;
    }
    if lookup_user("nobody").is_err() {
        common::skip("no user nobody");
        return;
    }
    let (mut child, rx) = spawn_child("nobody", true);
    wait_line(&rx, &["port "]);
    let verdict = wait_line(&rx, &["privdrop-ok", "privdrop-failed"]);
    assert!(verdict.starts_with("privdrop-failed: privileges not dropped: thread"), "{verdict}");
    assert!(verdict.contains("iou-wrk"), "{verdict}");
    assert_eq!(wait_exit(&mut child).code(), Some(3));
}
