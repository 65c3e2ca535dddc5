//! The admin API of `ringlb run` and the commands that call it: /ready following pool health and
//! the process-wide drain, draining one server while its open connection finishes, garbage and
//! oversized requests, `ringlb drain`, `ringlb reload` with the pid file, and a clear error when
//! the admin address is taken.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::admin::{get, post, request, scrape, wait_for};
use common::backends::RefusingAddr;
use common::clients::HttpConn;
use common::{temp_path, DemoBackend, PoolSpec, Proc, Ringlb, TestConfig, RINGLB};
use tokio::net::TcpListener;

/// Long enough for a health check at a 50 ms interval to notice, with room for a loaded machine.
const HEALTH: Duration = Duration::from_secs(10);

/// Accepts connections (and drops them) until aborted; dropping the task closes the port, after
/// which connects are refused.
fn accept_loop(listener: TcpListener) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    })
}

/// One listener `front` to pool `web` with the given servers, tcp checks every 50 ms.
fn checked_config(servers: &[SocketAddr], runtime_extra: &str) -> String {
    let mut text = format!(
        "[runtime]\nworkers = 2\nshutdown_grace = \"2s\"\n{runtime_extra}\n[admin]\nbind = \"127.0.0.1:0\"\n\
         [listeners.front]\nbind = \"127.0.0.1:0\"\npool = \"web\"\n\
         [pools.web.health]\ncheck = \"tcp\"\ninterval = \"50ms\"\nrise = 1\nfall = 1\n"
    );
    for server in servers {
        text += &format!("[[pools.web.servers]]\naddr = \"{server}\"\n");
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_turns_503_when_every_server_of_a_pool_is_down_and_200_after() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = accept_loop(listener);
    let lb = Ringlb::start(&checked_config(&[addr], ""));
    let admin = lb.admin_addr();
    let ready = move || get(admin, "/ready");
    let answer = tokio::task::spawn_blocking(ready).await.expect("ready");
    assert_eq!((answer.status, answer.body.as_str()), (200, "ready\n"));
    assert_eq!(get(admin, "/live").status, 200);

    server.abort();
    let _ = server.await;
    let answer = tokio::task::spawn_blocking(move || {
        wait_for(HEALTH, "/ready 503 after the only server died", || Some(ready()).filter(|a| a.status == 503))
    })
    .await
    .expect("wait");
    assert_eq!(answer.body, "pool web: no usable server\n");
    let pools = get(admin, "/api/pools");
    assert!(pools.body.contains(r#""state":"down""#) && pools.body.contains(r#""ready":false"#), "{pools:?}");
    assert_eq!(get(admin, "/live").status, 200, "alive all along");

    // The same port again: the checks bring the server, and readiness, back.
    let server = accept_loop(TcpListener::bind(addr).await.expect("rebind the server's port"));
    tokio::task::spawn_blocking(move || {
        wait_for(HEALTH, "/ready 200 after the server came back", || Some(ready()).filter(|a| a.status == 200))
    })
    .await
    .expect("wait");
    let s = scrape(admin);
    let name = addr.to_string();
    for to in ["down", "up"] {
        let labels = [("pool", "web"), ("server", name.as_str()), ("to", to)];
        assert_eq!(s.count("ringlb_server_health_transitions_total", &labels), 1, "to {to}");
    }
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_server_takes_no_new_connections_while_its_open_one_finishes() {
    let one = DemoBackend::start("one");
    let two = DemoBackend::start("two");
    let lb = TestConfig::single(PoolSpec::new("back", &[one.addr, two.addr])).start();
    let admin = lb.admin_addr();
    let mut open = HttpConn::connect(lb.addr()).await.expect("connect");
    let first = open.get("/").await.expect("a reply").body_text().trim_end().to_owned();
    let drained = if first == "one" { one.addr } else { two.addr };
    let other = if first == "one" { "two" } else { "one" };
    let path = format!("/api/pools/back/servers/{drained}");

    let answer = tokio::task::spawn_blocking({
        let path = path.clone();
        move || post(admin, &format!("{path}/drain"))
    })
    .await
    .expect("drain");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(answer.body.contains(r#""state":"draining""#), "{answer:?}");
    // The change is published before the answer: no new connection reaches the drained server.
    for i in 0..20 {
        let mut conn = HttpConn::connect(lb.addr()).await.expect("connect");
        let name = conn.get("/").await.expect("a reply").body_text();
        assert_eq!(name.trim_end(), other, "new connection #{i} after the drain");
    }
    // The open connection still works, on the drained server.
    for _ in 0..3 {
        assert_eq!(open.get("/").await.expect("a reply on the open connection").body_text().trim_end(), first);
    }
    let server = drained.to_string();
    let s = scrape(admin);
    let labels = [("pool", "back"), ("server", server.as_str())];
    assert_eq!(s.count("ringlb_server_connections_active", &labels), 1);
    assert_eq!(s.count("ringlb_server_state", &[labels[0], labels[1], ("state", "draining")]), 1);
    assert_eq!(s.count("ringlb_server_effective_weight", &labels), 0);
    // Its client and backend sockets are direct descriptors (the gauge is sampled every 100 ms).
    wait_for(Duration::from_secs(5), "the open connection's descriptors counted", || {
        (scrape(admin).sum("ringlb_worker_direct_descriptors") >= 2.0).then_some(())
    });
    drop(open);

    // Disabled: no new connections either; enabled: it gets its share again.
    assert!(post(admin, &format!("{path}/disable")).body.contains(r#""state":"disabled""#));
    for _ in 0..4 {
        let mut conn = HttpConn::connect(lb.addr()).await.expect("connect");
        assert_eq!(conn.get("/").await.expect("a reply").body_text().trim_end(), other);
    }
    let enabled = post(admin, &format!("{path}/enable"));
    assert!(enabled.body.contains(r#""state":"up""#), "{enabled:?}");
    let mut names = Vec::new();
    for _ in 0..8 {
        let mut conn = HttpConn::connect(lb.addr()).await.expect("connect");
        names.push(conn.get("/").await.expect("a reply").body_text().trim_end().to_owned());
    }
    assert!(names.contains(&first), "the enabled server gets connections again: {names:?}");
    // Commands name servers exactly, and only POST changes anything.
    assert_eq!(post(admin, "/api/pools/back/servers/nope/drain").status, 404);
    assert_eq!(post(admin, "/api/pools/nope/servers/x/drain").status, 404);
    assert_eq!(post(admin, &format!("{path}/explode")).status, 404);
    assert_eq!(get(admin, &format!("{path}/drain")).status, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_requests_get_a_4xx_and_ringlb_keeps_serving() {
    let one = DemoBackend::start("one");
    let mut lb = TestConfig::single(PoolSpec::new("back", &[one.addr])).start();
    let admin = lb.admin_addr();
    let mut noise = vec![0u8; 20 * 1024];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let mut long_header = b"GET /live HTTP/1.1\r\nX-Long: ".to_vec();
    long_header.resize(9 * 1024, b'a');
    long_header.extend_from_slice(b"\r\n\r\n");
    let mut binary_head = noise[..512].to_vec();
    binary_head.extend_from_slice(b"\r\n\r\n");
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("random bytes without an end of head", noise.clone(), 431),
        ("a head over 8 KiB", long_header, 431),
        ("binary with an end of head", binary_head, 400),
        ("no request line", b"\r\n\r\n".to_vec(), 400),
        ("a lone word", b"HELLO\r\n\r\n".to_vec(), 400),
        ("HTTP/2", b"GET /live HTTP/2.0\r\n\r\n".to_vec(), 505),
        ("an absolute URL", b"GET http://x/live HTTP/1.1\r\n\r\n".to_vec(), 400),
        ("a bad escape", b"GET /api/pools/%zz HTTP/1.1\r\n\r\n".to_vec(), 400),
        ("a header without a colon", b"GET /live HTTP/1.1\r\nfoo\r\n\r\n".to_vec(), 400),
        ("a huge body", b"POST /api/drain HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n".to_vec(), 413),
        ("a chunked body", b"POST /api/drain HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), 411),
        ("an unknown path", b"GET /admin.php HTTP/1.1\r\n\r\n".to_vec(), 404),
        ("an unknown method", b"DELETE /api/pools HTTP/1.1\r\n\r\n".to_vec(), 405),
    ];
    let answers = tokio::task::spawn_blocking(move || {
        // A client that sends nothing is answered 408 after the read timeout; meanwhile the
        // other requests are served.
        let silent = std::thread::spawn(move || request(admin, b""));
        let answers: Vec<_> = cases.into_iter().map(|(what, raw, want)| (what, request(admin, &raw), want)).collect();
        (answers, silent.join().expect("silent client"))
    })
    .await
    .expect("requests");
    let (answers, silent) = answers;
    for (what, answer, want) in answers {
        assert_eq!(answer.status, want, "{what}: {answer:?}");
        assert!(!answer.body.is_empty() && !answer.body.trim_end().contains('\n'), "{what}: one line: {answer:?}");
    }
    assert_eq!(silent.status, 408, "{silent:?}");
    // Still alive, still ready, still proxying, and the drain POSTed with a bad body did nothing.
    assert!(lb.is_running());
    assert_eq!(get(admin, "/live").status, 200);
    assert_eq!(get(admin, "/ready").status, 200);
    let mut conn = HttpConn::connect(lb.addr()).await.expect("connect");
    assert_eq!(conn.get("/").await.expect("a reply").body_text().trim_end(), "one");
    let head = request(admin, b"HEAD /ready HTTP/1.1\r\n\r\n");
    assert_eq!((head.status, head.body.as_str()), (200, ""), "HEAD: the GET headers, no body");
    assert!(head.head.contains("Content-Length: 6"), "{head:?}");
}

/// `ringlb ARGS...`; returns the exit success and what it printed.
fn ringlb(args: &[&str]) -> (bool, String) {
    let out = Command::new(RINGLB).args(args).output().unwrap_or_else(|e| panic!("run ringlb {args:?}: {e}"));
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), printed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ringlb_drain_turns_ready_to_503_while_everything_is_served() {
    let one = DemoBackend::start("one");
    let lb = TestConfig::single(PoolSpec::new("back", &[one.addr])).start();
    let admin = lb.admin_addr();
    let mut open = HttpConn::connect(lb.addr()).await.expect("connect");
    assert_eq!(open.get("/").await.expect("a reply").status, 200);

    // With the address of the running admin API in a config file, as an operator would run it.
    let config = temp_path("drain", "toml");
    let text = std::fs::read_to_string(lb.config_path()).expect("config");
    let text = text.replace("[admin]\nbind = \"127.0.0.1:0\"", &format!("[admin]\nbind = \"{admin}\""));
    assert!(text.contains(&format!("[admin]\nbind = \"{admin}\"")), "{text}");
    std::fs::write(&config, text).expect("write config");
    let config_arg = config.to_string_lossy().into_owned();
    let (ok, printed) = ringlb(&["drain", "-c", &config_arg]);
    assert!(ok, "ringlb drain: {printed}");
    let ready = get(admin, "/ready");
    assert_eq!((ready.status, ready.body.as_str()), (503, "draining\n"));
    assert_eq!(scrape(admin).count("ringlb_draining", &[]), 1);
    // Everything is still served: the open connection and new ones.
    assert_eq!(open.get("/").await.expect("a reply on the open connection").status, 200);
    let mut fresh = HttpConn::connect(lb.addr()).await.expect("connect while draining");
    assert_eq!(fresh.get("/").await.expect("a reply").body_text().trim_end(), "one");

    let (ok, printed) = ringlb(&["drain", "--admin", &admin.to_string(), "--cancel"]);
    assert!(ok, "ringlb drain --cancel: {printed}");
    assert_eq!(get(admin, "/ready").status, 200);
    let _ = std::fs::remove_file(&config);

    // Nothing listening: one line, non-zero exit.
    let closed = RefusingAddr::new();
    let (ok, printed) = ringlb(&["drain", "--admin", &closed.addr.to_string()]);
    assert!(!ok && printed.trim_end().lines().count() == 1 && printed.contains("cannot reach"), "{printed}");
}

#[test]
fn ringlb_reload_signals_the_pid_in_the_pid_file_which_lives_as_long_as_ringlb() {
    let one_addr: SocketAddr = "127.0.0.1:1".parse().expect("addr");
    let pid_file = temp_path("ringlb", "pid");
    let runtime = format!("pid_file = \"{}\"", pid_file.display());
    let mut lb = Ringlb::start(&checked_config(&[one_addr], &runtime));
    let written = std::fs::read_to_string(&pid_file).expect("the pid file exists once ringlb runs");
    assert_eq!(written.trim(), lb.pid().to_string());

    let config = lb.config_path().to_string_lossy().into_owned();
    let (ok, printed) = ringlb(&["reload", "-c", &config]);
    assert!(ok, "ringlb reload: {printed}");
    assert_eq!(printed.trim(), format!("sent SIGHUP to ringlb (pid {})", lb.pid()));
    wait_for(Duration::from_secs(5), "ringlb logs the SIGHUP", || lb.log().contains("SIGHUP").then_some(()));
    assert!(lb.is_running(), "SIGHUP does not stop ringlb");

    lb.sigterm();
    let status = lb.wait_exit(Duration::from_secs(10)).expect("exit after SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(!pid_file.exists(), "the pid file is removed at exit");
    let (ok, printed) = ringlb(&["reload", "-c", &config]);
    assert!(!ok && printed.contains("pid file") && printed.trim_end().lines().count() == 1, "{printed}");
}

#[test]
fn a_taken_admin_address_is_a_one_line_error() {
    // Held to the end of the test, so that ringlb finds the address taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let config = temp_path("taken", "toml");
    let text = format!(
        "[admin]\nbind = \"{addr}\"\n[listeners.front]\nbind = \"127.0.0.1:0\"\npool = \"web\"\n\
         [[pools.web.servers]]\naddr = \"127.0.0.1:1\"\n"
    );
    std::fs::write(&config, text).expect("write config");
    let mut proc = Proc::spawn("ringlb", &["run", "-c", &config.to_string_lossy()]);
    let status = proc.wait_exit(Duration::from_secs(10)).expect("ringlb exits");
    let _ = std::fs::remove_file(&config);
    assert!(!status.success());
    // The stderr reader may still be collecting the last line when the exit is seen.
    let expected = format!("admin.bind: cannot bind {addr}: Address already in use");
    let what = format!("the line {expected:?}");
    wait_for(Duration::from_secs(5), &what, || proc.find(&expected).map(drop));
}
