//! Draws `benches/compare/results/results.json` (written by `benches/compare/report.py`)
//! as an SVG: one panel per figure, one bar per server (median of the runs), each bar
//! labelled with its median and its median ratio to lakegate (computed pair by pair,
//! run by run, in report.py). Driven by `benches/compare/run.sh`:
//!
//!   compare-chart --in results.json --out chart.svg

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;

#[path = "../args.rs"]
mod args;
use args::Args;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const COLS: usize = 3;

fn color(series: &str) -> RGBColor {
    match series {
        "lakegate" => RGBColor(0x1f, 0x77, 0xb4),
        "haproxy" => RGBColor(0xff, 0x7f, 0x0e),
        "stunnel" => RGBColor(0x2c, 0xa0, 0x2c),
        "nginx" => RGBColor(0xd6, 0x27, 0x28),
        _ => RGBColor(0x7f, 0x7f, 0x7f),
    }
}

fn main() {
    let argv: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if argv.is_empty() {
        eprintln!("usage: compare-chart --in results.json --out chart.svg");
        return;
    }
    if let Err(e) = run(&Args(argv)) {
        eprintln!("compare-chart: {e}");
        std::process::exit(1);
    }
}

fn run(a: &Args) -> Res<()> {
    let input = a.req("--in");
    let out = a.req("--out");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&input)?)?;
    let figures = doc["figures"]
        .as_array()
        .ok_or("results.json: no figures")?;
    if figures.is_empty() {
        return Err("results.json: no figures".into());
    }
    let rows = figures.len().div_ceil(COLS);
    let (w, h) = (COLS as u32 * 440, 60 + rows as u32 * 300);
    let root = SVGBackend::new(&out, (w, h)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "lakegate vs HAProxy, stunnel, nginx: mTLS termination on one pinned core ({}; median of {} runs)",
        doc["date"].as_str().unwrap_or("?"),
        doc["runs"].as_u64().unwrap_or(0)
    );
    let (top, body) = root.split_vertically(60);
    top.titled(&title, ("sans-serif", 20))?;
    let panels = body.split_evenly((rows, COLS));
    for (fig, area) in figures.iter().zip(panels.iter()) {
        panel(fig, area)?;
    }
    root.present()?;
    println!("wrote {out}");
    Ok(())
}

fn panel<DB: DrawingBackend>(fig: &Value, area: &DrawingArea<DB, plotters::coord::Shift>) -> Res<()>
where
    DB::ErrorType: 'static,
{
    let series: Vec<(String, Option<f64>, Option<f64>)> = fig["series"]
        .as_array()
        .ok_or("figure without series")?
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or("?").to_string(),
                s["median"].as_f64(),
                s["ratio_vs_lakegate"].as_f64(),
            )
        })
        .collect();
    let n = series.len().max(1);
    let top = series
        .iter()
        .filter_map(|s| s.1)
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.25;
    let better = fig["better"].as_str().unwrap_or("");
    let caption = format!(
        "{} ({better} better)",
        fig["short"]
            .as_str()
            .or(fig["label"].as_str())
            .unwrap_or("?"),
    );
    let names: Vec<String> = series.iter().map(|s| s.0.clone()).collect();
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 13))
        .margin(8)
        .x_label_area_size(24)
        .y_label_area_size(52)
        .build_cartesian_2d((0..n).into_segmented(), 0.0..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_labels(5)
        .x_labels(n)
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .label_style(("sans-serif", 12))
        .draw()?;
    for (i, (name, median, ratio)) in series.iter().enumerate() {
        let at = SegmentValue::CenterOf(i);
        match median {
            Some(v) => {
                let mut bar = Rectangle::new(
                    [
                        (SegmentValue::Exact(i), 0.0),
                        (SegmentValue::Exact(i + 1), *v),
                    ],
                    color(name).filled(),
                );
                bar.set_margin(0, 0, 10, 10);
                chart.draw_series(std::iter::once(bar))?;
                let label = match ratio {
                    Some(r) if name != "lakegate" => format!("{} ({r:.2}x)", fmt(*v)),
                    _ => fmt(*v),
                };
                chart.draw_series(std::iter::once(Text::new(
                    label,
                    (at, v + top * 0.02),
                    ("sans-serif", 11)
                        .into_font()
                        .into_text_style(area)
                        .pos(Pos::new(HPos::Center, VPos::Bottom)),
                )))?;
            }
            None => {
                chart.draw_series(std::iter::once(Text::new(
                    "n/a".to_string(),
                    (at, top * 0.05),
                    ("sans-serif", 12)
                        .into_font()
                        .into_text_style(area)
                        .pos(Pos::new(HPos::Center, VPos::Bottom)),
                )))?;
            }
        }
    }
    Ok(())
}

fn fmt(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}
