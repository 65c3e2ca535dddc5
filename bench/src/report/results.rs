//! The results file read back: runs, failures and metadata, indexed by workload and target,
//! with the figure each table shows and its formatting.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::stats::RunResult;
use crate::BenchError;

/// A target or one of its runs that did not produce a result.
#[derive(Debug, Clone, Deserialize)]
pub struct Failure {
    pub target: String,
    #[serde(default)]
    pub workload: Option<String>,
    pub reason: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Line {
    Failure { failure: Failure },
    Meta { meta: BTreeMap<String, String> },
    Run(Box<RunResult>),
}

/// One number per run, chosen from a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Rate,
    P50,
    P99,
    P999,
    Max,
    /// p99 of the generator's own lateness (open loop).
    Lag,
    Errors,
    Cpu,
    Threads,
    IoWorkers,
    Gbit,
    Served,
    Ramp,
    RssPerConn,
    SlabPerConn,
    SocketSlabPerConn,
}

impl Metric {
    pub fn of(self, r: &RunResult) -> Option<f64> {
        let lat = r.latency.as_ref();
        let hold = r.hold.as_ref();
        let target = r.targets.first();
        match self {
            Metric::Rate => Some(r.rate),
            Metric::P50 => lat.map(|l| l.p50_us),
            Metric::P99 => lat.map(|l| l.p99_us),
            Metric::P999 => lat.map(|l| l.p999_us),
            Metric::Max => lat.map(|l| l.max_us),
            Metric::Lag => r.send_lag.as_ref().map(|l| l.p99_us),
            Metric::Errors => Some((r.errors + r.unfinished) as f64),
            Metric::Cpu => target.and_then(|t| t.cpu_s_per_unit),
            Metric::Threads => target.map(|t| t.threads_peak as f64),
            Metric::IoWorkers => target.map(|t| t.io_workers_peak as f64),
            Metric::Gbit => r.bulk.as_ref().map(|b| b.gbit_s),
            Metric::Served => hold.map(|h| h.served as f64),
            Metric::Ramp => hold.map(|h| h.ramp_s),
            Metric::RssPerConn => hold.and_then(|h| h.rss_per_conn_b),
            Metric::SlabPerConn => hold.and_then(|h| h.slab_per_conn_b),
            Metric::SocketSlabPerConn => hold.and_then(|h| h.socket_slab_per_conn_b),
        }
    }

    pub fn header(self) -> &'static str {
        match self {
            Metric::Rate => "rate /s",
            Metric::P50 => "p50 µs",
            Metric::P99 => "p99 µs",
            Metric::P999 => "p99.9 µs",
            Metric::Max => "max µs",
            Metric::Lag => "send lag p99 µs",
            Metric::Errors => "errors",
            Metric::Cpu => "CPU s/M",
            Metric::Threads => "threads",
            Metric::IoWorkers => "iou-wrk",
            Metric::Gbit => "Gbit/s",
            Metric::Served => "served",
            Metric::Ramp => "ramp s",
            Metric::RssPerConn => "RSS B/conn",
            Metric::SlabPerConn => "slab B/conn",
            Metric::SocketSlabPerConn => "socket slab B/conn",
        }
    }

    pub fn format(self, v: f64) -> String {
        match self {
            Metric::Rate => si(v),
            Metric::P50 | Metric::P99 | Metric::P999 | Metric::Max | Metric::Lag => {
                if v < 100.0 {
                    format!("{v:.1}")
                } else {
                    si(v)
                }
            }
            Metric::Gbit | Metric::Cpu | Metric::Ramp => format!("{v:.2}"),
            Metric::Errors
            | Metric::Threads
            | Metric::IoWorkers
            | Metric::Served
            | Metric::RssPerConn
            | Metric::SlabPerConn
            | Metric::SocketSlabPerConn => {
                format!("{v:.0}")
            }
        }
    }
}

/// 1234 -> 1.23k, 141000 -> 141k.
pub fn si(v: f64) -> String {
    let (x, suffix) = if v.abs() >= 1e6 {
        (v / 1e6, "M")
    } else if v.abs() >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let digits = if x.abs() >= 100.0 {
        0
    } else if x.abs() >= 10.0 {
        1
    } else {
        2
    };
    format!("{x:.digits$}{suffix}")
}

pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 })
}

/// All results, indexed by workload then target, in order of first appearance.
pub struct Results {
    pub runs: Vec<RunResult>,
    pub workloads: Vec<String>,
    pub targets: Vec<String>,
    pub failures: Vec<Failure>,
    pub meta: BTreeMap<String, String>,
}

