//! pick-bench: nanoseconds per pick for every balancing policy, at 2, 16 and 256 servers.
//!
//! One worker, no I/O: each iteration is what the data path does for one connection,
//! `select` (which reserves the slot) then `release`. The pool is kept busy in a steady state
//! chosen so that every policy does its real work (see `prepare`). Each case is warmed up, then
//! timed over several runs, interleaved with the other cases; the median run is reported, as a
//! markdown table on stdout.
//! A last row times what least-conn would cost as a plain scan of every server's counter
//! (the reason it uses a tree instead).
//!
//! Run in release: `cargo run --release -p ringlb-bench --bin pick-bench [POLICY [SERVERS]]`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Instant;

use ringlb::balance::{Balancer, ExcludeSet, Pick, Policy, ServerSpec, WorkerBalanceState, DEFAULT_TABLE_SIZE};

const SIZES: [usize; 3] = [2, 16, 256];
const WARM_UP: usize = 200_000;
/// Picks run, untimed, before each timed run (the previous case evicted some of the caches).
const REWARM: usize = 20_000;
const ITERATIONS: usize = 1_000_000;
const RUNS: usize = 7;
/// Distinct client addresses cycled through (source-hash reads a different table entry each).
const CLIENTS: usize = 4096;

const POLICIES: [Policy; 5] = [
    Policy::RoundRobin,
    Policy::LeastConn,
    Policy::SourceHash { table_size: DEFAULT_TABLE_SIZE },
    Policy::RandomTwo,
    Policy::First,
];

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pick-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    // Optional: one policy, and one pool size, to measure (e.g. under a profiler).
    let mut args = std::env::args().skip(1);
    let only = match args.next() {
        None => None,
        Some(name) => Some(name.parse::<Policy>().map_err(|e| e.to_string())?),
    };
    let sizes: Vec<usize> = match args.next() {
        None => SIZES.to_vec(),
        Some(n) => match n.parse::<usize>() {
            Ok(n) if n > 0 => vec![n],
            _ => return Err(format!("`{n}` is not a pool size")),
        },
    };
    let clients = clients();
    let mut labels: Vec<String> = Vec::new();
    let mut cases: Vec<Case<'_>> = Vec::new();
    for policy in POLICIES.into_iter().filter(|p| only.is_none_or(|o| o == *p)) {
        for &n in &sizes {
            let case = policy_case(policy, n, &clients).map_err(|e| format!("{policy}, {n} servers: {e}"))?;
            cases.push(case);
        }
        labels.push(policy.to_string());
    }
    if only.is_none() {
        for &n in &sizes {
            cases.push(scan_case(n)?);
        }
        labels.push("(scan of every counter, for reference)".into());
    }

    // Rounds interleave the cases, so that a burst of other load on the machine spoils one run
    // of several cases rather than every run of one case; the median drops it.
    let mut results: Vec<Vec<f64>> = vec![Vec::with_capacity(RUNS); cases.len()];
    for case in &mut cases {
        (case.run)(WARM_UP / case.divisor)?;
    }
    for _ in 0..RUNS {
        for (case, results) in cases.iter_mut().zip(&mut results) {
            (case.run)(REWARM / case.divisor)?;
            results.push((case.run)(ITERATIONS / case.divisor)?);
        }
    }

    let header: Vec<String> = sizes.iter().map(|n| format!("{n} servers")).collect();
    println!("| policy | {} |", header.join(" | "));
    println!("|---|{}", "---:|".repeat(sizes.len()));
    for (label, row) in labels.iter().zip(results.chunks_mut(sizes.len())) {
        let cells: Vec<String> = row
            .iter_mut()
            .map(|runs| {
                runs.sort_by(f64::total_cmp);
                format!("{:.1}", runs[runs.len() / 2])
            })
            .collect();
        println!("| {label} | {} |", cells.join(" | "));
    }
    println!();
    println!(
        "ns per pick (select + release), median of {RUNS} interleaved runs of {ITERATIONS} picks, \
         one worker."
    );
    Ok(())
}

/// One measured cell of the table: `run(n)` does `n` picks and returns nanoseconds per pick.
struct Case<'a> {
    run: Box<dyn FnMut(usize) -> Result<f64, String> + 'a>,
    /// Slow cases run this many times fewer picks.
    divisor: usize,
}

