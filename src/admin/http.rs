//! Just enough HTTP/1.1 for the admin API: one request per connection, a bounded head, no bodies.
//!
//! `parse_head` is pure (bytes in, request or the 4xx to answer out) so every malformed input is
//! unit-tested; `read_request` adds the socket, a size bound and a deadline. Answers always carry
//! `Connection: close`. Nothing here panics on input: every path through it ends in a request or
//! an error status.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The longest request head (request line and headers) read.
pub const MAX_HEAD: usize = 8 * 1024;
/// The longest body read (and ignored): no endpoint takes one, but a client may send a small one.
pub const MAX_BODY: usize = 8 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Other,
}

/// A request: its method and its path split into percent-decoded segments
/// (`/api/pools/web` -> `["api", "pools", "web"]`; the query string is ignored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    pub segments: Vec<String>,
    /// Bytes of body announced by `Content-Length`.
    pub body_len: usize,
}

/// A request that cannot be served, as the status and one-line reason to answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {reason}")]
pub struct HttpError {
    pub status: u16,
    pub reason: String,
}

impl HttpError {
    fn new(status: u16, reason: impl Into<String>) -> HttpError {
        HttpError { status, reason: reason.into() }
    }

    fn bad(reason: &str) -> HttpError {
        HttpError::new(400, reason)
    }
}

/// Parses a request head (everything before the blank line, which is not included).
pub fn parse_head(head: &[u8]) -> Result<Request, HttpError> {
    let head = std::str::from_utf8(head).map_err(|_| HttpError::bad("request head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::bad("malformed request line"));
    };
    if !matches!(version, "HTTP/1.1" | "HTTP/1.0") {
        return Err(if version.starts_with("HTTP/") {
            HttpError::new(505, "only HTTP/1.0 and HTTP/1.1 are served")
        } else {
            HttpError::bad("malformed request line")
        });
    }
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(HttpError::bad("malformed method"));
    }
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        _ => Method::Other,
    };
    let segments = parse_target(target)?;
    let mut body_len = 0;
    for line in lines.filter(|line| !line.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(HttpError::bad("malformed header line"));
        };
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
            return Err(HttpError::bad("malformed header name"));
        }
        let value = value.trim_matches(|c| c == ' ' || c == '\t');
        if name.eq_ignore_ascii_case("content-length") {
            body_len = value.parse().map_err(|_| HttpError::bad("invalid Content-Length"))?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::new(411, "request bodies are not accepted; send no body"));
        }
    }
    if body_len > MAX_BODY {
        return Err(HttpError::new(413, format!("request bodies over {MAX_BODY} bytes are not accepted")));
    }
    Ok(Request { method, segments, body_len })
}

/// `/a/b%20c?x=1` -> `["a", "b c"]`.
fn parse_target(target: &str) -> Result<Vec<String>, HttpError> {
    if !target.starts_with('/') {
        return Err(HttpError::bad("the request target must be a path"));
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    path[1..].split('/').map(percent_decode).collect()
}

fn percent_decode(segment: &str) -> Result<String, HttpError> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            let byte =
                hex.and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or_else(|| HttpError::bad("bad %-escape"))?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| HttpError::bad("path is not UTF-8"))
}

/// Reads one request within `deadline`: the head (at most `MAX_HEAD` bytes), then any announced
/// body, which is discarded. `Ok(None)` when the client closed before sending a full head.
pub async fn read_request<S: AsyncRead + Unpin>(
    stream: &mut S,
    deadline: Duration,
) -> Result<Option<Request>, HttpError> {
    match tokio::time::timeout(deadline, read_request_inner(stream)).await {
        Ok(result) => result,
        Err(_) => Err(HttpError::new(408, format!("no complete request within {deadline:?}"))),
    }
}

async fn read_request_inner<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Option<Request>, HttpError> {
    let mut buf = vec![0u8; MAX_HEAD + 4];
    let mut len = 0;
    let head_end = loop {
        if let Some(end) = find_head_end(&buf[..len]) {
            break end;
        }
        if len >= MAX_HEAD + 4 {
            return Err(HttpError::new(431, format!("request head larger than {MAX_HEAD} bytes")));
        }
        let n = stream.read(&mut buf[len..]).await.map_err(|e| HttpError::bad(&e.to_string()))?;
        if n == 0 {
            return Ok(None);
        }
        len += n;
    };
    if head_end > MAX_HEAD {
        return Err(HttpError::new(431, format!("request head larger than {MAX_HEAD} bytes")));
    }
    let request = parse_head(&buf[..head_end])?;
    // Read (and drop) the body, so that closing the socket does not reset the answer away.
    let mut left = request.body_len.saturating_sub(len - (head_end + 4));
    while left > 0 {
        let n = stream.read(&mut buf[..left.min(MAX_HEAD)]).await.map_err(|e| HttpError::bad(&e.to_string()))?;
        if n == 0 {
            break;
        }
        left -= n;
    }
    Ok(Some(request))
}

/// Where the blank line ending the head starts.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// For 405: the methods the path takes.
    pub allow: Option<&'static str>,
}

pub const TEXT: &str = "text/plain; charset=utf-8";
pub const JSON: &str = "application/json";
/// The Prometheus text exposition format.
pub const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

