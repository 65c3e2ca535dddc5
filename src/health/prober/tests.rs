//! The prober's own work: which servers it checks, and the running thread against real sockets
//! on loopback. The registry's rules are tested in `registry/tests.rs`.

use std::path::Path;

use super::*;
use crate::health::registry::tests::{config, states, PLAIN, WEB};
use crate::health::registry::FIRST_VERSION;
use crate::table::ServerState::{Down, Up};

fn prober(config: &Config) -> Prober {
    Prober::new(config, &Arc::new(Metrics::new(config))).expect("valid pools")
}

#[test]
fn the_first_table_follows_initial_state_and_check_settings() {
    let prober = prober(&config("initial_state = \"down\""));
    let table = prober.table();
    assert_eq!(table.load().version, FIRST_VERSION);
    assert_eq!(states(&table, PLAIN), [Up]);
    // Unchecked servers are always up, so the pool is not all down.
    assert_eq!(states(&table, WEB), [Down, Down, Up]);
    assert!(!table.load().pools[WEB].all_down);
    let checked: Vec<_> = prober.checks.iter().map(|c| (c.pool, c.server)).collect();
    assert_eq!(checked, [(WEB, 0), (WEB, 1)]);
    // Passive reports only where passive detection is on.
    let passive: Vec<bool> = table.load().pools.iter().map(|p| p.passive.is_some()).collect();
    assert_eq!(passive, [false, true]);
}

#[test]
fn the_running_prober_takes_a_dead_server_down_and_stops_on_request() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a closed port");
    let alive = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let text = format!(
        "[listeners.web]\nbind = \"127.0.0.1:0\"\npool = \"web\"\n[pools.web.health]\ninterval = \"20ms\"\n\
         fall = 1\n[[pools.web.servers]]\naddr = \"{dead}\"\n[[pools.web.servers]]\naddr = \"{}\"\n",
        alive.local_addr().expect("addr")
    );
    let config = crate::config::parse(&text, Path::new("x.toml")).expect("valid");
    let prober = prober(&config);
    let table = prober.table();
    let running = prober.spawn().expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(5);
    while states(&table, 0) != [Down, Up] {
        assert!(Instant::now() < deadline, "still {:?}", states(&table, 0));
        std::thread::sleep(Duration::from_millis(5));
    }
    let version = table.load().version;
    running.stop();
    assert_eq!(table.load().version, version, "nothing published after the stop");
}
