//! The registry's rules on a registry driven by hand, without the thread or a ring: what is
//! published and when, passive reports, operator commands and the metric blocks.

use std::path::Path;

use super::*;
use ServerState::{Down, Up};

/// Pools sort by name: `plain` (no checks, one server) is pool 0, `web` pool 1.
pub(in crate::health) const PLAIN: usize = 0;
pub(in crate::health) const WEB: usize = 1;
const REFUSED: ConnectOutcome = ConnectOutcome::Failed(libc::ECONNREFUSED);

/// Pool `web` (tcp, rise 2, fall 3, passive_fall 3 unless `health` says otherwise): servers
/// a, b checked, c with `check = false`; pool `plain` without checks.
pub(in crate::health) fn config(health: &str) -> Config {
    let text = format!(
        "[listeners.web]\nbind = \"127.0.0.1:0\"\npool = \"web\"\n[pools.web.health]\n{health}\n\
         [[pools.web.servers]]\naddr = \"127.0.0.1:9001\"\nname = \"a\"\n\
         [[pools.web.servers]]\naddr = \"127.0.0.1:9002\"\nname = \"b\"\n\
         [[pools.web.servers]]\naddr = \"127.0.0.1:9003\"\nname = \"c\"\ncheck = false\n\
         [pools.plain.health]\ncheck = \"none\"\n[[pools.plain.servers]]\naddr = \"127.0.0.1:9004\"\n"
    );
    crate::config::parse(&text, Path::new("x.toml")).expect("valid config")
}

/// The registry of `config` as the prober makes it. The passive-report receiver is dropped, as
/// the prober's was in these tests before: they hand reports to the registry directly.
fn registry_of(config: &Config) -> Registry {
    let (sender, _) = crossbeam::channel::bounded(1);
    Registry::new(config, PassiveReports::new(sender), &Arc::new(Metrics::new(config))).expect("valid pools")
}

fn registry(health: &str) -> (Registry, SharedTable) {
    let registry = registry_of(&config(health));
    let table = registry.table.clone();
    (registry, table)
}

pub(in crate::health) fn states(table: &SharedTable, pool: usize) -> Vec<ServerState> {
    table.load().pools[pool].servers.iter().map(|s| s.state).collect()
}

/// One check result for a server of `web`, then a publish.
fn check(registry: &mut Registry, server: usize, passed: bool) {
    let result = if passed { Ok(()) } else { Err(CheckFailure::Refused) };
    registry.on_check(CheckDone { pool: WEB, server, result, took: Duration::from_millis(1) });
    registry.publish();
}

fn report(server: u32, outcome: ConnectOutcome) -> ConnectReport {
    ConnectReport { version: FIRST_VERSION, pool: WEB as u32, server, outcome }
}

#[test]
fn a_change_publishes_one_new_snapshot_and_no_change_publishes_none() {
    let (mut registry, table) = registry("");
    check(&mut registry, 0, false);
    check(&mut registry, 0, false);
    check(&mut registry, 1, true);
    assert_eq!(table.load().version, FIRST_VERSION, "nothing changed yet");
    check(&mut registry, 0, false);
    assert_eq!(table.load().version, FIRST_VERSION + 1);
    assert_eq!(states(&table, WEB), [Down, Up, Up]);
    check(&mut registry, 0, true);
    check(&mut registry, 0, true);
    assert_eq!(table.load().version, FIRST_VERSION + 2);
    assert_eq!(states(&table, WEB), [Up, Up, Up]);
}

#[test]
fn changes_applied_together_publish_together() {
    let (mut registry, table) = registry("fall = 1");
    for server in [0, 1] {
        let result = Err(CheckFailure::Timeout(Duration::from_secs(2)));
        registry.on_check(CheckDone { pool: WEB, server, result, took: Duration::from_secs(2) });
    }
    registry.publish();
    assert_eq!(states(&table, WEB), [Down, Down, Up]);
    assert_eq!(table.load().version, FIRST_VERSION + 1);
}

#[test]
fn passive_failures_take_a_server_down_without_a_check() {
    let (mut registry, table) = registry("");
    for outcome in [REFUSED, ConnectOutcome::Connected, REFUSED, ConnectOutcome::TimedOut] {
        registry.on_report(report(1, outcome));
    }
    registry.publish();
    assert_eq!(states(&table, WEB), [Up, Up, Up]);
    registry.on_report(report(1, REFUSED));
    registry.on_report(report(0, REFUSED));
    registry.publish();
    assert_eq!(states(&table, WEB), [Up, Down, Up]);
    assert_eq!(table.load().version, FIRST_VERSION + 1);
    // The checks bring it back.
    check(&mut registry, 1, true);
    check(&mut registry, 1, true);
    assert_eq!(states(&table, WEB), [Up, Up, Up]);
}

#[test]
fn reports_that_cannot_name_a_checked_server_are_ignored() {
    let (mut registry, table) = registry("passive_fall = 1");
    let web = WEB as u32;
    let ignored = [
        // From a table older than this server list.
        ConnectReport { version: 0, pool: web, server: 0, outcome: REFUSED },
        // About a server that is never checked: nothing would bring it back.
        ConnectReport { version: FIRST_VERSION, pool: web, server: 2, outcome: REFUSED },
        // Indices that do not exist.
        ConnectReport { version: FIRST_VERSION, pool: web, server: 9, outcome: REFUSED },
        ConnectReport { version: FIRST_VERSION, pool: 7, server: 0, outcome: REFUSED },
        // A pool without checks.
        ConnectReport { version: FIRST_VERSION, pool: PLAIN as u32, server: 0, outcome: REFUSED },
    ];
    for report in ignored {
        registry.on_report(report);
    }
    registry.publish();
    assert_eq!(states(&table, WEB), [Up, Up, Up]);
    assert_eq!(states(&table, PLAIN), [Up]);
    assert_eq!(table.load().version, FIRST_VERSION);
    // The same report from the current list counts.
    registry.on_report(report(0, REFUSED));
    registry.publish();
    assert_eq!(states(&table, WEB), [Down, Up, Up]);
}

