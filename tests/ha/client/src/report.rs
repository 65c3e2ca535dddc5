//! The figures of a run: a per-second table and, for each marked event, what clients saw after it.
//!
//! Owns the definitions of the measured figures (pure functions of the event log):
//! - **outage**: from the start of the first new connection that failed after the mark to the
//!   first success of a new connection that started no earlier (the issue's "first failure to
//!   first success after it"); 0 when nothing failed;
//! - **gap**: the longest time after the mark during which no new connection was served (from
//!   the mark to the first success, or between two successes); at 200 new connections per second
//!   it is ~5 ms when nothing happens, and it also catches outages in which attempts were slow
//!   (a dropped SYN retransmitted after 1 s) rather than failed;
//! - **first ok**: from the mark to the first success of a new connection started after it
//!   (how long a returning node takes to serve);
//! - **stall**: how late the client's own 100 ms sampling ran at worst (a stalled host);
//! - counts of new connections by outcome, failed held connections by cause, and the fewest held
//!   connections open at once.
//!
//! It must never read a clock: everything comes from the log.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::http::Failure;
use crate::record::{Class, Event};

/// A success slower than this went through a retransmission: it counts as slow.
const SLOW_US: u64 = 500_000;
/// The period of the open-connection samples (main.rs takes them).
pub const SAMPLE_PERIOD_US: u64 = 100_000;

/// An event the test marked (a kill, a drain, ...), in microseconds since the start of the run.
#[derive(Debug, Clone)]
pub struct Mark {
    pub at_us: u64,
    pub name: String,
}

/// The fewest held connections open during each tenth of a second.
#[derive(Debug, Clone, Copy)]
pub struct OpenSample {
    pub at_us: u64,
    pub open: i64,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Window {
    pub new_ok: u64,
    pub new_failed: BTreeMap<Failure, u64>,
    /// Failed new connections that started inside the window (not in flight when it began).
    pub new_failed_late: u64,
    pub new_slow: u64,
    pub max_latency_us: u64,
    pub held_ok: u64,
    pub held_failed: BTreeMap<Failure, u64>,
    pub held_connect_failed: u64,
    pub held_open_min: Option<i64>,
    pub outage_us: u64,
    pub gap_us: u64,
    /// From the start of the window to the first served new connection that started inside it.
    pub first_ok_us: Option<u64>,
    /// The longest time the client itself did not run beyond its sampling period: how long the
    /// host stalled (every process of a one-host test stalls with it, keepalived included).
    pub stall_us: u64,
}

impl Window {
    pub fn new_failed_total(&self) -> u64 {
        self.new_failed.values().sum()
    }

    pub fn held_failed_total(&self) -> u64 {
        self.held_failed.values().sum()
    }

    /// Resets seen by clients: new connections reset after they were established, and held
    /// connections reset or closed under them.
    pub fn resets(&self) -> u64 {
        let count = |m: &BTreeMap<Failure, u64>, f| m.get(&f).copied().unwrap_or(0);
        count(&self.new_failed, Failure::Reset)
            + count(&self.held_failed, Failure::Reset)
            + count(&self.held_failed, Failure::Closed)
    }

