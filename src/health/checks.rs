//! The kinds of active check, one connection each: a TCP connect, an HTTP GET answered with an
//! expected status, and send/expect. A check runs under a single deadline (`timeout`, connect
//! included) and closes its socket with a reset (SO_LINGER 0), as HAProxy does, so that checks
//! leave no TIME_WAIT sockets on this host.
//!
//! Owns one socket for the length of one check and nothing else; it never touches the table (the
//! prober decides what a result means).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::SockRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::config::{HealthCheck, StatusRanges};

/// Bytes read at most for an HTTP status line or a send-expect reply.
const MAX_REPLY: usize = 512;
/// Bytes of an unexpected reply quoted in a log line.
const QUOTED_REPLY: usize = 40;

/// One server's check, with its request prepared once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Tcp,
    Http { request: Box<[u8]>, expect_status: StatusRanges },
    SendExpect { send: Box<[u8]>, expect: Box<[u8]> },
}

impl Probe {
    /// The probe of `check` for a server whose address is written `server_addr` in the
    /// configuration (the default `Host` header); `None` for `check = "none"`.
    pub fn new(check: &HealthCheck, server_addr: &str) -> Option<Probe> {
        match check {
            HealthCheck::None => None,
            HealthCheck::Tcp => Some(Probe::Tcp),
            HealthCheck::Http { path, expect_status, host } => {
                let host = host.as_deref().unwrap_or(server_addr);
                let request = format!(
                    "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ringlb-health-check\r\nConnection: close\r\n\r\n"
                );
                Some(Probe::Http { request: request.into_bytes().into(), expect_status: expect_status.clone() })
            }
            HealthCheck::SendExpect { send, expect } => {
                Some(Probe::SendExpect { send: send.as_bytes().into(), expect: expect.as_bytes().into() })
            }
        }
    }
}

/// Why a check failed, in the words of the transition log line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckFailure {
    #[error("connect refused")]
    Refused,
    #[error("connect: {0}")]
    Connect(String),
    #[error("timeout after {0:?}")]
    Timeout(Duration),
    #[error("{stage}: {reason}")]
    Io { stage: &'static str, reason: String },
    #[error("connection closed before a reply")]
    Closed,
    #[error("http status {0}")]
    Status(u16),
    #[error("not an http status line: {0:?}")]
    NotHttp(String),
    #[error("unexpected reply {0:?}")]
    Unexpected(String),
}

/// Runs `probe` against `addr` within `timeout`.
pub async fn run(probe: &Probe, addr: SocketAddr, timeout: Duration) -> Result<(), CheckFailure> {
    tokio::time::timeout(timeout, attempt(probe, addr)).await.unwrap_or(Err(CheckFailure::Timeout(timeout)))
}

async fn attempt(probe: &Probe, addr: SocketAddr) -> Result<(), CheckFailure> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() };
    let socket = socket.map_err(io_failure("socket"))?;
    SockRef::from(&socket).set_linger(Some(Duration::ZERO)).map_err(io_failure("setsockopt"))?;
    let mut stream = socket.connect(addr).await.map_err(|e| match e.kind() {
        io::ErrorKind::ConnectionRefused => CheckFailure::Refused,
        _ => CheckFailure::Connect(os_text(&e)),
    })?;
    match probe {
        Probe::Tcp => Ok(()),
        Probe::Http { request, expect_status } => {
            stream.write_all(request).await.map_err(io_failure("send"))?;
            let reply = read_until(&mut stream, |got| got.contains(&b'\n')).await?;
            let line = reply.split(|&b| b == b'\n').next().unwrap_or_default();
            match parse_status(line) {
                Some(status) if expect_status.contains(status) => Ok(()),
                Some(status) => Err(CheckFailure::Status(status)),
                None => Err(CheckFailure::NotHttp(quote(line))),
            }
        }
        Probe::SendExpect { send, expect } => {
            if !send.is_empty() {
                stream.write_all(send).await.map_err(io_failure("send"))?;
            }
            // Stop as soon as the reply is long enough or already differs.
            let reply = read_until(&mut stream, |got| got.len() >= expect.len() || !expect.starts_with(got)).await?;
            if reply.starts_with(expect) {
                Ok(())
            } else if expect.starts_with(&reply) {
                Err(CheckFailure::Closed)
            } else {
                Err(CheckFailure::Unexpected(quote(&reply)))
            }
        }
    }
}

