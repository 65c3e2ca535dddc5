//! `least-conn`: the server with the fewest active connections relative to its weight.
//!
//! Owns the least-conn index of one tier: a tournament tree over the shared counters, so that a
//! pick costs O(log n) instead of a scan of every counter.
//!
//! # Why a tree
//!
//! The answer depends on every server's live count, which every worker changes. Scanning the
//! counters (one cache line per server) costs a load, two multiplications and a compare per
//! server, chained through the best so far: with 256 servers, about 0.45 µs per pick even when
//! every line is in L1 (`pick-bench`'s reference row), against about 40 ns for a pick and its
//! release through the tree. Instead, internal node `j` of a complete binary tree over the
//! tier's servers holds the position of the best server of its subtree (node 1 is the root;
//! the children of `j` are `2j` and `2j + 1`; leaves are implicit, `leaves + position`). The
//! tree stores positions, never counts: every comparison reads the live counters, so it is
//! never wrong about a count, only possibly about which child won.
//!
//! A pick reads the root, reserves a slot on that server and replays the matches on the path
//! from its leaf to the root (log2 n comparisons, each reading one sibling's counter). A
//! release replays its server's path too, stopping as soon as a node's winner is unchanged. With
//! one worker, the tree is therefore exact at every pick: the root is the least loaded server.
//!
//! With several workers, two updates racing through a common ancestor may leave it naming the
//! second best for a while. Such a node is repaired the next time any update passes through
//! it, and, in any case, by a sweep: every pick also replays one internal node, bottom-up over
//! the tree, so that in n picks the whole tree is rebuilt from the counters. The sweep also
//! follows slow-start ramps (effective weights change with time) and releases done through an
//! older balancer. The root is only a hint for choosing; the count is reserved by a
//! compare-and-swap on the counter, so max_connections stays exact whatever the tree says.
//!
//! # Order and ties
//!
//! Server `a` beats `b` when `active_a / weight_a < active_b / weight_b` (compared exactly, by
//! cross-multiplication, with effective weights); a full server loses to any other. Among
//! equal loads the server with the smallest virtual time wins, and a pick advances the winner's
//! virtual time by `VTIME_SCALE / weight`: with equal weights that is round robin among the tied
//! servers (the least recently picked goes first); with unequal weights the tied servers share
//! picks in proportion to their weights. This matters most when connections are short: every
//! count is then 0 at each pick and the tie rule alone spreads the load.
//!
//! Never locks, never allocates after build; writes only the shared counters, virtual times and
//! tree nodes (relaxed atomics: they are hints, except the counters' reservation).

use std::sync::atomic::{AtomicU16, Ordering::Relaxed};
use std::sync::Arc;

use super::counters::ServerCell;
use super::{Ctx, Pick, WorkerBalanceState, WEIGHT_UNIT};

/// Virtual time added per pick for one weight unit (a weight-1 server advances by
/// `VTIME_SCALE / WEIGHT_UNIT` = 65536 per pick, a weight-256 one by 256).
const VTIME_SCALE: u64 = 1 << 24;

/// No server (a subtree of padding leaves).
const NONE: u16 = u16::MAX;

/// Exact scans tried before giving up on servers that other workers fill concurrently.
const SCAN_ATTEMPTS: usize = 4;

#[derive(Debug)]
pub(crate) struct LeastConn {
    /// The tier's servers by position, with what a comparison reads, one place per server.
    members: Box<[Member]>,
    /// Position of each server index in `members`, or `NONE`.
    position: Box<[u16]>,
    /// Number of leaves: the smallest power of two >= members.len().
    leaves: usize,
    /// Internal nodes 1..leaves (node 1 is the root, the children of `j` are `2j` and `2j + 1`,
    /// leaf `p` is at `leaves + p`; index 0 is unused): the winning position of each subtree.
    nodes: Box<[AtomicU16]>,
}

/// One server of the tier: its shared cell and its fixed parameters, read without going
/// through the server index (one less dependent load per comparison).
#[derive(Debug)]
struct Member {
    cell: Arc<ServerCell>,
    server: u16,
    max_connections: u32,
    /// Configured weight in 1/WEIGHT_UNIT units (the effective weight outside slow start).
    weight: u32,
    /// Virtual time added per pick at the configured weight.
    vtime_step: u64,
}

