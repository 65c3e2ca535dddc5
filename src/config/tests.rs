//! Unit tests of the whole pipeline: text in, `Config` or one `FILE:LINE:COL: message` out.
//! Host names go through a fake resolver except in the one test that uses /etc/hosts. Valid files
//! here; invalid ones, each with its exact error, in `errors`.

mod errors;

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use super::*;

/// `localhost` and `backend.test` resolve; every other name fails as glibc would say it.
fn fake_resolve(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    match host {
        "localhost" => Ok(vec![SocketAddr::from((Ipv4Addr::LOCALHOST, port))]),
        "backend.test" => Ok(vec![SocketAddr::from(([10, 0, 0, 7], port)), SocketAddr::from(([10, 0, 0, 8], port))]),
        "empty.test" => Ok(Vec::new()),
        _ => Err(io::Error::new(io::ErrorKind::NotFound, "Name or service not known")),
    }
}

fn ok(text: &str) -> Config {
    match parse_with(text, Path::new("x.toml"), &fake_resolve) {
        Ok(config) => config,
        Err(e) => panic!("expected a valid config, got: {e}"),
    }
}

/// The one-line error for `text`, as `ringlb check` prints it.
fn error(text: &str) -> String {
    match parse_with(text, Path::new("x.toml"), &fake_resolve) {
        Ok(config) => panic!("expected an error, got {config:?}"),
        Err(e) => {
            let line = e.to_string();
            assert!(!line.contains('\n'), "not one line: {line:?}");
            line
        }
    }
}

/// One listener `web` -> pool `web` with one server: the smallest valid file. Lines:
/// 1 `[listeners.web]`, 2 bind, 3 pool, 4 empty, 5 `[pools.web]`, 6 `[[pools.web.servers]]`, 7 addr.
const MINIMAL: &str = r#"[listeners.web]
bind = "0.0.0.0:8080"
pool = "web"

[pools.web]
[[pools.web.servers]]
addr = "127.0.0.1:9001"
"#;