/// Mixed weights (1..=4), so that weighted policies cannot take shortcuts.
fn specs(policy: Policy, servers: usize) -> Vec<ServerSpec> {
    (0..servers)
        .map(|i| {
            let addr = SocketAddr::from(([10, (i >> 8) as u8, i as u8, 1], 8080));
            let mut spec = ServerSpec::new(&format!("server-{i}"), addr);
            spec.weight = 1 + (i as u32 * 7) % 4;
            if policy == Policy::First {
                spec.max_connections = 4;
            }
            spec
        })
        .collect()
}

/// Three IPv4 clients for one IPv6 client, spread over the address space.
fn clients() -> Vec<IpAddr> {
    (0..CLIENTS as u64)
        .map(|i| {
            let x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            if i % 4 == 3 {
                IpAddr::V6(Ipv6Addr::from(u128::from(x) << 64 | u128::from(x.rotate_left(17))))
            } else {
                IpAddr::V4(Ipv4Addr::from((x >> 32) as u32))
            }
        })
        .collect()
}

/// Holds connections so that every policy works in a realistic steady state: least-conn and
/// random-two see uneven, non-zero counts; first has its first half of servers full (each at
/// max_connections 4), so each pick looks past n/2 full servers.
fn prepare(balancer: &Balancer, policy: Policy, servers: usize, worker: &mut WorkerBalanceState) -> Result<(), String> {
    let held = match policy {
        Policy::First => 4 * (servers / 2),
        _ => 3 * servers + servers / 3,
    };
    for i in 0..held {
        let client = IpAddr::V4(Ipv4Addr::from(i as u32));
        match balancer.select(worker, client, &ExcludeSet::new(), Instant::now()) {
            Pick::Server(_) => {}
            other => return Err(format!("could not hold connection {i}: {other:?}")),
        }
    }
    Ok(())
}

fn policy_case(policy: Policy, servers: usize, clients: &[IpAddr]) -> Result<Case<'_>, String> {
    let balancer = Balancer::build(policy, &specs(policy, servers), None).map_err(|e| e.to_string())?;
    let mut worker = WorkerBalanceState::new(1);
    prepare(&balancer, policy, servers, &mut worker)?;
    let exclude = ExcludeSet::new();
    let run = move |iterations: usize| {
        // One clock read per run, as the data path reads it once per batch of completions.
        let now = Instant::now();
        let start = Instant::now();
        for i in 0..iterations {
            let client = black_box(clients[i % CLIENTS]);
            match black_box(balancer.select(&mut worker, client, black_box(&exclude), now)) {
                Pick::Server(s) => balancer.release(s, now),
                other => return Err(format!("pick {i} gave {other:?}")),
            }
        }
        Ok(start.elapsed().as_nanos() as f64 / iterations as f64)
    };
    Ok(Case { run: Box::new(run), divisor: 1 })
}

/// The naive least-conn: read every server's shared counter and keep the lowest
/// active / weight (no reservation, no release: the scan alone).
fn scan_case(servers: usize) -> Result<Case<'static>, String> {
    let specs = specs(Policy::LeastConn, servers);
    let balancer = Balancer::build(Policy::LeastConn, &specs, None).map_err(|e| e.to_string())?;
    let mut worker = WorkerBalanceState::new(1);
    prepare(&balancer, Policy::LeastConn, servers, &mut worker)?;
    let weights: Vec<u64> = specs.iter().map(|s| u64::from(s.weight)).collect();
    let run = move |iterations: usize| {
        let counters = balancer.counters();
        let start = Instant::now();
        for _ in 0..iterations {
            let weights = black_box(&weights);
            let (mut best, mut best_active, mut best_weight) = (0, u64::from(counters.active(0)), weights[0]);
            for (s, &weight) in weights.iter().enumerate().skip(1) {
                let active = u64::from(counters.active(s));
                if active * best_weight < best_active * weight {
                    (best, best_active, best_weight) = (s, active, weight);
                }
            }
            black_box(best);
        }
        Ok(start.elapsed().as_nanos() as f64 / iterations as f64)
    };
    Ok(Case { run: Box::new(run), divisor: (servers / 16).max(1) })
}
