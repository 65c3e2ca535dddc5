//! Unit tests of the whole pipeline: text in, `Config` or one `FILE:LINE:COL: message` out.
//! Host names go through a fake resolver except in the one test that uses /etc/hosts.

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

// ---- errors: each asserts the exact position and message ----

#[test]
fn unknown_keys_name_their_table_and_the_expected_keys() {
    assert_eq!(
        error(&MINIMAL.replace("pool = \"web\"\n", "pool = \"web\"\nbindd = 1\n")),
        "x.toml:4:1: unknown key `bindd` in [listeners.web], expected one of bind, pool, \
         max_connections"
    );
    assert_eq!(
        error(&format!("{MINIMAL}weight = 1\nport = 80\n")),
        "x.toml:9:1: unknown key `port` in pools.web.servers[0], expected one of addr, weight, name, \
         backup, max_connections, slow_start, check, check_port"
    );
    assert_eq!(
        error(&format!("[runtime]\nworker = 1\n{MINIMAL}")),
        "x.toml:2:1: unknown key `worker` in [runtime], expected one of workers, \
         max_connections, shutdown_grace, user, splice, log_connections, pid_file"
    );
    assert_eq!(
        error(&format!("{MINIMAL}[listener.api]\n")),
        "x.toml:8:2: unknown key `listener` in the top level, expected one of runtime, admin, \
         listeners, pools"
    );
    assert_eq!(
        error("listeners.web.bind = \"0.0.0.0:1\"\nlisteners.web.bnid = 2\n"),
        "x.toml:2:15: unknown key `bnid` in [listeners.web], expected one of bind, pool, \
         max_connections"
    );
    // A key that is not printable is escaped, keeping the message on one line.
    assert_eq!(
        error(&format!("{MINIMAL}\"a\\nb\" = 1\n")),
        r#"x.toml:8:1: unknown key `"a\nb"` in pools.web.servers[0], expected one of addr, weight, name, backup, max_connections, slow_start, check, check_port"#
    );
    assert_eq!(
        error("pools.p.servers = [{ addr = \"127.0.0.1:1\" }, { adr = \"x\" }]\n"),
        "x.toml:1:48: unknown key `adr` in pools.p.servers[1], expected one of addr, weight, name, \
         backup, max_connections, slow_start, check, check_port"
    );
}

#[test]
fn bad_durations_point_at_the_value() {
    let text = MINIMAL.replace("[pools.web]\n", "[pools.web]\nconnect_timeout = \"2x\"\n");
    assert_eq!(
        error(&text),
        r#"x.toml:6:19: pools.web.connect_timeout: invalid duration "2x" (use e.g. "500ms", "2s", "5m", "1h")"#
    );
    let text = format!("[runtime]\nshutdown_grace = \"99999999999999999h\"\n{MINIMAL}");
    assert_eq!(
        error(&text),
        r#"x.toml:2:18: runtime.shutdown_grace: invalid duration "99999999999999999h" (too large)"#
    );
    let text = MINIMAL.replace("[pools.web]\n", "[pools.web]\nidle_timeout = \"0s\"\n");
    assert_eq!(error(&text), "x.toml:6:16: pools.web.idle_timeout: must be longer than 0ms");
    let text = MINIMAL.replace("[pools.web]\n", "[pools.web]\nidle_timeout = 30\n");
    assert_eq!(error(&text), "x.toml:6:16: pools.web.idle_timeout: invalid type: integer `30`, expected a string");
}

#[test]
fn a_listener_must_name_an_existing_pool() {
    assert_eq!(
        error(&MINIMAL.replace("pool = \"web\"", "pool = \"wbe\"")),
        r#"x.toml:3:8: listeners.web.pool: no pool named "wbe""#
    );
    assert_eq!(error(&MINIMAL.replace("pool = \"web\"\n", "")), "x.toml:1:1: missing key `pool` in [listeners.web]");
}

#[test]
fn duplicate_binds_are_reported_at_the_second_naming_the_first() {
    let text = format!("{MINIMAL}[listeners.api]\nbind = \"0.0.0.0:8080\"\npool = \"web\"\n");
    // `api` sorts before `web`, but `web` comes first in the file.
    assert_eq!(
        error(&text),
        "x.toml:9:8: listeners.api.bind: 0.0.0.0:8080 is already the bind of listener web (line 2)"
    );
    let text = MINIMAL.replace("0.0.0.0:8080", "127.0.0.1:9900");
    assert_eq!(
        error(&text),
        "x.toml:2:8: listeners.web.bind: 127.0.0.1:9900 is already the bind of the admin \
         endpoint (default admin.bind)"
    );
    let text = format!("{MINIMAL}[admin]\nbind = \"0.0.0.0:8080\"\n");
    assert_eq!(error(&text), "x.toml:9:8: admin.bind: 0.0.0.0:8080 is already the bind of listener web (line 2)");
}