impl Response {
    /// A one-line text answer.
    pub fn text(status: u16, line: &str) -> Response {
        Response { status, content_type: TEXT, body: format!("{line}\n").into_bytes(), allow: None }
    }

    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        let mut body = value.to_string().into_bytes();
        body.push(b'\n');
        Response { status, content_type: JSON, body, allow: None }
    }

    pub fn error(error: &HttpError) -> Response {
        Response::text(error.status, &error.reason)
    }

    /// The bytes on the wire; a HEAD answer has the headers of the GET answer and no body.
    pub fn encode(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n",
            self.status,
            reason_phrase(self.status),
            self.content_type,
            self.body.len()
        );
        if let Some(allow) = self.allow {
            out.push_str(&format!("Allow: {allow}\r\n"));
        }
        out.push_str("\r\n");
        let mut out = out.into_bytes();
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(head: &str) -> u16 {
        match parse_head(head.as_bytes()) {
            Ok(r) => panic!("{head:?} parsed as {r:?}"),
            Err(e) => e.status,
        }
    }

    #[test]
    fn a_plain_request_splits_its_path_into_decoded_segments() {
        let r = parse_head(b"POST /api/pools/web/servers/127.0.0.1%3A9001/drain?x=1 HTTP/1.1\r\nHost: a\r\n")
            .expect("valid");
        assert_eq!(r.method, Method::Post);
        assert_eq!(r.segments, ["api", "pools", "web", "servers", "127.0.0.1:9001", "drain"]);
        assert_eq!(r.body_len, 0);
        let r = parse_head(b"GET / HTTP/1.0").expect("valid");
        assert_eq!((r.method, r.segments), (Method::Get, vec![String::new()]));
        let r = parse_head(b"DELETE /x HTTP/1.1\r\nContent-Length: 12").expect("valid");
        assert_eq!((r.method, r.body_len), (Method::Other, 12));
    }

    #[test]
    fn malformed_heads_get_a_4xx() {
        assert_eq!(status(""), 400);
        assert_eq!(status("GET"), 400);
        assert_eq!(status("GET /"), 400);
        assert_eq!(status("GET / HTTP/1.1 extra"), 400);
        assert_eq!(status("GET  / HTTP/1.1"), 400);
        assert_eq!(status("get / HTTP/1.1"), 400);
        assert_eq!(status("GET / SPDY/3"), 400);
        assert_eq!(status("GET / HTTP/2.0"), 505);
        assert_eq!(status("GET http://x/ HTTP/1.1"), 400);
        assert_eq!(status("GET /%zz HTTP/1.1"), 400);
        assert_eq!(status("GET /%ff HTTP/1.1"), 400);
        assert_eq!(status("GET /% HTTP/1.1"), 400);
        assert_eq!(status("GET / HTTP/1.1\r\nno colon"), 400);
        assert_eq!(status("GET / HTTP/1.1\r\nbad name: x"), 400);
        assert_eq!(status("GET / HTTP/1.1\r\nContent-Length: -1"), 400);
        assert_eq!(status("GET / HTTP/1.1\r\nContent-Length: 99999999999999999999999"), 400);
        assert_eq!(status("POST / HTTP/1.1\r\nContent-Length: 100000"), 413);
        assert_eq!(status("POST / HTTP/1.1\r\nTransfer-Encoding: chunked"), 411);
        assert_eq!(parse_head(b"\xff\xfe / HTTP/1.1").map_err(|e| e.status), Err(400));
    }

    #[test]
    fn heads_are_read_to_the_blank_line_within_the_bound() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
        let read = |bytes: Vec<u8>| {
            runtime.block_on(async move {
                let mut input = bytes.as_slice();
                read_request(&mut input, Duration::from_secs(1)).await
            })
        };
        let r = read(b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()).expect("valid").expect("a request");
        assert_eq!(r.segments, ["live"]);
        let r = read(b"POST /api/drain HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc".to_vec()).expect("valid");
        assert_eq!(r.map(|r| r.body_len), Some(3));
        assert_eq!(read(b"GET /live HTTP/1.1\r\n".to_vec()), Ok(None), "closed before the blank line");
        let mut huge = b"GET /live HTTP/1.1\r\nX: ".to_vec();
        huge.resize(MAX_HEAD * 4, b'a');
        assert_eq!(read(huge).map_err(|e| e.status), Err(431));
        let mut just_over = b"GET /live HTTP/1.1\r\nX: ".to_vec();
        just_over.resize(MAX_HEAD + 1, b'a');
        just_over.extend_from_slice(b"\r\n\r\n");
        assert_eq!(read(just_over).map_err(|e| e.status), Err(431));
    }

    #[test]
    fn answers_close_and_head_drops_the_body() {
        let r = Response::text(503, "draining");
        let full = String::from_utf8(r.encode(false)).expect("utf-8");
        assert!(full.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{full}");
        assert!(full.contains("Content-Length: 9\r\nConnection: close\r\n"), "{full}");
        assert!(full.ends_with("\r\n\r\ndraining\n"), "{full}");
        let head = String::from_utf8(r.encode(true)).expect("utf-8");
        assert!(head.ends_with("\r\n\r\n") && head.contains("Content-Length: 9"), "{head}");
    }
}
