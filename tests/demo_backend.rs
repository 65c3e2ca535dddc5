//! `ringlb demo-backend`, tested as a process over real sockets: HTTP framing, keep-alive,
//! pipelining, request bodies, signals, bind errors, and 10,000 concurrent connections.

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::clients::{open_many, request_on_all, wait_closed, Closed, HttpConn};
use common::{DemoBackend, RINGLB};
use tokio::io::AsyncWriteExt;

const LIMIT: Duration = Duration::from_secs(10);

async fn connect(backend: &DemoBackend) -> HttpConn {
    HttpConn::connect(backend.addr).await.expect("connect to the demo backend")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_with_its_name_and_keeps_the_connection() {
    let backend = DemoBackend::start("alpha");
    let mut conn = connect(&backend).await;
    for path in ["/", "/some/path?q=1", "/again"] {
        let reply = conn.get(path).await.expect("a reply");
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body_text(), "alpha\n");
        assert_eq!(reply.header("content-length"), Some("6"));
        assert_eq!(reply.header("content-type"), Some("text/plain"));
        assert_eq!(reply.header("connection"), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_with_bodies_are_answered_in_order() {
    let backend = DemoBackend::start("beta");
    let mut conn = connect(&backend).await;
    let body = vec![b'x'; 100_000];
    let mut batch = Vec::new();
    batch.extend_from_slice(b"GET /1 HTTP/1.1\r\nHost: t\r\n\r\n");
    batch.extend_from_slice(format!("POST /2 HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes());
    batch.extend_from_slice(&body);
    batch.extend_from_slice(b"HEAD /3 HTTP/1.1\r\n\r\n");
    batch.extend_from_slice(b"PUT /4 HTTP/1.1\r\nContent-Length: 5\r\n\r\nGET /");
    batch.extend_from_slice(b"DELETE /5 HTTP/1.1\r\n\r\n");
    // Split the batch at awkward places: inside a head, inside a body.
    for piece in batch.chunks(7_777) {
        conn.send(piece).await.expect("send");
    }
    for head in [false, false, true, false, false] {
        let reply = tokio::time::timeout(LIMIT, conn.read_reply(head)).await.expect("in time").expect("reply");
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("content-length"), Some("5"));
        assert_eq!(reply.body_text(), if head { "" } else { "beta\n" });
    }
    // The body that looked like a request was not taken for one: the connection is still in step.
    let reply = conn.get("/6").await.expect("a reply after the batch");
    assert_eq!(reply.body_text(), "beta\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_and_http10_close_the_connection() {
    let backend = DemoBackend::start("gamma");
    let requests: [&[u8]; 3] = [
        b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
        b"POST / HTTP/1.1\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc",
    ];
    for request in requests {
        let mut conn = connect(&backend).await;
        conn.send(request).await.expect("send");
        let reply = conn.read_reply(false).await.expect("a reply");
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("connection"), Some("close"));
        assert_eq!(reply.body_text(), "gamma\n");
        assert!(conn.is_closed_by_peer().await, "open after {:?}", String::from_utf8_lossy(request));
    }

    // HTTP/1.0 with keep-alive stays open.
    let mut conn = connect(&backend).await;
    for _ in 0..2 {
        conn.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").await.expect("send");
        let reply = conn.read_reply(false).await.expect("a reply");
        assert_eq!(reply.header("connection"), Some("keep-alive"));
        assert_eq!(reply.body_text(), "gamma\n");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_an_error_and_a_close() {
    let backend = DemoBackend::start("delta");
    for (request, status) in [
        (&b"GARBAGE\r\n\r\n"[..], 400),
        (&b"GET / HTTP/2.0\r\n\r\n"[..], 505),
        (&b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"[..], 501),
    ] {
        let mut conn = connect(&backend).await;
        conn.send(request).await.expect("send");
        let reply = conn.read_reply(false).await.expect("a reply");
        assert_eq!(reply.status, status);
        assert!(conn.is_closed_by_peer().await);
    }

    // An endless head is cut off instead of filling memory.
    let conn = connect(&backend).await;
    let (read, mut write) = conn.stream.into_split();
    let writer = tokio::spawn(async move {
        let filler = format!("X-Filler: {}\r\n", "y".repeat(1000));
        let _ = write.write_all(b"GET / HTTP/1.1\r\n").await;
        for _ in 0..200 {
            if write.write_all(filler.as_bytes()).await.is_err() {
                break;
            }
        }
        write
    });
    let mut conn = HttpConn::new(read.reunite(writer.await.expect("writer")).expect("same stream"));
    let reply = tokio::time::timeout(LIMIT, conn.read_reply(false)).await.expect("in time").expect("reply");
    assert_eq!(reply.status, 431);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_dropped_when_the_backend_stops() {
    let mut backend = DemoBackend::start("epsilon");
    let mut conn = connect(&backend).await;
    assert_eq!(conn.get("/").await.expect("a reply").status, 200);
    backend.proc().signal(libc::SIGTERM);
    let status = backend.proc().wait_exit(LIMIT).expect("exited after SIGTERM");
    assert!(status.success(), "{status:?}");
    let (how, _, bytes) = wait_closed(&mut conn.stream, LIMIT).await;
    assert!(matches!(how, Closed::Eof | Closed::Error(_)));
    assert_eq!(bytes, 0);
}

#[test]
fn stops_cleanly_on_sigint() {
    let mut backend = DemoBackend::start("zeta");
    backend.proc().signal(libc::SIGINT);
    let status = backend.proc().wait_exit(LIMIT).expect("exited after SIGINT");
    assert!(status.success(), "{status:?}");
}

#[test]
fn bad_bind_is_one_line_and_a_failure() {
    // Held to the end of the test, so that the port stays taken.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = holder.local_addr().expect("local address").to_string();
    for bind in ["not-an-address", "127.0.0.1:99999", taken.as_str()] {
        let out = Command::new(RINGLB)
            .args(["demo-backend", "--bind", bind, "--name", "x"])
            .stdin(Stdio::null())
            .output()
            .expect("run ringlb demo-backend");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bind}: {:?}", out.status);
        assert_eq!(stderr.lines().count(), 1, "{bind}: {stderr}");
        assert!(stderr.contains("demo-backend"), "{bind}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_10000_concurrent_connections() {
    const CONNS: usize = 10_000;
    let mut backend = DemoBackend::start("many");
    let start = Instant::now();
    let work = async {
        let conns = open_many(backend.addr, CONNS, 2_000, 500).await;
        let opened = start.elapsed();
        let (open, names) = request_on_all(conns).await;
        (opened, open, names)
    };
    let (opened, open, names) =
        tokio::time::timeout(Duration::from_secs(120), work).await.expect("10,000 connections in 120 s");
    assert_eq!(open.len(), CONNS);
    assert_eq!(names, HashMap::from([("many".to_string(), CONNS)]));
    // A runtime with two workers: no thread per connection.
    let threads = backend.proc().thread_count();
    assert!(threads <= 4, "demo-backend has {threads} threads");
    eprintln!("10,000 connections direct: opened in {opened:?}, all answered in {:?}", start.elapsed());
    assert!(backend.proc().is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listens_on_ipv6_loopback() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        common::skip("::1 is not available");
        return;
    }
    let backend = DemoBackend::start_at("six", "[::1]:0");
    assert!(backend.addr.is_ipv6(), "{}", backend.addr);
    let reply = connect(&backend).await.get("/").await.expect("a reply");
    assert_eq!(reply.body_text(), "six\n");
}
