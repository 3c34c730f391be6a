//! An SVG of ns per shard against N (log-log), ours and twilight's.

use std::fmt::Write;

use crate::core::Series;
use crate::side_by_side::Compared;

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 400.0;
const MARGIN: f64 = 60.0;

/// A named, coloured line of (N, ns per shard) points.
type Line = (&'static str, &'static str, Vec<(f64, f64)>);

pub fn svg(core: &Series, compared: &Compared) -> String {
    let lines: Vec<Line> = vec![
        (
            "core Scheduler (C = 16)",
            "#1b7837",
            core.iter().map(|&(n, ns)| (f64::from(n), ns)).collect(),
        ),
        (
            "tokio Queue (ours)",
            "#2166ac",
            compared
                .iter()
                .map(|&(n, ours, _)| (f64::from(n), ours))
                .collect(),
        ),
        (
            "twilight InMemoryQueue",
            "#b2182b",
            compared
                .iter()
                .map(|&(n, _, theirs)| (f64::from(n), theirs))
                .collect(),
        ),
    ];
    let points = lines
        .iter()
        .flat_map(|(_, _, points)| points.iter().copied());
    let (mut x_min, mut x_max, mut y_min, mut y_max) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in points {
        x_min = x_min.min(x.log10());
        x_max = x_max.max(x.log10());
        y_min = y_min.min(y.max(1.0).log10());
        y_max = y_max.max(y.max(1.0).log10());
    }
    let (y_min, y_max) = (y_min.floor(), y_max.ceil().max(y_min.floor() + 1.0));
    let (x_min, x_max) = (x_min.floor(), x_max.ceil().max(x_min.floor() + 1.0));
    let x_of = |x: f64| MARGIN + (x.log10() - x_min) / (x_max - x_min) * (WIDTH - 2.0 * MARGIN);
    let y_of = |y: f64| {
        HEIGHT - MARGIN - (y.max(1.0).log10() - y_min) / (y_max - y_min) * (HEIGHT - 2.0 * MARGIN)
    };

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="20" text-anchor="middle" font-size="14">CPU per shard granted (ns, log) against shards queued at once (N, log)</text>"#,
        WIDTH / 2.0
    );
    for decade in x_min as i32..=x_max as i32 {
        let x = x_of(10f64.powi(decade));
        let _ = writeln!(
            svg,
            r##"<line x1="{x}" y1="{}" x2="{x}" y2="{}" stroke="#ddd"/><text x="{x}" y="{}" text-anchor="middle">1e{decade}</text>"##,
            MARGIN,
            HEIGHT - MARGIN,
            HEIGHT - MARGIN + 18.0
        );
    }
    for decade in y_min as i32..=y_max as i32 {
        let y = y_of(10f64.powi(decade));
        let _ = writeln!(
            svg,
            r##"<line x1="{}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">1e{decade}</text>"##,
            MARGIN,
            WIDTH - MARGIN,
            MARGIN - 6.0,
            y + 4.0
        );
    }
    for (index, (name, color, points)) in lines.iter().enumerate() {
        let path: Vec<String> = points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", x_of(x), y_of(y)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        for &(x, y) in points {
            let _ = writeln!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                x_of(x),
                y_of(y)
            );
        }
        let legend_y = MARGIN + 16.0 * index as f64;
        let _ = writeln!(
            svg,
            r#"<rect x="{}" y="{}" width="12" height="3" fill="{color}"/><text x="{}" y="{}">{name}</text>"#,
            WIDTH - MARGIN - 190.0,
            legend_y - 4.0,
            WIDTH - MARGIN - 172.0,
            legend_y
        );
    }
    svg.push_str("</svg>\n");
    svg
}
