//! Test clients: a byte-exact bulk exchange, a small HTTP/1.1 client, a close detector, and a
//! many-connection opener that spreads sockets over several loopback source addresses. They work
//! against any TCP target, so each is proven against a backend directly before it is pointed at
//! ringlb.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;

/// Bytes per write and per read in the bulk exchange.
const BULK_CHUNK: usize = 256 * 1024;

/// A small, fast, deterministic generator of test bytes (xorshift64*).
pub struct Prng(u64);

impl Prng {
    pub fn new(seed: u64) -> Prng {
        Prng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut words = buf.chunks_exact_mut(8);
        for word in &mut words {
            word.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let tail = words.into_remainder();
        let last = self.next_u64().to_le_bytes();
        let n = tail.len();
        tail.copy_from_slice(&last[..n]);
    }
}

/// Connects to `target`, writes `total` pseudo-random bytes while reading the echo at the same
/// time, half-closes, and asserts that exactly the same bytes (sha256) came back before EOF.
pub async fn bulk_echo_exchange(target: SocketAddr, total: usize, seed: u64) {
    let stream = TcpStream::connect(target).await.unwrap_or_else(|e| panic!("connect {target}: {e}"));
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        let mut prng = Prng::new(seed);
        let mut sent = Sha256::new();
        let mut chunk = vec![0u8; BULK_CHUNK];
        let mut left = total;
        while left > 0 {
            let n = left.min(BULK_CHUNK);
            prng.fill(&mut chunk[..n]);
            sent.update(&chunk[..n]);
            write.write_all(&chunk[..n]).await?;
            left -= n;
        }
        write.shutdown().await?;
        Ok::<_, io::Error>(sent.finalize())
    });

    let mut received = Sha256::new();
    let mut got = 0usize;
    let mut buf = vec![0u8; BULK_CHUNK];
    loop {
        let n = read.read(&mut buf).await.unwrap_or_else(|e| panic!("read after {got} of {total} bytes: {e}"));
        if n == 0 {
            break;
        }
        received.update(&buf[..n]);
        got += n;
    }
    let sent = writer.await.expect("the writer task").unwrap_or_else(|e| panic!("write: {e}"));
    assert_eq!(got, total, "bytes echoed before EOF");
    assert_eq!(received.finalize(), sent, "sha256 of the echoed bytes");
}

/// How a connection ended, seen from the reading side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    Eof,
    Error(io::ErrorKind),
}

/// Reads (and throws away) until the peer closes or resets; returns how, after how long, and
/// how many bytes came first. Panics if the connection is still open after `limit`.
pub async fn wait_closed<R: AsyncRead + Unpin>(stream: &mut R, limit: Duration) -> (Closed, Duration, usize) {
    let start = Instant::now();
    let mut bytes = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let outcome = tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return Closed::Eof,
                Ok(n) => bytes += n,
                Err(e) => return Closed::Error(e.kind()),
            }
        }
    })
    .await;
    match outcome {
        Ok(how) => (how, start.elapsed(), bytes),
        Err(_) => panic!("connection still open after {limit:?} ({bytes} bytes received)"),
    }
}

/// One HTTP/1.1 response.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A keep-alive HTTP/1.1 client connection that can pipeline (send several requests, then read
/// the replies in order).
pub struct HttpConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl HttpConn {
    pub async fn connect(target: SocketAddr) -> io::Result<HttpConn> {
        Ok(HttpConn::new(TcpStream::connect(target).await?))
    }

    pub fn new(stream: TcpStream) -> HttpConn {
        HttpConn { stream, buf: Vec::new() }
    }

    pub async fn send(&mut self, raw: &[u8]) -> io::Result<()> {
        self.stream.write_all(raw).await
    }

