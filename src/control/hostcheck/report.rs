//! The host check's report: rows with a verdict, the table for `ringlb check --host`, and one
//! warning line per gap for start-up logging. Pure formatting; it never reads the host.

use std::fmt::Write as _;

use super::HostLoad;

/// What a gap in a row means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// ringlb would fail (refuse connections, or not start): `check --host` exits 1.
    Hard,
    /// ringlb works but degrades under the load (drops SYNs, slower pipes, port exhaustion).
    Soft,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub setting: String,
    pub now: String,
    pub needed: String,
    pub ok: bool,
    pub severity: Severity,
    /// What to do about a gap (empty when there is nothing to say).
    pub advice: String,
}

/// The outcome of a host check.
#[derive(Debug, Clone)]
pub struct HostReport {
    pub load: HostLoad,
    pub rows: Vec<Row>,
}

impl HostReport {
    /// True when ringlb cannot run this load here: io_uring is unusable or a hard gap exists.
    pub fn fatal(&self) -> bool {
        self.rows.iter().any(|r| !r.ok && r.severity == Severity::Hard)
    }

    /// True when io_uring itself is unusable here (disabled, no ring, a missing feature): the
    /// only gaps that stop `ringlb run`, which otherwise starts and warns.
    pub fn io_uring_unusable(&self) -> bool {
        self.rows.iter().any(|r| {
            !r.ok
                && r.severity == Severity::Hard
                && (r.setting.starts_with("io_uring") || r.setting == "kernel.io_uring_disabled")
        })
    }

    /// Rows with a gap.
    pub fn gaps(&self) -> impl Iterator<Item = &Row> {
        self.rows.iter().filter(|r| !r.ok)
    }

    /// One line per gap, for start-up logging.
    pub fn warnings(&self) -> Vec<String> {
        self.gaps()
            .map(|r| {
                let kind = match r.severity {
                    Severity::Hard => "error",
                    Severity::Soft => "warning",
                };
                let mut line = format!("host {kind}: {} is {}, needs {}", r.setting, r.now, r.needed);
                if !r.advice.is_empty() {
                    let _ = write!(line, " ({})", r.advice);
                }
                line
            })
            .collect()
    }

    /// The report as an aligned table with a summary line, for `ringlb check --host`.
    pub fn render_table(&self) -> String {
        let header = ["setting", "now", "needed", "status"];
        let cells: Vec<[String; 4]> = self
            .rows
            .iter()
            .map(|r| {
                let status = match (r.ok, r.severity) {
                    (true, _) => "ok",
                    (false, Severity::Hard) => "FAIL",
                    (false, Severity::Soft) => "warn",
                };
                [r.setting.clone(), r.now.clone(), r.needed.clone(), status.to_string()]
            })
            .collect();
        let mut widths = header.map(str::len);
        for line in &cells {
            for (w, cell) in widths.iter_mut().zip(line) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let workers = self.load.workers;
        let _ = writeln!(
            out,
            "host check for {} connections on {workers} worker{}",
            self.load.max_connections,
            if workers == 1 { "" } else { "s" }
        );
        let header = header.map(str::to_string);
        for line in std::iter::once(&header).chain(&cells) {
            let text = format!(
                "{:w0$}  {:w1$}  {:w2$}  {}",
                line[0],
                line[1],
                line[2],
                line[3],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2]
            );
            let _ = writeln!(out, "{}", text.trim_end());
        }
        let hard = self.gaps().filter(|r| r.severity == Severity::Hard).count();
        let soft = self.gaps().filter(|r| r.severity == Severity::Soft).count();
        let verdict = if self.fatal() { "FAIL" } else { "ok" };
        let _ = writeln!(out, "{verdict}: {hard} hard gap(s), {soft} warning(s)");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(rows: Vec<Row>) -> HostReport {
        HostReport { load: HostLoad::new(10_000, 2), rows }
    }

    fn line(setting: &str, now: &str, ok: bool, severity: Severity) -> Row {
        Row {
            setting: setting.to_string(),
            now: now.to_string(),
            needed: ">= 4096".to_string(),
            ok,
            severity,
            advice: String::new(),
        }
    }

    #[test]
    fn table_is_aligned_and_ends_with_the_verdict() {
        let table = report(vec![
            line("net.core.somaxconn", "128", false, Severity::Soft),
            line("RLIMIT_NOFILE (soft)", "1024 (hard 1024)", false, Severity::Hard),
            line("fs.nr_open", "1048576", true, Severity::Soft),
        ])
        .render_table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "host check for 10000 connections on 2 workers");
        assert_eq!(lines[1], "setting               now               needed   status");
        assert_eq!(lines[2], "net.core.somaxconn    128               >= 4096  warn");
        assert_eq!(lines[3], "RLIMIT_NOFILE (soft)  1024 (hard 1024)  >= 4096  FAIL");
        assert_eq!(lines[4], "fs.nr_open            1048576           >= 4096  ok");
        assert_eq!(lines[5], "FAIL: 1 hard gap(s), 1 warning(s)");
        assert_eq!(lines.len(), 6);
    }

    #[test]
    fn only_hard_gaps_are_fatal() {
        assert!(!report(vec![line("a", "1", false, Severity::Soft)]).fatal());
        assert!(!report(vec![line("a", "1", true, Severity::Hard)]).fatal());
        assert!(report(vec![line("a", "1", false, Severity::Hard)]).fatal());
        let ok = report(vec![line("a", "1", true, Severity::Hard)]).render_table();
        assert!(ok.ends_with("ok: 0 hard gap(s), 0 warning(s)\n"), "{ok}");
    }

    #[test]
    fn warnings_have_one_line_per_gap_with_the_advice() {
        let mut soft = line("net.core.somaxconn", "128", false, Severity::Soft);
        soft.advice = "raise it".to_string();
        let warnings = report(vec![
            soft,
            line("fs.nr_open", "1048576", true, Severity::Soft),
            line("RLIMIT_NOFILE (soft)", "1024", false, Severity::Hard),
        ])
        .warnings();
        assert_eq!(
            warnings,
            [
                "host warning: net.core.somaxconn is 128, needs >= 4096 (raise it)",
                "host error: RLIMIT_NOFILE (soft) is 1024, needs >= 4096",
            ]
        );
    }
}
