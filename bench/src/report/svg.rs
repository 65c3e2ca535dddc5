//! A line plot in plain SVG: one series per target, linear x, logarithmic y. Written by hand so
//! that `make bench` needs no plotting tool.

use std::fmt::Write;

pub struct Series {
    pub name: String,
    /// (x, y) points, sorted by x; y must be positive.
    pub points: Vec<(f64, f64)>,
}

const W: f64 = 760.0;
const H: f64 = 460.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLOURS: [&str; 8] = ["#444444", "#d62728", "#ff7f0e", "#2ca02c", "#1f77b4", "#9467bd", "#8c564b", "#e377c2"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Short form of an axis value: 1500 -> 1.5k.
fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if v >= 1e3 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.1}");
    s.strip_suffix(".0").map(str::to_string).unwrap_or(s)
}

/// Renders the plot. Returns None when there is nothing to draw.
pub fn plot(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> Option<String> {
    let pts = || series.iter().flat_map(|s| s.points.iter()).filter(|p| p.1 > 0.0);
    let x_max = pts().map(|p| p.0).fold(0.0, f64::max);
    let y_min = pts().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let y_max = pts().map(|p| p.1).fold(0.0, f64::max);
    if x_max <= 0.0 || !y_min.is_finite() {
        return None;
    }
    let (lo, hi) = (y_min.log10().floor(), y_max.log10().ceil().max(y_min.log10().floor() + 1.0));
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let x = |v: f64| LEFT + v / (x_max * 1.05) * pw;
    let y = |v: f64| TOP + ph - (v.log10() - lo) / (hi - lo) * ph;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"##
    );
    let _ = writeln!(s, r##"<rect width="{W}" height="{H}" fill="white"/>"##);
    let _ = writeln!(
        s,
        r##"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"##,
        LEFT + pw / 2.0,
        esc(title)
    );
    // Grid and y ticks at 1, 2 and 5 times each power of ten.
    let mut decade = lo;
    while decade <= hi {
        for m in [1.0, 2.0, 5.0] {
            let v = 10f64.powf(decade) * m;
            if v.log10() > hi + 1e-9 {
                continue;
            }
            let yy = y(v);
            let stroke = if m == 1.0 { "#cccccc" } else { "#eeeeee" };
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="{stroke}"/>"##,
                LEFT + pw
            );
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                LEFT - 6.0,
                yy + 4.0,
                short(v)
            );
        }
        decade += 1.0;
    }
    // X ticks: about six round steps.
    let step = nice_step(x_max / 6.0);
    let mut v = 0.0;
    while v <= x_max * 1.05 {
        let xx = x(v);
        let _ = writeln!(s, r##"<line x1="{xx:.1}" y1="{TOP}" x2="{xx:.1}" y2="{:.1}" stroke="#eeeeee"/>"##, TOP + ph);
        let _ =
            writeln!(s, r##"<text x="{xx:.1}" y="{:.1}" text-anchor="middle">{}</text>"##, TOP + ph + 18.0, short(v));
        v += step;
    }
    let _ = writeln!(s, r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#888888"/>"##);
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
        LEFT + pw / 2.0,
        H - 12.0,
        esc(x_label)
    );
    let _ = writeln!(
        s,
        r##"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">{}</text>"##,
        TOP + ph / 2.0,
        TOP + ph / 2.0,
        esc(y_label)
    );
    for (i, ser) in series.iter().enumerate() {
        let c = COLOURS[i % COLOURS.len()];
        let p: Vec<String> =
            ser.points.iter().filter(|p| p.1 > 0.0).map(|&(a, b)| format!("{:.1},{:.1}", x(a), y(b))).collect();
        if p.is_empty() {
            continue;
        }
        let _ = writeln!(s, r##"<polyline points="{}" fill="none" stroke="{c}" stroke-width="2"/>"##, p.join(" "));
        for pt in &p {
            let (a, b) = pt.split_once(',').unwrap_or(("0", "0"));
            let _ = writeln!(s, r##"<circle cx="{a}" cy="{b}" r="3.5" fill="{c}"/>"##);
        }
        let ly = TOP + 14.0 + i as f64 * 20.0;
        let lx = LEFT + pw + 14.0;
        let _ =
            writeln!(s, r##"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{c}" stroke-width="2"/>"##, lx + 22.0);
        let _ = writeln!(s, r##"<text x="{}" y="{}">{}</text>"##, lx + 28.0, ly + 4.0, esc(&ser.name));
    }
    s.push_str("</svg>\n");
    Some(s)
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * p).find(|&s| s >= raw).unwrap_or(10.0 * p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plot_contains_every_series_and_is_well_formed() {
        let series = vec![
            Series { name: "direct".into(), points: vec![(5000.0, 40.0), (20000.0, 60.0)] },
            Series { name: "a<b".into(), points: vec![(5000.0, 90.0), (20000.0, 25_000.0)] },
        ];
        let svg = plot("p99", "rate", "us", &series).unwrap_or_default();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("a&lt;b"));
        assert!(plot("p99", "rate", "us", &[]).is_none());
    }

    #[test]
    fn steps_are_round() {
        assert_eq!(nice_step(7_000.0), 10_000.0);
        assert_eq!(nice_step(1_500.0), 2_000.0);
        assert_eq!(short(1500.0), "1.5k");
    }
}
