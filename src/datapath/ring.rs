//! A worker's io_uring: the ring, the backlog of entries that did not fit in the submission queue
//! (none is ever dropped, and a linked chain is never split), and the layout of its registered
//! file table.
//!
//! Every pointer in a pushed entry (addresses, timespecs, option values, buffers) must stay valid
//! until the operation completes: it points into a boxed connection slot, a pool buffer or the
//! worker, each of which outlives its operations.

use std::collections::VecDeque;
use std::io;

use io_uring::{squeue, IoUring, Submitter};

use super::ops;

pub const SQ_ENTRIES: u32 = 4096;
pub const CQ_ENTRIES: u32 = 4 * SQ_ENTRIES;
/// Most pipes one worker may hold (each is 16 pages by default; `fs.pipe-user-pages-soft`).
const MAX_PIPES: u32 = 1024;

/// Where things live in the ring's registered file table:
/// `[0, conns)` client sockets (kernel-allocated by accept), `[conns, 2*conns)` backend sockets
/// (slot `conns + i` belongs to connection slot `i`), then the pipes, two slots each.
#[derive(Debug, Clone, Copy)]
pub struct SlotLayout {
    pub conns: u32,
    pub pipes: u32,
}

impl SlotLayout {
    /// Fits the layout into a table of at most `limit` entries (RLIMIT_NOFILE caps one ring's
    /// table), with no more connection slots than `max_connections`.
    pub fn fit(limit: u32, max_connections: u32) -> SlotLayout {
        let pipes = (limit / 16).clamp(16, MAX_PIPES);
        let conns = (limit.saturating_sub(2 * pipes) / 2).min(max_connections).min(ops::MAX_SLOT);
        SlotLayout { conns, pipes }
    }
    pub fn backend_slot(&self, conn: u32) -> u32 {
        self.conns + conn
    }
    pub fn pipe_base(&self) -> u32 {
        2 * self.conns
    }
    pub fn table_size(&self) -> u32 {
        2 * self.conns + 2 * self.pipes
    }
}

pub struct Ring {
    ring: IoUring,
    backlog: VecDeque<Vec<squeue::Entry>>,
}

impl Ring {
    pub fn new(ring: IoUring) -> Ring {
        Ring { ring, backlog: VecDeque::new() }
    }

    /// Queues entries that must reach the kernel together (a linked chain stays in one batch).
    pub fn push(&mut self, entries: &[squeue::Entry]) {
        if self.backlog.is_empty() && self.sq_room() < entries.len() {
            // Make room now rather than split a chain; errors surface at the next submit.
            let _ = self.ring.submit();
        }
        if self.backlog.is_empty() && self.sq_room() >= entries.len() {
            let mut sq = self.ring.submission();
            for e in entries {
                // SAFETY: see the module doc: whatever an entry points to outlives the operation.
                let pushed = unsafe { sq.push(e) };
                debug_assert!(pushed.is_ok());
            }
        } else {
            self.backlog.push_back(entries.to_vec());
        }
    }

    fn sq_room(&mut self) -> usize {
        let sq = self.ring.submission();
        sq.capacity() - sq.len()
    }

    /// Moves as much of the backlog into the submission queue as fits, whole chains only.
    pub fn flush_backlog(&mut self) {
        while let Some(len) = self.backlog.front().map(Vec::len) {
            if self.sq_room() < len {
                return;
            }
            let chain = self.backlog.pop_front().unwrap_or_default();
            let mut sq = self.ring.submission();
            for e in &chain {
                // SAFETY: as in `push`.
                let _ = unsafe { sq.push(e) };
            }
        }
    }

    /// Submits and waits for at least one completion; interrupted waits are not errors.
    pub fn submit_and_wait(&mut self) -> io::Result<()> {
        match self.ring.submit_and_wait(1) {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Submits what is queued without waiting (last closes before the ring goes away).
    pub fn submit(&mut self) {
        self.flush_backlog();
        let _ = self.ring.submit();
    }

    /// Takes every completion as (user_data, result, flags).
    pub fn reap(&mut self, into: &mut Vec<(u64, i32, u32)>) {
        into.clear();
        into.extend(self.ring.completion().map(|c| (c.user_data(), c.result(), c.flags())));
    }

    pub fn submitter(&self) -> Submitter<'_> {
        self.ring.submitter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_fits_the_descriptor_limit() {
        let l = SlotLayout::fit(20_000, 100_000);
        assert!(l.table_size() <= 20_000);
        assert_eq!(l.pipes, 1024);
        assert_eq!(l.conns, 8976);
        assert_eq!(l.backend_slot(0), l.conns);
        assert!(l.pipe_base() + 2 * l.pipes <= l.table_size());
    }

    #[test]
    fn layout_never_exceeds_max_connections() {
        assert_eq!(SlotLayout::fit(1 << 20, 1000).conns, 1000);
    }

    #[test]
    fn layout_survives_a_tiny_limit() {
        let l = SlotLayout::fit(64, 100);
        assert!(l.table_size() <= 64);
    }
}
