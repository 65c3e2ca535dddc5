//! `round-robin`: smooth weighted round robin, as nginx does it, precomputed.
//!
//! Owns the order in which one tier's servers take turns. nginx's smooth weighted round robin
//! interleaves heavy and light servers (weights 5, 1, 1 give a a b a c a a, not a a a a a b c),
//! and its order repeats with a period of sum(weights) / gcd(weights) picks. Running it per pick
//! costs O(n) (every server's running weight is updated); this module runs it once at build time
//! over one period and stores the resulting order, so a pick is one array read and a cursor
//! increment, O(1) whatever the number of servers.
//!
//! The cursor is one ticket counter per tier shared by all workers (on its own cache line), so
//! the process as a whole follows the smooth order: two successive connections go to two servers
//! whichever workers the kernel hands them to (with per-worker cursors, `curl` twice in a row may
//! well reach the same server). It costs one atomic add per pick, the same kind of write the pick
//! already makes to reserve a slot on the chosen server.
//!
//! Per pick, a server that is excluded, full or passed over by its slow-start ramp is skipped and
//! the walk goes on; after a few such skips it falls back to an exact scan of the tier.
//! Writes no shared memory but the ticket counter and the reserved server's counter.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{first_fit, Ctx, Pick, ServerSpec, WorkerBalanceState};

/// Entries of the period tried before the exact scan.
const PROBES: usize = 16;

/// The shared ticket counter, alone on its cache line.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Ticket(AtomicU64);

#[derive(Debug)]
pub(crate) struct RoundRobin {
    /// Next position in `order`, for every worker.
    cursor: Ticket,
    /// Server indices in smooth weighted order, over one period.
    order: Box<[u16]>,
    /// The tier's servers, for the exact scan.
    members: Box<[u16]>,
}

impl RoundRobin {
    pub(crate) fn build(members: &[u16], specs: &[ServerSpec]) -> RoundRobin {
        let weights: Vec<u32> = members.iter().map(|&s| specs[usize::from(s)].weight).collect();
        let order = smooth_order(&weights).into_iter().map(|p| members[p]).collect();
        RoundRobin { cursor: Ticket::default(), order, members: members.into() }
    }

    #[inline]
    pub(crate) fn select(&self, ctx: &Ctx<'_>, worker: &mut WorkerBalanceState) -> Pick {
        let len = self.order.len();
        if len == 0 {
            return Pick::NoneUsable;
        }
        for _ in 0..len.min(PROBES) {
            let ticket = self.cursor.0.fetch_add(1, Ordering::Relaxed);
            let server = usize::from(self.order[(ticket % len as u64) as usize]);
            if ctx.excluded(server) || ctx.ramp_skips(server, &mut worker.rng) {
                continue;
            }
            if ctx.reserve(server).is_some() {
                return Pick::Server(server);
            }
        }
        let start = worker.rng.below(self.members.len() as u32) as usize;
        first_fit(ctx, &self.members, start)
    }
}

/// One period of nginx's smooth weighted round robin over `weights` (all > 0), as positions
/// into `weights`. Each step every server's running weight grows by its weight, the largest
/// (first on ties) is chosen and loses the total. Weights are divided by their gcd first, which
/// yields the same order over a shorter period.
///
/// Servers of equal weight move in lockstep: their running weights are all either some `top`
/// or `top - total`, and the chosen one among them is always the lowest index still at `top`.
/// So the steps run over the distinct weights (at most 256) instead of the servers (up to
/// 1024), which keeps a build of the largest pools to tens of milliseconds.
fn smooth_order(weights: &[u32]) -> Vec<usize> {
    let divisor = weights.iter().fold(0, |g, &w| gcd(g, w)).max(1);
    let total: i64 = weights.iter().map(|&w| i64::from(w / divisor)).sum();

    struct Class {
        weight: i64,
        /// Running weight of the members not yet chosen in this round.
        top: i64,
        /// Member positions, ascending.
        members: Vec<usize>,
        /// members[next..] are at `top`, members[..next] at `top - total`.
        next: usize,
    }
    let mut classes: Vec<Class> = Vec::new();
    for (p, &w) in weights.iter().enumerate() {
        let weight = i64::from(w / divisor);
        match classes.iter_mut().find(|c| c.weight == weight) {
            Some(class) => class.members.push(p),
            None => classes.push(Class { weight, top: 0, members: vec![p], next: 0 }),
        }
    }

    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for c in 0..classes.len() {
            classes[c].top += classes[c].weight;
            let (class, leader) = (&classes[c], &classes[best]);
            if class.top > leader.top
                || (class.top == leader.top && class.members[class.next] < leader.members[leader.next])
            {
                best = c;
            }
        }
        let class = &mut classes[best];
        order.push(class.members[class.next]);
        class.next += 1;
        if class.next == class.members.len() {
            class.next = 0;
            class.top -= total;
        }
    }
    order
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(order: &[usize]) -> String {
        order.iter().map(|&p| (b'a' + p as u8) as char).collect()
    }

    #[test]
    fn smooth_order_for_5_1_1_interleaves_like_nginx() {
        assert_eq!(names(&smooth_order(&[5, 1, 1])), "aabacaa");
    }

    #[test]
    fn smooth_order_gives_each_server_its_weight_per_period() {
        let weights = [3, 7, 1, 256, 12];
        let order = smooth_order(&weights);
        assert_eq!(order.len(), 279);
        for (p, &w) in weights.iter().enumerate() {
            assert_eq!(order.iter().filter(|&&q| q == p).count(), w as usize);
        }
    }

    /// nginx's algorithm step by step, server by server: the reference for `smooth_order`.
    fn reference_order(weights: &[u32]) -> Vec<usize> {
        let divisor = weights.iter().fold(0, |g, &w| gcd(g, w)).max(1);
        let weights: Vec<i64> = weights.iter().map(|&w| i64::from(w / divisor)).collect();
        let total: i64 = weights.iter().sum();
        let mut current = vec![0i64; weights.len()];
        let mut order = Vec::new();
        for _ in 0..total {
            let mut best = 0;
            for i in 0..current.len() {
                current[i] += weights[i];
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            order.push(best);
        }
        order
    }

    #[test]
    fn smooth_order_by_weight_classes_is_nginx_order() {
        let mut x = 12345u64;
        for n in [1, 2, 3, 7, 16, 40] {
            for spread in [1, 3, 10, 256] {
                let weights: Vec<u32> = (0..n)
                    .map(|_| {
                        x = crate::balance::hash::mix(x);
                        1 + (x % spread) as u32
                    })
                    .collect();
                assert_eq!(smooth_order(&weights), reference_order(&weights), "{weights:?}");
            }
        }
    }

    #[test]
    fn equal_weights_give_a_period_of_one_turn_each() {
        assert_eq!(names(&smooth_order(&[4, 4, 4])), "abc");
        assert_eq!(names(&smooth_order(&[10, 5, 5])), "abca");
    }
}