/// Reads until `done` says so, the peer closes, or `MAX_REPLY` bytes; fails on an empty reply.
async fn read_until(stream: &mut TcpStream, done: impl Fn(&[u8]) -> bool) -> Result<Vec<u8>, CheckFailure> {
    let mut reply = Vec::with_capacity(128);
    let mut buf = [0u8; MAX_REPLY];
    while reply.len() < MAX_REPLY {
        let n = stream.read(&mut buf[..MAX_REPLY - reply.len()]).await.map_err(io_failure("read"))?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
        if done(&reply) {
            break;
        }
    }
    if reply.is_empty() {
        return Err(CheckFailure::Closed);
    }
    Ok(reply)
}

/// The status of `HTTP/1.x NNN reason`.
fn parse_status(line: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split_ascii_whitespace();
    let version = words.next()?;
    let status = words.next()?;
    if !version.starts_with("HTTP/") || status.len() != 3 {
        return None;
    }
    status.parse().ok()
}

/// The start of a reply, printable in a log line.
fn quote(reply: &[u8]) -> String {
    let end = reply.len().min(QUOTED_REPLY);
    String::from_utf8_lossy(&reply[..end]).trim_end_matches(['\r', '\n']).to_owned()
}

fn io_failure(stage: &'static str) -> impl Fn(io::Error) -> CheckFailure {
    move |e| CheckFailure::Io { stage, reason: os_text(&e) }
}

/// How a connect seen by live traffic failed, in the words of [`CheckFailure`].
pub fn connect_error_text(errno: i32) -> String {
    if errno == libc::ECONNREFUSED {
        return CheckFailure::Refused.to_string();
    }
    CheckFailure::Connect(os_text(&io::Error::from_raw_os_error(errno))).to_string()
}

