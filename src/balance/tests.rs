//! The properties every policy must keep, tested through the public interface, one worker at
//! a time (what workers and successive balancers share: `shared_tests.rs`).

use std::collections::{BinaryHeap, HashSet};
use std::net::Ipv4Addr;

use super::hash::mix;
use super::*;

const SOURCE_HASH: Policy = Policy::SourceHash { table_size: DEFAULT_TABLE_SIZE };
pub(super) const ALL: [Policy; 5] =
    [Policy::RoundRobin, Policy::LeastConn, SOURCE_HASH, Policy::RandomTwo, Policy::First];
/// The policies whose shares follow the weights.
const WEIGHTED: [Policy; 4] = [Policy::RoundRobin, Policy::LeastConn, SOURCE_HASH, Policy::RandomTwo];

pub(super) fn specs(weights: &[u32]) -> Vec<ServerSpec> {
    (0..weights.len())
        .map(|i| ServerSpec {
            weight: weights[i],
            ..ServerSpec::new(&format!("s{i}"), SocketAddr::from(([127, 0, 0, 1], 8000 + i as u16)))
        })
        .collect()
}

/// A different, well spread client address for every `i`.
pub(super) fn client(i: u64) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(mix(i) as u32))
}

pub(super) fn build(policy: Policy, specs: &[ServerSpec]) -> Balancer {
    match Balancer::build(policy, specs, None) {
        Ok(balancer) => balancer,
        Err(e) => panic!("{policy}: {e}"),
    }
}

/// Picks for `n` clients, releasing each connection at once; counts per server.
fn shares(balancer: &Balancer, n: u64, now: Instant) -> Vec<u64> {
    let mut worker = WorkerBalanceState::new(7);
    let mut counts = vec![0u64; balancer.counters().len()];
    for i in 0..n {
        match balancer.select(&mut worker, client(i), &ExcludeSet::new(), now) {
            Pick::Server(s) => {
                counts[s] += 1;
                balancer.release(s, now);
            }
            other => panic!("{}: pick {i} gave {other:?}", balancer.policy()),
        }
    }
    counts
}

fn assert_shares_follow(counts: &[u64], weights: &[f64], tolerance: f64, what: &str) {
    let (total, weight_sum) = (counts.iter().sum::<u64>() as f64, weights.iter().sum::<f64>());
    for (s, (&count, &weight)) in counts.iter().zip(weights).enumerate() {
        let (share, expected) = (count as f64 / total, weight / weight_sum);
        assert!(
            (share - expected).abs() <= tolerance * expected,
            "{what}: server {s} got {share:.4} of the picks, expected {expected:.4} ({counts:?})"
        );
    }
}

#[test]
fn every_weighted_policy_shares_a_million_picks_within_2_percent_of_weights() {
    let weights = [5, 1, 1, 3, 17];
    let expected: Vec<f64> = weights.iter().map(|&w| f64::from(w)).collect();
    let now = Instant::now();
    for policy in WEIGHTED {
        let counts = shares(&build(policy, &specs(&weights)), 1_000_000, now);
        assert_shares_follow(&counts, &expected, 0.02, &policy.to_string());
    }
}

#[test]
fn least_conn_counts_follow_weights_when_connections_stay_open() {
    let weights = [5, 1, 1, 3];
    let balancer = build(Policy::LeastConn, &specs(&weights));
    let (mut worker, now) = (WorkerBalanceState::new(1), Instant::now());
    for i in 0..10_000 {
        balancer.select(&mut worker, client(i), &ExcludeSet::new(), now);
        // After every pick, no server is more than one connection (relative to its weight)
        // above another: active / weight differ by at most 1 / weight.
        let loads: Vec<f64> =
            (0..4).map(|s| f64::from(balancer.counters().active(s)) / f64::from(weights[s])).collect();
        let (lo, hi) = loads.iter().fold((f64::MAX, 0f64), |(lo, hi), &l| (lo.min(l), hi.max(l)));
        assert!(hi - lo <= 1.0, "pick {i}: loads {loads:?}");
    }
}

