//! The scrape: sums every counter block and renders the Prometheus text format.
//!
//! Counters and gauges go through a `metrics` recorder from metrics-exporter-prometheus (counter
//! `absolute`, gauge `set`) and its `PrometheusHandle` renders them. The recorder is built afresh
//! for each scrape: the blocks themselves are the state, so the output holds exactly the
//! listeners, pools and servers that exist now (a server removed by a reload disappears; one added
//! appears) and no stale series can linger in a long-lived recorder.
//!
//! Histograms are rendered here: the data path records them in fixed-bucket cells per worker (a
//! lock-free add), and the exporter can only build buckets from individual samples, so the summed
//! cells are written out in the histogram form directly (`_bucket{le}`, `_sum`, `_count`).

use std::fmt::Write;
use std::time::UNIX_EPOCH;

use metrics::{Key, KeyName, Label, Level, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};

use super::cells::{accept_error_labels, CloseCause, ConnectFailure, Direction, HistogramSnapshot};
use super::names::{self, Def, Kind};
use super::{Metrics, PoolCounters, PoolStats, ServerStats};

const METADATA: Metadata<'static> = Metadata::new("ringlb", Level::INFO, Some(module_path!()));

/// What a scrape shows of one pool of the current backend table. The table builds it
/// (`BackendTable::scrape_view`): the table holds metric blocks, so metrics never reads the table.
pub struct PoolView<'a> {
    pub name: &'a str,
    pub stats: &'a PoolStats,
    pub counters: &'a PoolCounters,
    pub servers: Vec<ServerView<'a>>,
}

