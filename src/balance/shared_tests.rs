//! What workers and successive balancers share, tested with real threads and real swaps:
//! max_connections under racing workers, counts carried over by name, and the repairs that
//! bring the least-conn tree and the first bitmap back in step with the counters.

use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::thread;

use super::hash::mix;
use super::tests::{build, client, specs, ALL};
use super::*;

#[test]
fn max_connections_is_never_exceeded_by_concurrent_workers() {
    const MAX: u32 = 2;
    const THREADS: u64 = 4;
    for policy in ALL {
        let mut servers = specs(&[1, 2, 3, 1]);
        servers.iter_mut().for_each(|s| s.max_connections = MAX);
        let balancer = build(policy, &servers);
        // Counted by the test itself, independently of the balancer's counters: raised after a
        // pick, lowered before its release, so it never exceeds the balancer's own count.
        let holders: Vec<AtomicU32> = (0..servers.len()).map(|_| AtomicU32::new(0)).collect();
        let all_full = AtomicU32::new(0);
        let start = std::sync::Barrier::new(THREADS as usize);
        thread::scope(|scope| {
            for t in 0..THREADS {
                let (balancer, holders, all_full, start) = (&balancer, &holders, &all_full, &start);
                scope.spawn(move || {
                    start.wait();
                    let (mut worker, now) = (WorkerBalanceState::new(t), Instant::now());
                    let mut held = std::collections::VecDeque::new();
                    for i in 0..20_000u64 {
                        match balancer.select(&mut worker, client(i * THREADS + t), &ExcludeSet::new(), now) {
                            Pick::Server(s) => {
                                let now_held = holders[s].fetch_add(1, SeqCst) + 1;
                                assert!(now_held <= MAX, "{policy}: server {s} holds {now_held}");
                                assert!(balancer.counters().active(s) <= MAX);
                                held.push_back(s);
                            }
                            Pick::AllFull => {
                                all_full.fetch_add(1, SeqCst);
                            }
                            Pick::NoneUsable => panic!("{policy}: none usable"),
                        }
                        // A connection ends every 7 picks: alone, a thread fills all 8
                        // slots; together, the threads race for them.
                        if i % 7 == 0 {
                            if let Some(s) = held.pop_front() {
                                holders[s].fetch_sub(1, SeqCst);
                                balancer.release(s, now);
                            }
                        }
                    }
                    for s in held {
                        holders[s].fetch_sub(1, SeqCst);
                        balancer.release(s, now);
                    }
                });
            }
        });
        assert!(all_full.load(SeqCst) > 0, "{policy}: the load never filled the servers");
        assert!((0..servers.len()).all(|s| balancer.counters().active(s) == 0), "{policy}: leaked counts");
    }
}

#[test]
fn counts_carry_over_to_the_next_balancer_by_name() {
    let now = Instant::now();
    let servers = specs(&[1, 1, 1]);
    let old = build(Policy::LeastConn, &servers);
    let mut worker = WorkerBalanceState::new(1);
    for i in 0..6 {
        assert!(matches!(old.select(&mut worker, client(i), &ExcludeSet::new(), now), Pick::Server(_)));
    }
    // s1 removed, s0 and s2 swapped, s3 added.
    let mut next = vec![servers[2].clone(), servers[0].clone()];
    next.push(ServerSpec::new("s3", SocketAddr::from(([127, 0, 0, 1], 9000))));
    let new = match Balancer::build(Policy::LeastConn, &next, Some(&old)) {
        Ok(b) => b,
        Err(e) => panic!("{e}"),
    };
    assert_eq!((new.counters().active(0), new.counters().active(1), new.counters().active(2)), (2, 2, 0));
    // least-conn on the new balancer sends the next connections to the empty newcomer.
    assert_eq!(new.select(&mut worker, client(1), &ExcludeSet::new(), now), Pick::Server(2));
    // Releases through the old balancer are seen by the new one.
    old.release(0, now);
    assert_eq!(new.counters().active(1), 1);
}

#[test]
fn a_balancer_is_shared_by_workers_and_a_worker_state_moves_with_its_worker() {
    fn shared<T: Send + Sync>() {}
    fn sent<T: Send>() {}
    shared::<Balancer>();
    sent::<WorkerBalanceState>();
}

