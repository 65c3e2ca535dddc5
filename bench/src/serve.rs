//! The bench's own backends: an HTTP/1.1 keep-alive server that answers every request with
//! `200` and its name (the same contract as `ringlb demo-backend`), and a sink that discards or
//! sources bytes for the `bulk` workload.
//!
//! Each process runs one thread (a current-thread tokio runtime); several processes may share a
//! port with SO_REUSEPORT, which is how a backend holds more connections than one process's
//! descriptor limit allows. They run until killed and never exit on a client's error; running
//! out of descriptors pauses accepting briefly instead of failing.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::bulk::{DOWNLOAD, UPLOAD};
use crate::http;
use crate::BenchError;

const BACKLOG: i32 = 4096;
const SINK_CHUNK: usize = 256 * 1024;
/// A request header block larger than this closes the connection.
const MAX_HEAD: usize = 16 * 1024;

fn listener(bind: SocketAddr, reuseport: bool) -> Result<std::net::TcpListener, BenchError> {
    let io = |e| BenchError::Bind(bind, e);
    let sock = Socket::new(Domain::for_address(bind), Type::STREAM, Some(Protocol::TCP)).map_err(io)?;
    sock.set_reuse_address(true).map_err(io)?;
    if reuseport {
        sock.set_reuse_port(true).map_err(io)?;
    }
    sock.bind(&SockAddr::from(bind)).map_err(io)?;
    sock.listen(BACKLOG).map_err(io)?;
    sock.set_nonblocking(true).map_err(io)?;
    Ok(sock.into())
}

fn runtime() -> Result<tokio::runtime::Runtime, BenchError> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| BenchError::Sys("tokio runtime", e))
}

/// Accepts forever, handing each connection to `handle`.
async fn accept_loop<F, Fut>(listener: TcpListener, handle: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let mut warned = false;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tokio::task::spawn_local(handle(stream));
            }
            Err(e) => {
                if !warned {
                    eprintln!("ringlb-bench: accept: {e} (pausing accepts briefly)");
                    warned = true;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// The address a listener really bound (port 0 resolved), for the start-up line.
fn bound(l: &std::net::TcpListener, asked: SocketAddr) -> SocketAddr {
    l.local_addr().unwrap_or(asked)
}

/// `http-backend`: answers every request with 200 and `name\n`, after `delay` if not zero (a
/// slow backend, to check that open-loop latency counts the time requests wait).
pub fn http_backend(bind: SocketAddr, name: &str, reuseport: bool, delay: Duration) -> Result<(), BenchError> {
    let std_listener = listener(bind, reuseport)?;
    let addr = bound(&std_listener, bind);
    let body = format!("{name}\n");
    let keep = format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    let close = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (keep, close): (Rc<[u8]>, Rc<[u8]>) = (keep.into_bytes().into(), close.into_bytes().into());
    let rt = runtime()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = TcpListener::from_std(std_listener).map_err(|e| BenchError::Bind(bind, e))?;
        eprintln!("ringlb-bench: http backend {name} listening on {addr}");
        accept_loop(listener, move |s| serve_http(s, Rc::clone(&keep), Rc::clone(&close), delay)).await;
        Ok(())
    })
}

async fn serve_http(mut stream: TcpStream, keep: Rc<[u8]>, close: Rc<[u8]>, delay: Duration) {
    let mut buf = vec![0u8; 4096];
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            if buf.len() >= MAX_HEAD {
                return;
            }
            buf.resize(buf.len() * 2, 0);
        }
        match stream.read(&mut buf[filled..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => filled += n,
        }
        // Answer every complete request in the buffer (pipelined requests included).
        let mut start = 0;
        while let Some(end) = http::header_end(&buf[start..filled]) {
            let wants_close = http::wants_close(&buf[start..start + end]);
            let reply = if wants_close { &close } else { &keep };
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if stream.write_all(reply).await.is_err() {
                return;
            }
            if wants_close {
                let _ = stream.shutdown().await;
                return;
            }
            start += end;
        }
        buf.copy_within(start..filled, 0);
        filled -= start;
    }
}

/// `sink`: the first byte of a connection chooses: `>` the client sends and the sink discards,
/// `<` the sink sends until the client goes away.
pub fn sink(bind: SocketAddr, reuseport: bool) -> Result<(), BenchError> {
    let std_listener = listener(bind, reuseport)?;
    let addr = bound(&std_listener, bind);
    let rt = runtime()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = TcpListener::from_std(std_listener).map_err(|e| BenchError::Bind(bind, e))?;
        eprintln!("ringlb-bench: sink listening on {addr}");
        accept_loop(listener, serve_sink).await;
        Ok(())
    })
}

async fn serve_sink(mut stream: TcpStream) {
    let mut first = [0u8; 1];
    if !matches!(stream.read(&mut first).await, Ok(1)) {
        return;
    }
    let mut buf = vec![0x5a_u8; SINK_CHUNK];
    match first[0] {
        UPLOAD => while let Ok(1..) = stream.read(&mut buf).await {},
        DOWNLOAD => while stream.write_all(&buf).await.is_ok() {},
        _ => {}
    }
}