pub struct ServerView<'a> {
    pub name: &'a str,
    pub stats: &'a ServerStats,
    /// Every state a server can be in by name, and whether it is in it: a series each.
    pub states: [(&'static str, bool); 4],
    pub effective_weight: u32,
    pub usable: bool,
}

pub(super) fn render(metrics: &Metrics, pools: &[PoolView<'_>], draining: bool) -> String {
    let mut out = Scrape::new();
    listeners(metrics, &mut out);
    servers(pools, &mut out);
    pool_series(pools, &mut out);
    process(metrics, draining, &mut out);
    out.finish()
}

fn listeners(metrics: &Metrics, out: &mut Scrape) {
    let listeners = metrics.listeners.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    for (name, stats) in &listeners {
        let name = name.as_str();
        let t = stats.totals();
        out.counter(&names::LISTENER_ACCEPTED, &[name], t.accepted);
        out.gauge(&names::LISTENER_ACTIVE, &[name], t.accepted.saturating_sub(t.closed_total()) as f64);
        for (cause, n) in CloseCause::ALL.iter().zip(t.closed) {
            out.counter(&names::LISTENER_CLOSED, &[name, cause.label()], n);
        }
        for (errno, n) in accept_error_labels().zip(t.accept_errors) {
            out.counter(&names::LISTENER_ACCEPT_ERRORS, &[name, errno], n);
        }
    }
}

fn servers(pools: &[PoolView<'_>], out: &mut Scrape) {
    for pool in pools {
        for server in &pool.servers {
            let labels = [pool.name, server.name];
            let [p, s] = labels;
            let t = server.stats.totals();
            out.gauge(&names::SERVER_ACTIVE, &labels, t.active as f64);
            out.counter(&names::SERVER_CONNECTIONS, &labels, t.connections);
            for (cause, n) in ConnectFailure::ALL.iter().zip(t.failures) {
                out.counter(&names::SERVER_CONNECT_FAILURES, &[p, s, cause.label()], n);
            }
            out.counter(&names::SERVER_RETRIES, &labels, t.retries);
            for (direction, n) in Direction::ALL.iter().zip(t.bytes) {
                out.counter(&names::SERVER_BYTES, &[p, s, direction.label()], n);
            }
            for (state, current) in server.states {
                out.gauge(&names::SERVER_STATE, &[p, s, state], f64::from(u8::from(current)));
            }
            let healthy = server.stats.health() == super::HealthView::Up;
            out.gauge(&names::SERVER_HEALTHY, &labels, f64::from(u8::from(healthy)));
            out.gauge(&names::SERVER_WEIGHT, &labels, f64::from(server.effective_weight));
            out.histogram(&names::SERVER_CHECK_DURATION, &labels, &server.stats.checks());
            let (up, down) = server.stats.transitions();
            out.counter(&names::SERVER_TRANSITIONS, &[p, s, "up"], up);
            out.counter(&names::SERVER_TRANSITIONS, &[p, s, "down"], down);
        }
    }
}

fn pool_series(pools: &[PoolView<'_>], out: &mut Scrape) {
    for pool in pools {
        let name = [pool.name];
        let t = pool.stats.totals();
        out.histogram(&names::POOL_CONNECTION_DURATION, &name, &t.durations);
        let load = |counter: &std::sync::atomic::AtomicU64| counter.load(std::sync::atomic::Ordering::Relaxed);
        out.counter(&names::POOL_QUEUE_WAITS, &name, load(&pool.counters.queued));
        out.counter(&names::POOL_QUEUE_TIMEOUTS, &name, load(&pool.counters.queue_timeouts));
        let (rejected, failed_open) = (load(&pool.counters.rejected), load(&pool.counters.failed_open));
        out.counter(&names::POOL_ALL_DOWN_CLIENTS, &[pool.name, "rejected"], rejected);
        out.counter(&names::POOL_ALL_DOWN_CLIENTS, &[pool.name, "failed_open"], failed_open);
        let usable = pool.servers.iter().filter(|s| s.usable).count();
        out.gauge(&names::POOL_USABLE_SERVERS, &name, usable as f64);
    }
}

fn process(metrics: &Metrics, draining: bool, out: &mut Scrape) {
    out.gauge(&names::WORKERS, &[], metrics.workers as f64);
    out.gauge(&names::IOWQ_THREADS, &[], iowq_threads() as f64);
    for (id, worker) in metrics.worker_stats.iter().enumerate() {
        let id = id.to_string();
        let (in_use, slots) = worker.descriptors();
        out.gauge(&names::DIRECT_DESCRIPTORS, &[&id], in_use as f64);
        out.gauge(&names::DIRECT_DESCRIPTOR_SLOTS, &[&id], slots as f64);
    }
    let (ok, failed) = metrics.reloads();
    out.counter(&names::CONFIG_RELOADS, &["ok"], ok);
    out.counter(&names::CONFIG_RELOADS, &["failed"], failed);
    out.gauge(&names::CONFIG_INFO, &[&metrics.config_sha256()], 1.0);
    out.gauge(&names::BUILD_INFO, &[env!("CARGO_PKG_VERSION")], 1.0);
    out.gauge(&names::DRAINING, &[], f64::from(u8::from(draining)));
    let started = metrics.started.duration_since(UNIX_EPOCH).unwrap_or_default();
    out.gauge(&names::START_TIME, &[], started.as_secs_f64());
}

/// Kernel io-wq worker threads of this process: tasks named `iou-wrk-<pid>`.
fn iowq_threads() -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0 };
    tasks
        .filter_map(Result::ok)
        .filter(|task| std::fs::read_to_string(task.path().join("comm")).is_ok_and(|comm| comm.starts_with("iou-wrk-")))
        .count()
}

/// One scrape in progress: a fresh recorder for counters and gauges, and the histogram text.
struct Scrape {
    recorder: PrometheusRecorder,
    histograms: String,
    /// The histogram whose header was written last.
    histogram_header: Option<&'static str>,
}

impl Scrape {
    fn new() -> Scrape {
        let recorder = PrometheusBuilder::new().build_recorder();
        for def in names::ALL {
            let (name, help) = (KeyName::from_const_str(def.name), SharedString::const_str(def.help));
            match def.kind {
                Kind::Counter => recorder.describe_counter(name, None, help),
                Kind::Gauge => recorder.describe_gauge(name, None, help),
                Kind::Histogram(_) => {}
            }
        }
        Scrape { recorder, histograms: String::new(), histogram_header: None }
    }

    fn key(def: &Def, values: &[&str]) -> Key {
        debug_assert_eq!(def.labels.len(), values.len(), "{}: label values", def.name);
        let labels: Vec<Label> = def.labels.iter().zip(values).map(|(k, v)| Label::new(*k, (*v).to_owned())).collect();
        Key::from_parts(def.name, labels)
    }

    fn counter(&mut self, def: &Def, values: &[&str], value: u64) {
        debug_assert_eq!(def.kind, Kind::Counter, "{}", def.name);
        self.recorder.register_counter(&Scrape::key(def, values), &METADATA).absolute(value);
    }

    fn gauge(&mut self, def: &Def, values: &[&str], value: f64) {
        debug_assert_eq!(def.kind, Kind::Gauge, "{}", def.name);
        self.recorder.register_gauge(&Scrape::key(def, values), &METADATA).set(value);
    }

    /// Writes one histogram series. The series of one histogram must come one after the other.
    fn histogram(&mut self, def: &Def, values: &[&str], snapshot: &HistogramSnapshot) {
        let Kind::Histogram(bounds) = def.kind else {
            debug_assert!(false, "{} is not a histogram", def.name);
            return;
        };
        let out = &mut self.histograms;
        if self.histogram_header != Some(def.name) {
            let _ = write!(out, "# HELP {} {}\n# TYPE {} histogram\n", def.name, def.help, def.name);
            self.histogram_header = Some(def.name);
        }
        let mut labels = String::new();
        for (k, v) in def.labels.iter().zip(values) {
            let _ = write!(labels, "{k}=\"{}\",", escape(v));
        }
        let mut cumulative = 0u64;
        for (i, &n) in snapshot.counts.iter().enumerate() {
            cumulative = cumulative.wrapping_add(n);
            let le = match bounds.get(i) {
                Some(&micros) => format!("{}", micros as f64 / 1e6),
                None => "+Inf".to_owned(),
            };
            let _ = writeln!(out, "{}_bucket{{{labels}le=\"{le}\"}} {cumulative}", def.name);
        }
        let labels = labels.trim_end_matches(',');
        let sum = snapshot.sum_micros as f64 / 1e6;
        let _ = writeln!(out, "{}_sum{{{labels}}} {sum}", def.name);
        let _ = writeln!(out, "{}_count{{{labels}}} {cumulative}", def.name);
    }

    fn finish(self) -> String {
        let mut text = self.recorder.handle().render();
        if !text.is_empty() && !text.ends_with("\n\n") {
            text.push('\n');
        }
        text.push_str(&self.histograms);
        text
    }
}

/// A label value in the text format: backslash, double quote and newline escaped.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape("x\ny"), "x\\ny");
    }

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let mut scrape = Scrape::new();
        let mut snapshot = HistogramSnapshot::default();
        snapshot.counts[0] = 2;
        snapshot.counts[3] = 1;
        snapshot.counts[names::HISTOGRAM_BOUNDS] = 1;
        snapshot.sum_micros = 2_500_000;
        scrape.histogram(&names::POOL_CONNECTION_DURATION, &["web"], &snapshot);
        scrape.histogram(&names::POOL_CONNECTION_DURATION, &["api"], &HistogramSnapshot::default());
        let text = scrape.finish();
        let name = names::POOL_CONNECTION_DURATION.name;
        assert_eq!(text.matches(&format!("# TYPE {name} histogram")).count(), 1);
        assert!(text.contains(&format!("{name}_bucket{{pool=\"web\",le=\"0.001\"}} 2\n")), "{text}");
        assert!(text.contains(&format!("{name}_bucket{{pool=\"web\",le=\"0.05\"}} 3\n")), "{text}");
        assert!(text.contains(&format!("{name}_bucket{{pool=\"web\",le=\"3600\"}} 3\n")), "{text}");
        assert!(text.contains(&format!("{name}_bucket{{pool=\"web\",le=\"+Inf\"}} 4\n")), "{text}");
        assert!(text.contains(&format!("{name}_sum{{pool=\"web\"}} 2.5\n")), "{text}");
        assert!(text.contains(&format!("{name}_count{{pool=\"web\"}} 4\n")), "{text}");
        assert!(text.contains(&format!("{name}_count{{pool=\"api\"}} 0\n")), "{text}");
    }

    #[test]
    fn counters_and_gauges_render_with_help_and_type() {
        let mut scrape = Scrape::new();
        scrape.counter(&names::LISTENER_ACCEPTED, &["web"], 1000);
        scrape.gauge(&names::WORKERS, &[], 2.0);
        let text = scrape.finish();
        let accepted = names::LISTENER_ACCEPTED.name;
        assert!(text.contains(&format!("# HELP {accepted} {}\n", names::LISTENER_ACCEPTED.help)), "{text}");
        assert!(text.contains(&format!("# TYPE {accepted} counter\n")), "{text}");
        assert!(text.contains(&format!("{accepted}{{listener=\"web\"}} 1000\n")), "{text}");
        assert!(text.contains("ringlb_workers 2\n"), "{text}");
    }
}