#[test]
fn every_server_down_is_tracked_with_the_pool_counter() {
    let text = "[listeners.web]\nbind = \"127.0.0.1:0\"\npool = \"web\"\n[pools.web.health]\nfall = 1\n\
                [[pools.web.servers]]\naddr = \"127.0.0.1:9001\"\n";
    let config = crate::config::parse(text, Path::new("x.toml")).expect("valid");
    let mut registry = registry_of(&config);
    let table = registry.table.clone();
    let check = |registry: &mut Registry, passed| {
        let result = if passed { Ok(()) } else { Err(CheckFailure::Refused) };
        registry.on_check(CheckDone { pool: 0, server: 0, result, took: Duration::from_millis(1) });
        registry.publish();
    };
    check(&mut registry, false);
    assert!(table.load().pools[0].all_down);
    assert_eq!(registry.pools[0].all_down_since, Some(0));
    table.load().pools[0].count_all_down();
    table.load().pools[0].count_all_down();
    assert_eq!(registry.all_down_count(0), 2);
    check(&mut registry, true);
    check(&mut registry, true);
    assert!(!table.load().pools[0].all_down);
    assert_eq!(registry.pools[0].all_down_since, None);
}

fn command(registry: &mut Registry, server: &str, command: ServerCommand) -> Result<ServerChange, CommandError> {
    let result = registry.command("web".to_owned(), server.to_owned(), command);
    registry.publish();
    result
}

#[test]
fn drain_and_enable_publish_at_once_and_checks_go_on_meanwhile() {
    use ServerState::Draining;
    let (mut registry, table) = registry("fall = 1");
    let change = command(&mut registry, "a", ServerCommand::Drain).expect("drain");
    assert_eq!((change.state, change.health), (Draining, HealthView::Up));
    assert_eq!(states(&table, WEB), [Draining, Up, Up]);
    assert_eq!(table.load().version, FIRST_VERSION + 1);
    // Draining twice changes nothing, so publishes nothing.
    command(&mut registry, "a", ServerCommand::Drain).expect("drain again");
    assert_eq!(table.load().version, FIRST_VERSION + 1);
    // Its checks still count: it fails one while drained, and comes back down.
    check(&mut registry, 0, false);
    assert_eq!(states(&table, WEB), [Draining, Up, Up]);
    let change = command(&mut registry, "a", ServerCommand::Enable).expect("enable");
    assert_eq!((change.state, change.health), (Down, HealthView::Down));
    assert_eq!(states(&table, WEB), [Down, Up, Up]);
}

#[test]
fn a_disabled_server_ignores_its_checks_and_starts_over_when_enabled() {
    use ServerState::Disabled;
    let (mut registry, table) = registry("fall = 1\npassive_fall = 1\ninitial_state = \"down\"");
    check(&mut registry, 1, true);
    check(&mut registry, 1, true);
    assert_eq!(states(&table, WEB), [Down, Up, Up]);
    let change = command(&mut registry, "b", ServerCommand::Disable).expect("disable");
    assert_eq!((change.state, change.health), (Disabled, HealthView::Unknown));
    check(&mut registry, 1, false);
    registry.on_report(report(1, REFUSED));
    registry.publish();
    assert_eq!(states(&table, WEB), [Down, Disabled, Up]);
    // The checks are still timed.
    assert_eq!(table.load().pools[WEB].servers[1].stats.checks().count(), 3);
    // Enabled: down (initial_state) until `rise` checks pass.
    let change = command(&mut registry, "b", ServerCommand::Enable).expect("enable");
    assert_eq!((change.state, change.health), (Down, HealthView::Down));
    check(&mut registry, 1, true);
    check(&mut registry, 1, true);
    assert_eq!(states(&table, WEB), [Down, Up, Up]);
}

#[test]
fn commands_name_pools_and_servers_exactly() {
    let (mut registry, table) = registry("");
    let no_pool = registry.command("nope".to_owned(), "a".to_owned(), ServerCommand::Drain);
    assert_eq!(no_pool, Err(CommandError::NoSuchPool("nope".to_owned())));
    let no_server = registry.command("web".to_owned(), "A".to_owned(), ServerCommand::Drain);
    assert_eq!(no_server, Err(CommandError::NoSuchServer { pool: "web".to_owned(), server: "A".to_owned() }));
    registry.publish();
    assert_eq!(table.load().version, FIRST_VERSION);
}

#[test]
fn transitions_and_health_are_counted_in_the_servers_metric_block() {
    let (mut registry, table) = registry("fall = 1");
    let stats = table.load().pools[WEB].servers[0].stats.clone();
    assert_eq!(stats.health(), HealthView::Up);
    check(&mut registry, 0, false);
    assert_eq!((stats.health(), stats.transitions()), (HealthView::Down, (0, 1)));
    check(&mut registry, 0, true);
    check(&mut registry, 0, true);
    assert_eq!((stats.health(), stats.transitions()), (HealthView::Up, (1, 1)));
    // The same block in every snapshot.
    assert!(Arc::ptr_eq(&stats, &table.load().pools[WEB].servers[0].stats));
}
