//! Invalid files: each test asserts the exact position and message of the one-line error.

use super::*;

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