impl Results {
    pub fn load(path: &PathBuf) -> Result<Self, BenchError> {
        let text = std::fs::read_to_string(path).map_err(|e| BenchError::File(path.clone(), e))?;
        let mut me = Results {
            runs: Vec::new(),
            workloads: Vec::new(),
            targets: Vec::new(),
            failures: Vec::new(),
            meta: BTreeMap::new(),
        };
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let parsed: Line =
                serde_json::from_str(line).map_err(|e| BenchError::Results(path.clone(), i + 1, e.to_string()))?;
            match parsed {
                Line::Failure { failure } => {
                    me.note_target(&failure.target);
                    if let Some(w) = &failure.workload {
                        me.note_workload(w);
                    }
                    me.failures.push(failure);
                }
                Line::Meta { meta } => me.meta.extend(meta),
                Line::Run(r) => {
                    let (Some(t), Some(w)) = (r.tags.get("target").cloned(), r.tags.get("workload").cloned()) else {
                        return Err(BenchError::Results(
                            path.clone(),
                            i + 1,
                            "run without target or workload tag".into(),
                        ));
                    };
                    me.note_target(&t);
                    me.note_workload(&w);
                    me.runs.push(*r);
                }
            }
        }
        Ok(me)
    }

    /// Puts the targets named in `order` first, in that order.
    pub fn order(&mut self, order: &str) {
        let rank = |t: &String| order.split_whitespace().position(|o| o == t).unwrap_or(usize::MAX);
        self.targets.sort_by_key(rank);
    }

    /// The unit of the CPU figure of `workload`, from the first run that measured a target.
    pub fn cpu_unit(&self, workload: &str) -> Option<String> {
        self.runs
            .iter()
            .filter(|r| r.tags.get("workload").map(String::as_str) == Some(workload))
            .find_map(|r| r.targets.first().map(|t| t.unit.clone()))
    }

    fn note_target(&mut self, t: &str) {
        if !self.targets.iter().any(|x| x == t) {
            self.targets.push(t.to_string());
        }
    }

    fn note_workload(&mut self, w: &str) {
        if !self.workloads.iter().any(|x| x == w) {
            self.workloads.push(w.to_string());
        }
    }

    pub fn runs_of<'a>(&'a self, workload: &'a str, target: &'a str) -> impl Iterator<Item = &'a RunResult> + 'a {
        self.runs.iter().filter(move |r| {
            r.tags.get("workload").map(String::as_str) == Some(workload)
                && r.tags.get("target").map(String::as_str) == Some(target)
        })
    }

    pub fn values(&self, workload: &str, target: &str, m: Metric) -> Vec<f64> {
        self.runs_of(workload, target).filter_map(|r| m.of(r)).collect()
    }

    pub fn first(&self, workload: &str) -> Option<&RunResult> {
        self.runs.iter().find(|r| r.tags.get("workload").map(String::as_str) == Some(workload))
    }

    /// Why `target` has no result for `workload`, if it failed.
    pub fn failure(&self, workload: &str, target: &str) -> Option<&Failure> {
        self.failures.iter().find(|f| f.target == target && f.workload.as_deref().is_none_or(|w| w == workload))
    }

    pub fn cell(&self, workload: &str, target: &str, m: Metric) -> String {
        let v = self.values(workload, target, m);
        match median(&v) {
            None if self.failure(workload, target).is_some() => "failed".into(),
            None => "–".into(),
            Some(med) => {
                let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                if v.len() > 1 && m.format(lo) != m.format(hi) {
                    format!("{} ({}–{})", m.format(med), m.format(lo), m.format(hi))
                } else {
                    m.format(med)
                }
            }
        }
    }

    pub fn ratio(&self, workload: &str, a: &str, b: &str, m: Metric) -> String {
        match (median(&self.values(workload, a, m)), median(&self.values(workload, b, m))) {
            (Some(x), Some(y)) if y > 0.0 => format!("{:.2}", x / y),
            _ => "–".into(),
        }
    }
}

/// What a workload is judged by, and the columns of its detail table.
pub fn metrics_of(r: &RunResult) -> (Metric, &'static [Metric]) {
    const RR: &[Metric] = &[
        Metric::Rate,
        Metric::P50,
        Metric::P99,
        Metric::P999,
        Metric::Max,
        Metric::Lag,
        Metric::Errors,
        Metric::Cpu,
        Metric::Threads,
        Metric::IoWorkers,
    ];
    const BULK: &[Metric] = &[Metric::Gbit, Metric::Errors, Metric::Cpu, Metric::Threads, Metric::IoWorkers];
    const HOLD: &[Metric] = &[
        Metric::Served,
        Metric::Errors,
        Metric::Ramp,
        Metric::RssPerConn,
        Metric::SlabPerConn,
        Metric::SocketSlabPerConn,
        Metric::Threads,
        Metric::IoWorkers,
        Metric::P99,
    ];
    match r.mode.as_str() {
        "bulk" => (Metric::Gbit, BULK),
        "hold" => (Metric::Served, HOLD),
        _ if r.params.rate > 0.0 => (Metric::P99, RR),
        _ => (Metric::Rate, RR),
    }
}

pub fn describe(r: &RunResult) -> String {
    if let Some(d) = r.tags.get("desc") {
        return d.clone();
    }
    let p = &r.params;
    match r.mode.as_str() {
        "bulk" => format!("bulk, {} stream(s) {}", p.streams.unwrap_or(1), p.direction.as_deref().unwrap_or("")),
        "hold" => format!("hold {} connections, {} req/s", p.conns, p.rate),
        m if p.rate > 0.0 => format!("{m}, {} connections at {} /s", p.conns, si(p.rate)),
        m => format!("{m}, {} connections, flat out", p.conns),
    }
}
