//! Rate-limited warnings: a worker that hits the same local failure thousands of times a second
//! (EMFILE on accept, no pipe to be had, a server refusing) logs it once per interval, with a
//! count of what it suppressed.

use std::time::{Duration, Instant};

use tracing::warn;

/// Minimum interval between two copies of the same rate-limited warning.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// A warning printed at most once per `LOG_EVERY`, with a count of what was suppressed.
pub struct RateLimited {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimited {
    pub const fn new() -> RateLimited {
        RateLimited { last: None, suppressed: 0 }
    }

    pub fn warn(&mut self, now: Instant, msg: std::fmt::Arguments<'_>) {
        if self.last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            self.suppressed += 1;
            return;
        }
        if self.suppressed > 0 {
            warn!("{msg} ({} similar suppressed)", self.suppressed);
        } else {
            warn!("{msg}");
        }
        self.last = Some(now);
        self.suppressed = 0;
    }
}
