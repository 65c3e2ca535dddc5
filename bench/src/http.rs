//! The little HTTP/1.1 the workloads speak: the request bytes a client sends, and an incremental
//! parser that tells when a response is complete.
//!
//! Pure code over byte slices: no sockets, no clocks. Only what the demo backends, nginx and the
//! bench backend answer is understood (a status line, headers, a `Content-Length` body); a
//! chunked or length-less response is reported as invalid rather than guessed at.

/// The request sent on a keep-alive connection.
pub fn request(path: &str, close: bool) -> Vec<u8> {
    let connection = if close { "Connection: close\r\n" } else { "" };
    format!("GET {path} HTTP/1.1\r\nHost: bench\r\nUser-Agent: ringlb-bench\r\n{connection}\r\n").into_bytes()
}

#[derive(Debug, PartialEq, Eq)]
pub enum Parse {
    /// More bytes are needed.
    Incomplete,
    /// A whole response of `len` bytes sits at the start of the buffer.
    Complete {
        len: usize,
        status: u16,
    },
    Invalid(&'static str),
}

/// Position just past the `\r\n\r\n` that ends a header block, if present.
pub fn header_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Parses the response at the start of `buf`.
pub fn parse_response(buf: &[u8]) -> Parse {
    let Some(head_len) = header_end(buf) else {
        return Parse::Incomplete;
    };
    let head = &buf[..head_len];
    let mut lines = head.split(|&b| b == b'\n');
    let status_line = lines.next().unwrap_or_default();
    if !status_line.starts_with(b"HTTP/1.") || status_line.len() < 12 {
        return Parse::Invalid("bad status line");
    }
    let status = match std::str::from_utf8(&status_line[9..12]).ok().and_then(|s| s.parse::<u16>().ok()) {
        Some(s) => s,
        None => return Parse::Invalid("bad status code"),
    };
    let mut content_length = None;
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.eq_ignore_ascii_case(b"content-length") {
            let value = std::str::from_utf8(value).ok().map(str::trim).and_then(|v| v.parse::<usize>().ok());
            match value {
                Some(v) => content_length = Some(v),
                None => return Parse::Invalid("bad content-length"),
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return Parse::Invalid("chunked responses are not supported");
        }
    }
    let body = match (content_length, status) {
        (Some(n), _) => n,
        (None, 100..=199 | 204 | 304) => 0,
        (None, _) => return Parse::Invalid("response without content-length"),
    };
    if buf.len() < head_len + body {
        return Parse::Incomplete;
    }
    Parse::Complete { len: head_len + body, status }
}

/// True when a request header block asks for the connection to be closed after the response.
pub fn wants_close(head: &[u8]) -> bool {
    head.split(|&b| b == b'\n').any(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                line[..colon].eq_ignore_ascii_case(b"connection")
                    && line[colon + 1..].trim_ascii().eq_ignore_ascii_case(b"close")
            }
            None => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\ncontent-length: 2\r\n\r\na\n";

    #[test]
    fn complete_response_reports_its_length_and_status() {
        assert_eq!(parse_response(OK), Parse::Complete { len: OK.len(), status: 200 });
    }

    #[test]
    fn every_strict_prefix_is_incomplete() {
        for n in 0..OK.len() {
            assert_eq!(parse_response(&OK[..n]), Parse::Incomplete, "prefix of {n} bytes");
        }
    }

    #[test]
    fn trailing_bytes_are_not_part_of_the_response() {
        let mut two = OK.to_vec();
        two.extend_from_slice(OK);
        assert_eq!(parse_response(&two), Parse::Complete { len: OK.len(), status: 200 });
    }

    #[test]
    fn error_status_is_reported() {
        let r = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(parse_response(r), Parse::Complete { len: r.len(), status: 503 });
    }

    #[test]
    fn chunked_and_lengthless_responses_are_invalid() {
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(parse_response(chunked), Parse::Invalid(_)));
        let lengthless = b"HTTP/1.1 200 OK\r\n\r\n";
        assert!(matches!(parse_response(lengthless), Parse::Invalid(_)));
        assert!(matches!(parse_response(b"SSH-2.0\r\n\r\n"), Parse::Invalid(_)));
    }

    #[test]
    fn request_carries_connection_close_only_when_asked() {
        assert!(wants_close(&request("/", true)));
        assert!(!wants_close(&request("/", false)));
        assert_eq!(header_end(&request("/", false)), Some(request("/", false).len()));
    }
}
