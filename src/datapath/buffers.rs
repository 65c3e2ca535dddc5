//! The per-worker pool of copy-mode buffers.
//!
//! A copy-mode flow holds one buffer only while bytes are in it (between its `recv` and the last
//! `send`), so idle connections hold none. Each buffer is a separate heap allocation that never
//! moves or shrinks while the worker lives: in-flight `recv`/`send` operations point into it, and a
//! flow hands its buffer back only when nothing is in flight on it.

use super::flow::COPY_LEN;

pub struct BufferPool {
    bufs: Vec<Box<[u8]>>,
    free: Vec<u32>,
    capacity: u32,
}

impl BufferPool {
    /// A pool that allocates up to `capacity` buffers, lazily.
    pub fn new(capacity: u32) -> BufferPool {
        BufferPool { bufs: Vec::new(), free: Vec::new(), capacity }
    }

    /// An empty buffer's index, or `None` when the pool is at capacity.
    pub fn get(&mut self) -> Option<u32> {
        if let Some(i) = self.free.pop() {
            return Some(i);
        }
        if self.bufs.len() as u32 >= self.capacity {
            return None;
        }
        self.bufs.push(vec![0u8; COPY_LEN as usize].into_boxed_slice());
        Some(self.bufs.len() as u32 - 1)
    }

    /// Returns a buffer with nothing in flight on it.
    pub fn put(&mut self, index: u32) {
        debug_assert!(!self.free.contains(&index));
        self.free.push(index);
    }

    /// Pointer to byte `off` of buffer `index`, for an operation that writes or reads it.
    pub fn ptr(&mut self, index: u32, off: u32) -> *mut u8 {
        let buf = &mut self.bufs[index as usize];
        buf[off as usize..].as_mut_ptr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_capped() {
        let mut pool = BufferPool::new(2);
        let a = pool.get().unwrap();
        let b = pool.get().unwrap();
        assert_ne!(a, b);
        assert_eq!(pool.get(), None);
        let pa = pool.ptr(a, 0);
        pool.put(a);
        assert_eq!(pool.get(), Some(a));
        assert_eq!(pool.ptr(a, 0), pa, "a buffer never moves");
    }
}
