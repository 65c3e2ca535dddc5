//! `retry_on_empty_response`: a server that resets or closes before its first byte is replaced by
//! another one, with the client's bytes replayed, and only then.
//!
//! Servers here are plain threads on loopback: `failing` reads what a client sends and then
//! resets (SO_LINGER 0) or closes without answering; `echo` answers every read with
//! `NAME:` followed by what it read. `balance = "first"` sends every client to the failing server
//! first, so each test is deterministic.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::Ringlb;

#[derive(Clone, Copy)]
enum Failure {
    /// Reads the request, then resets.
    Reset,
    /// Reads the request, then closes (FIN) without a byte.
    Close,
    /// Answers `partial`, then resets.
    AnswerThenReset,
}

/// A server that fails every connection as told; counts its connections.
fn failing(failure: Failure) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            seen.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 65536];
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = stream.read(&mut buf);
            match failure {
                Failure::Reset => reset(stream),
                Failure::Close => drop(stream),
                Failure::AnswerThenReset => {
                    let _ = stream.write_all(b"partial");
                    std::thread::sleep(Duration::from_millis(50));
                    reset(stream);
                }
            }
        }
    });
    (addr, count)
}

fn reset(stream: TcpStream) {
    socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO)).expect("SO_LINGER");
    drop(stream);
}

/// Answers each read with `NAME:` and the bytes read, until the client's FIN; then says `NAME:end`.
fn echo(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 20];
                let mut got = Vec::new();
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                    if got.ends_with(b"\n") {
                        let mut reply = format!("{name}:").into_bytes();
                        reply.extend_from_slice(&got);
                        let _ = stream.write_all(&reply);
                        got.clear();
                    }
                }
                let _ = stream.write_all(format!("{name}:end").as_bytes());
            });
        }
    });
    addr
}

fn config(servers: &[SocketAddr], replay: bool) -> String {
    let mut s = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n[listeners.web]\nbind = \"127.0.0.1:0\"\npool = \"web\"\n[pools.web]\n\
         balance = \"first\"\nretries = 2\nretry_on_empty_response = {replay}\n[pools.web.health]\ncheck = \"none\"\n"
    );
    for addr in servers {
        s += &format!("[[pools.web.servers]]\naddr = \"{addr}\"\n");
    }
    s
}

/// Sends `request`, optionally half-closes, and reads until the connection ends.
fn exchange(lb: SocketAddr, request: &[u8], half_close: bool) -> Vec<u8> {
    let mut stream = TcpStream::connect(lb).expect("connect to ringlb");
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    stream.write_all(request).expect("send");
    if half_close {
        stream.shutdown(Shutdown::Write).expect("half-close");
    }
    let mut reply = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return reply,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
        }
        if !half_close && reply.ends_with(b"\n") {
            return reply;
        }
    }
}

#[test]
fn a_reset_before_the_first_byte_is_replayed_to_the_next_server() {
    for failure in [Failure::Reset, Failure::Close] {
        let (bad, tried) = failing(failure);
        let lb = Ringlb::start(&config(&[bad, echo("good")], true));
        for i in 0..20 {
            let request = format!("request {i}\n");
            let reply = exchange(lb.addr(), request.as_bytes(), false);
            assert_eq!(String::from_utf8_lossy(&reply), format!("good:{request}"));
        }
        assert_eq!(tried.load(Ordering::SeqCst), 20, "every client went to the failing server first");
    }
}

#[test]
fn a_half_closed_client_is_replayed_with_its_fin() {
    let (bad, _) = failing(Failure::Reset);
    let lb = Ringlb::start(&config(&[bad, echo("good")], true));
    let reply = exchange(lb.addr(), b"last words\n", true);
    assert_eq!(String::from_utf8_lossy(&reply), "good:last words\ngood:end");
}

#[test]
fn without_the_option_the_client_sees_the_failure() {
    let (bad, _) = failing(Failure::Reset);
    let lb = Ringlb::start(&config(&[bad, echo("good")], false));
    assert_eq!(exchange(lb.addr(), b"hello\n", false), b"");
}

#[test]
fn a_server_that_answered_is_never_replaced() {
    let (bad, tried) = failing(Failure::AnswerThenReset);
    let lb = Ringlb::start(&config(&[bad, echo("good")], true));
    assert_eq!(exchange(lb.addr(), b"hello\n", true), b"partial");
    assert_eq!(tried.load(Ordering::SeqCst), 1);
}

#[test]
fn more_than_one_buffer_of_client_bytes_is_not_replayed() {
    let (bad, _) = failing(Failure::Reset);
    let lb = Ringlb::start(&config(&[bad, echo("good")], true));
    let mut big = vec![b'x'; 64 * 1024];
    big.push(b'\n');
    assert_eq!(exchange(lb.addr(), &big, false), b"");
}

#[test]
fn every_server_failing_ends_with_the_client_closed_after_the_retries() {
    let (a, tried_a) = failing(Failure::Reset);
    let (b, tried_b) = failing(Failure::Close);
    let (c, tried_c) = failing(Failure::Reset);
    let (d, tried_d) = failing(Failure::Reset);
    let lb = Ringlb::start(&config(&[a, b, c, d], true));
    assert_eq!(exchange(lb.addr(), b"hello\n", false), b"");
    let tried = [&tried_a, &tried_b, &tried_c, &tried_d].map(|t| t.load(Ordering::SeqCst));
    assert_eq!(tried, [1, 1, 1, 0], "one attempt plus retries = 2, each on a server not tried yet");
}
