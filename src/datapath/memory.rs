//! The per-worker pool of memory buffers (the buffer of a copying flow; a splicing flow's buffer
//! is a pipe, see `pipes`).
//!
//! A copy-mode flow holds one buffer only while bytes are in it (between its `recv` and the last
//! `send`), so idle connections hold none. Each buffer is a separate heap allocation that never
//! moves or shrinks while the worker lives: in-flight `recv`/`send` operations point into it, and a
//! flow hands its buffer back only when nothing is in flight on it.

use super::flow::COPY_LEN;

pub struct MemoryPool {
    bufs: Vec<Box<[u8]>>,
    free: Vec<u32>,
    capacity: u32,
}

impl MemoryPool {
    /// A pool that allocates up to `capacity` buffers, lazily.
    pub fn new(capacity: u32) -> MemoryPool {
        MemoryPool { bufs: Vec::new(), free: Vec::new(), capacity }
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

    /// Copies `len` bytes from the start of buffer `from` to offset `off` of buffer `to`; false
    /// (and nothing copied) when they do not fit or the buffers are the same.
    pub fn copy(&mut self, from: u32, to: u32, off: u32, len: u32) -> bool {
        let (from, to, off, len) = (from as usize, to as usize, off as usize, len as usize);
        if from == to || from >= self.bufs.len() || to >= self.bufs.len() || off + len > COPY_LEN as usize {
            return false;
        }
        let (src, dst) = if from < to {
            let (a, b) = self.bufs.split_at_mut(to);
            (&a[from], &mut b[0])
        } else {
            let (a, b) = self.bufs.split_at_mut(from);
            (&b[0], &mut a[to])
        };
        dst[off..off + len].copy_from_slice(&src[..len]);
        true
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
        let mut pool = MemoryPool::new(2);
        let a = pool.get().unwrap();
        let b = pool.get().unwrap();
        assert_ne!(a, b);
        assert_eq!(pool.get(), None);
        let pa = pool.ptr(a, 0);
        pool.put(a);
        assert_eq!(pool.get(), Some(a));
        assert_eq!(pool.ptr(a, 0), pa, "a buffer never moves");
    }

    #[test]
    fn copies_stay_inside_the_buffers() {
        let mut pool = MemoryPool::new(2);
        let (a, b) = (pool.get().unwrap(), pool.get().unwrap());
        // SAFETY: both pointers are inside live buffers of COPY_LEN bytes.
        unsafe { *pool.ptr(a, 0) = 7 };
        assert!(pool.copy(a, b, 5, 1));
        assert_eq!(unsafe { *pool.ptr(b, 5) }, 7);
        assert!(pool.copy(b, a, 0, COPY_LEN));
        assert!(!pool.copy(a, b, 1, COPY_LEN), "past the end");
        assert!(!pool.copy(a, a, 0, 1));
    }
}
