//! Talking to ringlb's admin API from tests: a blocking HTTP/1.1 client that sends raw bytes and
//! reads the answer to the end, a reader of the Prometheus text, and the pollers for conditions
//! that become true a moment later (`wait_for` and, for async tests, `poll`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// How long one admin request may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// An answer: status and body (`status` 0 when the server closed without one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// Sends `raw` as is and reads until the server closes.
pub fn request(addr: SocketAddr, raw: &[u8]) -> Answer {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(TIMEOUT)).expect("read timeout");
    stream.set_write_timeout(Some(TIMEOUT)).expect("write timeout");
    // The server may answer (and stop reading) before all of an oversized request is written.
    let _ = stream.write_all(raw);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    parse(&answer)
}

fn parse(answer: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(answer).into_owned();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Answer { status: 0, head: text, body: String::new() };
    };
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Answer { status, head: head.to_owned(), body: body.to_owned() }
}

pub fn get(addr: SocketAddr, path: &str) -> Answer {
    request(addr, format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
}

pub fn post(addr: SocketAddr, path: &str) -> Answer {
    request(addr, format!("POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n\r\n").as_bytes())
}

/// `GET /metrics`, asserted to succeed.
pub fn scrape(addr: SocketAddr) -> Scrape {
    let answer = get(addr, "/metrics");
    assert_eq!(answer.status, 200, "GET /metrics: {answer:?}");
    Scrape(answer.body)
}

/// A scrape in the Prometheus text format.
#[derive(Debug, Clone)]
pub struct Scrape(pub String);

impl Scrape {
    /// The value of the one series of `name` whose labels include `labels`; panics when there is
    /// not exactly one.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<f64> = self
            .0
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let (series_name, series_labels) = match series.split_once('{') {
                    Some((n, rest)) => (n, rest.trim_end_matches('}')),
                    None => (series, ""),
                };
                let wanted = labels.iter().all(|(k, v)| series_labels.split(',').any(|l| l == format!("{k}=\"{v}\"")));
                (series_name == name && wanted).then(|| value.parse().ok())?
            })
            .collect();
        match found[..] {
            [value] => value,
            _ => panic!("{} series of {name} with {labels:?} (expected 1):\n{}", found.len(), self.0),
        }
    }

    /// The sum of every series of `name`.
    pub fn sum(&self, name: &str) -> f64 {
        self.0
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.rsplit_once(' '))
            .filter(|(series, _)| series.split('{').next() == Some(name))
            .filter_map(|(_, value)| value.parse::<f64>().ok())
            .sum()
    }

    /// `value`, as a count.
    pub fn count(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let value = self.value(name, labels);
        assert!(value >= 0.0 && value.fract() == 0.0, "{name} {labels:?} = {value} is not a count");
        value as u64
    }
}

/// The two pollers for conditions that become true a moment later: `wait_for` for plain threads,
/// `poll` for async tests, where sleeping the thread would stall the runtime's other tasks.
///
/// Polls `probe` every 10 ms until it returns something; panics with `what` after `within`.
pub fn wait_for<T>(within: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Polls `probe` every 5 ms until it returns something or `within` has passed (`None`); sleeps
/// on the tokio timer, so the runtime's other tasks (test backends, clients) go on meanwhile.
pub async fn poll<T>(within: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(found) = probe() {
            return Some(found);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