    /// One line of `key=value` fields.
    pub fn render(&self) -> String {
        let mut line = format!(
            "new_ok={} new_failed={} new_failed_late={} new_slow={} max_latency_ms={} outage_ms={} gap_ms={} first_ok_ms={} \
             held_ok={} held_failed={} held_connect_failed={} resets={} held_open_min={} stall_ms={}",
            self.new_ok,
            self.new_failed_total(),
            self.new_failed_late,
            self.new_slow,
            ms(self.max_latency_us),
            ms(self.outage_us),
            ms(self.gap_us),
            self.first_ok_us.map_or("-".to_string(), |us| ms(us).to_string()),
            self.held_ok,
            self.held_failed_total(),
            self.held_connect_failed,
            self.resets(),
            self.held_open_min.map_or("-".to_string(), |n| n.to_string()),
            ms(self.stall_us),
        );
        for f in Failure::ALL {
            let new = self.new_failed.get(&f).copied().unwrap_or(0);
            let held = self.held_failed.get(&f).copied().unwrap_or(0);
            let _ = write!(line, " new_{}={new} held_{}={held}", f.name(), f.name());
        }
        line
    }
}

fn ms(us: u64) -> u64 {
    us.div_ceil(1000)
}

/// The figures of the events that ended in `[from_us, to_us)`.
pub fn window(events: &[Event], samples: &[OpenSample], from_us: u64, to_us: u64) -> Window {
    let mut w = Window::default();
    let inside = |e: &&Event| e.end_us >= from_us && e.end_us < to_us;
    let mut first_failure: Option<u64> = None;
    for e in events.iter().filter(inside) {
        match (e.class, e.outcome) {
            (Class::New, Ok(_)) => {
                w.new_ok += 1;
                let latency = e.end_us - e.start_us.min(e.end_us);
                w.max_latency_us = w.max_latency_us.max(latency);
                if latency >= SLOW_US {
                    w.new_slow += 1;
                }
            }
            (Class::New, Err(f)) => {
                *w.new_failed.entry(f).or_default() += 1;
                if e.start_us >= from_us {
                    w.new_failed_late += 1;
                }
                first_failure = Some(first_failure.map_or(e.start_us, |t| t.min(e.start_us)));
            }
            (Class::HeldProbe, Ok(_)) => w.held_ok += 1,
            (Class::HeldProbe, Err(f)) => *w.held_failed.entry(f).or_default() += 1,
            (Class::HeldConnect, Ok(_)) => {}
            (Class::HeldConnect, Err(_)) => w.held_connect_failed += 1,
        }
    }
    let successes = || events.iter().filter(inside).filter(|e| e.class == Class::New && e.outcome.is_ok());
    if let Some(failed_at) = first_failure {
        let recovered = successes().filter(|e| e.start_us >= failed_at).map(|e| e.end_us).min();
        // No success after the failure: the outage lasts to the end of the window.
        w.outage_us = recovered.unwrap_or(to_us) - failed_at;
    }
    w.first_ok_us = successes().filter(|e| e.start_us >= from_us).map(|e| e.end_us - from_us).min();
    let mut last = from_us;
    for e in successes() {
        w.gap_us = w.gap_us.max(e.end_us - last);
        last = e.end_us;
    }
    w.gap_us = w.gap_us.max(to_us - last);
    let inside: Vec<&OpenSample> = samples.iter().filter(|s| s.at_us >= from_us && s.at_us < to_us).collect();
    w.held_open_min = inside.iter().map(|s| s.open).min();
    w.stall_us = inside.windows(2).map(|p| p[1].at_us.saturating_sub(p[0].at_us + SAMPLE_PERIOD_US)).max().unwrap_or(0);
    w
}

/// Which backends served the new connections from each source address during `[from_us, to_us)`,
/// as `SOURCE=BACKEND[+BACKEND...]` fields (sources in order; `-` for a source with no success).
/// With source-hash balancing every source has exactly one backend, the same on every node.
pub fn affinity(events: &[Event], sources: usize, backends: &[String], from_us: u64, to_us: u64) -> Vec<String> {
    let mut seen: Vec<BTreeSet<u16>> = vec![BTreeSet::new(); sources];
    for e in events.iter().filter(|e| e.class == Class::New && e.end_us >= from_us && e.end_us < to_us) {
        if let (Ok(backend), Some(set)) = (e.outcome, seen.get_mut(e.source)) {
            set.insert(backend);
        }
    }
    seen.iter()
        .map(|set| {
            let names: Vec<&str> =
                set.iter().map(|&b| backends.get(usize::from(b)).map_or("?", String::as_str)).collect();
            if names.is_empty() {
                "-".to_string()
            } else {
                names.join("+")
            }
        })
        .collect()
}

/// Per-second CSV: second, new ok, new failed, slow, max latency, held probes ok and failed,
/// fewest held connections open.
pub fn per_second_csv(events: &[Event], samples: &[OpenSample], seconds: u64) -> String {
    let mut out = String::from("second,new_ok,new_failed,new_slow,max_latency_ms,held_ok,held_failed,held_open_min\n");
    for s in 0..seconds {
        let w = window(events, samples, s * 1_000_000, (s + 1) * 1_000_000);
        let _ = writeln!(
            out,
            "{s},{},{},{},{},{},{},{}",
            w.new_ok,
            w.new_failed_total(),
            w.new_slow,
            ms(w.max_latency_us),
            w.held_ok,
            w.held_failed_total() + w.held_connect_failed,
            w.held_open_min.map_or("-".to_string(), |n| n.to_string()),
        );
    }
    out
}

/// The figures after each mark, up to the next mark or `end_us` (the end of the load).
pub fn marks(events: &[Event], samples: &[OpenSample], marks: &[Mark], end_us: u64) -> Vec<(String, Window)> {
    let mut sorted = marks.to_vec();
    sorted.sort_by_key(|m| m.at_us);
    let mut out = Vec::new();
    for (i, mark) in sorted.iter().enumerate() {
        let to = sorted.get(i + 1).map_or(end_us, |next| next.at_us);
        out.push((mark.name.clone(), window(events, samples, mark.at_us, to)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(start_ms: u64, end_ms: u64, outcome: Result<u16, Failure>) -> Event {
        Event { class: Class::New, start_us: start_ms * 1000, end_us: end_ms * 1000, source: 0, outcome }
    }

    #[test]
    fn affinity_lists_the_backends_of_each_source() {
        let mut events = vec![new(0, 1, Ok(1)), new(2, 3, Ok(0)), new(4, 5, Ok(1))];
        events[1].source = 1;
        events.push(Event { source: 2, ..new(6, 7, Err(Failure::Refused)) });
        events.push(Event { source: 1, ..new(8, 9, Ok(1)) });
        let names = vec!["b1".to_string(), "b2".to_string()];
        assert_eq!(affinity(&events, 3, &names, 0, 10_000), vec!["b2", "b1+b2", "-"]);
        assert_eq!(affinity(&events, 3, &names, 0, 4_000), vec!["b2", "b1", "-"]);
    }

    #[test]
    fn outage_runs_from_the_first_failure_to_the_first_later_success() {
        let events = vec![
            new(0, 1, Ok(0)),
            new(100, 101, Err(Failure::Refused)),
            new(300, 301, Err(Failure::Refused)),
            new(900, 901, Ok(1)),
            new(105, 2000, Ok(0)), // a dropped SYN, retransmitted: slow but served
        ];
        let w = window(&events, &[], 50_000, 3_000_000);
        assert_eq!(w.outage_us, 801_000);
        assert_eq!(w.new_failed_total(), 2);
        assert_eq!(w.new_failed_late, 2);
        assert_eq!(w.new_slow, 1);
        // Between the successes at 901 ms and 2000 ms nobody was served.
        assert_eq!(w.gap_us, 1_099_000);
        assert_eq!(w.first_ok_us, Some(851_000));
    }

    #[test]
    fn a_late_sample_is_a_stall() {
        let samples: Vec<OpenSample> =
            [0, 100, 200, 1_200, 1_300].iter().map(|ms| OpenSample { at_us: ms * 1000, open: 5 }).collect();
        let w = window(&[], &samples, 0, 2_000_000);
        assert_eq!(w.stall_us, 900_000);
        assert_eq!(w.held_open_min, Some(5));
    }

    #[test]
    fn a_quiet_window_has_no_outage_and_a_short_gap() {
        let events: Vec<Event> = (0..100).map(|i| new(i * 10, i * 10 + 1, Ok(0))).collect();
        let w = window(&events, &[], 0, 1_000_000);
        assert_eq!(w.outage_us, 0);
        assert!(w.gap_us <= 10_000, "{}", w.gap_us);
    }

    #[test]
    fn an_outage_without_recovery_lasts_to_the_end_of_the_window() {
        let events = vec![new(10, 11, Err(Failure::Timeout))];
        let w = window(&events, &[], 0, 500_000);
        assert_eq!(w.outage_us, 490_000);
    }
}