#[test]
fn round_robin_interleaves_weights_5_1_1_like_nginx() {
    let balancer = build(Policy::RoundRobin, &specs(&[5, 1, 1]));
    let mut worker = WorkerBalanceState::new(0);
    let order: String = (0..14)
        .map(|i| match balancer.select(&mut worker, client(i), &ExcludeSet::new(), Instant::now()) {
            Pick::Server(s) => (b'a' + s as u8) as char,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(order, "aabacaaaabacaa", "nginx's smooth order, twice");
}

#[test]
fn round_robin_order_is_global_across_workers() {
    // Successive connections alternate whichever worker each one lands on.
    let balancer = build(Policy::RoundRobin, &specs(&[1, 1]));
    let mut workers = [WorkerBalanceState::new(1), WorkerBalanceState::new(2)];
    let landing = [0, 0, 1, 0, 1, 1, 1, 0];
    let picks: Vec<usize> = landing
        .iter()
        .enumerate()
        .map(|(i, &w)| match balancer.select(&mut workers[w], client(i as u64), &ExcludeSet::new(), Instant::now()) {
            Pick::Server(s) => s,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(picks, [0, 1, 0, 1, 0, 1, 0, 1]);
}

/// A closed loop of clients, each reconnecting as soon as its connection ends, with connection
/// lifetimes drawn from a very skewed, deterministic distribution. Returns the largest spread
/// (max - min active count) seen right after a pick.
fn largest_spread_under_skewed_lifetimes(policy: Policy) -> u32 {
    let servers = 4;
    let balancer = build(policy, &specs(&vec![1; servers]));
    let (mut worker, now) = (WorkerBalanceState::new(3), Instant::now());
    // (Reverse(end tick), sequence number, server)
    let mut open: BinaryHeap<(std::cmp::Reverse<u64>, u64, usize)> = BinaryHeap::new();
    let lifetime = |seq: u64| match mix(seq) % 100 {
        0..=9 => 5_000 + mix(seq ^ 1) % 5_000, // one in ten lasts thousands of ticks
        _ => 1 + mix(seq ^ 2) % 10,
    };
    let mut largest = 0;
    let mut connect = |open: &mut BinaryHeap<_>, tick: u64, seq: u64| {
        let Pick::Server(s) = balancer.select(&mut worker, client(seq), &ExcludeSet::new(), now) else {
            panic!("{policy}: no server");
        };
        open.push((std::cmp::Reverse(tick + lifetime(seq)), seq, s));
        let counts: Vec<u32> = (0..servers).map(|s| balancer.counters().active(s)).collect();
        let spread = counts.iter().max().unwrap_or(&0) - counts.iter().min().unwrap_or(&0);
        largest = largest.max(spread);
    };
    let mut seq = 0;
    for _ in 0..40 {
        connect(&mut open, 0, seq);
        seq += 1;
    }
    for _ in 0..20_000 {
        let Some((std::cmp::Reverse(tick), _, server)) = open.pop() else {
            break;
        };
        balancer.release(server, now);
        connect(&mut open, tick, seq);
        seq += 1;
    }
    largest
}

#[test]
fn least_conn_keeps_active_counts_within_one_under_skewed_lifetimes() {
    assert!(largest_spread_under_skewed_lifetimes(Policy::LeastConn) <= 1);
    // The same load through round robin piles the long connections up unevenly, which shows
    // that the loop above does test something.
    assert!(largest_spread_under_skewed_lifetimes(Policy::RoundRobin) > 1);
}

/// Holds picks until the balancer gives something other than a server; returns the held ones.
fn hold_until_not_server(balancer: &Balancer, worker: &mut WorkerBalanceState, now: Instant) -> (Vec<usize>, Pick) {
    let mut held = Vec::new();
    for i in 0..1_000 {
        match balancer.select(worker, client(i), &ExcludeSet::new(), now) {
            Pick::Server(s) => held.push(s),
            other => return (held, other),
        }
    }
    panic!("{}: servers never filled up", balancer.policy());
}

#[test]
fn backup_is_used_only_when_every_primary_is_unusable() {
    let now = Instant::now();
    let pool = |change: &dyn Fn(&mut ServerSpec)| {
        let mut servers = specs(&[2, 1, 1]);
        servers[2].backup = true;
        for spec in &mut servers[..2] {
            spec.max_connections = 1;
            change(spec);
        }
        servers
    };
    for policy in ALL {
        // All primaries usable: the backup gets nothing.
        let counts = shares(&build(policy, &pool(&|_| {})), 5_000, now);
        assert_eq!(counts[2], 0, "{policy}: backup used while primaries were usable");
        // Every primary down, or draining: everything goes to the backup.
        for change in [&(|s: &mut ServerSpec| s.up = false) as &dyn Fn(&mut ServerSpec), &|s| s.weight = 0] {
            let counts = shares(&build(policy, &pool(change)), 100, now);
            assert_eq!(counts, [0, 0, 100], "{policy}");
        }
        // Every primary full: the backup takes the next connection.
        let mut servers = pool(&|_| {});
        servers[2].max_connections = 1;
        let balancer = build(policy, &servers);
        let mut worker = WorkerBalanceState::new(1);
        let (mut held, outcome) = hold_until_not_server(&balancer, &mut worker, now);
        assert_eq!(outcome, Pick::AllFull, "{policy}");
        assert_eq!(held.last(), Some(&2), "{policy}: the backup came before the primaries were full");
        held.sort();
        assert_eq!(held, [0, 1, 2], "{policy}");
        // Every primary excluded (tried already): the backup.
        let balancer = build(policy, &pool(&|_| {}));
        let mut tried = ExcludeSet::new();
        tried.insert(0);
        tried.insert(1);
        for i in 0..100 {
            let pick = balancer.select(&mut worker, client(i), &tried, now);
            assert_eq!(pick, Pick::Server(2), "{policy}");
            balancer.release(2, now);
        }
    }
}

#[test]
fn all_full_is_told_apart_from_none_usable() {
    let now = Instant::now();
    for policy in ALL {
        let mut servers = specs(&[1, 3]);
        servers.iter_mut().for_each(|s| s.max_connections = 2);
        let balancer = build(policy, &servers);
        let mut worker = WorkerBalanceState::new(1);
        let (held, outcome) = hold_until_not_server(&balancer, &mut worker, now);
        assert_eq!((held.len(), outcome), (4, Pick::AllFull), "{policy}");
        balancer.release(held[0], now);
        assert_eq!(balancer.select(&mut worker, client(9), &ExcludeSet::new(), now), Pick::Server(held[0]));

        servers.iter_mut().for_each(|s| s.up = false);
        let balancer = build(policy, &servers);
        assert_eq!(balancer.select(&mut worker, client(1), &ExcludeSet::new(), now), Pick::NoneUsable);
        assert_eq!(build(policy, &[]).select(&mut worker, client(1), &ExcludeSet::new(), now), Pick::NoneUsable);
    }
}

#[test]
fn weight_zero_gets_no_new_connection() {
    for policy in ALL {
        let counts = shares(&build(policy, &specs(&[1, 0, 1])), 10_000, Instant::now());
        assert_eq!(counts[1], 0, "{policy}");
        assert!(counts[0] > 0, "{policy}");
        let mut worker = WorkerBalanceState::new(1);
        let pick = build(policy, &specs(&[0, 0])).select(&mut worker, client(1), &ExcludeSet::new(), Instant::now());
        assert_eq!(pick, Pick::NoneUsable, "{policy}");
    }
}

#[test]
fn excluded_servers_are_never_picked() {
    let now = Instant::now();
    for policy in ALL {
        let balancer = build(policy, &specs(&[3, 1, 2, 1, 1]));
        let mut worker = WorkerBalanceState::new(1);
        let mut tried = ExcludeSet::new();
        tried.insert(0);
        tried.insert(2);
        let mut seen = HashSet::new();
        for i in 0..2_000 {
            let Pick::Server(s) = balancer.select(&mut worker, client(i), &tried, now) else {
                panic!("{policy}: no server");
            };
            assert!(!tried.contains(s), "{policy}: picked excluded server {s}");
            seen.insert(s);
            balancer.release(s, now);
        }
        if policy != Policy::First {
            assert_eq!(seen.len(), 3, "{policy}: {seen:?}");
        }
        // A connect retry goes somewhere else every time, until nothing is left.
        let mut tried = ExcludeSet::new();
        for _ in 0..5 {
            let Pick::Server(s) = balancer.select(&mut worker, client(77), &tried, now) else {
                panic!("{policy}: ran out early");
            };
            balancer.release(s, now);
            assert!(tried.insert(s));
        }
        assert_eq!(balancer.select(&mut worker, client(77), &tried, now), Pick::NoneUsable, "{policy}");
    }
}

#[test]
fn a_slow_starting_server_gets_the_share_of_its_effective_weight() {
    let start = Instant::now();
    let period = Duration::from_secs(100);
    let mut servers = specs(&[2, 2]);
    servers[1].slow_start = period;
    servers[1].up_since = Some(start);
    for policy in [Policy::RoundRobin, Policy::LeastConn, Policy::RandomTwo] {
        let balancer = build(policy, &servers);
        // Half-way through the ramp: effective weights 2 and 1.
        let counts = shares(&balancer, 200_000, start + period / 2);
        let tolerance = if policy == Policy::RandomTwo { 0.15 } else { 0.02 };
        assert_shares_follow(&counts, &[2.0, 1.0], tolerance, &policy.to_string());
        // Right after coming up: next to nothing. After the ramp: the full weight.
        let counts = shares(&balancer, 100_000, start);
        assert!(counts[1] < 500, "{policy}: {counts:?}");
        let counts = shares(&balancer, 100_000, start + period);
        assert_shares_follow(&counts, &[1.0, 1.0], 0.02, &policy.to_string());
    }
}

#[test]
fn invalid_pools_are_refused_with_the_reason() {
    let mut servers = specs(&[1, 1]);
    servers[1].name = "s0".into();
    assert_eq!(Balancer::build(Policy::RoundRobin, &servers, None).err(), Some(BuildError::DuplicateName("s0".into())));
    let heavy = specs(&[257]);
    assert!(matches!(Balancer::build(Policy::RoundRobin, &heavy, None), Err(BuildError::WeightOutOfRange { .. })));
    let table = |table_size| Balancer::build(Policy::SourceHash { table_size }, &specs(&[1, 1, 1]), None).err();
    assert_eq!(table(65_536), Some(BuildError::TableSizeNotPrime(65_536)));
    assert!(matches!(table(2), Some(BuildError::TableSizeOutOfRange { .. })));
    assert_eq!(table(65_521), None);
    assert_eq!("least-conn".parse(), Ok(Policy::LeastConn));
    assert!("leastconn".parse::<Policy>().is_err());
}

#[test]
fn the_largest_pool_builds_and_picks_under_every_policy() {
    // MAX_SERVERS servers with 256 distinct weights: the worst case of the round-robin period.
    let weights: Vec<u32> = (0..MAX_SERVERS as u32).map(|i| 1 + (i * 37) % 256).collect();
    let servers = specs(&weights);
    for policy in ALL {
        let started = Instant::now();
        let balancer = build(policy, &servers);
        let took = started.elapsed();
        // Debug builds are slow; this bounds only pathological growth (release: < 0.1 s).
        assert!(took < Duration::from_secs(20), "{policy}: {took:?}");
        let mut worker = WorkerBalanceState::new(1);
        assert!(matches!(balancer.select(&mut worker, client(1), &ExcludeSet::new(), started), Pick::Server(_)));
    }
}