#[test]
fn a_server_without_addr_is_reported_at_its_table() {
    let text = format!("{MINIMAL}[[pools.web.servers]]\nname = \"two\"\n");
    assert_eq!(error(&text), "x.toml:8:1: missing key `addr` in pools.web.servers[1]");
}

#[test]
fn a_pool_needs_servers() {
    let text = MINIMAL.replace("[[pools.web.servers]]\naddr = \"127.0.0.1:9001\"\n", "retries = 1\n");
    assert_eq!(error(&text), "x.toml:5:8: pools.web: no servers (add a [[pools.web.servers]] table with an addr)");
    let text = format!("{MINIMAL}[pools.empty]\nservers = []\n");
    assert_eq!(error(&text), "x.toml:8:8: pools.empty: no servers (add a [[pools.empty.servers]] table with an addr)");
}

#[test]
fn server_addresses_must_parse_and_resolve() {
    let with_addr = |addr: &str| error(&MINIMAL.replace("127.0.0.1:9001", addr));
    let prefix = "x.toml:7:8: pools.web.servers[0].addr:";
    let cases = [
        ("127.0.0.1", r#"expected host:port, e.g. "127.0.0.1:9001", "[::1]:9001""#),
        ("[::1]", r#"expected host:port, e.g. "127.0.0.1:9001", "[::1]:9001""#),
        ("::1:80", r#"IPv6 addresses are written in brackets, e.g. "[::1]:9001""#),
        ("[::g]:80", "invalid IPv6 address"),
        ("127.0.0.1:0", "port 0 cannot be connected to"),
        ("localhost:0", "port 0 cannot be connected to"),
        ("localhost:65536", "invalid port"),
        ("localhost:http", "invalid port"),
        ("1.2.3.400:80", "invalid host name"),
        ("bad host:80", "invalid host name"),
        (":80", "invalid host name"),
    ];
    for (addr, reason) in cases {
        assert_eq!(with_addr(addr), format!("{prefix} invalid address {addr:?}: {reason}"));
    }
    assert_eq!(
        with_addr("nowhere.test:80"),
        format!(r#"{prefix} cannot resolve "nowhere.test:80": Name or service not known"#)
    );
    assert_eq!(with_addr("empty.test:80"), format!(r#"{prefix} cannot resolve "empty.test:80": no addresses"#));
}

#[test]
fn server_names_are_unique_within_a_pool() {
    let text = format!("{MINIMAL}name = \"a\"\n[[pools.web.servers]]\naddr = \"127.0.0.1:9002\"\nname = \"a\"\n");
    assert_eq!(
        error(&text),
        r#"x.toml:11:8: pools.web.servers[1].name: server name "a" is already used in pools.web on line 8"#
    );
    // A default name (the addr) collides too.
    let text = format!("{MINIMAL}[[pools.web.servers]]\naddr = \"127.0.0.1:9001\"\n");
    assert_eq!(
        error(&text),
        r#"x.toml:9:8: pools.web.servers[1].name: server name "127.0.0.1:9001" is already used in pools.web on line 7"#
    );
    // The same name in two pools is fine.
    ok(&format!("{MINIMAL}name = \"a\"\n[pools.other]\nservers = [{{ addr = \"127.0.0.1:1\", name = \"a\" }}]\n"));
}

#[test]
fn integers_are_range_checked() {
    assert_eq!(
        error(&format!("[runtime]\nmax_connections = 0\n{MINIMAL}")),
        "x.toml:2:19: runtime.max_connections: must be between 1 and 4294967295, got 0"
    );
    assert_eq!(
        error(&MINIMAL.replace("pool = \"web\"\n", "pool = \"web\"\nmax_connections = 0\n")),
        "x.toml:4:19: listeners.web.max_connections: must be between 1 and 4294967295, got 0"
    );
    // 0 is a valid weight: the server keeps its connections and gets no new one.
    assert_eq!(ok(&format!("{MINIMAL}weight = 0\n")).pools[0].servers[0].weight, 0);
    assert_eq!(
        error(&format!("{MINIMAL}max_connections = -1\n")),
        "x.toml:8:19: pools.web.servers[0].max_connections: must be between 0 and 4294967295, got -1"
    );
    assert_eq!(
        error(&format!("{MINIMAL}weight = 257\n")),
        "x.toml:8:10: pools.web.servers[0].weight: must be between 0 and 256, got 257"
    );
    assert_eq!(
        error(&format!("[runtime]\nworkers = -1\n{MINIMAL}")),
        "x.toml:2:11: runtime.workers: must be between 0 and 1024, got -1"
    );
    assert_eq!(
        error(&MINIMAL.replace("[pools.web]\n", "[pools.web]\nretries = 101\n")),
        "x.toml:6:11: pools.web.retries: must be between 0 and 100, got 101"
    );
}

#[test]
fn type_errors_name_the_key() {
    assert_eq!(
        error(&format!("[runtime]\nworkers = \"two\"\n{MINIMAL}")),
        r#"x.toml:2:11: runtime.workers: invalid type: string "two", expected an integer"#
    );
    assert_eq!(
        error(&format!("[runtime]\nworkers = 1.5\n{MINIMAL}")),
        "x.toml:2:11: runtime.workers: invalid type: floating point `1.5`, expected an integer"
    );
    assert_eq!(
        error(&MINIMAL.replace("bind = \"0.0.0.0:8080\"", "bind = 8080")),
        "x.toml:2:8: listeners.web.bind: invalid type: integer `8080`, expected a string"
    );
    assert_eq!(error("[pools]\nweb = 3\n"), "x.toml:2:7: pools.web: invalid type: integer `3`, expected a table");
    // `[[ ]]` where `[ ]` was meant, and the other way round.
    assert_eq!(
        error(&MINIMAL.replace("[listeners.web]", "[[listeners.web]]")),
        "x.toml:1:1: listeners.web: invalid type: array, expected a table"
    );
    assert_eq!(
        error(&MINIMAL.replace("[[pools.web.servers]]", "[pools.web.servers]")),
        "x.toml:6:1: pools.web.servers: invalid type: table, expected an array"
    );
}

#[test]
fn binds_must_be_socket_address_literals() {
    assert_eq!(
        error(&MINIMAL.replace("0.0.0.0:8080", "localhost:8080")),
        r#"x.toml:2:8: listeners.web.bind: invalid socket address "localhost:8080" (use e.g. "0.0.0.0:8080" or "[::]:8080")"#
    );
    assert_eq!(
        error(&format!("[admin]\nbind = \"::1:9900\"\n{MINIMAL}")),
        r#"x.toml:2:8: admin.bind: invalid socket address "::1:9900" (use e.g. "0.0.0.0:8080" or "[::]:8080")"#
    );
}

#[test]
fn names_and_balance_are_checked() {
    assert_eq!(
        error(&MINIMAL.replace("[listeners.web]", "[listeners.\"my web\"]")),
        r#"x.toml:1:12: listeners."my web": invalid name "my web" (1 to 64 characters among A-Z a-z 0-9 _ . -)"#
    );
    assert_eq!(
        error(&MINIMAL.replace("[pools.web]\n", "[pools.web]\nbalance = \"random\"\n")),
        r#"x.toml:6:11: pools.web.balance: unknown balance "random", expected round-robin, least-conn, source-hash, random-two or first"#
    );
}

#[test]
fn syntax_errors_are_one_line_with_a_position() {
    assert_eq!(error("[listeners.web]\nbind = \"0.0.0.0:8080\npool = \"web\"\n"), "x.toml:2:21: invalid basic string");
    assert_eq!(
        error("[listeners.web]\nbind = \"a\"\nbind = \"b\"\n"),
        "x.toml:3:1: duplicate key `bind` in table `listeners.web`"
    );
    assert_eq!(
        error("[listeners.web]\n[listeners.web]\n"),
        "x.toml:2:1: invalid table header: duplicate key `web` in table `listeners`"
    );
}

#[test]
fn at_least_one_listener() {
    assert_eq!(
        error("[pools.web]\nservers = [{ addr = \"127.0.0.1:1\" }]\n"),
        "x.toml:1:1: no listeners: add a [listeners.NAME] table with a bind and a pool"
    );
    assert_eq!(error(""), "x.toml:1:1: no listeners: add a [listeners.NAME] table with a bind and a pool");
}

#[test]
fn the_earliest_problem_in_the_file_is_reported() {
    // The listener (checked last) has the earlier problem.
    let text = format!("{}{}", MINIMAL.replace("pool = \"web\"", "pool = \"nope\""), "weight = 300\n");
    assert_eq!(error(&text), r#"x.toml:3:8: listeners.web.pool: no pool named "nope""#);
}

#[test]
fn load_reports_unreadable_files_in_one_line() {
    let missing = Path::new("/nonexistent/ringlb.toml");
    let message = load(missing).expect_err("missing file").to_string();
    assert_eq!(message, "/nonexistent/ringlb.toml: No such file or directory");
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