/// The system's words for an error without Rust's " (os error N)" suffix.
fn os_text(error: &io::Error) -> String {
    let text = error.to_string();
    match error.raw_os_error() {
        Some(code) => text.strip_suffix(&format!(" (os error {code})")).unwrap_or(&text).to_owned(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_status_lines_parse() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.0 503 Service Unavailable"), Some(503));
        assert_eq!(parse_status(b"HTTP/1.1 204"), Some(204));
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH"), None);
        assert_eq!(parse_status(b"HTTP/1.1 20 OK"), None);
        assert_eq!(parse_status(b"HTTP/1.1 abc OK"), None);
        assert_eq!(parse_status(b""), None);
        assert_eq!(parse_status(&[0xff, 0xfe]), None);
    }

    #[test]
    fn http_requests_name_the_host() {
        let check = HealthCheck::Http {
            path: "/healthz".to_owned(),
            expect_status: crate::config::DEFAULT_EXPECT_STATUS,
            host: None,
        };
        let Some(Probe::Http { request, .. }) = Probe::new(&check, "db.internal:5432") else {
            panic!("expected an http probe");
        };
        let request = String::from_utf8_lossy(&request).into_owned();
        assert!(request.starts_with("GET /healthz HTTP/1.1\r\nHost: db.internal:5432\r\n"), "{request:?}");
        assert!(request.ends_with("\r\n\r\n"));
        assert_eq!(Probe::new(&HealthCheck::None, "x:1"), None);
    }

    #[test]
    fn failures_read_as_log_reasons() {
        assert_eq!(connect_error_text(libc::ECONNREFUSED), "connect refused");
        assert_eq!(connect_error_text(libc::EHOSTUNREACH), "connect: No route to host");
        assert_eq!(CheckFailure::Timeout(Duration::from_secs(2)).to_string(), "timeout after 2s");
        assert_eq!(CheckFailure::Timeout(Duration::from_millis(300)).to_string(), "timeout after 300ms");
        assert_eq!(CheckFailure::Status(503).to_string(), "http status 503");
        assert_eq!(
            CheckFailure::Unexpected(quote(b"-ERR unknown\r\n")).to_string(),
            r#"unexpected reply "-ERR unknown""#
        );
    }
}

/// Each check against a real server on a loopback port.
#[cfg(test)]
mod socket_tests {
    use std::time::Instant;

    use tokio::net::TcpListener;

    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    /// A server that reads one request, writes `reply`, and closes.
    async fn server(reply: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(reply).await;
            }
        });
        addr
    }

    fn http(expect_status: &str) -> Probe {
        let ranges = match expect_status {
            "200-399" => crate::config::DEFAULT_EXPECT_STATUS,
            _ => StatusRanges::from_ranges(vec![(204, 204)]),
        };
        let check = HealthCheck::Http { path: "/".to_owned(), expect_status: ranges, host: None };
        Probe::new(&check, "127.0.0.1:1").expect("probe")
    }

    fn send_expect(send: &str, expect: &str) -> Probe {
        Probe::new(&HealthCheck::SendExpect { send: send.to_owned(), expect: expect.to_owned() }, "x:1").expect("probe")
    }

    #[tokio::test]
    async fn tcp_passes_on_a_listener_and_fails_refused_on_a_closed_port() {
        let addr = server(b"").await;
        assert_eq!(run(&Probe::Tcp, addr, SECOND).await, Ok(()));
        let closed = {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            listener.local_addr().expect("addr")
        };
        assert_eq!(run(&Probe::Tcp, closed, SECOND).await, Err(CheckFailure::Refused));
    }

    #[tokio::test]
    async fn http_checks_the_status_against_expect_status() {
        let ok = server(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
        let unavailable = server(b"HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        let not_http = server(b"SSH-2.0-OpenSSH_9.2\r\n").await;
        assert_eq!(run(&http("200-399"), ok, SECOND).await, Ok(()));
        assert_eq!(run(&http("204"), ok, SECOND).await, Err(CheckFailure::Status(200)));
        assert_eq!(run(&http("200-399"), unavailable, SECOND).await, Err(CheckFailure::Status(503)));
        assert_eq!(
            run(&http("200-399"), not_http, SECOND).await,
            Err(CheckFailure::NotHttp("SSH-2.0-OpenSSH_9.2".to_owned()))
        );
    }

    #[tokio::test]
    async fn send_expect_compares_the_start_of_the_reply() {
        let pong = server(b"+PONG\r\n").await;
        let error = server(b"-ERR unknown command\r\n").await;
        let short = server(b"+PO").await;
        assert_eq!(run(&send_expect("PING\r\n", "+PONG"), pong, SECOND).await, Ok(()));
        assert_eq!(
            run(&send_expect("PING\r\n", "+PONG"), error, SECOND).await,
            Err(CheckFailure::Unexpected("-ERR unknown command".to_owned()))
        );
        assert_eq!(run(&send_expect("PING\r\n", "+PONG"), short, SECOND).await, Err(CheckFailure::Closed));
    }

    #[tokio::test]
    async fn a_server_that_never_answers_times_out_at_the_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        // Accepts (the kernel completes the handshake) and never answers.
        let timeout = Duration::from_millis(200);
        let started = Instant::now();
        assert_eq!(run(&http("200-399"), addr, timeout).await, Err(CheckFailure::Timeout(timeout)));
        let took = started.elapsed();
        assert!(took >= timeout && took < timeout + Duration::from_millis(100), "{took:?}");
        drop(listener);
    }
}
