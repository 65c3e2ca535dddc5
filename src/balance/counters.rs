//! Per-server active-connection counters: the global view that every worker shares.
//!
//! Owns one cache line per server ([`ServerCell`]) holding the number of active connections
//! and the least-conn tie-break clock. These are the only per-server values written by several
//! cores; a line per server keeps a worker that counts a connection to one server from
//! invalidating its neighbours' counters in other cores' caches.
//!
//! Cells are reference-counted so that a new balancer (after a reload or a health change) takes
//! over the cells of the servers that stay, found by name, and their counts survive the swap.
//! Reserving a slot is exact under concurrency: a compare-and-swap loop never lets a count
//! pass the server's `max_connections`, however many workers pick at the same moment.
//! Never locks, never allocates after construction.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// One server's shared state, alone on its cache line.
#[derive(Debug, Default)]
#[repr(align(64))]
pub(crate) struct ServerCell {
    /// Connections picked for this server and not yet released.
    active: AtomicU32,
    /// least-conn only: the virtual time at which this server is next due when loads are equal
    /// (see `least_conn.rs`). Carried over with the count so that ties stay fair across swaps.
    vtime: AtomicU64,
}

impl ServerCell {
    #[inline]
    pub(crate) fn active(&self) -> u32 {
        self.active.load(Relaxed)
    }

    /// Counts one more connection unless that would pass `max` (0 = unlimited).
    /// Returns the new count, or `None` if the server is full.
    #[inline]
    pub(crate) fn try_reserve(&self, max: u32) -> Option<u32> {
        if max == 0 {
            return Some(self.active.fetch_add(1, Relaxed).wrapping_add(1));
        }
        let mut current = self.active.load(Relaxed);
        loop {
            if current >= max {
                return None;
            }
            match self.active.compare_exchange_weak(current, current + 1, Relaxed, Relaxed) {
                Ok(_) => return Some(current + 1),
                Err(now) => current = now,
            }
        }
    }

    /// Counts one connection less; returns the count before. A release without a reservation is
    /// a bug in the caller: it is undone (the count never wraps below zero) and caught in debug
    /// builds.
    #[inline]
    pub(crate) fn release(&self) -> u32 {
        let before = self.active.fetch_sub(1, Relaxed);
        if before == 0 {
            self.active.fetch_add(1, Relaxed);
            debug_assert!(false, "released a server that had no active connection");
        }
        before
    }

    #[inline]
    pub(crate) fn vtime(&self) -> u64 {
        self.vtime.load(Relaxed)
    }

    #[inline]
    pub(crate) fn set_vtime(&self, vtime: u64) {
        self.vtime.store(vtime, Relaxed);
    }
}

/// The cells of one pool's servers, in the order of the balancer's server indices.
#[derive(Debug)]
pub struct ServerCounters {
    names: Box<[Box<str>]>,
    cells: Box<[Arc<ServerCell>]>,
}

impl ServerCounters {
    /// Cells for `names`, reusing the cell of every name that `previous` already had. A server
    /// new to the pool starts with no connection.
    pub(crate) fn carry_over<'a>(
        previous: Option<&ServerCounters>,
        names: impl ExactSizeIterator<Item = &'a str>,
    ) -> ServerCounters {
        let mut old: HashMap<&str, &Arc<ServerCell>> = HashMap::new();
        if let Some(prev) = previous {
            for (name, cell) in prev.names.iter().zip(prev.cells.iter()) {
                old.insert(name, cell);
            }
        }
        let mut out_names = Vec::with_capacity(names.len());
        let mut cells = Vec::with_capacity(names.len());
        for name in names {
            let cell = match old.get(name) {
                Some(cell) => Arc::clone(cell),
                None => Arc::new(ServerCell::default()),
            };
            out_names.push(Box::from(name));
            cells.push(cell);
        }
        ServerCounters { names: out_names.into(), cells: cells.into() }
    }

    pub fn len(&self) -> usize {
        self.cells.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// Active connections of server `index` (counted by every worker).
    pub fn active(&self, index: usize) -> u32 {
        self.cells[index].active()
    }

    pub fn name(&self, index: usize) -> &str {
        &self.names[index]
    }

    #[inline]
    pub(crate) fn cell(&self, index: usize) -> &ServerCell {
        &self.cells[index]
    }

    /// A handle on server `index`'s cell, for structures that read it without the index.
    pub(crate) fn shared_cell(&self, index: usize) -> Arc<ServerCell> {
        Arc::clone(&self.cells[index])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cell_fills_its_own_cache_line() {
        assert_eq!(std::mem::align_of::<ServerCell>(), 64);
        assert_eq!(std::mem::size_of::<ServerCell>(), 64);
    }

    #[test]
    fn reserve_stops_at_max_and_release_frees_a_slot() {
        let cell = ServerCell::default();
        assert_eq!(cell.try_reserve(2), Some(1));
        assert_eq!(cell.try_reserve(2), Some(2));
        assert_eq!(cell.try_reserve(2), None);
        assert_eq!(cell.release(), 2);
        assert_eq!(cell.try_reserve(2), Some(2));
        assert_eq!(cell.try_reserve(0), Some(3), "0 means unlimited");
    }

    #[test]
    fn counts_survive_a_swap_for_servers_that_stay() {
        let first = ServerCounters::carry_over(None, ["a", "b", "c"].into_iter());
        first.cell(1).try_reserve(0);
        first.cell(1).try_reserve(0);
        first.cell(2).try_reserve(0);
        first.cell(2).set_vtime(500);
        let second = ServerCounters::carry_over(Some(&first), ["c", "d", "b"].into_iter());
        assert_eq!(second.active(0), 1, "c kept its count");
        assert_eq!(second.active(1), 0, "d is new");
        assert_eq!(second.active(2), 2, "b kept its count");
        assert_eq!(second.cell(0).vtime(), 500, "c kept its tie-break clock");
        // A release through the old counters reaches the same cell.
        first.cell(1).release();
        assert_eq!(second.active(2), 1);
    }
}