#[test]
fn least_conn_is_exact_again_once_concurrent_updates_stop() {
    let servers = 16;
    let balancer = build(Policy::LeastConn, &specs(&vec![1; servers]));
    let start = std::sync::Barrier::new(4);
    // Four workers race through the tree: picks and releases interleave on every node.
    thread::scope(|scope| {
        for t in 0..4u64 {
            let (balancer, start) = (&balancer, &start);
            scope.spawn(move || {
                let (mut worker, now) = (WorkerBalanceState::new(t), Instant::now());
                let mut held = std::collections::VecDeque::new();
                start.wait();
                for i in 0..30_000u64 {
                    if let Pick::Server(s) = balancer.select(&mut worker, client(i), &ExcludeSet::new(), now) {
                        held.push_back(s);
                    }
                    if held.len() > (mix(i ^ t) % 8) as usize {
                        if let Some(s) = held.pop_front() {
                            balancer.release(s, now);
                        }
                    }
                }
                for s in held {
                    balancer.release(s, now);
                }
            });
        }
    });
    // One worker alone: after one sweep of the tree (fewer picks than servers), every pick
    // goes to a least loaded server again.
    let (mut worker, now) = (WorkerBalanceState::new(9), Instant::now());
    for i in 0..servers as u64 {
        if let Pick::Server(s) = balancer.select(&mut worker, client(i), &ExcludeSet::new(), now) {
            balancer.release(s, now);
        }
    }
    for i in 0..5 * servers as u64 {
        let before: Vec<u32> = (0..servers).map(|s| balancer.counters().active(s)).collect();
        let Pick::Server(s) = balancer.select(&mut worker, client(i), &ExcludeSet::new(), now) else {
            panic!("no server");
        };
        assert_eq!(before[s], *before.iter().min().unwrap_or(&0), "pick {i} went to {s}: {before:?}");
    }
}

/// Holds `n` connections on `server`, by excluding every other server.
fn hold_on(balancer: &Balancer, server: usize, n: usize, now: Instant) {
    let mut others = ExcludeSet::new();
    for s in (0..balancer.counters().len()).filter(|&s| s != server) {
        others.insert(s);
    }
    let mut worker = WorkerBalanceState::new(5);
    for _ in 0..n {
        assert_eq!(balancer.select(&mut worker, client(0), &others, now), Pick::Server(server));
    }
}

#[test]
fn least_conn_learns_of_releases_made_through_an_older_balancer() {
    let now = Instant::now();
    let servers = specs(&[1, 1, 1, 1]);
    let old = build(Policy::LeastConn, &servers);
    for (server, n) in [(0, 4), (1, 6), (2, 3), (3, 3)] {
        hold_on(&old, server, n, now);
    }
    let new = match Balancer::build(Policy::LeastConn, &servers, Some(&old)) {
        Ok(b) => b,
        Err(e) => panic!("{e}"),
    };
    // Connections opened through the old balancer end through it: server 1 drops from 6 to 1,
    // which no pick or release through the new balancer's tree has seen. (Its tree holds server
    // 0 for the subtree of servers 0 and 1, and that subtree loses to servers 2 and 3.)
    for _ in 0..5 {
        old.release(1, now);
    }
    let mut worker = WorkerBalanceState::new(1);
    let picks: Vec<usize> = (0..8)
        .map(|i| match new.select(&mut worker, client(i), &ExcludeSet::new(), now) {
            Pick::Server(s) => {
                new.release(s, now);
                s
            }
            other => panic!("{other:?}"),
        })
        .collect();
    // The sweep replays every internal node (3 here) within as many picks.
    assert!(picks[3..].iter().all(|&s| s == 1), "{picks:?}");
}

#[test]
fn first_learns_of_releases_made_through_an_older_balancer() {
    let now = Instant::now();
    let mut servers = specs(&[1, 1, 1]);
    servers.iter_mut().for_each(|s| s.max_connections = 1);
    let old = build(Policy::First, &servers);
    let mut worker = WorkerBalanceState::new(1);
    assert_eq!(old.select(&mut worker, client(0), &ExcludeSet::new(), now), Pick::Server(0));
    let new = match Balancer::build(Policy::First, &servers, Some(&old)) {
        Ok(b) => b,
        Err(e) => panic!("{e}"),
    };
    // The new balancer finds server 0 full and marks it so.
    assert_eq!(new.select(&mut worker, client(1), &ExcludeSet::new(), now), Pick::Server(1));
    new.release(1, now);
    // Its connection, opened through the old balancer, ends through it.
    old.release(0, now);
    let picks: Vec<usize> = (0..6)
        .map(|i| match new.select(&mut worker, client(i), &ExcludeSet::new(), now) {
            Pick::Server(s) => {
                new.release(s, now);
                s
            }
            other => panic!("{other:?}"),
        })
        .collect();
    // Each pick re-checks one server's mark: within 3 picks server 0 is first again.
    assert!(picks[3..].iter().all(|&s| s == 0), "{picks:?}");
}
