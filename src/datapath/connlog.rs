//! The optional connection log (`[runtime] log_connections`): one line per connection at close,
//! with a two-letter termination code in the spirit of HAProxy's: the first letter says who or what
//! ended the connection, the second in which phase.
//!
//! | code | meaning |
//! |---|---|
//! | `--` | normal end: both sides closed |
//! | `CD` | the client reset or failed while data flowed |
//! | `SD` | the server reset or failed while data flowed |
//! | `cD` | idle timeout: no byte either way for `idle_timeout` |
//! | `SC` | every connect attempt failed (refused, timeout, ...) |
//! | `NC` | no usable server in the pool (all down, `on_all_down = "reject"`) |
//! | `sQ` | queued (every server at `max_connections`) past `queue_timeout` |
//! | `KD` | closed by ringlb at the end of the shutdown grace period |
//!
//! It writes through `tracing` (target `ringlb::conn`), so `--log-format json` applies to it too.

use std::net::SocketAddr;
use std::time::Duration;

use tracing::info;

use crate::metrics::CloseCause;

pub fn code(cause: CloseCause) -> &'static str {
    match cause {
        CloseCause::Done => "--",
        CloseCause::ClientError => "CD",
        CloseCause::BackendError => "SD",
        CloseCause::IdleTimeout => "cD",
        CloseCause::ConnectFailed => "SC",
        CloseCause::NoServer => "NC",
        CloseCause::QueueTimeout => "sQ",
        CloseCause::Shutdown => "KD",
    }
}

/// What one line says.
pub struct Entry<'a> {
    pub client: SocketAddr,
    pub listener: &'a str,
    pub pool: &'a str,
    /// The last server tried, if any.
    pub server: Option<&'a str>,
    pub c2b: u64,
    pub b2c: u64,
    pub duration: Duration,
    pub cause: CloseCause,
}

pub fn write(e: &Entry<'_>) {
    info!(
        target: "ringlb::conn",
        client = %e.client,
        listener = e.listener,
        pool = e.pool,
        server = e.server.unwrap_or("-"),
        c2b_bytes = e.c2b,
        b2c_bytes = e.b2c,
        duration_ms = e.duration.as_millis() as u64,
        termination = code(e.cause),
        "conn"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cause_has_a_distinct_two_letter_code() {
        let causes = [
            CloseCause::Done,
            CloseCause::ClientError,
            CloseCause::BackendError,
            CloseCause::IdleTimeout,
            CloseCause::ConnectFailed,
            CloseCause::NoServer,
            CloseCause::QueueTimeout,
            CloseCause::Shutdown,
        ];
        let mut codes: Vec<&str> = causes.iter().map(|&c| code(c)).collect();
        assert!(codes.iter().all(|c| c.len() == 2));
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), causes.len());
    }
}