    /// `GET path` and its reply.
    pub async fn get(&mut self, path: &str) -> io::Result<Reply> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: ringlb-test\r\n\r\n");
        self.send(request.as_bytes()).await?;
        self.read_reply(false).await
    }

    /// Reads one reply; `head` says the request was HEAD (so no body follows).
    pub async fn read_reply(&mut self, head: bool) -> io::Result<Reply> {
        let end = loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            self.fill().await?;
        };
        let text = std::str::from_utf8(&self.buf[..end])
            .map_err(|_| invalid("response head is not UTF-8".into()))?
            .to_string();
        self.buf.drain(..end + 4);
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid(format!("bad status line {status_line:?}")))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        let mut reply = Reply { status, headers, body: Vec::new() };
        let length = match reply.header("content-length") {
            Some(v) => Some(v.parse::<usize>().map_err(|_| invalid(format!("bad length {v:?}")))?),
            None => None,
        };
        match (head, length) {
            (true, _) => {}
            (false, Some(length)) => {
                while self.buf.len() < length {
                    self.fill().await?;
                }
                reply.body = self.buf.drain(..length).collect();
            }
            (false, None) => {
                // No length: the body runs to the end of the connection.
                loop {
                    match self.fill().await {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                        Err(e) => return Err(e),
                    }
                }
                reply.body = std::mem::take(&mut self.buf);
            }
        }
        Ok(reply)
    }

    /// Reads more bytes into the buffer; EOF is an `UnexpectedEof` error.
    async fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// True once the peer has closed: no buffered bytes and the next read is EOF.
    pub async fn is_closed_by_peer(&mut self) -> bool {
        self.buf.is_empty() && matches!(self.fill().await, Err(e) if e.kind() == io::ErrorKind::UnexpectedEof)
    }
}

/// Connects to `target` from `source` (port chosen at connect time, so each source address has
/// its own ephemeral port range per destination).
pub async fn connect_from(source: IpAddr, target: SocketAddr) -> io::Result<TcpStream> {
    let socket = match target {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    let one: libc::c_int = 1;
    // SAFETY: setsockopt on a socket we own with a pointer to a c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(target).await
}

/// The loopback source address for connection `i` when `per_source` connections share one
/// address: 127.0.0.2, 127.0.0.3, ...
pub fn source_for(i: usize, per_source: usize) -> IpAddr {
    let n = 2 + (i / per_source) as u32;
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 0)) + n))
}

/// Opens `count` connections to `target`, at most `parallel` connects in flight, spread over
/// source addresses `per_source` at a time. Panics on the first error.
pub async fn open_many(target: SocketAddr, count: usize, per_source: usize, parallel: usize) -> Vec<TcpStream> {
    let mut conns = Vec::with_capacity(count);
    let mut next = 0;
    while next < count {
        let batch = parallel.min(count - next);
        let mut set = JoinSet::new();
        for i in next..next + batch {
            let source = source_for(i, per_source);
            set.spawn(async move { (i, source, connect_from(source, target).await) });
        }
        while let Some(joined) = set.join_next().await {
            let (i, source, result) = joined.expect("a connect task");
            match result {
                Ok(stream) => conns.push(stream),
                Err(e) => panic!("connect #{i} from {source} to {target}: {e}"),
            }
        }
        next += batch;
    }
    conns
}

/// Sends one `GET /` on every connection at once and reads every reply. Asserts zero errors and
/// status 200; returns the connections (still open) and how many replies each body (backend
/// name) gave.
pub async fn request_on_all(conns: Vec<TcpStream>) -> (Vec<HttpConn>, HashMap<String, usize>) {
    let mut set = JoinSet::new();
    for (i, stream) in conns.into_iter().enumerate() {
        set.spawn(async move {
            let mut conn = HttpConn::new(stream);
            let reply = conn.get("/").await;
            (i, conn, reply)
        });
    }
    let mut open = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut errors = Vec::new();
    while let Some(joined) = set.join_next().await {
        let (i, conn, reply) = joined.expect("a request task");
        match reply {
            Ok(reply) if reply.status == 200 => {
                *names.entry(reply.body_text().trim_end().to_string()).or_default() += 1;
            }
            Ok(reply) => errors.push(format!("#{i}: status {}", reply.status)),
            Err(e) => errors.push(format!("#{i}: {e}")),
        }
        open.push(conn);
    }
    assert!(
        errors.is_empty(),
        "{} of {} requests failed, first: {:?}",
        errors.len(),
        open.len(),
        &errors[..errors.len().min(5)]
    );
    (open, names)
}
