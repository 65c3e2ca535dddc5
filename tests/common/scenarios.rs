//! Data-path scenarios with a purpose-built backend each. A scenario starts its backend first (so
//! the caller can put ringlb in front of `backend`), then runs its client against any target:
//! the backend itself (proving the scenario) or a ringlb listener (testing the proxy).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::backends::listen;
use super::clients::{wait_closed, Closed, Prng};

/// Upper bound for any one scenario, so a hang fails instead of blocking the run.
pub const SCENARIO_LIMIT: Duration = Duration::from_secs(20);

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    Prng::new(seed).fill(&mut data);
    data
}

async fn accept_one(listener: &TcpListener) -> tokio::net::TcpStream {
    let (stream, _) = listener.accept().await.expect("accept");
    stream
}

/// The client sends a request and shuts down its write side; the backend reads to EOF, then
/// still sends its whole reply and closes. Both directions must arrive complete.
pub struct ClientClosesFirst {
    pub backend: SocketAddr,
    task: JoinHandle<Vec<u8>>,
}

const REQUEST_LEN: usize = 300 * 1024;
const REPLY_LEN: usize = 500 * 1024;

impl ClientClosesFirst {
    pub async fn start() -> ClientClosesFirst {
        let listener = listen("127.0.0.1:0").await;
        let backend = listener.local_addr().expect("local address");
        let task = tokio::spawn(async move {
            let mut stream = accept_one(&listener).await;
            let mut received = Vec::new();
            stream.read_to_end(&mut received).await.expect("backend reads to EOF");
            stream.write_all(&pattern(REPLY_LEN, 2)).await.expect("backend replies after EOF");
            stream.shutdown().await.expect("backend closes");
            received
        });
        ClientClosesFirst { backend, task }
    }

    pub async fn run(self, target: SocketAddr) {
        let client = async {
            let mut stream = tokio::net::TcpStream::connect(target).await.expect("connect");
            stream.write_all(&pattern(REQUEST_LEN, 1)).await.expect("client sends");
            stream.shutdown().await.expect("client half-closes");
            let mut reply = Vec::new();
            stream.read_to_end(&mut reply).await.expect("client reads the reply to EOF");
            reply
        };
        let outcome = tokio::time::timeout(SCENARIO_LIMIT, async {
            let reply = client.await;
            let received = self.task.await.expect("backend task");
            (reply, received)
        })
        .await;
        let (reply, received) = outcome.expect("half-close (client first) finished in time");
        assert!(received == pattern(REQUEST_LEN, 1), "backend got {} bytes, not the request", received.len());
        assert!(reply == pattern(REPLY_LEN, 2), "client got {} bytes, not the reply", reply.len());
    }
}

/// The backend sends a greeting and shuts down its write side first; the client sees EOF, then
/// still sends its data, which the backend must receive complete.
pub struct BackendClosesFirst {
    pub backend: SocketAddr,
    task: JoinHandle<Vec<u8>>,
}

const GREETING_LEN: usize = 200 * 1024;
const LATE_LEN: usize = 400 * 1024;

impl BackendClosesFirst {
    pub async fn start() -> BackendClosesFirst {
        let listener = listen("127.0.0.1:0").await;
        let backend = listener.local_addr().expect("local address");
        let task = tokio::spawn(async move {
            let mut stream = accept_one(&listener).await;
            stream.write_all(&pattern(GREETING_LEN, 3)).await.expect("backend greets");
            stream.shutdown().await.expect("backend half-closes");
            let mut received = Vec::new();
            stream.read_to_end(&mut received).await.expect("backend reads to EOF");
            received
        });
        BackendClosesFirst { backend, task }
    }

    pub async fn run(self, target: SocketAddr) {
        let client = async {
            let mut stream = tokio::net::TcpStream::connect(target).await.expect("connect");
            let mut greeting = Vec::new();
            stream.read_to_end(&mut greeting).await.expect("client reads the greeting to EOF");
            stream.write_all(&pattern(LATE_LEN, 4)).await.expect("client sends after EOF");
            stream.shutdown().await.expect("client closes");
            greeting
        };
        let outcome = tokio::time::timeout(SCENARIO_LIMIT, async {
            let greeting = client.await;
            let received = self.task.await.expect("backend task");
            (greeting, received)
        })
        .await;
        let (greeting, received) = outcome.expect("half-close (backend first) finished in time");
        assert!(greeting == pattern(GREETING_LEN, 3), "client got {} bytes, not the greeting", greeting.len());
        assert!(received == pattern(LATE_LEN, 4), "backend got {} bytes, not the late data", received.len());
    }
}

/// The backend answers a little, then resets the connection (SO_LINGER 0 close) while the client
/// is still sending. The client must see its connection end promptly.
pub struct ResettingBackend {
    pub backend: SocketAddr,
    reset_at: oneshot::Receiver<Instant>,
}

pub const PARTIAL_REPLY: &[u8] = b"partial reply";
const HELLO: &[u8] = b"hello";

impl ResettingBackend {
    pub async fn start() -> ResettingBackend {
        let listener = listen("127.0.0.1:0").await;
        let backend = listener.local_addr().expect("local address");
        let (tx, reset_at) = oneshot::channel();
        tokio::spawn(async move {
            let mut stream = accept_one(&listener).await;
            let mut hello = [0u8; HELLO.len()];
            stream.read_exact(&mut hello).await.expect("backend reads the hello");
            stream.write_all(PARTIAL_REPLY).await.expect("backend sends a partial reply");
            // The client streams only once it has the partial reply, so when this byte is in,
            // the reply was delivered and the reset hits a connection with bytes in flight.
            let mut streamed = [0u8; 1];
            stream.read_exact(&mut streamed).await.expect("backend reads streamed data");
            socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO)).expect("SO_LINGER 0");
            drop(stream);
            let _ = tx.send(Instant::now());
        });
        ResettingBackend { backend, reset_at }
    }

    /// Returns how the client's connection ended and how long after the reset.
    pub async fn run(self, target: SocketAddr) -> (Closed, Duration) {
        let mut stream = tokio::net::TcpStream::connect(target).await.expect("connect");
        stream.write_all(HELLO).await.expect("send the hello");
        let mut partial = vec![0u8; PARTIAL_REPLY.len()];
        tokio::time::timeout(SCENARIO_LIMIT, stream.read_exact(&mut partial))
            .await
            .expect("partial reply in time")
            .expect("partial reply");
        assert_eq!(partial, PARTIAL_REPLY);

        let (mut read, mut write) = stream.into_split();
        let writer = tokio::spawn(async move {
            let chunk = vec![7u8; 16 * 1024];
            // Keep sending until the connection breaks (bounded: at most 64 MiB).
            for _ in 0..4096 {
                if write.write_all(&chunk).await.is_err() {
                    break;
                }
            }
        });
        let reset_at = tokio::time::timeout(SCENARIO_LIMIT, self.reset_at)
            .await
            .expect("the backend reset in time")
            .expect("the backend task");
        let (how, _, _) = wait_closed(&mut read, Duration::from_secs(5)).await;
        let after_reset = reset_at.elapsed();
        writer.abort();
        (how, after_reset)
    }
}
