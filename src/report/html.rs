//! `report.html`: the report's sections as HTML, and three plots drawn
//! with plotters into inline SVG: throughput and latency over time with
//! the fault windows shaded, and the recovery time of each fault.

use std::fmt::Write as _;

use plotters::prelude::*;

use super::{Report, secs};
use crate::ledger::query::Point;

/// A line of a time plot: its name, what it shows of a point, its colour.
type Line = (&'static str, fn(&Point) -> f64, RGBColor);

fn esc(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

const STYLE: &str = "body{font-family:sans-serif;max-width:72em;margin:2em auto;padding:0 1em;color:#222}\
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:0.2em 0.6em;text-align:left}\
th{background:#f3f3f3}.pass{color:#176b1b}.fail{color:#b00020}code{background:#f3f3f3;padding:0 0.2em}\
figure{margin:1em 0}";

fn table(html: &mut String, header: &[&str], rows: impl IntoIterator<Item = Vec<String>>) {
    html.push_str("<table><tr>");
    for h in header {
        let _ = write!(html, "<th>{}</th>", esc(h));
    }
    html.push_str("</tr>");
    for row in rows {
        html.push_str("<tr>");
        for cell in row {
            let _ = write!(html, "<td>{}</td>", esc(&cell));
        }
        html.push_str("</tr>");
    }
    html.push_str("</table>\n");
}

pub fn render(r: &Report) -> String {
    let mut html = String::new();
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>faultline run {}</title><style>{STYLE}</style></head><body>\n",
        esc(&r.run)
    );
    let _ = writeln!(html, "<h1>faultline run {}</h1>", esc(&r.run));
    let class = if matches!(r.verdict, Some(crate::verdict::RunVerdict::Pass)) {
        "pass"
    } else {
        "fail"
    };
    let _ = writeln!(
        html,
        "<p class=\"{class}\"><strong>Verdict: {}</strong></p>",
        esc(&r.headline())
    );
    table(
        &mut html,
        &["", ""],
        r.facts().into_iter().map(|(k, v)| vec![k.to_string(), v]),
    );
    let failing: Vec<_> = r.failing().collect();
    let _ = writeln!(
        html,
        "<h2>Findings</h2>\n<p>{} findings fail the run; {} are known deviations of the store.</p>",
        failing.len(),
        r.findings.len() - failing.len()
    );
    if !failing.is_empty() {
        table(
            &mut html,
            &["class", "key", "op", "expected", "seen", "witness"],
            failing.iter().take(super::WITNESSES_SHOWN).map(|f| {
                vec![
                    f.class.clone(),
                    f.key.clone().unwrap_or_default(),
                    f.op_id.unwrap_or_default().to_string(),
                    f.expected.clone(),
                    f.seen.clone(),
                    f.witness.clone(),
                ]
            }),
        );
    }
    if !r.absorbed.is_empty() {
        html.push_str("<p>Known deviations: what each tolerance rule of the profile absorbed (recorded, not failing the run):</p>\n");
        if let Some(loud) = r.final_absorbed() {
            let _ = writeln!(
                html,
                "<p class=\"fail\"><strong>{}.</strong></p>",
                esc(&loud)
            );
        }
        table(&mut html, &super::RULE_COLUMNS, r.rule_cells());
    }
    html.push_str("<h2>Over time</h2>\n");
    let _ = writeln!(html, "<figure>{}</figure>", throughput_svg(r));
    let _ = writeln!(html, "<figure>{}</figure>", latency_svg(r));
    html.push_str("<h2>Faults</h2>\n");
    if r.faults.is_empty() {
        html.push_str("<p>No fault was injected.</p>\n");
    } else {
        let _ = writeln!(html, "<figure>{}</figure>", recovery_svg(r));
        table(
            &mut html,
            &[
                "#",
                "kind",
                "target",
                "start (s)",
                "recovery",
                "ok during the window",
                "reads after",
            ],
            r.faults.iter().map(|f| {
                vec![
                    f.id.to_string(),
                    f.kind.clone(),
                    f.target.clone(),
                    secs(f.t_start_ns),
                    f.recovery_text(),
                    f.availability_text(),
                    f.reads_after.to_string(),
                ]
            }),
        );
    }
    html.push_str("<h2>Operations</h2>\n");
    table(
        &mut html,
        &[
            "op",
            "ok",
            "fail",
            "ambiguous",
            "unavailable",
            "p50 ms",
            "p99 ms",
        ],
        r.counts.iter().map(|(kind, c)| {
            let l = r.latency.iter().find(|l| l.0 == *kind);
            let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
            vec![
                kind.clone(),
                c[0].to_string(),
                c[1].to_string(),
                c[2].to_string(),
                c[3].to_string(),
                ms(l.map(|l| l.2)),
                ms(l.map(|l| l.4)),
            ]
        }),
    );
    html.push_str("<h2>Coverage</h2>\n<ul>");
    for line in r.coverage_lines() {
        let _ = write!(html, "<li>{}</li>", esc(&line));
    }
    html.push_str("</ul>\n");
    let _ = writeln!(
        html,
        "<h2>Reproduce</h2>\n<p><code>{}</code></p>\n</body></html>",
        esc(r.meta("reproduce"))
    );
    html
}

/// Fault windows as (start s, end s), to shade.
fn windows(r: &Report) -> Vec<(f64, f64)> {
    r.faults
        .iter()
        .map(|f| {
            let end = f.t_recovered_ns.unwrap_or(f.t_start_ns);
            (f.t_start_ns as f64 / 1e9, end as f64 / 1e9)
        })
        .collect()
}

/// A time plot of up to two series with the fault windows shaded.
fn time_plot(r: &Report, title: &str, unit: &str, lines: [Line; 2]) -> String {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 280)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let x_max = r.series.last().map_or(1.0, |p| p.t_s + 1.0).max(1.0);
        let y_max = r
            .series
            .iter()
            .flat_map(|p| lines.iter().map(move |(_, f, _)| f(p)))
            .fold(1.0, f64::max)
            * 1.1;
        let Ok(mut chart) = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        else {
            return svg_fallback(title);
        };
        let _ = chart
            .configure_mesh()
            .x_desc("seconds since start")
            .y_desc(unit)
            .draw();
        let _ = chart.draw_series(windows(r).into_iter().map(|(a, b)| {
            Rectangle::new(
                [(a, 0.0), (b.max(a + 0.5), y_max)],
                RGBColor(255, 215, 215).filled(),
            )
        }));
        for (name, f, color) in lines {
            if let Ok(series) = chart.draw_series(LineSeries::new(
                r.series.iter().map(|p| (p.t_s, f(p))),
                &color,
            )) {
                series
                    .label(name)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], color));
            }
        }
        let _ = chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw();
        let _ = root.present();
    }
    svg
}

