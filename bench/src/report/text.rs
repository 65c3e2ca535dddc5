//! The text a workload prints about its own run: a multi-line summary, or one brief line for
//! the orchestrator's log.

use std::fmt::Write;

use super::results::{describe, si};
use crate::stats::RunResult;

/// The summary a workload prints when `--json` is not given.
pub fn human(r: &RunResult) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{}: {} over {:.2}s", r.mode, describe(r), r.elapsed_s);
    if let Some(b) = &r.bulk {
        let _ = writeln!(s, "  throughput {:.2} Gbit/s ({} bytes)", b.gbit_s, b.bytes);
    } else {
        let _ = writeln!(s, "  completed {} ({}/s)", r.ok, si(r.rate));
    }
    if let Some(l) = &r.latency {
        let _ = writeln!(
            s,
            "  latency µs  p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  (n={})",
            l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us, l.count
        );
    }
    if let Some(l) = &r.send_lag {
        let _ = writeln!(s, "  send lag µs p99 {:.1}  max {:.1}", l.p99_us, l.max_us);
    }
    let _ = write!(s, "  errors {}", r.errors);
    for (k, v) in &r.error_kinds {
        let _ = write!(s, "  [{k}: {v}]");
    }
    if r.unfinished > 0 {
        let _ = write!(s, "  unfinished {}", r.unfinished);
    }
    s.push('\n');
    if let Some(h) = &r.hold {
        let _ = writeln!(
            s,
            "  hold: {} of {} connected, {} served, {} dropped, ramp {:.2}s",
            h.connected, h.conns, h.served, h.dropped, h.ramp_s
        );
        let _ = writeln!(
            s,
            "  memory: slab {} -> {} KiB ({} B/conn, socket caches {} B/conn); target RSS {} -> {} KiB ({} B/conn)",
            h.slab_before_kib,
            h.slab_held_kib,
            opt(h.slab_per_conn_b.map(f64::round)),
            opt(h.socket_slab_per_conn_b.map(f64::round)),
            opt(h.rss_before_kib.map(|v| v as f64)),
            opt(h.rss_held_kib.map(|v| v as f64)),
            opt(h.rss_per_conn_b.map(f64::round))
        );
    }
    for t in &r.targets {
        let _ = writeln!(
            s,
            "  target pid {}: CPU {:.2}s ({} {}), threads peak {} (iou-wrk {}), {} process(es), RSS {} KiB",
            t.pid,
            t.cpu_s,
            opt(t.cpu_s_per_unit.map(|v| (v * 100.0).round() / 100.0)),
            t.unit,
            t.threads_peak,
            t.io_workers_peak,
            t.processes,
            t.rss_kib
        );
    }
    s
}

/// One line: the figures that matter for the run's workload.
pub fn brief(r: &RunResult) -> String {
    let mut s = match (&r.bulk, &r.hold) {
        (Some(b), _) => format!("{:.2} Gbit/s", b.gbit_s),
        (None, Some(h)) => format!("served {}/{} ramp {:.2}s", h.served, h.conns, h.ramp_s),
        (None, None) => format!("{}/s", si(r.rate)),
    };
    if let Some(l) = &r.latency {
        let _ = write!(s, "  p50 {:.0}µs p99 {:.0}µs p99.9 {:.0}µs", l.p50_us, l.p99_us, l.p999_us);
    }
    let _ = write!(s, "  errors {}", r.errors + r.unfinished);
    if let Some(h) = &r.hold {
        let _ = write!(
            s,
            "  slab {} B/conn  socket slab {} B/conn  rss {} B/conn",
            opt(h.slab_per_conn_b.map(f64::round)),
            opt(h.socket_slab_per_conn_b.map(f64::round)),
            opt(h.rss_per_conn_b.map(f64::round))
        );
    }
    for t in &r.targets {
        let _ = write!(
            s,
            "  cpu {:.2}s ({} {})  threads {}",
            t.cpu_s,
            opt(t.cpu_s_per_unit.map(|v| (v * 100.0).round() / 100.0)),
            t.unit,
            t.threads_peak
        );
    }
    s
}

fn opt(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| if v.fract() == 0.0 { format!("{v:.0}") } else { format!("{v:.2}") })
}
