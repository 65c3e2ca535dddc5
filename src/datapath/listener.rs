//! Listening sockets: one SO_REUSEPORT socket per (listener, worker), bound before the workers
//! start so that the kernel spreads new connections over the workers' accept queues.
//!
//! Owns only socket creation. The sockets are ordinary descriptors (one per worker and listener),
//! handed to the workers, which accept from them into registered (direct) descriptors.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{IntoRawFd, RawFd};

use socket2::{Domain, Protocol, Socket, Type};

/// The kernel caps this at net.core.somaxconn.
const LISTEN_BACKLOG: i32 = 65535;

/// Binds `workers` SO_REUSEPORT sockets to `addr`. With port 0, the first socket picks the port
/// and the others join it. Returns the raw descriptors and the address actually bound.
pub fn bind_group(addr: SocketAddr, workers: usize) -> io::Result<(Vec<RawFd>, SocketAddr)> {
    let mut fds = Vec::with_capacity(workers);
    let mut bound = addr;
    for _ in 0..workers {
        match bind_one(bound) {
            Ok((fd, local)) => {
                bound = local;
                fds.push(fd);
            }
            Err(e) => {
                for fd in fds {
                    // SAFETY: fd came from into_raw_fd above and is owned here.
                    unsafe { libc::close(fd) };
                }
                return Err(e);
            }
        }
    }
    Ok((fds, bound))
}

fn bind_one(addr: SocketAddr) -> io::Result<(RawFd, SocketAddr)> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    // Accepted sockets inherit TCP_NODELAY from the listener.
    socket.set_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    let local = socket.local_addr()?.as_socket().ok_or_else(|| io::Error::other("listener has no inet address"))?;
    Ok((socket.into_raw_fd(), local))
}
