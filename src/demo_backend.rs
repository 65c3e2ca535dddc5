//! `ringlb demo-backend`: a tiny HTTP/1.1 keep-alive server that answers every request with its name.
//!
//! It exists so that `make run`, the integration tests and the benchmarks have backends that are
//! fast, honest about HTTP framing (keep-alive, `Connection: close`, HTTP/1.0, pipelining, request
//! bodies) and cheap per connection (a tokio runtime with two workers, one task per connection).
//! It is not part of the load balancer: nothing in the data path or the control plane uses it, and
//! it must never grow features beyond what a test backend needs.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Worker threads of the runtime: enough to saturate a load generator on a small machine without
/// stealing every core from the proxy under test.
const WORKER_THREADS: usize = 2;
/// Listen backlog asked for (the kernel caps it at `net.core.somaxconn`).
const LISTEN_BACKLOG: i32 = 4096;
/// A request head larger than this is refused with 431 and the connection closed.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Bytes read from the socket per read call.
const READ_CHUNK: usize = 16 * 1024;
/// After answering with `Connection: close`, how long to drain what the client still sends so
/// that closing does not turn into a reset that could destroy the response in flight.
const LINGER_DRAIN: Duration = Duration::from_secs(2);
/// Pause after an accept error (e.g. out of descriptors) before accepting again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);
/// How long open connections may run once a stop signal has arrived.
const STOP_GRACE: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("bad bind address {addr:?}: {source}")]
    Resolve { addr: String, source: io::Error },
    #[error("bind address {0:?} resolves to nothing")]
    NoAddress(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("cannot start the runtime: {0}")]
    Runtime(io::Error),
    #[error("cannot wait for signals: {0}")]
    Signals(io::Error),
}

/// Serves until SIGTERM or SIGINT. Prints `demo-backend NAME listening on ADDR` to stderr once the
/// socket listens (ADDR is the bound address, so port 0 works).
pub fn run(bind: &str, name: &str) -> Result<(), DemoError> {
    // Block the stop signals before any thread exists so that every runtime thread inherits the
    // mask and the signals stay pending for `wait_for_stop_signal` on this thread.
    let signals = StopSignals::block().map_err(DemoError::Signals)?;
    let addr = resolve(bind)?;
    let listener = listen(addr).map_err(|source| DemoError::Listen { addr, source })?;
    let local = listener.local_addr().map_err(|source| DemoError::Listen { addr, source })?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .thread_name("demo-backend")
        .enable_io()
        .enable_time()
        .build()
        .map_err(DemoError::Runtime)?;
    let listener = {
        let _guard = runtime.enter();
        TcpListener::from_std(listener).map_err(|source| DemoError::Listen { addr, source })?
    };
    let responses = Arc::new(Responses::new(name));
    runtime.spawn(accept_loop(listener, responses));
    eprintln!("demo-backend {name} listening on {local}");

    let signal = signals.wait().map_err(DemoError::Signals)?;
    eprintln!("demo-backend {name} stopping on signal {signal}");
    runtime.shutdown_timeout(STOP_GRACE);
    Ok(())
}

fn resolve(bind: &str) -> Result<SocketAddr, DemoError> {
    let mut addrs = bind.to_socket_addrs().map_err(|source| DemoError::Resolve { addr: bind.to_string(), source })?;
    addrs.next().ok_or_else(|| DemoError::NoAddress(bind.to_string()))
}

