//! Hot reload under load: SIGHUP with a broken config changes nothing, SIGHUP with a new server
//! set switches new connections to it within a second, and in both cases no client connection
//! fails or is reset (1,000 long-lived connections exchanging data, 500+ new connections per
//! second). Listeners added and removed by a reload start and stop accepting in place.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::clients::{connect_from, source_for, HttpConn};
use common::{parse_listener_line, DemoBackend, Ringlb};

const LONG_LIVED: usize = 1000;
/// New connections per second, paced.
const NEW_PER_SECOND: u64 = 600;

fn config(servers: &[&DemoBackend], extra_listener: Option<&str>) -> String {
    let servers: String = servers
        .iter()
        .map(|b| format!("[[pools.back.servers]]\naddr = \"{}\"\nname = \"{}\"\n", b.addr, b.name))
        .collect();
    let extra = extra_listener
        .map(|bind| format!("[listeners.extra]\nbind = \"{bind}\"\npool = \"back\"\n"))
        .unwrap_or_default();
    format!(
        "[runtime]\nworkers = 2\nshutdown_grace = \"2s\"\n[admin]\nbind = \"127.0.0.1:0\"\n\
         [listeners.front]\nbind = \"127.0.0.1:0\"\npool = \"back\"\n{extra}\
         [pools.back]\nconnect_timeout = \"5s\"\n[pools.back.health]\ninterval = \"500ms\"\n{servers}"
    )
}

#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    failed: AtomicUsize,
    /// (time of the reply, backend name) of each new connection.
    answers: Mutex<Vec<(Instant, String)>>,
    errors: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut errors = self.errors.lock().expect("errors");
        if errors.len() < 10 {
            errors.push(what);
        }
    }
}

async fn request(conn: &mut HttpConn) -> Result<String, String> {
    let reply = tokio::time::timeout(Duration::from_secs(5), conn.get("/"))
        .await
        .map_err(|_| "no reply in 5 s".to_string())?
        .map_err(|e| e.to_string())?;
    if reply.status != 200 {
        return Err(format!("status {}", reply.status));
    }
    Ok(reply.body_text().trim().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_drops_nothing_and_switches_servers_within_a_second() {
    let (a, b, c) = (DemoBackend::start("a"), DemoBackend::start("b"), DemoBackend::start("c"));
    let mut lb = Ringlb::start(&config(&[&a, &b], None));
    let addr = lb.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let long = Arc::new(Tally::default());
    let short = Arc::new(Tally::default());

    // 1,000 long-lived connections, each asking every ~500 ms.
    let mut conns = Vec::with_capacity(LONG_LIVED);
    for i in 0..LONG_LIVED {
        let stream = connect_from(source_for(i, 500), addr).await.expect("long-lived connect");
        conns.push(HttpConn::new(stream));
    }
    let mut tasks = Vec::new();
    for (i, mut conn) in conns.into_iter().enumerate() {
        let (stop, long) = (stop.clone(), long.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis((i % 500) as u64)).await;
            while !stop.load(Ordering::Relaxed) {
                match request(&mut conn).await {
                    Ok(_) => long.ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => return long.fail(format!("long-lived {i}: {e}")),
                };
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }));
    }
    // New connections at a steady pace.
    let pacer = {
        let (stop, short) = (stop.clone(), short.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / NEW_PER_SECOND));
            let mut n = 0usize;
            let mut inflight = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                n += 1;
                let short = short.clone();
                inflight.push(tokio::spawn(async move {
                    let result = async {
                        let stream = connect_from(source_for(n, 20_000), addr).await.map_err(|e| e.to_string())?;
                        request(&mut HttpConn::new(stream)).await
                    };
                    match result.await {
                        Ok(name) => {
                            short.ok.fetch_add(1, Ordering::Relaxed);
                            short.answers.lock().expect("answers").push((Instant::now(), name));
                        }
                        Err(e) => short.fail(format!("new connection {n}: {e}")),
                    }
                }));
            }
            for t in inflight {
                let _ = t.await;
            }
        })
    };

    tokio::time::sleep(Duration::from_secs(1)).await;
    // A broken config: nothing changes.
    lb.reload_with("[listeners.front]\nbind = \"127.0.0.1:0\"\npool = \"back\"\nbogus = 1\n");
    let line = lb.wait_for_log("reload failed");
    assert!(line.contains(":4:1:"), "the error names file:line:col: {line}");
    tokio::time::sleep(Duration::from_secs(1)).await;

    // A new server set: a leaves, c joins.
    let reloaded_at = Instant::now();
    lb.reload_with(&config(&[&b, &c], None));
    lb.wait_for_log("reloaded ");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    pacer.await.expect("pacer");
    for t in tasks {
        t.await.expect("long-lived task");
    }

    let short_errors = short.errors.lock().expect("errors").clone();
    let long_errors = long.errors.lock().expect("errors").clone();
    assert_eq!(short.failed.load(Ordering::Relaxed), 0, "new connections failed: {short_errors:?}");
    assert_eq!(long.failed.load(Ordering::Relaxed), 0, "long-lived connections failed: {long_errors:?}");
    let answers = short.answers.lock().expect("answers").clone();
    let after = |t: Instant| answers.iter().filter(move |(at, _)| *at >= t);
    let late_a = after(reloaded_at + Duration::from_secs(1)).filter(|(_, n)| n == "a").count();
    let by_name = |t: Instant| {
        let mut m: HashMap<&str, usize> = HashMap::new();
        for (_, n) in after(t) {
            *m.entry(n.as_str()).or_insert(0) += 1;
        }
        m
    };
    let settled = by_name(reloaded_at + Duration::from_secs(1));
    println!(
        "reload under load: {} new connections and {} long-lived requests, none failed; after the reload: {settled:?}",
        short.ok.load(Ordering::Relaxed),
        long.ok.load(Ordering::Relaxed)
    );
    assert_eq!(late_a, 0, "a removed server still got new connections 1 s after the reload: {settled:?}");
    assert!(settled.get("c").copied().unwrap_or(0) > 100, "the new server is not in use: {settled:?}");
    let total = short.ok.load(Ordering::Relaxed);
    assert!(total as u64 >= NEW_PER_SECOND * 3, "the load was too light to mean anything: {total}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_and_removes_listeners_in_place() {
    let a = DemoBackend::start("a");
    let mut lb = Ringlb::start(&config(&[&a], None));
    let front = lb.addr();
    let mut held = HttpConn::connect(front).await.expect("connect");
    assert_eq!(request(&mut held).await.expect("reply"), "a");

    // The new listener binds a port of the kernel's choosing and names it in its log line.
    lb.reload_with(&config(&[&a], Some("127.0.0.1:0")));
    let line = lb.wait_for_log("listener extra bound");
    let extra: SocketAddr = match parse_listener_line(&line) {
        Some(listener) => listener.addr,
        None => panic!("no address in {line:?}"),
    };
    assert!(extra.port() != 0 && extra != front, "{line}");
    let mut via_extra = HttpConn::connect(extra).await.expect("the added listener accepts");
    assert_eq!(request(&mut via_extra).await.expect("reply"), "a");

    lb.reload_with(&config(&[&a], None));
    lb.wait_for_log("listener extra (");
    let start = Instant::now();
    loop {
        if HttpConn::connect(extra).await.is_err() {
            break; // refused: the removed listener no longer accepts
        }
        assert!(start.elapsed() < Duration::from_secs(5), "the removed listener still accepts");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Connections accepted on it and on the others go on.
    assert_eq!(request(&mut via_extra).await.expect("still served"), "a");
    assert_eq!(request(&mut held).await.expect("still served"), "a");
}
