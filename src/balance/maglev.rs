//! `source-hash`: Maglev consistent hashing of the client IP address.
//!
//! Owns one tier's Maglev lookup table (Eisenbud et al., "Maglev: A Fast and Reliable Software
//! Network Load Balancer", NSDI 2016): a prime number M of entries (65537 by default), each
//! naming a server. A client's IP address hashes to an entry; the pick is that entry's server,
//! one hash and one read.
//!
//! The table is built off the hot path, whenever the server set or health changes. Each server
//! has its own permutation of the entries, `offset + j * skip (mod M)`, with `offset` and `skip`
//! taken from a hash of its name; servers take turns claiming their next free preferred entry
//! until the table is full, a server of weight w getting w turns for every `max weight` turns of
//! the heaviest one, so that entries (and clients) are shared in proportion to weight. Removing
//! one of N servers frees its entries, which go to the others, while the entries of the others
//! mostly stay put: about 1/N of the clients move, plus a small fraction (tested: at most 1 %).
//!
//! Two ringlb processes with the same servers must send a client to the same server, so
//! nothing here depends on anything but names, weights and the table size: the hash is fixed and
//! seeded ([`super::hash`]), servers take turns in the order of their name's hash (not their
//! order in the file), and neither indices nor memory addresses enter any hash.
//!
//! A client whose server is excluded (connect retry) or full is rehashed a few times, which
//! gives it a deterministic second choice, before an exact scan that starts at a place chosen
//! by the client's hash. Never writes shared memory except the reserved counter.

use std::net::IpAddr;

use super::hash::{hash_bytes, hash_ip, mix, reduce, SEED};
use super::{first_fit, Ctx, Pick, ServerSpec};

/// Rehashes of a client whose entry's server cannot take it, before the exact scan.
const REHASHES: usize = 4;

const NONE: u16 = u16::MAX;

#[derive(Debug)]
pub(crate) struct Maglev {
    /// Server index of every entry; empty if the tier has no server.
    table: Box<[u16]>,
    /// The tier's servers in the order of their name's hash, for the exact scan.
    members: Box<[u16]>,
}

impl Maglev {
    pub(crate) fn build(members: &[u16], specs: &[ServerSpec], size: usize) -> Maglev {
        // Turn order by identity, so that the order of the servers in the file does not matter.
        let mut ordered: Vec<(u64, &str, u16)> = members
            .iter()
            .map(|&s| {
                let name = specs[usize::from(s)].name.as_str();
                (hash_bytes(SEED, name.as_bytes()), name, s)
            })
            .collect();
        ordered.sort_unstable();
        let members: Box<[u16]> = ordered.iter().map(|&(_, _, s)| s).collect();
        if members.is_empty() {
            return Maglev { table: Box::new([]), members };
        }

        let m = size as u64;
        // Current entry of each server's permutation, and its step.
        let mut at: Vec<u64> = Vec::with_capacity(members.len());
        let mut skip: Vec<u64> = Vec::with_capacity(members.len());
        for &(_, name, _) in &ordered {
            at.push(hash_bytes(SEED ^ 1, name.as_bytes()) % m);
            skip.push(hash_bytes(SEED ^ 2, name.as_bytes()) % (m - 1) + 1);
        }
        let weights: Vec<u32> = members.iter().map(|&s| specs[usize::from(s)].weight).collect();
        let heaviest = weights.iter().copied().max().unwrap_or(1);
        let mut credit = vec![0u32; members.len()];

        let mut table = vec![NONE; size];
        let mut filled = 0;
        'fill: loop {
            for i in 0..members.len() {
                credit[i] += weights[i];
                while credit[i] >= heaviest {
                    credit[i] -= heaviest;
                    // Claim this server's next preferred entry that is still free. A full cycle
                    // of the permutation visits every entry (M is prime), so this ends.
                    loop {
                        let entry = at[i] as usize;
                        at[i] += skip[i]; // < 2m: one subtraction is a cheaper modulo
                        if at[i] >= m {
                            at[i] -= m;
                        }
                        if table[entry] == NONE {
                            table[entry] = members[i];
                            filled += 1;
                            break;
                        }
                    }
                    if filled == size {
                        break 'fill;
                    }
                }
            }
        }
        Maglev { table: table.into(), members }
    }

    #[inline]
    pub(crate) fn select(&self, ctx: &Ctx<'_>, client: IpAddr) -> Pick {
        if self.table.is_empty() {
            return Pick::NoneUsable;
        }
        let first_hash = hash_ip(SEED, client);
        let mut hash = first_hash;
        for _ in 0..REHASHES {
            let server = usize::from(self.table[reduce(hash, self.table.len())]);
            if !ctx.excluded(server) && ctx.reserve(server).is_some() {
                return Pick::Server(server);
            }
            hash = mix(hash ^ 0x6a09_e667_f3bc_c909);
        }
        first_fit(ctx, &self.members, reduce(first_hash, self.members.len()))
    }

    /// The server index of every entry (for tests and diagnostics).
    #[cfg(test)]
    pub(crate) fn table(&self) -> &[u16] {
        &self.table
    }

    /// The entry a client maps to before any rehash.
    #[cfg(test)]
    pub(crate) fn entry_of(&self, client: IpAddr) -> usize {
        reduce(hash_ip(SEED, client), self.table.len())
    }
}

