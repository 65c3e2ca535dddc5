//! One HTTP/1.1 request and its answer over a TCP stream, and the classification of what can go
//! wrong with it.
//!
//! Owns the wire format the client speaks to `ringlb demo-backend` through the load balancer
//! (a `GET /` and a `200` answer framed by `Content-Length`, the body being the backend's name)
//! and the mapping of I/O errors to the few outcomes the test counts. It must never retry or
//! sleep: the callers decide what a failure means.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A request head larger than this is a protocol error (the demo backend answers in ~100 bytes).
const MAX_HEAD: usize = 4096;
/// A body larger than this is a protocol error (the body is a backend's name).
const MAX_BODY: usize = 1024;

/// Why a connection or an exchange failed, as the test counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Failure {
    /// The connect was answered with a reset (nothing listens there).
    Refused,
    /// The connection was reset (or aborted) after it was established.
    Reset,
    /// The peer closed the connection before the answer was complete.
    Closed,
    /// No answer within the time allowed (a dropped SYN or a dead peer).
    Timeout,
    /// No route or no neighbour for the target.
    Unreachable,
    /// Not an HTTP 200 answer.
    Protocol,
    /// Any other I/O error.
    Other,
}

impl Failure {
    pub const ALL: [Failure; 7] = [
        Failure::Refused,
        Failure::Reset,
        Failure::Closed,
        Failure::Timeout,
        Failure::Unreachable,
        Failure::Protocol,
        Failure::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Failure::Refused => "refused",
            Failure::Reset => "reset",
            Failure::Closed => "closed",
            Failure::Timeout => "timeout",
            Failure::Unreachable => "unreachable",
            Failure::Protocol => "protocol",
            Failure::Other => "other",
        }
    }

    fn from_io(e: &io::Error) -> Failure {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => Failure::Refused,
            io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe => {
                Failure::Reset
            }
            io::ErrorKind::UnexpectedEof => Failure::Closed,
            io::ErrorKind::TimedOut => Failure::Timeout,
            io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => Failure::Unreachable,
            _ => Failure::Other,
        }
    }
}

/// Connects from `source` (port chosen by the kernel) to `target`.
pub async fn connect(source: Ipv4Addr, target: SocketAddr) -> Result<TcpStream, Failure> {
    let socket = TcpSocket::new_v4().map_err(|e| Failure::from_io(&e))?;
    socket.bind(SocketAddr::V4(SocketAddrV4::new(source, 0))).map_err(|e| Failure::from_io(&e))?;
    let stream = socket.connect(target).await.map_err(|e| Failure::from_io(&e))?;
    stream.set_nodelay(true).map_err(|e| Failure::from_io(&e))?;
    Ok(stream)
}

/// Sends `GET /` (asking the server to close afterwards when `close`) and reads the answer.
/// Returns the body: the name of the backend that answered.
pub async fn exchange(stream: &mut TcpStream, buf: &mut Vec<u8>, close: bool) -> Result<String, Failure> {
    let request: &[u8] = if close {
        b"GET / HTTP/1.1\r\nHost: ringlb-ha\r\nConnection: close\r\n\r\n"
    } else {
        b"GET / HTTP/1.1\r\nHost: ringlb-ha\r\n\r\n"
    };
    stream.write_all(request).await.map_err(|e| Failure::from_io(&e))?;
    buf.clear();
    let head_end = loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            break end + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(Failure::Protocol);
        }
        read_some(stream, buf).await?;
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| Failure::Protocol)?;
    if !head.starts_with("HTTP/1.1 200 ") {
        return Err(Failure::Protocol);
    }
    let length = content_length(head).ok_or(Failure::Protocol)?;
    if length > MAX_BODY {
        return Err(Failure::Protocol);
    }
    while buf.len() < head_end + length {
        read_some(stream, buf).await?;
    }
    if buf.len() > head_end + length {
        // The server sent more than one answer: a framing bug somewhere on the path.
        return Err(Failure::Protocol);
    }
    let body = std::str::from_utf8(&buf[head_end..]).map_err(|_| Failure::Protocol)?;
    Ok(body.trim_end().to_string())
}

async fn read_some(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), Failure> {
    let mut chunk = [0u8; 2048];
    match stream.read(&mut chunk).await {
        Ok(0) => Err(Failure::Closed),
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
        Err(e) => Err(Failure::from_io(&e)),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn content_length(head: &str) -> Option<usize> {
    head.split("\r\n").find_map(|line| {
        let (name, value) = line.split_once(':')?;
        if name.trim().eq_ignore_ascii_case("content-length") {
            value.trim().parse().ok()
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_is_found_in_any_case() {
        assert_eq!(content_length("HTTP/1.1 200 OK\r\ncontent-LENGTH:  6\r\n\r\n"), Some(6));
        assert_eq!(content_length("HTTP/1.1 200 OK\r\n\r\n"), None);
    }

    #[test]
    fn io_errors_map_to_the_counted_failures() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(Failure::from_io(&refused), Failure::Refused);
        let pipe = io::Error::from(io::ErrorKind::BrokenPipe);
        assert_eq!(Failure::from_io(&pipe), Failure::Reset);
    }
}
