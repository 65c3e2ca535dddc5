//! `random-two`: the power of two random choices, weighted.
//!
//! Owns one tier's alias table. A pick draws two servers at random, each with probability
//! proportional to its weight, and takes the one with fewer active connections relative to its
//! effective weight (the first drawn on a tie, so that with no load the shares follow the
//! weights exactly). Two looks at the shared counters keep the load close to least-conn's
//! without any shared index to maintain, and the random draws keep workers that decide at the
//! same moment from all choosing the same server.
//!
//! Drawing with weights in O(1) uses Walker's alias method: position `c` is drawn uniformly,
//! then kept with probability `threshold[c] / 2^32`, else replaced by `alias[c]`; the table is
//! built once per balancer. One 64-bit random number serves both halves of a draw.
//!
//! An excluded, full or (slow start) passed-over candidate is redrawn a few times before an
//! exact scan of the tier. Never writes shared memory except the reserved counter.

use super::{first_fit, Ctx, Pick, ServerSpec, WorkerBalanceState};

/// Rounds of two draws before the exact scan.
const ROUNDS: usize = 4;

#[derive(Debug)]
pub(crate) struct RandomTwo {
    members: Box<[u16]>,
    /// Probability (out of 2^32) of keeping the drawn position.
    threshold: Box<[u64]>,
    /// Position taken instead when the drawn one is not kept.
    alias: Box<[u16]>,
}

/// A drawn server that may take the connection, with its load as read.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    server: usize,
    active: u32,
    weight: u32,
}

impl Candidate {
    /// Lower load relative to weight (exact, by cross-multiplication).
    #[inline]
    fn lighter_than(self, other: Candidate) -> bool {
        u64::from(self.active) * u64::from(other.weight) < u64::from(other.active) * u64::from(self.weight)
    }
}

impl RandomTwo {
    pub(crate) fn build(members: &[u16], specs: &[ServerSpec]) -> RandomTwo {
        let weights: Vec<u64> = members.iter().map(|&s| u64::from(specs[usize::from(s)].weight)).collect();
        let (threshold, alias) = alias_table(&weights);
        RandomTwo { members: members.into(), threshold: threshold.into(), alias: alias.into() }
    }

    #[inline]
    pub(crate) fn select(&self, ctx: &Ctx<'_>, worker: &mut WorkerBalanceState) -> Pick {
        if self.members.is_empty() {
            return Pick::NoneUsable;
        }
        for _ in 0..ROUNDS {
            let a = self.candidate(ctx, worker);
            let b = self.candidate(ctx, worker);
            let (first, second) = match (a, b) {
                (Some(a), Some(b)) if b.lighter_than(a) => (Some(b), Some(a)),
                (None, b) => (b, None),
                (a, b) => (a, b),
            };
            if let Some(c) = first {
                if ctx.reserve(c.server).is_some() {
                    return Pick::Server(c.server);
                }
            }
            if let Some(c) = second {
                if ctx.reserve(c.server).is_some() {
                    return Pick::Server(c.server);
                }
            }
        }
        let start = worker.rng.below(self.members.len() as u32) as usize;
        first_fit(ctx, &self.members, start)
    }

    /// One weighted draw, or `None` if the drawn server cannot take the connection now.
    #[inline(always)]
    fn candidate(&self, ctx: &Ctx<'_>, worker: &mut WorkerBalanceState) -> Option<Candidate> {
        let r = worker.rng.next_u64();
        let column = (((r >> 32) * self.members.len() as u64) >> 32) as usize;
        let p = if (r & 0xffff_ffff) < self.threshold[column] { column } else { usize::from(self.alias[column]) };
        let server = usize::from(self.members[p]);
        if ctx.excluded(server) || ctx.is_full(server) || ctx.ramp_skips(server, &mut worker.rng) {
            return None;
        }
        Some(Candidate { server, active: ctx.active(server), weight: ctx.weight(server) })
    }
}

/// Walker's alias table for `weights` (all > 0), in integers so that it is exact and the same
/// on every machine: each column holds 1/n of the total mass, split between itself and an alias.
fn alias_table(weights: &[u64]) -> (Vec<u64>, Vec<u16>) {
    let n = weights.len() as u64;
    let total: u64 = weights.iter().sum();
    // Column mass target: `total`; a position's mass: weight * n.
    let mut mass: Vec<u64> = weights.iter().map(|&w| w * n).collect();
    let mut threshold = vec![1u64 << 32; weights.len()];
    let mut alias: Vec<u16> = (0..weights.len()).map(|p| p as u16).collect();
    let mut small: Vec<usize> = (0..weights.len()).filter(|&p| mass[p] < total).collect();
    let mut large: Vec<usize> = (0..weights.len()).filter(|&p| mass[p] >= total).collect();
    while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
        threshold[s] = (mass[s] << 32) / total;
        alias[s] = l as u16;
        mass[l] -= total - mass[s];
        if mass[l] < total {
            large.pop();
            small.push(l);
        }
    }
    // Whatever is left holds exactly one column of mass (up to rounding): always kept.
    (threshold, alias)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alias_table_gives_each_position_its_weight_exactly() {
        let weights = [5u64, 1, 1, 17, 256, 3];
        let (threshold, alias) = alias_table(&weights);
        let n = weights.len() as u128;
        let total: u64 = weights.iter().sum();
        // Probability mass of each position, in units of 2^-32 / n.
        let mut mass = vec![0u128; weights.len()];
        for c in 0..weights.len() {
            mass[c] += u128::from(threshold[c]);
            mass[usize::from(alias[c])] += (1u128 << 32) - u128::from(threshold[c]);
        }
        for (p, &w) in weights.iter().enumerate() {
            let expected = (u128::from(w) << 32) * n / u128::from(total);
            let error = mass[p].abs_diff(expected);
            assert!(error <= n, "position {p}: mass {} expected {expected}", mass[p]);
        }
    }
}
