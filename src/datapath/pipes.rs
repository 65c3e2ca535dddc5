//! The per-worker pipe pool.
//!
//! Splice moves bytes socket -> pipe -> socket, so every direction that has bytes in flight needs
//! a pipe. Pipes are registered descriptors in a range of the ring's file table that the kernel's
//! allocator never touches (see `worker::SlotLayout`); pipe `i` owns slots `base + 2i` (read end)
//! and `base + 2i + 1` (write end).
//!
//! Ownership: a connection direction holds a pipe only while bytes sit in it. It hands the pipe
//! back (`put`) only when it is empty and no splice on it is in flight; a pipe that still holds
//! bytes when its connection dies is destroyed instead (`destroy`), never pooled. Idle pipes beyond
//! `max_idle` are destroyed, so the pool shrinks after a burst. Pipe buffers count against
//! `fs.pipe-user-pages-soft`, which is why the pool is bounded.

use std::io;

use io_uring::Submitter;

/// A pipe installed in two consecutive registered slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pipe {
    index: u32,
    base: u32,
}

impl Pipe {
    /// Registered slot of the read end.
    pub fn read(self) -> u32 {
        self.base + 2 * self.index
    }
    /// Registered slot of the write end.
    pub fn write(self) -> u32 {
        self.read() + 1
    }
}

pub struct PipePool {
    base: u32,
    capacity: u32,
    /// Pipe indices whose slots are empty.
    unused: Vec<u32>,
    idle: Vec<Pipe>,
    max_idle: usize,
}

impl PipePool {
    /// A pool for at most `capacity` pipes in slots `base .. base + 2 * capacity`.
    pub fn new(base: u32, capacity: u32, max_idle: usize) -> PipePool {
        PipePool { base, capacity, unused: (0..capacity).rev().collect(), idle: Vec::with_capacity(max_idle), max_idle }
    }

    /// Pipes in the registered table, held or idle (each takes two slots).
    pub fn installed(&self) -> u32 {
        self.capacity - self.unused.len() as u32
    }

    /// An empty pipe: an idle one, or a new one. `Ok(None)` when the pool is at capacity.
    pub fn get(&mut self, submitter: &Submitter<'_>) -> io::Result<Option<Pipe>> {
        if let Some(pipe) = self.idle.pop() {
            return Ok(Some(pipe));
        }
        let Some(index) = self.unused.pop() else {
            return Ok(None);
        };
        let pipe = Pipe { index, base: self.base };
        match create_registered(submitter, pipe.read()) {
            Ok(()) => Ok(Some(pipe)),
            Err(e) => {
                self.unused.push(index);
                Err(e)
            }
        }
    }

    /// Returns an empty pipe with nothing in flight on it.
    pub fn put(&mut self, submitter: &Submitter<'_>, pipe: Pipe) {
        if self.idle.len() < self.max_idle {
            self.idle.push(pipe);
        } else {
            self.destroy(submitter, pipe);
        }
    }

    /// Unregisters a pipe (closing it); used for pipes that may still hold bytes.
    pub fn destroy(&mut self, submitter: &Submitter<'_>, pipe: Pipe) {
        // Removing a registered file cannot fail for a slot we installed; if the kernel ever
        // refuses, the slot is leaked rather than reused with a stale pipe in it.
        if submitter.register_files_update(pipe.read(), &[-1, -1]).is_ok() {
            self.unused.push(pipe.index);
        }
    }

    /// Destroys every idle pipe (worker shutdown).
    pub fn clear(&mut self, submitter: &Submitter<'_>) {
        while let Some(pipe) = self.idle.pop() {
            self.destroy(submitter, pipe);
        }
    }
}

/// Creates a non-blocking pipe and installs both ends at `slot` and `slot + 1`. The ordinary
/// descriptors exist only for the duration of this call.
fn create_registered(submitter: &Submitter<'_>, slot: u32) -> io::Result<()> {
    let mut fds = [0i32; 2];
    // SAFETY: fds has room for two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let result = submitter.register_files_update(slot, &fds);
    // SAFETY: both descriptors were just created by pipe2 and are owned here; the registered
    // table holds its own references.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    result.map(|_| ())
}