/// What a comparison needs of one server, read from the live counters.
#[derive(Debug, Clone, Copy)]
struct Key {
    active: u32,
    /// Effective weight; 0 when the server is full (it then loses to any other).
    weight: u32,
    vtime: u64,
}

/// Strictly better: lower load relative to weight, then earlier virtual time.
#[inline]
fn beats(a: Key, b: Key) -> bool {
    match (a.weight, b.weight) {
        (0, _) => false,
        (_, 0) => true,
        _ => {
            let (lhs, rhs) = (u64::from(a.active) * u64::from(b.weight), u64::from(b.active) * u64::from(a.weight));
            if lhs != rhs {
                lhs < rhs
            } else {
                a.vtime < b.vtime
            }
        }
    }
}

impl LeastConn {
    pub(crate) fn build(members: &[u16], ctx: &Ctx<'_>) -> LeastConn {
        let leaves = members.len().next_power_of_two();
        let mut position = vec![NONE; ctx.servers.len()];
        for (p, &s) in members.iter().enumerate() {
            position[usize::from(s)] = p as u16;
        }
        let members: Box<[Member]> = members
            .iter()
            .map(|&s| {
                let server = usize::from(s);
                let weight = ctx.full_weight(server);
                Member {
                    cell: ctx.counters.shared_cell(server),
                    server: s,
                    max_connections: ctx.max_connections(server),
                    weight,
                    vtime_step: VTIME_SCALE / u64::from(weight),
                }
            })
            .collect();
        // A server back after a while (down, removed, or new) would win every tie until its
        // virtual time caught up with the others': bring every member within one weight-1 step
        // of the latest clock.
        let latest = members.iter().map(|m| m.cell.vtime()).max();
        let floor = latest.unwrap_or(0).saturating_sub(VTIME_SCALE / u64::from(WEIGHT_UNIT));
        for m in members.iter() {
            if m.cell.vtime() < floor {
                m.cell.set_vtime(floor);
            }
        }
        let nodes = (0..leaves).map(|_| AtomicU16::new(NONE)).collect();
        let tree = LeastConn { members, position: position.into(), leaves, nodes };
        // Bottom-up, so each node's children are settled first. Counts are read as they are now;
        // later changes reach the tree through picks, releases and the sweep.
        for node in (1..leaves).rev() {
            tree.nodes[node].store(tree.match_children(ctx, node), Relaxed);
        }
        tree
    }

    #[inline]
    pub(crate) fn select(&self, ctx: &Ctx<'_>, worker: &mut WorkerBalanceState) -> Pick {
        if self.members.is_empty() {
            return Pick::NoneUsable;
        }
        self.sweep(ctx, worker);
        let root = self.root();
        if root != NONE {
            let p = usize::from(root);
            let server = usize::from(self.members[p].server);
            if !ctx.excluded(server) {
                if ctx.reserve(server).is_some() {
                    self.picked(ctx, p);
                    return Pick::Server(server);
                }
                // Full: replay its path (it now loses everywhere) and decide exactly below.
                self.replay_path(ctx, p);
            }
        }
        self.select_by_scan(ctx)
    }

    /// Keeps the tree in step after a release of `server`'s connection.
    #[inline]
    pub(crate) fn released(&self, ctx: &Ctx<'_>, server: usize) {
        if let Some(&p) = self.position.get(server) {
            if p != NONE {
                self.replay_path(ctx, usize::from(p));
            }
        }
    }

    /// The exact path: the best non-excluded, non-full server by a scan of the tier.
    fn select_by_scan(&self, ctx: &Ctx<'_>) -> Pick {
        for _ in 0..SCAN_ATTEMPTS {
            let mut best: Option<(usize, Key)> = None;
            let mut saw_full = false;
            for p in 0..self.members.len() {
                if ctx.excluded(usize::from(self.members[p].server)) {
                    continue;
                }
                let key = self.key(ctx, p);
                if key.weight == 0 {
                    saw_full = true;
                } else if best.map_or(true, |(_, b)| beats(key, b)) {
                    best = Some((p, key));
                }
            }
            let Some((p, _)) = best else {
                return if saw_full { Pick::AllFull } else { Pick::NoneUsable };
            };
            let server = usize::from(self.members[p].server);
            if ctx.reserve(server).is_some() {
                self.picked(ctx, p);
                return Pick::Server(server);
            }
            // Another worker filled it between the scan and the reservation.
            self.replay_path(ctx, p);
        }
        Pick::AllFull
    }

