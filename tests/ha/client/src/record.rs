//! What happened to every connection, with times relative to the start of the run.
//!
//! Owns the event log shared by the load tasks and the gauge of open held connections. Events
//! are appended under a mutex (a few hundred per second) and read once, after the load has
//! stopped, by the report. It must never block a load task for longer than one push.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::http::Failure;

/// Which kind of connection an event belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A new connection: connect, one request with `Connection: close`, answer.
    New,
    /// A request on a held (long-lived) connection.
    HeldProbe,
    /// A connect of a held connection (at start or after it was lost).
    HeldConnect,
}

#[derive(Debug, Clone)]
pub struct Event {
    pub class: Class,
    /// Microseconds since the start of the run when the attempt began.
    pub start_us: u64,
    /// Microseconds since the start of the run when its outcome was known.
    pub end_us: u64,
    /// Index of the source address the connection came from.
    pub source: usize,
    pub outcome: Result<u16, Failure>,
}

/// The shared log. Successful outcomes carry the index of the backend that answered.
pub struct Recorder {
    start: Instant,
    events: Mutex<Vec<Event>>,
    backends: Mutex<Vec<String>>,
    held_open: AtomicI64,
}

impl Recorder {
    pub fn new(start: Instant) -> Recorder {
        Recorder {
            start,
            events: Mutex::new(Vec::new()),
            backends: Mutex::new(Vec::new()),
            held_open: AtomicI64::new(0),
        }
    }

    pub fn now_us(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Records an attempt that began at `start_us` and ends now.
    pub fn record(&self, class: Class, start_us: u64, source: usize, outcome: Result<&str, Failure>) {
        let outcome = outcome.map(|name| self.backend_index(name));
        let event = Event { class, start_us, end_us: self.now_us(), source, outcome };
        // A poisoned lock means a load task panicked; the run is void, but keep recording so
        // that the report still says what happened until then.
        self.events.lock().unwrap_or_else(|p| p.into_inner()).push(event);
    }

    fn backend_index(&self, name: &str) -> u16 {
        let mut names = self.backends.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = names.iter().position(|n| n == name) {
            return u16::try_from(i).unwrap_or(u16::MAX);
        }
        names.push(name.to_string());
        u16::try_from(names.len() - 1).unwrap_or(u16::MAX)
    }

    pub fn held_opened(&self) {
        self.held_open.fetch_add(1, Ordering::Relaxed);
    }

    pub fn held_lost(&self) {
        self.held_open.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn held_open(&self) -> i64 {
        self.held_open.load(Ordering::Relaxed)
    }

    /// The log and the backend names, sorted by end time; called once the load has stopped.
    pub fn take(&self) -> (Vec<Event>, Vec<String>) {
        let mut events = std::mem::take(&mut *self.events.lock().unwrap_or_else(|p| p.into_inner()));
        events.sort_by_key(|e| e.end_us);
        let names = self.backends.lock().unwrap_or_else(|p| p.into_inner()).clone();
        (events, names)
    }
}
