//! What the kinds of active check send and how their replies are judged: a TCP connect, an
//! HTTP GET answered with an expected status, and send/expect. The I/O itself is `ring`'s.
//!
//! Pure: bytes in, a verdict out; it never touches a socket or the table.

use std::io;
use std::time::Duration;

use crate::config::{HealthCheck, StatusRanges};

/// Bytes read at most for an HTTP status line or a send-expect reply (or the whole `expect`).
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

    /// The bytes to write once connected (empty: nothing to write).
    pub fn request(&self) -> &[u8] {
        match self {
            Probe::Tcp => &[],
            Probe::Http { request, .. } => request,
            Probe::SendExpect { send, .. } => send,
        }
    }

    /// How many reply bytes the check reads at most; 0: it reads none.
    pub fn reply_limit(&self) -> usize {
        match self {
            Probe::Tcp => 0,
            Probe::Http { .. } => MAX_REPLY,
            Probe::SendExpect { expect, .. } => MAX_REPLY.max(expect.len()),
        }
    }

    /// The verdict on `reply`, the bytes read so far; `None` while more are needed. `closed`: the
    /// server has closed, so no more will come (nor will they past `reply_limit`).
    pub fn judge(&self, reply: &[u8], closed: bool) -> Option<Result<(), CheckFailure>> {
        let closed = closed || reply.len() >= self.reply_limit();
        match self {
            Probe::Tcp => Some(Ok(())),
            Probe::Http { expect_status, .. } => {
                let line = match reply.iter().position(|&b| b == b'\n') {
                    Some(end) => &reply[..end],
                    None if closed => reply,
                    None => return None,
                };
                if line.is_empty() && closed {
                    return Some(Err(CheckFailure::Closed));
                }
                Some(match parse_status(line) {
                    Some(status) if expect_status.contains(status) => Ok(()),
                    Some(status) => Err(CheckFailure::Status(status)),
                    None => Err(CheckFailure::NotHttp(quote(line))),
                })
            }
            Probe::SendExpect { expect, .. } => {
                if reply.starts_with(expect) {
                    Some(Ok(()))
                } else if !expect.starts_with(reply) {
                    // Already different: no need to wait for the rest.
                    Some(Err(CheckFailure::Unexpected(quote(reply))))
                } else if closed {
                    Some(Err(CheckFailure::Closed))
                } else {
                    None
                }
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

/// Why an operation of a check failed, from its (negative) result.
pub fn io_failure(stage: &'static str, res: i32) -> CheckFailure {
    CheckFailure::Io { stage, reason: os_text(&io::Error::from_raw_os_error(-res)) }
}

/// Why a connect failed, from its (negative) result.
pub fn connect_failure(res: i32) -> CheckFailure {
    match -res {
        libc::ECONNREFUSED => CheckFailure::Refused,
        errno => CheckFailure::Connect(os_text(&io::Error::from_raw_os_error(errno))),
    }
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

/// How a connect seen by live traffic failed, in the words of [`CheckFailure`].
pub fn connect_error_text(errno: i32) -> String {
    connect_failure(-errno).to_string()
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

    fn http(expect_status: StatusRanges) -> Probe {
        let check = HealthCheck::Http { path: "/".to_owned(), expect_status, host: None };
        Probe::new(&check, "x:1").expect("probe")
    }

    fn send_expect(expect: &str) -> Probe {
        Probe::new(&HealthCheck::SendExpect { send: "PING\r\n".to_owned(), expect: expect.to_owned() }, "x:1")
            .expect("probe")
    }

    #[test]
    fn http_replies_are_judged_on_the_status_line() {
        let probe = http(crate::config::DEFAULT_EXPECT_STATUS);
        assert_eq!(probe.judge(b"HTTP/1.1 200 OK\r\n", false), Some(Ok(())));
        assert_eq!(probe.judge(b"HTTP/1.1 302 Found\r\nLocation: /\r\n", false), Some(Ok(())));
        assert_eq!(probe.judge(b"HTTP/1.1 503 Unavailable\r\n", false), Some(Err(CheckFailure::Status(503))));
        // Half a status line: wait for the rest, unless none will come.
        assert_eq!(probe.judge(b"HTTP/1.1 20", false), None);
        assert_eq!(probe.judge(b"HTTP/1.1 204", true), Some(Ok(())));
        assert_eq!(probe.judge(b"", true), Some(Err(CheckFailure::Closed)));
        assert_eq!(
            probe.judge(b"SSH-2.0-OpenSSH_9.2\r\n", false),
            Some(Err(CheckFailure::NotHttp("SSH-2.0-OpenSSH_9.2".to_owned())))
        );
        let only_204 = http(StatusRanges::from_ranges(vec![(204, 204)]));
        assert_eq!(only_204.judge(b"HTTP/1.1 200 OK\r\n", false), Some(Err(CheckFailure::Status(200))));
        // A line longer than anything read is no status line.
        assert!(matches!(probe.judge(&[b'x'; MAX_REPLY], false), Some(Err(CheckFailure::NotHttp(_)))));
    }

    #[test]
    fn send_expect_replies_are_judged_on_their_start() {
        let probe = send_expect("+PONG");
        assert_eq!(probe.request(), b"PING\r\n");
        assert_eq!(probe.judge(b"+PONG\r\n", false), Some(Ok(())));
        assert_eq!(probe.judge(b"+PO", false), None);
        assert_eq!(probe.judge(b"+PO", true), Some(Err(CheckFailure::Closed)));
        // Different from the first byte on: no need to wait for more.
        assert_eq!(probe.judge(b"-E", false), Some(Err(CheckFailure::Unexpected("-E".to_owned()))));
        assert_eq!(
            probe.judge(b"-ERR unknown command\r\n", false),
            Some(Err(CheckFailure::Unexpected("-ERR unknown command".to_owned())))
        );
        assert_eq!(probe.judge(b"", true), Some(Err(CheckFailure::Closed)));
    }

    #[test]
    fn failures_read_as_log_reasons() {
        assert_eq!(connect_error_text(libc::ECONNREFUSED), "connect refused");
        assert_eq!(connect_error_text(libc::EHOSTUNREACH), "connect: No route to host");
        assert_eq!(connect_failure(-libc::ENETUNREACH).to_string(), "connect: Network is unreachable");
        assert_eq!(io_failure("read", -libc::ECONNRESET).to_string(), "read: Connection reset by peer");
        assert_eq!(CheckFailure::Timeout(Duration::from_secs(2)).to_string(), "timeout after 2s");
        assert_eq!(CheckFailure::Timeout(Duration::from_millis(300)).to_string(), "timeout after 300ms");
        assert_eq!(CheckFailure::Status(503).to_string(), "http status 503");
        assert_eq!(
            CheckFailure::Unexpected(quote(b"-ERR unknown\r\n")).to_string(),
            r#"unexpected reply "-ERR unknown""#
        );
    }
}
