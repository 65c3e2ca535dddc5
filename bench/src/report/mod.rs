//! Turns results into text: the one-run summary printed by the workloads, and `report`, which
//! reads a results file (JSON lines written by `bench/run.sh`) and writes the Markdown tables
//! (medians with min-max over rounds, ratios between targets) and the p99-against-rate plot.
//!
//! Pure formatting over [`RunResult`]s: it never runs a workload.

mod results;
mod svg;
mod text;

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::PathBuf;

use results::{describe, median, metrics_of, Failure, Metric, Results};
pub use text::{brief, human};

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
            let _ = writeln!(md, "- {} {}: {}", f.target, f.workload.as_deref().unwrap_or("(all workloads)"), f.reason);
        }
        md.push('\n');
    }
    if let Some(svg_path) = &args.svg {
        if let Some(svg) = plot(&res) {
            std::fs::write(svg_path, svg).map_err(|e| BenchError::File(svg_path.clone(), e))?;
            let name = svg_path.file_name().and_then(|n| n.to_str()).unwrap_or("latest.svg");
            let _ =
                writeln!(md, "## p99 latency against offered rate\n\n![p99 latency against offered rate]({name})\n");
        }
    }
    std::fs::write(&args.md, md).map_err(|e| BenchError::File(args.md.clone(), e))
}

/// Headline: each workload's primary figure (and CPU cost) per target.
fn summary(res: &Results, md: &mut String) {
    let _ = writeln!(md, "## Summary (median of rounds, min–max in parentheses)\n");
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
            "hold" => rows.extend([Metric::Errors, Metric::RssPerConn, Metric::SlabPerConn, Metric::SocketSlabPerConn]),
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
    let proxies: Vec<&String> = res.targets.iter().filter(|t| t.as_str() != "direct").collect();
    let mut pairs: Vec<(String, String)> = Vec::new();
    if res.targets.iter().any(|t| t == "direct") {
        pairs.extend(proxies.iter().map(|p| (p.to_string(), "direct".to_string())));
    }
    // ringlb against every other proxy; a ringlb-before (the previous binary) against the same
    // others, so each ratio can be read old beside new.
    for me in ["ringlb", "ringlb-before"] {
        if res.targets.iter().any(|t| t == me) {
            for other in proxies.iter().filter(|p| {
                !matches!(p.as_str(), "ringlb" | "ringlb-before") || me == "ringlb" && p.as_str() == "ringlb-before"
            }) {
                pairs.push((me.into(), other.to_string()));
            }
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
            if m == Metric::Cpu && (first.mode == "hold" || res.targets.iter().all(|t| res.values(w, t, m).is_empty()))
            {
                continue;
            }
            let cells: Vec<String> = pairs.iter().map(|(a, b)| res.ratio(w, a, b, m)).collect();
            if cells.iter().all(|c| c == "–") {
                continue;
            }
            let _ = write!(md, "| {} | {} |", describe(first), header(res, w, m));
            for c in cells {
                let _ = write!(md, " {c} |");
            }
            md.push('\n');
        }
    }
    md.push('\n');
}

/// A short column header; the CPU figure's header names its unit (per million requests or
/// connections, or per GB).
fn header(res: &Results, w: &str, m: Metric) -> String {
    match (m, res.cpu_unit(w)) {
        (Metric::Cpu, Some(u)) if u.ends_with("per GB") => "CPU s/GB".into(),
        _ => m.header().to_string(),
    }
}

fn details(res: &Results, w: &str, md: &mut String) {
    let Some(first) = res.first(w) else { return };
    let (_, cols) = metrics_of(first);
    let cols: Vec<Metric> =
        cols.iter().copied().filter(|&m| res.targets.iter().any(|t| !res.values(w, t, m).is_empty())).collect();
    let rounds = res.targets.iter().map(|t| res.runs_of(w, t).count()).max().unwrap_or(0);
    let plural = if rounds == 1 { "" } else { "s" };
    let _ = writeln!(md, "### {w}: {} ({rounds} round{plural})\n", describe(first));
    let _ = write!(md, "| target |");
    for m in &cols {
        let _ = write!(md, " {} |", header(res, w, *m));
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
        for r in res.runs.iter().filter(|r| r.tags.contains_key("sweep") && r.tags.get("target") == Some(t)) {
            if let Some(l) = &r.latency {
                by_rate.entry(r.params.rate as u64).or_default().push(l.p99_us);
            }
        }
        let points: Vec<(f64, f64)> =
            by_rate.iter().filter_map(|(&rate, v)| median(v).map(|m| (rate as f64, m))).collect();
        if !points.is_empty() {
            series.push(svg::Series { name: t.clone(), points });
        }
    }
    svg::plot(
        "rr: p99 latency against offered rate (median of rounds)",
        "offered rate, requests/s",
        "p99 latency, µs (log)",
        &series,
    )
}

#[cfg(test)]
mod tests {
    use super::results::si;
    use super::*;
    use crate::stats::{Latency, Params, RunResult};

    fn run(target: &str, round: u32, rate: f64) -> String {
        let mut r = RunResult {
            mode: "rr".into(),
            rate,
            params: Params { conns: 64, ..Params::default() },
            ..RunResult::default()
        };
        r.latency = Some(Latency { p99_us: rate / 1000.0, ..Latency::default() });
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
        let args =
            ReportArgs { input, md: dir.join("r.md"), svg: None, title: "t".into(), order: "direct haproxy".into() };
        let result = super::run(&args);
        let md = std::fs::read_to_string(&args.md).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(result.is_ok(), "{result:?}");
        assert!(md.contains("120k (100k–140k)"), "{md}");
        assert!(md.contains("| 0.50 |"), "{md}");
        assert!(md.contains("failed"), "{md}");
        assert!(md.contains("- host: test"), "{md}");
        assert!(md.contains("| workload | figure | direct | haproxy | ringlb |"), "{md}");
    }

    #[test]
    fn median_of_even_count_is_the_mean_of_the_middle_pair() {
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(si(141_234.0), "141k");
        assert_eq!(si(17_500.0), "17.5k");
    }
}
