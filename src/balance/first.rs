//! `first`: fill the servers in declaration order, each up to its max_connections (HAProxy's
//! `first`), so that the last servers stay idle until the first ones are full.
//!
//! Owns one tier's bitmap of full servers, shared by all workers: bit `p` is set when the server
//! at position `p` reached its max_connections and cleared when it released a slot. A pick looks
//! for the first clear bit, one 64-bit word at a time (four words for 256 servers), instead of
//! reading the counter of every full server before it. Servers without a max_connections are
//! never full: the first of them takes everything the earlier ones cannot.
//!
//! The bitmap is a hint. The count that matters is reserved by a compare-and-swap on the
//! server's counter, so a stale bit can only make a pick look one server further; a set bit
//! and a cleared bit racing from two workers can leave a bit wrong, so every pick re-checks
//! one server's bit against its counter (all of them in n picks), and before answering
//! "all full" a pick checks every server exactly. Never locks, never allocates after build.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::{first_fit, Ctx, Pick, ServerSpec, WorkerBalanceState};

const NONE: u16 = u16::MAX;

#[derive(Debug)]
pub(crate) struct First {
    /// Server indices in declaration order.
    members: Box<[u16]>,
    /// Position of each server index in `members`, or `NONE`.
    position: Box<[u16]>,
    /// Bit `p % 64` of word `p / 64`: the server at position `p` was full when last seen.
    full: Box<[AtomicU64]>,
}

impl First {
    pub(crate) fn build(members: &[u16], specs: &[ServerSpec]) -> First {
        let mut position = vec![NONE; specs.len()];
        for (p, &s) in members.iter().enumerate() {
            position[usize::from(s)] = p as u16;
        }
        // All clear: the first picks and the repair sweep set the bits of servers already full.
        let full = (0..members.len().div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
        First { members: members.into(), position: position.into(), full }
    }

    #[inline]
    pub(crate) fn select(&self, ctx: &Ctx<'_>, worker: &mut WorkerBalanceState) -> Pick {
        if self.members.is_empty() {
            return Pick::NoneUsable;
        }
        self.repair_one(ctx, worker);
        for (w, word) in self.full.iter().enumerate() {
            let mut free = !word.load(Relaxed);
            while free != 0 {
                let p = w * 64 + free.trailing_zeros() as usize;
                free &= free - 1;
                let Some(&server) = self.members.get(p) else {
                    break;
                };
                let server = usize::from(server);
                if ctx.excluded(server) {
                    continue;
                }
                match ctx.reserve(server) {
                    Some(count) => {
                        if count == ctx.max_connections(server) {
                            self.mark(p, true);
                        }
                        return Pick::Server(server);
                    }
                    None => self.mark(p, true),
                }
            }
        }
        // Every server looks full or excluded: check them all, exactly.
        let pick = first_fit(ctx, &self.members, 0);
        if let Pick::Server(server) = pick {
            let p = usize::from(self.position[server]);
            self.mark(p, ctx.is_full(server));
        }
        pick
    }

    /// A release of `server`'s connection (`before` = its count before the release).
    #[inline]
    pub(crate) fn released(&self, ctx: &Ctx<'_>, server: usize, before: u32) {
        let max = ctx.max_connections(server);
        if max == 0 || before < max {
            return;
        }
        if let Some(&p) = self.position.get(server) {
            if p != NONE {
                self.mark(usize::from(p), false);
            }
        }
    }

    /// Sets position `p`'s bit to `full`, writing the shared word only if it changes.
    #[inline]
    fn mark(&self, p: usize, full: bool) {
        let (word, bit) = (&self.full[p / 64], 1u64 << (p % 64));
        let is_set = word.load(Relaxed) & bit != 0;
        if full && !is_set {
            word.fetch_or(bit, Relaxed);
        } else if !full && is_set {
            word.fetch_and(!bit, Relaxed);
        }
    }

    /// Re-checks one position's bit against its counter, round and round.
    #[inline]
    fn repair_one(&self, ctx: &Ctx<'_>, worker: &mut WorkerBalanceState) {
        let p = worker.sweep as usize % self.members.len();
        worker.sweep = worker.sweep.wrapping_add(1);
        self.mark(p, ctx.is_full(usize::from(self.members[p])));
    }
}
