//! In-process backends for the integration tests, all on loopback with ports chosen by the kernel:
//! an echo server, an address that refuses connections, and a blackhole whose SYNs are never
//! answered. Each is torn down when its handle is dropped.

use std::io;
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A tokio listener on `bind` (e.g. "127.0.0.1:0" or "[::1]:0").
pub async fn listen(bind: &str) -> TcpListener {
    TcpListener::bind(bind).await.unwrap_or_else(|e| panic!("cannot listen on {bind}: {e}"))
}

/// Echoes every byte back; when the client half-closes, finishes sending and half-closes too.
/// Runs on the current tokio runtime.
pub struct EchoServer {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    accept_loop: JoinHandle<()>,
}

impl EchoServer {
    pub async fn start() -> EchoServer {
        EchoServer::start_at("127.0.0.1:0").await
    }

    pub async fn start_at(bind: &str) -> EchoServer {
        let listener = listen(bind).await;
        let addr = listener.local_addr().expect("local address of a bound listener");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        let accept_loop = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut read = BufReader::with_capacity(256 * 1024, read);
                    if tokio::io::copy_buf(&mut read, &mut write).await.is_ok() {
                        let _ = write.shutdown().await;
                    }
                });
            }
        });
        EchoServer { addr, accepted, accept_loop }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

/// An address where nothing listens, so connecting is refused (RST). The port stays bound (but
/// never listening) for the life of the handle, so no other socket can take it meanwhile and a
/// connect to it can never become a TCP self-connect.
pub struct RefusingAddr {
    pub addr: SocketAddr,
    _socket: Socket,
}

impl RefusingAddr {
    pub fn new() -> RefusingAddr {
        RefusingAddr::at("127.0.0.1:0")
    }

    pub fn at(bind: &str) -> RefusingAddr {
        let bind: SocketAddr = bind.parse().expect("a literal socket address");
        let socket = Socket::new(Domain::for_address(bind), Type::STREAM, Some(Protocol::TCP)).expect("a TCP socket");
        socket.bind(&bind.into()).unwrap_or_else(|e| panic!("cannot bind {bind}: {e}"));
        let addr = socket.local_addr().ok().and_then(|a| a.as_socket()).expect("local address of a bound socket");
        RefusingAddr { addr, _socket: socket }
    }
}

/// A listener whose accept queue is full and never drained: the kernel drops every further SYN,
/// so a connect to it neither succeeds nor fails until the connector gives up. This is what a
/// dead or overloaded host looks like to a connect timeout.
pub struct Blackhole {
    pub addr: SocketAddr,
    _listener: Socket,
    _queued: Vec<StdTcpStream>,
}

/// How long a probe connect must hang before the queue counts as full.
const BLACKHOLE_PROBE: Duration = Duration::from_millis(300);

impl Blackhole {
    /// Fills the accept queue and proves that the next connect hangs; panics if it cannot.
    pub fn new() -> Blackhole {
        let bind: SocketAddr = "127.0.0.1:0".parse().expect("a literal socket address");
        let listener = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("a TCP socket");
        listener.bind(&bind.into()).expect("bind 127.0.0.1:0");
        // Backlog 0: the kernel queues one connection (the queue is full when it holds more
        // than the backlog) and then drops SYNs instead of answering them.
        listener.listen(0).expect("listen");
        let addr = listener.local_addr().ok().and_then(|a| a.as_socket()).expect("local address of a bound socket");
        let mut queued = Vec::new();
        for _ in 0..8 {
            match StdTcpStream::connect_timeout(&addr, BLACKHOLE_PROBE) {
                Ok(stream) => queued.push(stream),
                Err(e) if is_timeout(&e) => {
                    return Blackhole { addr, _listener: listener, _queued: queued };
                }
                Err(e) => panic!("unexpected error filling the blackhole's queue: {e}"),
            }
        }
        panic!("the accept queue of {addr} never filled: connects to it do not hang on this kernel");
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock)
}