/// Trial division; table sizes are at most 2^24, so at most 2^12 divisions, once per build.
pub(crate) fn is_prime(n: u32) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n % 2 == 0 {
        return false;
    }
    let mut d = 3;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 2;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::{Balancer, ExcludeSet, Pick, Policy, WorkerBalanceState, DEFAULT_TABLE_SIZE};
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
    use std::time::Instant;

    fn servers(n: usize) -> Vec<ServerSpec> {
        (0..n).map(|i| ServerSpec::new(&format!("web-{i}"), SocketAddr::from(([10, 0, 0, i as u8], 80)))).collect()
    }

    fn all(specs: &[ServerSpec]) -> Vec<u16> {
        (0..specs.len() as u16).collect()
    }

    /// The table as server names, entry by entry.
    fn names(specs: &[ServerSpec], size: usize) -> Vec<String> {
        let maglev = Maglev::build(&all(specs), specs, size);
        maglev.table().iter().map(|&s| specs[usize::from(s)].name.clone()).collect()
    }

    #[test]
    fn maglev_tables_are_identical_whatever_the_order_of_servers_and_builds() {
        let specs = servers(7);
        let mut reversed = specs.clone();
        reversed.reverse();
        let mut shuffled = specs.clone();
        shuffled.rotate_left(3);
        shuffled.swap(0, 5);
        // Built in one order of calls...
        let (a, b) = (names(&specs, 65_537), names(&reversed, 65_537));
        // ...and in another, interleaved with an unrelated build.
        let _ = names(&servers(3), 1_009);
        let c = names(&shuffled, 65_537);
        let d = names(&specs, 65_537);
        assert!(a == b && b == c && c == d);
    }

    #[test]
    fn maglev_placement_is_pinned_across_processes_and_versions() {
        // Another ringlb process with the same servers, or the next version, must send these
        // clients to these servers. Changing this mapping moves clients between servers.
        let specs = servers(5);
        let balancer = match Balancer::build(Policy::SourceHash { table_size: DEFAULT_TABLE_SIZE }, &specs, None) {
            Ok(b) => b,
            Err(e) => panic!("{e}"),
        };
        let mut worker = WorkerBalanceState::new(1);
        let clients: [IpAddr; 6] = [
            Ipv4Addr::new(192, 0, 2, 1).into(),
            Ipv4Addr::new(192, 0, 2, 2).into(),
            Ipv4Addr::new(198, 51, 100, 77).into(),
            Ipv4Addr::new(10, 1, 2, 3).into(),
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).into(),
            Ipv6Addr::new(0x2001, 0xdb8, 0xbeef, 0, 0, 0, 0, 0x42).into(),
        ];
        let placed: Vec<&str> = clients
            .iter()
            .map(|&client| match balancer.select(&mut worker, client, &ExcludeSet::new(), Instant::now()) {
                Pick::Server(s) => {
                    balancer.release(s, Instant::now());
                    specs[s].name.as_str()
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(placed, PINNED_PLACEMENT);
        let maglev = Maglev::build(&all(&specs), &specs, 65_537);
        let first_entries: Vec<u16> = maglev.table()[..8].to_vec();
        assert_eq!(first_entries, PINNED_ENTRIES);
    }

    const PINNED_PLACEMENT: [&str; 6] = ["web-4", "web-0", "web-1", "web-2", "web-4", "web-4"];
    const PINNED_ENTRIES: [u16; 8] = [3, 3, 4, 4, 3, 0, 1, 3];

    /// Fraction of the key space (entries) whose server changes when server `removed` of `n`
    /// is taken out.
    fn moved_when_removing(n: usize, removed: usize) -> f64 {
        let specs = servers(n);
        let before = names(&specs, DEFAULT_TABLE_SIZE as usize);
        let mut fewer = specs.clone();
        fewer.remove(removed);
        let after = names(&fewer, DEFAULT_TABLE_SIZE as usize);
        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        moved as f64 / before.len() as f64
    }

    #[test]
    fn maglev_removing_one_of_n_servers_moves_at_most_one_nth_plus_one_percent() {
        for (n, removed) in [(3, 1), (5, 0), (10, 7), (20, 3), (50, 49), (100, 42), (256, 100)] {
            let moved = moved_when_removing(n, removed);
            let bound = 1.0 / n as f64 + 0.01;
            assert!(moved <= bound, "{n} servers: {:.3} % of keys moved, bound {:.3} %", moved * 100.0, bound * 100.0);
        }
    }

    #[test]
    fn maglev_entries_follow_weights() {
        let mut specs = servers(4);
        for (spec, weight) in specs.iter_mut().zip([1, 2, 5, 256]) {
            spec.weight = weight;
        }
        let maglev = Maglev::build(&all(&specs), &specs, 65_537);
        for (s, weight) in [1.0, 2.0, 5.0, 256.0].iter().enumerate() {
            let entries = maglev.table().iter().filter(|&&e| usize::from(e) == s).count() as f64;
            let expected = 65_537.0 * weight / 264.0;
            assert!(
                (entries - expected).abs() <= 0.01 * expected + 1.0,
                "server {s}: {entries} entries, expected {expected}"
            );
        }
    }

    #[test]
    fn a_client_keeps_its_server_and_a_retry_has_a_fixed_second_choice() {
        let specs = servers(8);
        let maglev = Maglev::build(&all(&specs), &specs, 65_537);
        let client: IpAddr = Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 3, 4, 5, 6).into();
        let mapped: IpAddr = Ipv4Addr::new(203, 0, 113, 9).to_ipv6_mapped().into();
        assert_eq!(maglev.entry_of(mapped), maglev.entry_of(Ipv4Addr::new(203, 0, 113, 9).into()));
        let first = usize::from(maglev.table()[maglev.entry_of(client)]);
        let mut seconds = std::collections::HashSet::new();
        for _ in 0..3 {
            let balancer = match Balancer::build(Policy::SourceHash { table_size: 65_537 }, &specs, None) {
                Ok(b) => b,
                Err(e) => panic!("{e}"),
            };
            let mut worker = WorkerBalanceState::new(9);
            let mut tried = ExcludeSet::new();
            assert_eq!(balancer.select(&mut worker, client, &tried, Instant::now()), Pick::Server(first));
            tried.insert(first);
            let Pick::Server(second) = balancer.select(&mut worker, client, &tried, Instant::now()) else {
                panic!("no second choice");
            };
            assert_ne!(second, first);
            seconds.insert(second);
        }
        assert_eq!(seconds.len(), 1, "the second choice depends only on the client");
    }

    #[test]
    fn primes_are_recognised() {
        let primes: Vec<u32> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(primes, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(65_537));
        assert!(!is_prime(65_536));
        assert!(!is_prime(65_535));
        assert!(is_prime(16_777_213));
    }
}
