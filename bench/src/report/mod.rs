//! Turns results into text: the one-run summary printed by the workloads, and `report`, which
//! reads a results file (JSON lines written by `bench/run.sh`) and writes the Markdown tables
//! (medians with min-max over rounds, ratios between targets) and the p99-against-rate plot.
//!
//! Pure formatting over [`RunResult`]s: it never runs a workload.

mod svg;

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::PathBuf;

use serde::Deserialize;

use crate::stats::RunResult;
use crate::BenchError;

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// Results file: one JSON object per line (runs, failures, meta).
    #[arg(long)]
    input: PathBuf,
    /// Markdown output.
    #[arg(long)]
    md: PathBuf,
    /// SVG plot of p99 latency against offered rate.
    #[arg(long)]
    svg: Option<PathBuf>,
    #[arg(long, default_value = "ringlb load benchmarks")]
    title: String,
    /// Column order of the targets (space-separated); others follow in order of appearance.
    #[arg(long, default_value = "direct")]
    order: String,
}

/// A target or one of its runs that did not produce a result.
#[derive(Debug, Clone, Deserialize)]
struct Failure {
    target: String,
    #[serde(default)]
    workload: Option<String>,
    reason: String,
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
enum Metric {
    Rate,
    P50,
    P99,
    P999,
    Max,
    Errors,
    Cpu,
    Threads,
    IoWorkers,
    Gbit,
    Served,
    Ramp,
    RssPerConn,
    SlabPerConn,
}

impl Metric {
    fn of(self, r: &RunResult) -> Option<f64> {
        let lat = r.latency.as_ref();
        let hold = r.hold.as_ref();
        let target = r.targets.first();
        match self {
            Metric::Rate => Some(r.rate),
            Metric::P50 => lat.map(|l| l.p50_us),
            Metric::P99 => lat.map(|l| l.p99_us),
            Metric::P999 => lat.map(|l| l.p999_us),
            Metric::Max => lat.map(|l| l.max_us),
            Metric::Errors => Some((r.errors + r.unfinished) as f64),
            Metric::Cpu => target.and_then(|t| t.cpu_s_per_unit),
            Metric::Threads => target.map(|t| t.threads_peak as f64),
            Metric::IoWorkers => target.map(|t| t.io_workers_peak as f64),
            Metric::Gbit => r.bulk.as_ref().map(|b| b.gbit_s),
            Metric::Served => hold.map(|h| h.served as f64),
            Metric::Ramp => hold.map(|h| h.ramp_s),
            Metric::RssPerConn => hold.and_then(|h| h.rss_per_conn_b),
            Metric::SlabPerConn => hold.and_then(|h| h.slab_per_conn_b),
        }
    }

    fn header(self) -> &'static str {
        match self {
            Metric::Rate => "rate /s",
            Metric::P50 => "p50 µs",
            Metric::P99 => "p99 µs",
            Metric::P999 => "p99.9 µs",
            Metric::Max => "max µs",
            Metric::Errors => "errors",
            Metric::Cpu => "CPU s/M",
            Metric::Threads => "threads",
            Metric::IoWorkers => "iou-wrk",
            Metric::Gbit => "Gbit/s",
            Metric::Served => "served",
            Metric::Ramp => "ramp s",
            Metric::RssPerConn => "RSS B/conn",
            Metric::SlabPerConn => "slab B/conn",
        }
    }