fn listen(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        // `[::]` serves IPv4 clients too, whatever the host's bindv6only default.
        socket.set_only_v6(false)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// SIGTERM and SIGINT, blocked in the calling thread (and so in every thread it starts).
struct StopSignals {
    set: libc::sigset_t,
}

impl StopSignals {
    fn block() -> io::Result<StopSignals> {
        // SAFETY: sigset_t is plain data, initialised by sigemptyset before any other use, and
        // pthread_sigmask only changes the calling thread's mask.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGINT);
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            Ok(StopSignals { set })
        }
    }

    /// Blocks until one of the signals arrives and returns its number.
    fn wait(&self) -> io::Result<i32> {
        let mut signal: libc::c_int = 0;
        // SAFETY: `self.set` was initialised in `block`; `signal` is a valid out-pointer.
        let rc = unsafe { libc::sigwait(&self.set, &mut signal) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(signal)
    }
}

async fn accept_loop(listener: TcpListener, responses: Arc<Responses>) {
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                let responses = Arc::clone(&responses);
                tokio::spawn(async move {
                    // A connection error only ends that connection; the client sees it.
                    let _ = serve(stream, &responses).await;
                });
            }
            Err(e) => {
                eprintln!("demo-backend: accept failed: {e}");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

/// The responses, rendered once at start.
struct Responses {
    /// Keep-alive answer to an HTTP/1.1 request.
    keep_alive: Vec<u8>,
    /// Keep-alive answer to an HTTP/1.0 request that asked for it.
    keep_alive_10: Vec<u8>,
    /// Answer after which the connection closes.
    close: Vec<u8>,
    /// The body alone (HEAD answers leave it out).
    body_len: usize,
}

impl Responses {
    fn new(name: &str) -> Responses {
        let body = format!("{name}\n");
        let render = |connection: &str| {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{connection}\r\n{body}",
                body.len()
            )
            .into_bytes()
        };
        Responses {
            keep_alive: render(""),
            keep_alive_10: render("Connection: keep-alive\r\n"),
            close: render("Connection: close\r\n"),
            body_len: body.len(),
        }
    }

    /// Appends the answer to `request` to `out`.
    fn write(&self, request: &Head, out: &mut Vec<u8>) {
        let full = match (request.keep_alive, request.http10) {
            (false, _) => &self.close,
            (true, true) => &self.keep_alive_10,
            (true, false) => &self.keep_alive,
        };
        let len = if request.head_only { full.len() - self.body_len } else { full.len() };
        out.extend_from_slice(&full[..len]);
    }
}

fn error_response(status: &str) -> Vec<u8> {
    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").into_bytes()
}

/// One connection: parse requests as they arrive, answer them in order, honour keep-alive.
async fn serve(mut stream: TcpStream, responses: &Responses) -> io::Result<()> {
    // Replies are tiny and written in batches; Nagle would only delay pipelined answers.
    stream.set_nodelay(true)?;
    let mut buf: Vec<u8> = Vec::new();
    let mut out: Vec<u8> = Vec::new();
    // Body bytes of the current request still to be read and thrown away.
    let mut body_left: u64 = 0;
    // The request whose body is being read, answered once the body is complete.
    let mut pending: Option<Head> = None;
    let mut close_after = false;

    'read: loop {
        // Wait for bytes before taking a buffer, so an idle connection holds no read buffer.
        stream.readable().await?;
        buf.reserve(READ_CHUNK);
        match stream.try_read_buf(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }

        let mut pos = 0;
        loop {
            if body_left > 0 {
                let take = body_left.min((buf.len() - pos) as u64);
                body_left -= take;
                pos += take as usize;
                if body_left > 0 {
                    break;
                }
            }
            if let Some(head) = pending.take() {
                responses.write(&head, &mut out);
                if !head.keep_alive {
                    close_after = true;
                    break;
                }
            }
            match parse_head(&buf[pos..]) {
                Parse::Complete(head, used) => {
                    pos += used;
                    body_left = head.body_len;
                    pending = Some(head);
                }
                Parse::Partial => {
                    if buf.len() - pos > MAX_HEAD_BYTES {
                        out.extend_from_slice(&error_response("431 Request Header Fields Too Large"));
                        close_after = true;
                    }
                    break;
                }
                Parse::Invalid(status) => {
                    out.extend_from_slice(&error_response(status));
                    close_after = true;
                    break;
                }
            }
        }
        buf.drain(..pos);
        if buf.is_empty() {
            buf = Vec::new();
        }

        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if close_after {
            break 'read;
        }
    }

    if close_after {
        stream.shutdown().await?;
        // Read what the client may still send until it closes, so our close is not a reset.
        let drain = async {
            let mut sink = [0u8; 4096];
            while stream.read(&mut sink).await? > 0 {}
            Ok::<(), io::Error>(())
        };
        let _ = tokio::time::timeout(LINGER_DRAIN, drain).await;
    }
    Ok(())
}

