//! The `bulk` workload: one or several TCP streams moving bytes as fast as they can, upload
//! (client to sink) or download (sink to client), for a fixed time.
//!
//! Speaks the sink's one-byte protocol (see `serve`): the first byte a client sends chooses the
//! direction. One blocking thread per stream; every socket has send and receive timeouts so that
//! a stalled target cannot stretch the run. Counts bytes on the client side.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::engine::sys;
use crate::procstat::TargetWatch;
use crate::stats::{BulkStats, RunResult};
use crate::BenchError;

/// First byte of a stream: the client will send and the sink discards.
pub const UPLOAD: u8 = b'>';
/// First byte of a stream: the sink sends until the client closes.
pub const DOWNLOAD: u8 = b'<';

const CHUNK: usize = 256 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct Bulk {
    pub streams: usize,
    pub upload: bool,
    pub duration: Duration,
    pub targets: Vec<SocketAddr>,
    pub sources: Vec<Ipv4Addr>,
}

fn open(src: Option<Ipv4Addr>, dst: SocketAddr, upload: bool) -> std::io::Result<Socket> {
    let sock = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
    if let (Some(src), SocketAddr::V4(_)) = (src, dst) {
        sock.bind(&SockAddr::from(SocketAddrV4::new(src, 0)))?;
    }
    sock.connect_timeout(&SockAddr::from(dst), IO_TIMEOUT)?;
    sock.set_read_timeout(Some(IO_TIMEOUT))?;
    sock.set_write_timeout(Some(IO_TIMEOUT))?;
    (&sock).write_all(&[if upload { UPLOAD } else { DOWNLOAD }])?;
    Ok(sock)
}

/// Moves bytes until `end` (monotonic ns); returns the count and the error that stopped the
/// stream early, if any (the bytes moved before it still count).
fn pump(sock: &Socket, upload: bool, end: u64) -> (u64, Option<std::io::Error>) {
    let mut buf = vec![0x5a_u8; CHUNK];
    let mut bytes = 0u64;
    while sys::monotonic_ns() < end {
        let n = if upload { (&*sock).write(&buf) } else { (&*sock).read(&mut buf) };
        match n {
            Ok(0) => return (bytes, Some(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed by peer"))),
            Ok(n) => bytes += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return (bytes, Some(e)),
        }
    }
    (bytes, None)
}

/// Runs the streams and reports throughput and what the targets spent.
pub fn run(b: &Bulk, pids: &[u32]) -> Result<RunResult, BenchError> {
    let mut socks = Vec::new();
    let mut r = RunResult::default();
    for i in 0..b.streams {
        let src = (!b.sources.is_empty()).then(|| b.sources[i % b.sources.len()]);
        let dst = b.targets[i % b.targets.len()];
        match open(src, dst, b.upload) {
            Ok(s) => socks.push(s),
            Err(e) => {
                *r.error_kinds.entry(format!("connect: {}", e.kind())).or_insert(0) += 1;
                r.errors += 1;
            }
        }
    }
    let barrier = Arc::new(Barrier::new(socks.len() + 1));
    let start = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut handles = Vec::new();
    for sock in socks {
        let (barrier, start, upload, dur) =
            (Arc::clone(&barrier), Arc::clone(&start), b.upload, b.duration.as_nanos() as u64);
        handles.push(std::thread::spawn(move || {
            barrier.wait();
            let end = start.load(std::sync::atomic::Ordering::Acquire) + dur;
            pump(&sock, upload, end)
        }));
    }
    let mut targets = TargetWatch::start(pids)?;
    let t0 = sys::monotonic_ns();
    start.store(t0, std::sync::atomic::Ordering::Release);
    barrier.wait();
    let mut bytes = 0;
    for h in handles {
        match h.join() {
            Ok((n, err)) => {
                bytes += n;
                if let Some(e) = err {
                    *r.error_kinds.entry(format!("stream: {}", e.kind())).or_insert(0) += 1;
                    r.errors += 1;
                }
            }
            Err(_) => return Err(BenchError::Worker("a bulk stream thread panicked".into())),
        }
    }
    let elapsed = (sys::monotonic_ns() - t0) as f64 / 1e9;
    targets.tick()?;
    r.targets = targets.finish(bytes as f64 / 1e9, "s per GB")?;
    r.elapsed_s = elapsed;
    r.bulk = Some(BulkStats {
        streams: b.streams,
        direction: if b.upload { "up" } else { "down" }.to_string(),
        bytes,
        gbit_s: bytes as f64 * 8.0 / elapsed / 1e9,
    });
    Ok(r)
}