    /// After a reservation on position `p`: advance its virtual time, replay its path.
    #[inline]
    fn picked(&self, ctx: &Ctx<'_>, p: usize) {
        let m = &self.members[p];
        let step = match ctx.ramp_now {
            None => m.vtime_step,
            Some(_) => VTIME_SCALE / u64::from(ctx.weight(usize::from(m.server)).max(1)),
        };
        m.cell.set_vtime(m.cell.vtime().wrapping_add(step));
        self.replay_path(ctx, p);
    }

    #[inline]
    fn root(&self) -> u16 {
        if self.leaves == 1 {
            0 // a single server is its own root
        } else {
            self.nodes[1].load(Relaxed)
        }
    }

    /// The winner stored for tree index `index` (a node, or a leaf when `index >= leaves`).
    #[inline]
    fn winner(&self, index: usize) -> u16 {
        if index >= self.leaves {
            let p = index - self.leaves;
            if p < self.members.len() {
                p as u16
            } else {
                NONE
            }
        } else {
            self.nodes[index].load(Relaxed)
        }
    }

    #[inline(always)]
    fn key(&self, ctx: &Ctx<'_>, p: usize) -> Key {
        let m = &self.members[p];
        let active = m.cell.active();
        let weight = if m.max_connections != 0 && active >= m.max_connections {
            0
        } else if ctx.ramp_now.is_some() {
            ctx.weight(usize::from(m.server))
        } else {
            m.weight
        };
        Key { active, weight, vtime: m.cell.vtime() }
    }

    /// Replays the matches from position `p`'s leaf up to the root, carrying the winner's key
    /// so that each level reads only the sibling's counter. Stops early once a node keeps a
    /// winner other than `p`: nothing above it can change because of `p`.
    #[inline]
    fn replay_path(&self, ctx: &Ctx<'_>, p: usize) {
        let me = p as u16;
        let (mut winner, mut winner_key) = (me, self.key(ctx, p));
        let mut child = self.leaves + p;
        while child > 1 {
            let sibling = child ^ 1;
            let other = self.winner(sibling);
            if other != NONE {
                let other_key = self.key(ctx, usize::from(other));
                // On a tie the left subtree wins, so that the tree is a function of the keys.
                let other_wins =
                    if sibling < child { !beats(winner_key, other_key) } else { beats(other_key, winner_key) };
                if other_wins {
                    (winner, winner_key) = (other, other_key);
                }
            }
            let node = child / 2;
            if self.nodes[node].load(Relaxed) != winner {
                self.nodes[node].store(winner, Relaxed);
            } else if winner != me {
                return;
            }
            child = node;
        }
    }

    /// Replays one internal node per pick, from the deepest to the root, round and round.
    #[inline]
    fn sweep(&self, ctx: &Ctx<'_>, worker: &mut WorkerBalanceState) {
        if self.leaves < 2 {
            return;
        }
        let internal = self.leaves - 1;
        let node = internal - worker.sweep as usize % internal;
        worker.sweep = worker.sweep.wrapping_add(1);
        let winner = self.match_children(ctx, node);
        if self.nodes[node].load(Relaxed) != winner {
            self.nodes[node].store(winner, Relaxed);
        }
    }

    /// The winner of `node`'s two children, by their live keys (the left one on a tie).
    #[inline]
    fn match_children(&self, ctx: &Ctx<'_>, node: usize) -> u16 {
        match (self.winner(2 * node), self.winner(2 * node + 1)) {
            (NONE, w) | (w, NONE) => w,
            (l, r) => {
                if beats(self.key(ctx, usize::from(r)), self.key(ctx, usize::from(l))) {
                    r
                } else {
                    l
                }
            }
        }
    }
}