fn throughput_svg(r: &Report) -> String {
    time_plot(
        r,
        "Throughput (fault windows shaded)",
        "ops/s",
        [
            ("all", |p| p.ops_per_s, BLUE),
            ("ok", |p| p.ok_per_s, RGBColor(23, 107, 27)),
        ],
    )
}

fn latency_svg(r: &Report) -> String {
    time_plot(
        r,
        "Latency of successful operations (fault windows shaded)",
        "ms",
        [("p50", |p| p.p50_ms, BLUE), ("p99", |p| p.p99_ms, RED)],
    )
}

fn recovery_svg(r: &Report) -> String {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 260)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let n = r.faults.len().max(1) as u32;
        let y_max = r
            .faults
            .iter()
            .filter_map(|f| f.recovery_ms)
            .fold(1.0, |m, ms| f64::max(m, ms as f64 / 1e3))
            * 1.1;
        let Ok(mut chart) = ChartBuilder::on(&root)
            .caption("Recovery time per fault", ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d((0u32..n).into_segmented(), 0f64..y_max)
        else {
            return svg_fallback("Recovery time per fault");
        };
        let _ = chart
            .configure_mesh()
            .x_desc("fault")
            .y_desc("seconds")
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(i) => r
                    .faults
                    .get(*i as usize)
                    .map_or(String::new(), |f| format!("#{} {}", f.id, f.kind)),
                _ => String::new(),
            })
            .draw();
        let _ = chart.draw_series(r.faults.iter().enumerate().map(|(i, f)| {
            let v = f.recovery_ms.map_or(y_max, |ms| ms as f64 / 1e3);
            let color = if f.recovery_ms.is_some() { BLUE } else { RED };
            Rectangle::new(
                [
                    (SegmentValue::Exact(i as u32), 0.0),
                    (SegmentValue::Exact(i as u32 + 1), v),
                ],
                color.mix(0.6).filled(),
            )
        }));
        let _ = root.present();
    }
    svg
}

fn svg_fallback(title: &str) -> String {
    format!("<p>{}: nothing to plot</p>", esc(title))
}