    fn format(self, v: f64) -> String {
        match self {
            Metric::Rate => si(v),
            Metric::P50 | Metric::P99 | Metric::P999 | Metric::Max => {
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
            | Metric::SlabPerConn => {
                format!("{v:.0}")
            }
        }
    }
}

/// 1234 -> 1.23k, 141000 -> 141k.
fn si(v: f64) -> String {
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
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

/// All results, indexed by workload then target, in order of first appearance.
struct Results {
    runs: Vec<RunResult>,
    workloads: Vec<String>,
    targets: Vec<String>,
    failures: Vec<Failure>,
    meta: BTreeMap<String, String>,
}

impl Results {
    fn load(path: &PathBuf) -> Result<Self, BenchError> {
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
            let parsed: Line = serde_json::from_str(line)
                .map_err(|e| BenchError::Results(path.clone(), i + 1, e.to_string()))?;
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
                    let (Some(t), Some(w)) = (
                        r.tags.get("target").cloned(),
                        r.tags.get("workload").cloned(),
                    ) else {
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
    fn order(&mut self, order: &str) {
        let rank = |t: &String| {
            order
                .split_whitespace()
                .position(|o| o == t)
                .unwrap_or(usize::MAX)
        };
        self.targets.sort_by_key(rank);
    }

    /// The unit of the CPU figure of `workload`, from the first run that measured a target.
    fn cpu_unit(&self, workload: &str) -> Option<String> {
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

    fn runs_of<'a>(
        &'a self,
        workload: &'a str,
        target: &'a str,
    ) -> impl Iterator<Item = &'a RunResult> + 'a {
        self.runs.iter().filter(move |r| {
            r.tags.get("workload").map(String::as_str) == Some(workload)
                && r.tags.get("target").map(String::as_str) == Some(target)
        })
    }

    fn values(&self, workload: &str, target: &str, m: Metric) -> Vec<f64> {
        self.runs_of(workload, target)
            .filter_map(|r| m.of(r))
            .collect()
    }

    fn first(&self, workload: &str) -> Option<&RunResult> {
        self.runs
            .iter()
            .find(|r| r.tags.get("workload").map(String::as_str) == Some(workload))
    }

    /// Why `target` has no result for `workload`, if it failed.
    fn failure(&self, workload: &str, target: &str) -> Option<&Failure> {
        self.failures
            .iter()
            .find(|f| f.target == target && f.workload.as_deref().is_none_or(|w| w == workload))
    }

    fn cell(&self, workload: &str, target: &str, m: Metric) -> String {
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

    fn ratio(&self, workload: &str, a: &str, b: &str, m: Metric) -> String {
        match (
            median(&self.values(workload, a, m)),
            median(&self.values(workload, b, m)),
        ) {
            (Some(x), Some(y)) if y > 0.0 => format!("{:.2}", x / y),
            _ => "–".into(),
        }
    }
}

/// What a workload is judged by, and the columns of its detail table.
fn metrics_of(r: &RunResult) -> (Metric, &'static [Metric]) {
    const RR: &[Metric] = &[
        Metric::Rate,
        Metric::P50,
        Metric::P99,
        Metric::P999,
        Metric::Max,
        Metric::Errors,
        Metric::Cpu,
        Metric::Threads,
        Metric::IoWorkers,
    ];
    const BULK: &[Metric] = &[
        Metric::Gbit,
        Metric::Errors,
        Metric::Cpu,
        Metric::Threads,
        Metric::IoWorkers,
    ];
    const HOLD: &[Metric] = &[
        Metric::Served,
        Metric::Errors,
        Metric::Ramp,
        Metric::RssPerConn,
        Metric::SlabPerConn,
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

fn describe(r: &RunResult) -> String {
    if let Some(d) = r.tags.get("desc") {
        return d.clone();
    }
    let p = &r.params;
    match r.mode.as_str() {
        "bulk" => format!(
            "bulk, {} stream(s) {}",
            p.streams.unwrap_or(1),
            p.direction.as_deref().unwrap_or("")
        ),
        "hold" => format!("hold {} connections, {} req/s", p.conns, p.rate),
        m if p.rate > 0.0 => format!("{m}, {} connections at {} /s", p.conns, si(p.rate)),
        m => format!("{m}, {} connections, flat out", p.conns),
    }
}

pub fn run(args: &ReportArgs) -> Result<(), BenchError> {
    let mut res = Results::load(&args.input)?;
    res.order(&args.order);
    let mut md = String::new();
    let _ = writeln!(md, "# {}\n", args.title);
    for (k, v) in &res.meta {
        let _ = writeln!(md, "- {k}: {v}");
    }
    if !res.meta.is_empty() {
        md.push('\n');
    }
    summary(&res, &mut md);
    ratios(&res, &mut md);
    for w in &res.workloads {
        details(&res, w, &mut md);
    }
    let failures: Vec<&Failure> = res.failures.iter().collect();
    if !failures.is_empty() {
        let _ = writeln!(md, "## Failures\n");
        for f in failures {
            let _ = writeln!(
                md,
                "- {} {}: {}",
                f.target,
                f.workload.as_deref().unwrap_or("(all workloads)"),
                f.reason
            );
        }
        md.push('\n');
    }
    if let Some(svg_path) = &args.svg {
        if let Some(svg) = plot(&res) {
            std::fs::write(svg_path, svg).map_err(|e| BenchError::File(svg_path.clone(), e))?;
            let name = svg_path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("latest.svg");
            let _ = writeln!(md, "## p99 latency against offered rate\n\n![p99 latency against offered rate]({name})\n");
        }
    }
    std::fs::write(&args.md, md).map_err(|e| BenchError::File(args.md.clone(), e))
}

/// Headline: each workload's primary figure (and CPU cost) per target.
fn summary(res: &Results, md: &mut String) {
    let _ = writeln!(
        md,
        "## Summary (median of rounds, min–max in parentheses)\n"
    );
    let _ = write!(md, "| workload | figure |");
    for t in &res.targets {
        let _ = write!(md, " {t} |");
    }
    let _ = write!(md, "\n|---|---|");
    for _ in &res.targets {
        md.push_str("---|");
    }
    md.push('\n');
    for w in &res.workloads {
        let Some(first) = res.first(w) else { continue };
        let (primary, _) = metrics_of(first);
        let mut rows = vec![primary];
        match first.mode.as_str() {
            "hold" => rows.extend([Metric::Errors, Metric::RssPerConn, Metric::SlabPerConn]),
            _ => rows.push(Metric::Cpu),
        }
        for m in rows {
            if m != primary && res.targets.iter().all(|t| res.values(w, t, m).is_empty()) {
                continue;
            }
            let unit = match (m, res.cpu_unit(w)) {
                (Metric::Cpu, Some(u)) => format!("CPU {u}"),
                _ => m.header().to_string(),
            };
            let _ = write!(md, "| {} | {unit} |", describe(first));
            for t in &res.targets {
                let _ = write!(md, " {} |", res.cell(w, t, m));
            }
            md.push('\n');
        }
    }
    md.push('\n');
}

/// Ratios of medians: each proxy against the direct path, ringlb against the other proxies.
fn ratios(res: &Results, md: &mut String) {
    let proxies: Vec<&String> = res
        .targets
        .iter()
        .filter(|t| t.as_str() != "direct")
        .collect();
    let mut pairs: Vec<(String, String)> = Vec::new();
    if res.targets.iter().any(|t| t == "direct") {
        pairs.extend(
            proxies
                .iter()
                .map(|p| (p.to_string(), "direct".to_string())),
        );
    }
    if res.targets.iter().any(|t| t == "ringlb") {
        for other in proxies.iter().filter(|p| p.as_str() != "ringlb") {
            pairs.push(("ringlb".into(), other.to_string()));
        }
    }
    if pairs.is_empty() {
        return;
    }
    let _ = writeln!(md, "## Ratios of medians\n\nAbove 1 means more of the figure: better for rates and throughput, worse for latency and CPU.\n");
    let _ = write!(md, "| workload | figure |");
    for (a, b) in &pairs {
        let _ = write!(md, " {a}/{b} |");
    }
    let _ = write!(md, "\n|---|---|");
    for _ in &pairs {
        md.push_str("---|");
    }
    md.push('\n');
    for w in &res.workloads {
        let Some(first) = res.first(w) else { continue };
        let (primary, _) = metrics_of(first);
        for m in [primary, Metric::Cpu] {
            if m == Metric::Cpu
                && (first.mode == "hold"
                    || res.targets.iter().all(|t| res.values(w, t, m).is_empty()))
            {
                continue;
            }
            let cells: Vec<String> = pairs.iter().map(|(a, b)| res.ratio(w, a, b, m)).collect();
            if cells.iter().all(|c| c == "–") {
                continue;
            }
            let _ = write!(md, "| {} | {} |", describe(first), m.header());
            for c in cells {
                let _ = write!(md, " {c} |");
            }
            md.push('\n');
        }
    }
    md.push('\n');
}

fn details(res: &Results, w: &str, md: &mut String) {
    let Some(first) = res.first(w) else { return };
    let (_, cols) = metrics_of(first);
    let cols: Vec<Metric> = cols
        .iter()
        .copied()
        .filter(|&m| res.targets.iter().any(|t| !res.values(w, t, m).is_empty()))
        .collect();
    let rounds = res
        .targets
        .iter()
        .map(|t| res.runs_of(w, t).count())
        .max()
        .unwrap_or(0);
    let plural = if rounds == 1 { "" } else { "s" };
    let _ = writeln!(
        md,
        "### {w}: {} ({rounds} round{plural})\n",
        describe(first)
    );
    let _ = write!(md, "| target |");
    for m in &cols {
        let _ = write!(md, " {} |", m.header());
    }
    md.push_str("\n|---|");
    for _ in &cols {
        md.push_str("---|");
    }
    md.push('\n');
    for t in &res.targets {
        let _ = write!(md, "| {t} |");
        if res.runs_of(w, t).next().is_none() && res.failure(w, t).is_some() {
            let _ = write!(md, " failed |{}", " |".repeat(cols.len().saturating_sub(1)));
        } else {
            for &m in &cols {
                let _ = write!(md, " {} |", res.cell(w, t, m));
            }
        }
        md.push('\n');
    }
    let mut notes = Vec::new();
    for t in &res.targets {
        let mut by_kind: BTreeMap<&str, u64> = BTreeMap::new();
        for r in res.runs_of(w, t) {
            for (k, v) in &r.error_kinds {
                *by_kind.entry(k.as_str()).or_insert(0) += v;
            }
        }
        if !by_kind.is_empty() {
            let list: Vec<String> = by_kind.iter().map(|(k, v)| format!("{k} {v}")).collect();
            notes.push(format!("{t}: {}", list.join(", ")));
        }
    }
    if !notes.is_empty() {
        let _ = writeln!(md, "\nErrors over all rounds — {}.", notes.join("; "));
    }
    md.push('\n');
}

/// p99 against offered rate for the open-loop `rr` runs tagged `sweep`.
fn plot(res: &Results) -> Option<String> {
    let mut series = Vec::new();
    for t in &res.targets {
        let mut by_rate: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
        for r in res
            .runs
            .iter()
            .filter(|r| r.tags.contains_key("sweep") && r.tags.get("target") == Some(t))
        {
            if let Some(l) = &r.latency {
                by_rate
                    .entry(r.params.rate as u64)
                    .or_default()
                    .push(l.p99_us);
            }
        }
        let points: Vec<(f64, f64)> = by_rate
            .iter()
            .filter_map(|(&rate, v)| median(v).map(|m| (rate as f64, m)))
            .collect();
        if !points.is_empty() {
            series.push(svg::Series {
                name: t.clone(),
                points,
            });
        }
    }
    svg::plot(
        "rr: p99 latency against offered rate (median of rounds)",
        "offered rate, requests/s",
        "p99 latency, µs (log)",
        &series,
    )
}

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
            "  memory: slab {} -> {} KiB ({} B/conn); target RSS {} -> {} KiB ({} B/conn)",
            h.slab_before_kib,
            h.slab_held_kib,
            opt(h.slab_per_conn_b),
            opt(h.rss_before_kib.map(|v| v as f64)),
            opt(h.rss_held_kib.map(|v| v as f64)),
            opt(h.rss_per_conn_b)
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
        let _ = write!(
            s,
            "  p50 {:.0}µs p99 {:.0}µs p99.9 {:.0}µs",
            l.p50_us, l.p99_us, l.p999_us
        );
    }
    let _ = write!(s, "  errors {}", r.errors + r.unfinished);
    if let Some(h) = &r.hold {
        let _ = write!(
            s,
            "  slab {} B/conn  rss {} B/conn",
            opt(h.slab_per_conn_b.map(f64::round)),
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
    v.map_or("–".into(), |v| {
        if v.fract() == 0.0 {
            format!("{v:.0}")
        } else {
            format!("{v:.2}")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{Latency, Params};

    fn run(target: &str, round: u32, rate: f64) -> String {
        let mut r = RunResult {
            mode: "rr".into(),
            rate,
            params: Params {
                conns: 64,
                ..Params::default()
            },
            ..RunResult::default()
        };
        r.latency = Some(Latency {
            p99_us: rate / 1000.0,
            ..Latency::default()
        });
        r.tags.insert("target".into(), target.into());
        r.tags.insert("workload".into(), "rr-max".into());
        r.tags.insert("round".into(), round.to_string());
        serde_json::to_string(&r).unwrap_or_default()
    }

    #[test]
    fn medians_and_ratios_come_out_of_a_results_file() {
        let dir = std::env::temp_dir().join(format!("ringlb-bench-report-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let input = dir.join("r.jsonl");
        let lines = [
            run("direct", 1, 100_000.0),
            run("haproxy", 1, 50_000.0),
            run("direct", 2, 140_000.0),
            run("haproxy", 2, 70_000.0),
            run("direct", 3, 120_000.0),
            run("haproxy", 3, 60_000.0),
            r#"{"failure":{"target":"ringlb","reason":"did not start"}}"#.to_string(),
            r#"{"meta":{"host":"test"}}"#.to_string(),
        ];
        let _ = std::fs::write(&input, lines.join("\n"));
        let args = ReportArgs {
            input,
            md: dir.join("r.md"),
            svg: None,
            title: "t".into(),
            order: "direct haproxy".into(),
        };
        let result = super::run(&args);
        let md = std::fs::read_to_string(&args.md).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(result.is_ok(), "{result:?}");
        assert!(md.contains("120k (100k–140k)"), "{md}");
        assert!(md.contains("| 0.50 |"), "{md}");
        assert!(md.contains("failed"), "{md}");
        assert!(md.contains("- host: test"), "{md}");
        assert!(
            md.contains("| workload | figure | direct | haproxy | ringlb |"),
            "{md}"
        );
    }

    #[test]
    fn median_of_even_count_is_the_mean_of_the_middle_pair() {
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(si(141_234.0), "141k");
        assert_eq!(si(17_500.0), "17.5k");
    }
}
