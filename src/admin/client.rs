//! The client side of the admin API, for `ringlb drain`: one blocking HTTP/1.1 request to a
//! running ringlb, its answer read to the end.
//!
//! Owns one socket for one request; it never reads more than `MAX_ANSWER` bytes and never
//! waits longer than its timeout.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// The longest answer read.
const MAX_ANSWER: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("admin.bind is {0}: the port the running ringlb chose is in its log (`admin listening on ...`); pass --admin ADDR")]
    PortZero(SocketAddr),
    #[error("cannot reach the admin API at {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("admin API at {addr}: {source}")]
    Io { addr: SocketAddr, source: io::Error },
    #[error("admin API at {addr}: not an HTTP answer")]
    NotHttp { addr: SocketAddr },
}

/// The address to call for a configured `admin.bind`: an unspecified address (`0.0.0.0`, `::`)
/// means the same host's loopback.
pub fn target(bind: SocketAddr) -> Result<SocketAddr, ClientError> {
    if bind.port() == 0 {
        return Err(ClientError::PortZero(bind));
    }
    let ip = match bind.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Ok(SocketAddr::new(ip, bind.port()))
}

/// Sends `POST path` to `addr`; returns the status and the body.
pub fn post(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String), ClientError> {
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|source| ClientError::Connect { addr, source })?;
    let io_error = |source| ClientError::Io { addr, source };
    stream.set_read_timeout(Some(timeout)).map_err(io_error)?;
    stream.set_write_timeout(Some(timeout)).map_err(io_error)?;
    let request = format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(io_error)?;
    let mut answer = Vec::new();
    stream.take(MAX_ANSWER).read_to_end(&mut answer).map_err(io_error)?;
    parse_answer(&answer).ok_or(ClientError::NotHttp { addr })
}

/// `HTTP/1.1 200 OK\r\n...\r\n\r\nbody` -> (200, "body").
fn parse_answer(answer: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status_line = head.lines().next()?;
    let mut parts = status_line.split(' ');
    let version = parts.next()?;
    let status = parts.next()?.parse().ok()?;
    version.starts_with("HTTP/1.").then(|| (status, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_binds_are_called_on_loopback() {
        let t = |bind: &str| target(bind.parse().expect("addr")).map(|a| a.to_string()).map_err(|e| e.to_string());
        assert_eq!(t("0.0.0.0:9900"), Ok("127.0.0.1:9900".to_owned()));
        assert_eq!(t("[::]:9900"), Ok("[::1]:9900".to_owned()));
        assert_eq!(t("10.0.0.1:9900"), Ok("10.0.0.1:9900".to_owned()));
        assert!(t("127.0.0.1:0").is_err_and(|e| e.contains("--admin")));
    }

    #[test]
    fn answers_are_parsed_or_refused() {
        assert_eq!(
            parse_answer(b"HTTP/1.1 503 Service Unavailable\r\nA: b\r\n\r\ndraining\n"),
            Some((503, "draining\n".to_owned()))
        );
        assert_eq!(parse_answer(b"HTTP/1.1 200 OK\r\n\r\n"), Some((200, String::new())));
        assert_eq!(parse_answer(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_answer(b"HTTP/1.1 abc\r\n\r\n"), None);
        assert_eq!(parse_answer(b""), None);
    }
}