/// What the server needs to know about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Head {
    http10: bool,
    keep_alive: bool,
    head_only: bool,
    body_len: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum Parse {
    /// A whole request head and the number of bytes it took.
    Complete(Head, usize),
    /// More bytes are needed.
    Partial,
    /// The status line to answer with before closing.
    Invalid(&'static str),
}

/// Parses one request head (request line and headers) at the start of `buf`.
fn parse_head(buf: &[u8]) -> Parse {
    // Tolerate empty lines before a request (RFC 9112 section 2.2).
    let skip = buf.iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
    let buf_rest = &buf[skip..];
    let Some(end) = find(buf_rest, b"\r\n\r\n") else {
        return Parse::Partial;
    };
    let Ok(text) = std::str::from_utf8(&buf_rest[..end]) else {
        return Parse::Invalid("400 Bad Request");
    };
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (Some(method), Some(_target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Parse::Invalid("400 Bad Request");
    };
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Parse::Invalid("505 HTTP Version Not Supported"),
    };
    if method.is_empty() {
        return Parse::Invalid("400 Bad Request");
    }

    let mut keep_alive = !http10;
    let mut body_len: u64 = 0;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Parse::Invalid("400 Bad Request");
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            match value.parse::<u64>() {
                Ok(n) => body_len = n,
                Err(_) => return Parse::Invalid("400 Bad Request"),
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked request bodies are not needed by any client of a demo backend.
            return Parse::Invalid("501 Not Implemented");
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") && http10 {
                    keep_alive = true;
                }
            }
        }
    }
    let head = Head { http10, keep_alive, head_only: method == "HEAD", body_len };
    Parse::Complete(head, skip + end + 4)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8]) -> (Head, usize) {
        match parse_head(buf) {
            Parse::Complete(head, used) => (head, used),
            other => panic!("expected a complete head, got {other:?}"),
        }
    }

    #[test]
    fn http11_defaults_to_keep_alive() {
        let req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET";
        let (head, used) = complete(req);
        assert_eq!(head, Head { http10: false, keep_alive: true, head_only: false, body_len: 0 });
        assert_eq!(used, req.len() - 3);
    }

    #[test]
    fn http10_defaults_to_close_unless_asked() {
        assert!(!complete(b"GET / HTTP/1.0\r\n\r\n").0.keep_alive);
        assert!(complete(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").0.keep_alive);
    }

    #[test]
    fn connection_close_is_honoured_in_a_token_list() {
        assert!(!complete(b"GET / HTTP/1.1\r\nconnection: TE, close\r\n\r\n").0.keep_alive);
    }

    #[test]
    fn content_length_and_head_are_read() {
        let (head, _) = complete(b"POST /x HTTP/1.1\r\nContent-Length:  12\r\n\r\n");
        assert_eq!(head.body_len, 12);
        assert!(complete(b"HEAD / HTTP/1.1\r\n\r\n").0.head_only);
    }

    #[test]
    fn partial_and_invalid_heads() {
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nHost: x\r\n"), Parse::Partial);
        assert_eq!(parse_head(b""), Parse::Partial);
        assert_eq!(parse_head(b"GET /\r\n\r\n"), Parse::Invalid("400 Bad Request"));
        assert_eq!(parse_head(b"GET / HTTP/2\r\n\r\n"), Parse::Invalid("505 HTTP Version Not Supported"));
        assert_eq!(parse_head(b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"), Parse::Invalid("400 Bad Request"));
        assert_eq!(
            parse_head(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Parse::Invalid("501 Not Implemented")
        );
    }

    #[test]
    fn leading_empty_lines_are_skipped() {
        let (_, used) = complete(b"\r\nGET / HTTP/1.1\r\n\r\n");
        assert_eq!(used, 20);
    }

    #[test]
    fn responses_carry_name_length_and_connection() {
        let r = Responses::new("demo1");
        let mut out = Vec::new();
        let head = Head { http10: false, keep_alive: true, head_only: false, body_len: 0 };
        r.write(&head, &mut out);
        let text = String::from_utf8(out).unwrap_or_default();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("Content-Length: 6\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\ndemo1\n"), "{text}");
        assert!(!text.contains("Connection"), "{text}");

        let mut out = Vec::new();
        r.write(&Head { keep_alive: false, head_only: true, ..head }, &mut out);
        let text = String::from_utf8(out).unwrap_or_default();
        assert!(text.contains("Connection: close\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "{text}");
    }
}