#[test]
fn minimal_file_gets_every_default() {
    let config = ok(MINIMAL);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(config.path, Path::new("x.toml"));
    assert_eq!(config.runtime.workers, cores);
    assert_eq!(config.runtime.max_connections, 100_000);
    assert_eq!(config.runtime.shutdown_grace, Duration::from_secs(30));
    assert_eq!(config.admin.bind, "127.0.0.1:9900".parse().unwrap());
    assert_eq!(config.listeners.len(), 1);
    let listener = &config.listeners[0];
    assert_eq!(listener.name, "web");
    assert_eq!(listener.bind, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(listener.pool, "web");
    assert_eq!(listener.max_connections, 100_000);
    let pool = &config.pools[0];
    assert_eq!(pool.name, "web");
    assert_eq!(pool.balance, crate::balance::Policy::RoundRobin);
    assert_eq!(pool.connect_timeout, Duration::from_secs(2));
    assert_eq!(pool.idle_timeout, Duration::from_secs(300));
    assert_eq!(pool.retries, 2);
    let server = &pool.servers[0];
    assert_eq!(server.name, "127.0.0.1:9001");
    assert_eq!(server.addr, "127.0.0.1:9001");
    assert_eq!(server.resolved, "127.0.0.1:9001".parse().unwrap());
    assert_eq!(server.weight, 1);
    assert!(server.check);
    assert_eq!(server.check_port, None);
    assert_eq!(server.check_addr(), server.resolved);
    let health = &pool.health;
    assert_eq!(health.check, HealthCheck::Tcp);
    assert_eq!(health.interval, Duration::from_secs(2));
    assert_eq!(health.timeout, Duration::from_secs(2));
    assert_eq!((health.rise, health.fall, health.passive_fall), (2, 3, 3));
    assert_eq!(health.on_all_down, OnAllDown::Reject);
    assert_eq!(health.initial_state, InitialState::Up);
}

#[test]
fn every_key_is_read() {
    let config = ok(r#"
[runtime]
workers = 3
max_connections = 500
shutdown_grace = "1m30s"
[admin]
bind = "[::1]:9999"
[listeners.b]
bind = "127.0.0.1:81"
pool = "p"
[listeners.a]
bind = "127.0.0.1:80"
pool = "p"
max_connections = 7
[pools.p]
balance = "round-robin"
connect_timeout = "250ms"
idle_timeout = "1h"
retries = 0
[[pools.p.servers]]
addr = "127.0.0.1:9001"
weight = 256
name = "one"
[[pools.p.servers]]
addr = "localhost:9002"
"#);
    assert_eq!(config.runtime.workers, 3);
    assert_eq!(config.runtime.max_connections, 500);
    assert_eq!(config.runtime.shutdown_grace, Duration::from_secs(90));
    assert_eq!(config.admin.bind, "[::1]:9999".parse().unwrap());
    // Sorted by name; the per-listener limit defaults to the runtime one.
    let listeners: Vec<_> = config.listeners.iter().map(|l| (l.name.as_str(), l.max_connections)).collect();
    assert_eq!(listeners, [("a", 7), ("b", 500)]);
    let pool = &config.pools[0];
    assert_eq!(pool.connect_timeout, Duration::from_millis(250));
    assert_eq!(pool.idle_timeout, Duration::from_secs(3600));
    assert_eq!(pool.retries, 0);
    let servers: Vec<_> =
        pool.servers.iter().map(|s| (s.name.as_str(), s.addr.as_str(), s.resolved.to_string(), s.weight)).collect();
    assert_eq!(
        servers,
        [
            ("one", "127.0.0.1:9001", "127.0.0.1:9001".to_owned(), 256),
            ("localhost:9002", "localhost:9002", "127.0.0.1:9002".to_owned(), 1),
        ]
    );
}

#[test]
fn shipped_config_is_valid_and_spells_out_the_defaults() {
    let config = ok(include_str!("../../conf/ringlb.toml"));
    assert_eq!(config.runtime.max_connections, DEFAULT_MAX_CONNECTIONS);
    assert_eq!(config.runtime.shutdown_grace, DEFAULT_SHUTDOWN_GRACE);
    assert_eq!(config.admin.bind, DEFAULT_ADMIN_BIND);
    let listeners: Vec<_> = config.listeners.iter().map(|l| (l.name.as_str(), l.pool.as_str())).collect();
    assert_eq!(listeners, [("web", "web")]);
    assert_eq!(config.listeners[0].bind.port(), 8080);
    let pool = &config.pools[0];
    assert_eq!(pool.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
    assert_eq!(pool.idle_timeout, DEFAULT_IDLE_TIMEOUT);
    assert_eq!(pool.retries, DEFAULT_RETRIES);
    let servers: Vec<_> = pool.servers.iter().map(|s| (s.name.as_str(), s.resolved.to_string(), s.weight)).collect();
    assert_eq!(servers, [("demo1", "127.0.0.1:9001".to_owned(), 1), ("demo2", "127.0.0.1:9002".to_owned(), 1)]);
    assert!(pool.servers.iter().all(|s| s.check && s.check_port.is_none()));
    let health = &pool.health;
    assert_eq!(health.check, HealthCheck::Tcp);
    assert_eq!((health.interval, health.timeout), (DEFAULT_CHECK_INTERVAL, DEFAULT_CHECK_INTERVAL));
    assert_eq!((health.rise, health.fall, health.passive_fall), (DEFAULT_RISE, DEFAULT_FALL, DEFAULT_PASSIVE_FALL));
    assert_eq!(health.on_all_down, DEFAULT_ON_ALL_DOWN);
    assert_eq!(health.initial_state, DEFAULT_INITIAL_STATE);
}

#[test]
fn every_health_key_is_read() {
    let config = ok(r#"
[listeners.web]
bind = "127.0.0.1:80"
pool = "web"
[pools.web.health]
check = "http"
interval = "500ms"
timeout = "300ms"
rise = 1
fall = 5
path = "/healthz?full=1"
expect_status = "200,204,301-302"
host = "web.example"
passive_fall = 0
on_all_down = "fail-open"
initial_state = "down"
[[pools.web.servers]]
addr = "127.0.0.1:9001"
check_port = 9100
[[pools.web.servers]]
addr = "127.0.0.1:9002"
check = false
[pools.kv.health]
check = "send-expect"
send = "PING\r\n"
expect = "+PONG"
[[pools.kv.servers]]
addr = "127.0.0.1:6379"
"#);
    let web = config.pools.iter().find(|p| p.name == "web").expect("pool web");
    let health = &web.health;
    let HealthCheck::Http { path, expect_status, host } = &health.check else {
        panic!("expected an http check, got {:?}", health.check);
    };
    assert_eq!(path, "/healthz?full=1");
    assert_eq!(expect_status.to_string(), "200,204,301-302");
    assert_eq!(host.as_deref(), Some("web.example"));
    assert_eq!((health.interval, health.timeout), (Duration::from_millis(500), Duration::from_millis(300)));
    assert_eq!((health.rise, health.fall, health.passive_fall), (1, 5, 0));
    assert_eq!(health.on_all_down, OnAllDown::FailOpen);
    assert_eq!(health.initial_state, InitialState::Down);
    assert_eq!(web.servers[0].check_addr(), "127.0.0.1:9100".parse().unwrap());
    assert!(web.servers[0].check);
    assert!(!web.servers[1].check);
    let kv = config.pools.iter().find(|p| p.name == "kv").expect("pool kv");
    assert_eq!(kv.health.check, HealthCheck::SendExpect { send: "PING\r\n".to_owned(), expect: "+PONG".to_owned() });
}

#[test]
fn health_defaults_follow_the_check() {
    let with_health = |health: &str| ok(&format!("{MINIMAL}[pools.web.health]\n{health}")).pools[0].health.clone();
    // The timeout follows the interval unless written.
    let health = with_health("interval = \"1s\"\n");
    assert_eq!((health.interval, health.timeout), (Duration::from_secs(1), Duration::from_secs(1)));
    let HealthCheck::Http { path, expect_status, host } = with_health("check = \"http\"\n").check else {
        panic!("expected an http check");
    };
    assert_eq!((path.as_str(), expect_status, host), ("/", DEFAULT_EXPECT_STATUS, None));
    // Nothing to send: for servers that speak first.
    let check = with_health("check = \"send-expect\"\nexpect = \"SSH-\"\n").check;
    assert_eq!(check, HealthCheck::SendExpect { send: String::new(), expect: "SSH-".to_owned() });
    // Without checks nothing could bring a server back, so passive detection is off.
    let health = with_health("check = \"none\"\n");
    assert_eq!((health.check, health.passive_fall), (HealthCheck::None, 0));
}

#[test]
fn health_errors_name_the_key() {
    let health = |body: &str| error(&format!("{MINIMAL}[pools.web.health]\n{body}"));
    assert_eq!(
        health("check = \"tpc\"\n"),
        r#"x.toml:9:9: pools.web.health.check: unknown value "tpc", expected tcp, http, send-expect or none"#
    );
    assert_eq!(health("path = \"/up\"\n"), r#"x.toml:9:8: pools.web.health.path: only used with check = "http""#);
    assert_eq!(
        health("check = \"http\"\nexpect = \"+OK\"\n"),
        r#"x.toml:10:10: pools.web.health.expect: only used with check = "send-expect""#
    );
    assert_eq!(health("check = \"send-expect\"\n"), "x.toml:9:9: missing key `expect` in [pools.web.health]");
    assert_eq!(
        health("check = \"send-expect\"\nexpect = \"\"\n"),
        "x.toml:10:10: pools.web.health.expect: must not be empty"
    );
    assert_eq!(
        health("check = \"none\"\npassive_fall = 2\n"),
        "x.toml:10:16: pools.web.health.passive_fall: needs an active check (with check = \"none\" nothing \
         would bring a server back up)"
    );
    assert_eq!(
        health("check = \"none\"\ninitial_state = \"down\"\n"),
        "x.toml:10:17: pools.web.health.initial_state: needs an active check (with check = \"none\" nothing \
         would bring a server back up)"
    );
    assert_eq!(
        health("check = \"http\"\npath = \"health\"\n"),
        r#"x.toml:10:8: pools.web.health.path: invalid value "health" (must start with / and contain no spaces or control characters)"#
    );
    assert_eq!(
        health("check = \"http\"\nhost = \"a b\"\n"),
        r#"x.toml:10:8: pools.web.health.host: invalid value "a b" (must be a non-empty host name without spaces or control characters)"#
    );
    assert_eq!(
        health("check = \"http\"\nexpect_status = \"2xx\"\n"),
        r#"x.toml:10:17: pools.web.health.expect_status: invalid status list "2xx" (expected status codes 100 to 599 and ranges, e.g. "200-399" or "200,204,301-302")"#
    );
    assert_eq!(
        health("on_all_down = \"open\"\n"),
        r#"x.toml:9:15: pools.web.health.on_all_down: unknown value "open", expected reject or fail-open"#
    );
    assert_eq!(
        health("initial_state = \"maybe\"\n"),
        r#"x.toml:9:17: pools.web.health.initial_state: unknown value "maybe", expected up or down"#
    );
    assert_eq!(health("rise = 0\n"), "x.toml:9:8: pools.web.health.rise: must be between 1 and 1000, got 0");
    assert_eq!(health("fall = 1001\n"), "x.toml:9:8: pools.web.health.fall: must be between 1 and 1000, got 1001");
    assert_eq!(
        health("passive_fall = -1\n"),
        "x.toml:9:16: pools.web.health.passive_fall: must be between 0 and 1000, got -1"
    );
    assert_eq!(health("interval = \"0s\"\n"), "x.toml:9:12: pools.web.health.interval: must be longer than 0ms");
    assert_eq!(health("timeout = \"0s\"\n"), "x.toml:9:11: pools.web.health.timeout: must be longer than 0ms");
    assert_eq!(
        health("intervall = \"1s\"\n"),
        "x.toml:9:1: unknown key `intervall` in [pools.web.health], expected one of check, interval, timeout, \
         rise, fall, path, expect_status, host, send, expect, passive_fall, on_all_down, initial_state"
    );
    assert_eq!(
        error(&format!("{MINIMAL}check_port = 0\n")),
        "x.toml:8:14: pools.web.servers[0].check_port: must be between 1 and 65535, got 0"
    );
    assert_eq!(
        error(&format!("{MINIMAL}check = \"no\"\n")),
        r#"x.toml:8:9: pools.web.servers[0].check: invalid type: string "no", expected a boolean"#
    );
}

#[test]
fn other_table_layouts_are_equivalent() {
    // Dotted keys and inline tables instead of headers.
    let config = ok(r#"
listeners.web.bind = "0.0.0.0:8080"
listeners.web.pool = "web"
pools = { web = { servers = [{ addr = "127.0.0.1:9001" }, { addr = "127.0.0.1:9002" }] } }
"#);
    assert_eq!(config.listeners[0].name, "web");
    assert_eq!(config.pools[0].servers.len(), 2);
}

#[test]
fn ipv6_and_port_zero_binds() {
    let config = ok(r#"
[listeners.any6]
bind = "[::]:8080"
pool = "p"
[listeners.lo6]
bind = "[::1]:0"
pool = "p"
[listeners.lo4]
bind = "127.0.0.1:0"
pool = "p"
[listeners.again4]
bind = "127.0.0.1:0"
pool = "p"
[pools.p]
servers = [{ addr = "[::1]:9001" }]
"#);
    let bind = |name: &str| config.listeners.iter().find(|l| l.name == name).map(|l| l.bind);
    assert_eq!(bind("any6"), Some("[::]:8080".parse().unwrap()));
    assert_eq!(bind("lo6"), Some("[::1]:0".parse().unwrap()));
    // Two port-0 binds are two different ports, not a duplicate.
    assert_eq!(bind("lo4"), bind("again4"));
    assert_eq!(config.pools[0].servers[0].resolved, "[::1]:9001".parse().unwrap());
}

#[test]
fn host_names_resolve_with_the_system_resolver() {
    // `localhost` comes from /etc/hosts: no DNS traffic.
    let text = MINIMAL.replace("127.0.0.1:9001", "localhost:9001");
    let config = parse(&text, Path::new("x.toml")).expect("localhost resolves");
    let server = &config.pools[0].servers[0];
    assert_eq!(server.addr, "localhost:9001");
    assert_eq!(server.name, "localhost:9001");
    assert!(server.resolved.ip().is_loopback(), "{}", server.resolved);
    assert_eq!(server.resolved.port(), 9001);
}

#[test]
fn a_host_name_uses_its_first_address() {
    let config = ok(&MINIMAL.replace("127.0.0.1:9001", "backend.test:80"));
    assert_eq!(config.pools[0].servers[0].resolved, "10.0.0.7:80".parse().unwrap());
}

#[test]
fn summary_lists_listeners_and_pools() {
    let text = MINIMAL.replace(
        "addr = \"127.0.0.1:9001\"\n",
        "addr = \"127.0.0.1:9001\"\n[[pools.web.servers]]\naddr = \"localhost:9002\"\nweight = 3\n",
    );
    let summary = ok(&text.replace("pool = \"web\"", "pool = \"web\"\nmax_connections = 50000")).summary();
    let lines: Vec<&str> = summary.lines().collect();
    assert_eq!(lines[0], "x.toml: ok");
    assert!(lines.contains(&"listener web 0.0.0.0:8080 -> pool web (max 50000 connections)"));
    assert!(lines.contains(
        &"pool web: round-robin over 2 servers (127.0.0.1:9001, localhost:9002 = 127.0.0.1:9002 \
          weight 3), connect_timeout 2s, idle_timeout 5m, retries 2"
    ));
}

#[test]
fn pid_file_is_relative_to_the_config_file_and_never_empty() {
    assert_eq!(ok(MINIMAL).runtime.pid_file, None);
    let at = |pid_file: &str, config: &str| {
        let text = format!("[runtime]\npid_file = \"{pid_file}\"\n{MINIMAL}");
        match parse_with(&text, Path::new(config), &fake_resolve) {
            Ok(config) => config.runtime.pid_file,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(at("/run/ringlb.pid", "/etc/ringlb/ringlb.toml"), Some("/run/ringlb.pid".into()));
    assert_eq!(at("ringlb.pid", "/etc/ringlb/ringlb.toml"), Some("/etc/ringlb/ringlb.pid".into()));
    assert_eq!(at("run/ringlb.pid", "ringlb.toml"), Some("run/ringlb.pid".into()));
    assert_eq!(
        error(&format!("[runtime]\npid_file = \"\"\n{MINIMAL}")),
        "x.toml:2:12: runtime.pid_file: must not be empty"
    );
}

#[test]
fn the_digest_is_sha256sum_of_the_file() {
    // `printf '%s' "$MINIMAL" | sha256sum`
    assert_eq!(ok(MINIMAL).sha256, "7c2334a7948ef77b9d09b51808a2460ca9cb2afb4c4c9d3343f00fc734edbddc");
    // A comment changes the file, so the digest.
    assert_ne!(ok(&format!("# web\n{MINIMAL}")).sha256, ok(MINIMAL).sha256);
}
