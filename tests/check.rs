//! `ringlb check`: the real binary on real files. A valid file exits 0 with a summary on stdout;
//! an invalid one exits 1 with exactly one `FILE:LINE:COL: message` line on stderr.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A configuration file in its own temporary directory, removed on drop.
struct TempConfig {
    dir: PathBuf,
    file: PathBuf,
}

impl TempConfig {
    fn new(text: &str) -> TempConfig {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ringlb-check-{}-{n}", std::process::id()));
        fs::create_dir_all(&dir).expect("create temp dir");
        let file = dir.join("ringlb.toml");
        fs::write(&file, text).expect("write temp config");
        TempConfig { dir, file }
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn check(file: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringlb")).arg("check").arg("-c").arg(file).output().expect("run ringlb check")
}

/// Runs `check` on `text` and returns its single stderr line, asserting exit status 1 and an
/// empty stdout.
fn check_fails(text: &str) -> (String, String) {
    let config = TempConfig::new(text);
    let output = check(&config.file);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(output.stdout.is_empty(), "stdout: {}", String::from_utf8_lossy(&output.stdout));
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr:?}");
    (config.file.display().to_string(), stderr.trim_end().to_owned())
}

const GOOD: &str = r#"[listeners.web]
bind = "127.0.0.1:0"
pool = "web"
max_connections = 50000

[pools.web]
connect_timeout = "2s"
[[pools.web.servers]]
addr = "127.0.0.1:9001"
[[pools.web.servers]]
addr = "127.0.0.1:9002"
"#;

#[test]
fn a_valid_file_exits_0_with_a_summary() {
    let config = TempConfig::new(GOOD);
    let output = check(&config.file);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&output.stderr));
    assert!(output.stderr.is_empty());
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], format!("{}: ok", config.file.display()));
    assert!(lines.contains(&"listener web 127.0.0.1:0 -> pool web (max 50000 connections)"), "{stdout}");
    assert!(
        lines.contains(
            &"pool web: round-robin over 2 servers (127.0.0.1:9001, 127.0.0.1:9002), \
              connect_timeout 2s, idle_timeout 5m, retries 2"
        ),
        "{stdout}"
    );
}

#[test]
fn an_unknown_key_is_reported_with_its_position() {
    let (file, line) = check_fails(&GOOD.replace("pool = \"web\"\n", "pool = \"web\"\nbindd = 1\n"));
    assert_eq!(
        line,
        format!(
            "{file}:4:1: unknown key `bindd` in [listeners.web], expected one of bind, pool, \
             max_connections"
        )
    );
}

#[test]
fn a_bad_duration_is_reported_at_its_value() {
    let (file, line) = check_fails(&GOOD.replace("\"2s\"", "\"2x\""));
    assert_eq!(
        line,
        format!(
            r#"{file}:7:19: pools.web.connect_timeout: invalid duration "2x" (use e.g. "500ms", "2s", "5m", "1h")"#
        )
    );
}

#[test]
fn a_missing_pool_is_reported_at_the_reference() {
    let (file, line) = check_fails(&GOOD.replace("pool = \"web\"", "pool = \"api\""));
    assert_eq!(line, format!(r#"{file}:3:8: listeners.web.pool: no pool named "api""#));
}

#[test]
fn a_duplicate_bind_is_reported_at_the_second_listener() {
    let text =
        GOOD.replace("127.0.0.1:0", "127.0.0.1:8080") + "[listeners.api]\nbind = \"127.0.0.1:8080\"\npool = \"web\"\n";
    let (file, line) = check_fails(&text);
    assert_eq!(
        line,
        format!(
            "{file}:13:8: listeners.api.bind: 127.0.0.1:8080 is already the bind of listener web \
             (line 2)"
        )
    );
}

#[test]
fn a_server_without_addr_is_reported_at_its_table() {
    let (file, line) = check_fails(&GOOD.replace("addr = \"127.0.0.1:9002\"", "weight = 2"));
    assert_eq!(line, format!("{file}:10:1: missing key `addr` in pools.web.servers[1]"));
}

#[test]
fn a_syntax_error_is_one_line_too() {
    let (file, line) = check_fails(&GOOD.replace("[pools.web]", "[pools.web"));
    assert!(line.starts_with(&format!("{file}:6:")), "{line}");
}

#[test]
fn a_missing_file_is_one_clean_line() {
    let config = TempConfig::new("");
    let missing = config.dir.join("absent.toml");
    let output = check(&missing);
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    assert_eq!(String::from_utf8_lossy(&output.stderr), format!("{}: No such file or directory\n", missing.display()));
}

#[test]
fn the_shipped_config_passes() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/ringlb.toml");
    let output = check(&shipped);
    assert_eq!(output.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("listener web 0.0.0.0:8080 -> pool web"), "{stdout}");
    assert!(stdout.contains("(127.0.0.1:9001, 127.0.0.1:9002)"), "{stdout}");

    // And it is the default of `-c`, relative to the working directory.
    let output = Command::new(env!("CARGO_BIN_EXE_ringlb"))
        .arg("check")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run ringlb check");
    assert_eq!(output.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("conf/ringlb.toml: ok\n"));
}
