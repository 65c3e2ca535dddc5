//! A reload that changes where a listener sends its clients is one atomic switch: the pools and
//! the listener → pool routes are published in the same table, so no client accepted during the
//! reload can find its listener pointing at a pool that no longer exists. Under 500+ new
//! connections per second, a reload that renames the pool behind a listener (ten times, back and
//! forth) and one that points the listener at another pool lose no connection, and after the
//! second every new client reaches the other pool's server.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::admin::{scrape, wait_for};
use common::clients::{connect_from, source_for, HttpConn};
use common::{DemoBackend, Ringlb};

/// New connections per second, paced.
const NEW_PER_SECOND: u64 = 600;
const RENAMES: usize = 10;

/// Listener `front` sends to pool `route`; pools `names[0]` (server a) and `names[1]` (server b).
fn config(a: &DemoBackend, b: &DemoBackend, names: [&str; 2], route: &str) -> String {
    let pool = |name: &str, server: &DemoBackend| {
        format!(
            "[pools.{name}]\nconnect_timeout = \"5s\"\n[pools.{name}.health]\ninterval = \"500ms\"\n\
             [[pools.{name}.servers]]\naddr = \"{}\"\nname = \"{}\"\n",
            server.addr, server.name
        )
    };
    format!(
        "[runtime]\nworkers = 2\nshutdown_grace = \"2s\"\n[admin]\nbind = \"127.0.0.1:0\"\n\
         [listeners.front]\nbind = \"127.0.0.1:0\"\npool = \"{route}\"\n{}{}",
        pool(names[0], a),
        pool(names[1], b)
    )
}

/// What the paced clients saw: every answer with its instant, and every failure.
#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    answers: Mutex<Vec<(Instant, String)>>,
    errors: Mutex<Vec<String>>,
}

/// New connections at `NEW_PER_SECOND` until `stop`, each asking for one reply.
fn paced_load(addr: std::net::SocketAddr, stop: Arc<AtomicBool>, tally: Arc<Tally>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / NEW_PER_SECOND));
        let mut inflight = Vec::new();
        let mut n = 0usize;
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            n += 1;
            let tally = tally.clone();
            inflight.push(tokio::spawn(async move {
                let result = async {
                    let stream = connect_from(source_for(n, 20_000), addr).await.map_err(|e| e.to_string())?;
                    let reply = tokio::time::timeout(Duration::from_secs(5), HttpConn::new(stream).get("/"))
                        .await
                        .map_err(|_| "no reply in 5 s".to_string())?
                        .map_err(|e| e.to_string())?;
                    match reply.status {
                        200 => Ok(reply.body_text().trim().to_string()),
                        status => Err(format!("status {status}")),
                    }
                };
                match result.await {
                    Ok(name) => {
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                        tally.answers.lock().expect("answers").push((Instant::now(), name));
                    }
                    Err(e) => tally.errors.lock().expect("errors").push(format!("connection {n}: {e}")),
                }
            }));
        }
        for t in inflight {
            let _ = t.await;
        }
    })
}

/// Reloads with `config` and waits until the reload counter says it was applied.
fn reload(lb: &Ringlb, config: &str) {
    let before = scrape(lb.admin_addr()).value("ringlb_config_reloads_total", &[("result", "ok")]);
    lb.reload_with(config);
    wait_for(Duration::from_secs(10), "the reload to apply", || {
        let scraped = scrape(lb.admin_addr());
        assert_eq!(scraped.value("ringlb_config_reloads_total", &[("result", "failed")]), 0.0, "a reload failed");
        (scraped.value("ringlb_config_reloads_total", &[("result", "ok")]) > before).then_some(())
    });
}

/// Runs the load for `settle` after `reloads` have been applied, and checks that nothing failed.
async fn under_load(lb: &Ringlb, reloads: &[String], settle: Duration) -> (Vec<(Instant, String)>, Instant) {
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let load = paced_load(lb.addr(), stop.clone(), tally.clone());
    tokio::time::sleep(Duration::from_millis(500)).await; // the load is running before the first reload
    for config in reloads {
        // The scrapes block: keep them off the runtime's threads that run the load.
        tokio::task::block_in_place(|| reload(lb, config));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last_reload = Instant::now();
    tokio::time::sleep(settle).await;
    stop.store(true, Ordering::Relaxed);
    load.await.expect("load");
    let errors = tally.errors.lock().expect("errors").clone();
    let ok = tally.ok.load(Ordering::Relaxed);
    assert!(
        errors.is_empty(),
        "{} of {} new connections failed: {:?}",
        errors.len(),
        ok + errors.len(),
        &errors[..errors.len().min(10)]
    );
    let expected = NEW_PER_SECOND as usize / 2;
    assert!(ok >= expected, "the load was too light to mean anything: {ok} connections");
    let answers = tally.answers.lock().expect("answers").clone();
    (answers, last_reload)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renaming_the_pool_behind_a_listener_loses_no_connection() {
    let (a, b) = (DemoBackend::start("a"), DemoBackend::start("b"));
    let lb = Ringlb::start(&config(&a, &b, ["one", "other"], "one"));
    let reloads: Vec<String> = (0..RENAMES)
        .map(|i| {
            let name = if i % 2 == 0 { "renamed" } else { "one" };
            config(&a, &b, [name, "other"], name)
        })
        .collect();
    let (answers, _) = under_load(&lb, &reloads, Duration::from_millis(500)).await;
    let strays = answers.iter().filter(|(_, name)| name != "a").count();
    println!("{} new connections through {RENAMES} renames, none failed", answers.len());
    assert_eq!(strays, 0, "clients reached a server outside the renamed pool");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pointing_a_listener_at_another_pool_loses_no_connection() {
    let (a, b) = (DemoBackend::start("a"), DemoBackend::start("b"));
    let lb = Ringlb::start(&config(&a, &b, ["one", "other"], "one"));
    let reloads = [config(&a, &b, ["one", "other"], "other")];
    let (answers, switched) = under_load(&lb, &reloads, Duration::from_millis(1500)).await;
    // A client connected before the switch may be answered just after it.
    let late_a = answers.iter().filter(|(at, name)| *at > switched + Duration::from_millis(500) && name == "a").count();
    let after_b = answers.iter().filter(|(at, name)| *at > switched && name == "b").count();
    let before_a = answers.iter().filter(|(at, name)| *at < switched && name == "a").count();
    println!("{} new connections, {before_a} to a before the switch, {after_b} to b after it", answers.len());
    assert!(before_a > 0, "no client reached the first pool");
    assert_eq!(late_a, 0, "the old pool still got new clients 500 ms after the reload");
    assert!(after_b > 100, "the new pool is not in use: {after_b}");
}
