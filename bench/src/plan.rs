//! How one workload is split over worker processes and threads: which connection slots each
//! thread owns, which source address and target each slot uses, and each thread's share of the
//! request rate.
//!
//! Pure arithmetic, unit-tested; it never opens a socket. Slots are numbered globally so that a
//! run split over three processes uses exactly the same addresses as one process would.

use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Range;

/// Most connections put on one source address. The ephemeral range has ~28,000 ports per
/// (source, destination) pair, but connect() searches the even half first, so once a pair holds
/// more than ~14,000 connections every further connect scans that half to its end (measured: at
/// 16,700 connections per pair the ramp of a 50,000-connection hold through one proxy address
/// slowed from ~7,000 to ~500 connections/s). 10,000 stays below that with room for TIME_WAIT.
pub const MAX_CONNS_PER_SOURCE: usize = 10_000;

/// Most connection slots one worker process takes: the descriptor limit is 20,000 and the
/// process needs a few descriptors of its own.
pub const MAX_CONNS_PER_PROC: usize = 18_000;

#[derive(Debug, Clone)]
pub struct Split {
    pub conns: usize,
    pub procs: usize,
    pub threads: usize,
    pub sources: Vec<Ipv4Addr>,
    pub targets: Vec<SocketAddr>,
}

impl Split {
    /// `sources == 0` picks as many consecutive addresses from `source_base` as needed to stay
    /// under [`MAX_CONNS_PER_SOURCE`]; `procs == 0` picks enough processes for the descriptor limit.
    pub fn new(
        conns: usize,
        procs: usize,
        threads: usize,
        source_base: Option<Ipv4Addr>,
        sources: usize,
        targets: Vec<SocketAddr>,
    ) -> Self {
        let procs = if procs == 0 { conns.div_ceil(MAX_CONNS_PER_PROC).max(1) } else { procs };
        let sources = match source_base {
            None => Vec::new(),
            Some(base) => {
                let n = if sources == 0 { conns.div_ceil(MAX_CONNS_PER_SOURCE).max(1) } else { sources };
                (0..n as u32).map(|i| Ipv4Addr::from(u32::from(base).wrapping_add(i))).collect()
            }
        };
        Self { conns, procs, threads: threads.max(1), sources, targets }
    }

    /// Global slot numbers owned by `thread` of process `proc`. Ranges are contiguous, disjoint
    /// and cover `0..conns`; sizes differ by at most one.
    pub fn slots(&self, proc: usize, thread: usize) -> Range<usize> {
        let parts = self.procs * self.threads;
        let part = proc * self.threads + thread;
        even(self.conns, parts, part)
    }

    /// Slots of a whole process.
    #[cfg(test)]
    pub fn proc_slots(&self, proc: usize) -> Range<usize> {
        let first = self.slots(proc, 0).start;
        let last = self.slots(proc, self.threads - 1).end;
        first..last
    }

    /// The share of a total rate carried by `slots`, proportional to its size.
    pub fn rate_share(&self, total: f64, slots: &Range<usize>) -> f64 {
        if self.conns == 0 {
            return 0.0;
        }
        total * slots.len() as f64 / self.conns as f64
    }

    pub fn source(&self, slot: usize) -> Option<Ipv4Addr> {
        if self.sources.is_empty() {
            None
        } else {
            Some(self.sources[slot % self.sources.len()])
        }
    }

    pub fn target(&self, slot: usize) -> SocketAddr {
        self.targets[slot % self.targets.len()]
    }
}

/// Part `part` of `n` items cut into `parts` nearly equal contiguous ranges.
fn even(n: usize, parts: usize, part: usize) -> Range<usize> {
    let base = n / parts;
    let extra = n % parts;
    let start = part * base + part.min(extra);
    let len = base + usize::from(part < extra);
    start..start + len
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(conns: usize, procs: usize, threads: usize) -> Split {
        let targets = vec![SocketAddr::from(([127, 0, 0, 1], 80)), SocketAddr::from(([127, 0, 0, 1], 81))];
        Split::new(conns, procs, threads, Some(Ipv4Addr::new(127, 0, 0, 2)), 0, targets)
    }

    #[test]
    fn slot_ranges_partition_every_connection_exactly_once() {
        for (conns, procs, threads) in [(50_000, 3, 2), (7, 2, 3), (3, 1, 4), (64, 1, 2)] {
            let s = split(conns, procs, threads);
            let mut next = 0;
            for p in 0..procs {
                for t in 0..threads {
                    let r = s.slots(p, t);
                    assert_eq!(r.start, next, "{conns}/{procs}/{threads}");
                    next = r.end;
                }
            }
            assert_eq!(next, conns);
        }
    }

    #[test]
    fn auto_split_respects_descriptor_and_port_limits() {
        let s = split(50_000, 0, 1);
        assert_eq!(s.procs, 3);
        assert!((0..3).all(|p| s.proc_slots(p).len() <= MAX_CONNS_PER_PROC));
        assert_eq!(s.sources.len(), 5);
        assert_eq!(s.sources[4], Ipv4Addr::new(127, 0, 0, 6));
        let mut per_source = [0usize; 5];
        for slot in 0..50_000 {
            let a = s.source(slot).map(|a| a.octets()[3]).unwrap_or(0);
            per_source[usize::from(a) - 2] += 1;
        }
        assert!(per_source.iter().all(|&n| n <= MAX_CONNS_PER_SOURCE));
        assert_eq!(split(64, 0, 2).procs, 1);
    }

    #[test]
    fn rate_shares_add_up_to_the_total() {
        let s = split(10, 3, 1);
        let sum: f64 = (0..3).map(|p| s.rate_share(900.0, &s.proc_slots(p))).sum();
        assert!((sum - 900.0).abs() < 1e-9);
    }

    #[test]
    fn targets_alternate_between_slots() {
        let s = split(4, 1, 1);
        assert_ne!(s.target(0), s.target(1));
        assert_eq!(s.target(0), s.target(2));
    }
}
