//! The charts of the HTML report and live page, as inline SVG drawn by `plotters`: the latency
//! distribution (a quantile curve on a log axis up to p99.99 with p50/p90/p99/p99.9 marked, and a
//! histogram) and a timeline of records (scheduled time against latency; lost, corrupt and
//! unsent records marked at the top).
//!
//! Only numbers and fixed words reach a chart; names and ids from configs and records stay in
//! the HTML around it, where the template escapes them.

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::outcome::Outcome;
use crate::probe::Point;
use crate::stats::{CURVE_TOP, Distribution, MARKED};

const WIDTH: u32 = 560;
const HEIGHT: u32 = 300;
const LINE: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const LOST: RGBColor = RGBColor(0xd6, 0x27, 0x28);
const CORRUPT: RGBColor = RGBColor(0xff, 0x7f, 0x0e);
const UNSENT: RGBColor = RGBColor(0x7f, 0x7f, 0x7f);

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// Draws on a fresh SVG canvas; a drawing error (none is expected: the ranges are checked
/// before) leaves a note instead of a chart.
fn svg(draw: impl FnOnce(&Area<'_>) -> anyhow::Result<()>) -> String {
    let mut out = String::new();
    let failed = {
        let root = SVGBackend::with_string(&mut out, (WIDTH, HEIGHT)).into_drawing_area();
        let result = root
            .fill(&WHITE)
            .map_err(|e| e.to_string())
            .and_then(|()| draw(&root).map_err(|e| format!("{e:#}")))
            .and_then(|()| root.present().map_err(|e| e.to_string()));
        result.err()
    };
    match failed {
        None => out,
        Some(e) => maud::html! { p.note { "chart not drawn: " (e) } }.into_string(),
    }
}

/// A chart with room for the axes' labels.
fn framed<'a, 'b>(root: &'a Area<'b>) -> ChartBuilder<'a, 'b, SVGBackend<'b>> {
    let mut b = ChartBuilder::on(root);
    b.margin(12).x_label_area_size(36).y_label_area_size(56);
    b
}

/// A log axis for milliseconds around `[low, high]`, never empty.
fn ms_range(low: f64, high: f64) -> std::ops::Range<f64> {
    let low = (low * 0.8).max(0.001);
    let high = (high * 1.25).max(low * 10.0);
    low..high
}

/// 1, 2 and 5 times the powers of ten within `range`: the labels of a log axis.
fn nice(range: &std::ops::Range<f64>) -> Vec<f64> {
    let mut out = Vec::new();
    let mut decade = 10f64.powf(range.start.log10().floor());
    while decade <= range.end {
        for m in [1.0, 2.0, 5.0] {
            let v = decade * m;
            if range.contains(&v) {
                out.push(v);
            }
        }
        decade *= 10.0;
    }
    out
}

/// An axis label: whole numbers from 1 up, at most six decimals below.
fn num(v: f64) -> String {
    if v >= 1.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.6}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn percent(q: f64) -> String {
    let p = q * 100.0;
    if p >= 99.0 {
        format!(
            "p{}",
            format!("{p:.2}")
                .trim_end_matches('0')
                .trim_end_matches('.')
        )
    } else {
        format!("p{p:.0}")
    }
}

/// The quantile curve: x is `1 / (1 - q)` on a log axis (p50 at 2, p99 at 100, p99.99 at
/// 10 000), y the latency in ms on a log axis; the marked quantiles are labelled.
pub fn quantile_curve(d: &Distribution) -> String {
    let x_of = |q: f64| 1.0 / (1.0 - q).max(1e-9);
    let points: Vec<(f64, f64)> = d.curve.iter().map(|&(q, s)| (x_of(q), s * 1e3)).collect();
    let low = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let high = points.iter().map(|p| p.1).fold(0.0, f64::max);
    svg(|root| {
        let mut chart = framed(root).build_cartesian_2d(
            (1.0..x_of(CURVE_TOP) * 1.5).log_scale(),
            ms_range(low, high)
                .log_scale()
                .with_key_points(nice(&ms_range(low, high))),
        )?;
        chart
            .configure_mesh()
            .x_desc("quantile")
            .y_desc("latency (ms)")
            .x_label_formatter(&|x| percent(1.0 - 1.0 / x))
            .y_label_formatter(&|y| num(*y))
            .draw()?;
        chart.draw_series(LineSeries::new(
            points.iter().copied(),
            LINE.stroke_width(2),
        ))?;
        // Each marked quantile gets a dot; quantiles with the same value share one label
        // ("p99-p99.99 428 ms") so that the labels of a short run do not overlap.
        let marked: Vec<(f64, f64)> = MARKED
            .iter()
            .chain([&CURVE_TOP])
            .filter_map(|q| d.curve.iter().find(|c| (c.0 - q).abs() < 1e-9).copied())
            .collect();
        let mut i = 0;
        while i < marked.len() {
            let (q, s) = marked[i];
            let mut last = i;
            while last + 1 < marked.len() && marked[last + 1].1 == s {
                last += 1;
            }
            let name = if last == i {
                percent(q)
            } else {
                format!("{}-{}", percent(q), percent(marked[last].0))
            };
            for &(q, s) in &marked[i..=last] {
                chart.draw_series([Circle::new((x_of(q), s * 1e3), 4, LINE.filled())])?;
            }
            let at = (x_of(q), s * 1e3);
            // labels of the far tail go left of their point, inside the chart
            let x = if q >= 0.999 { at.0 / 14.0 } else { at.0 * 1.1 };
            chart.draw_series([Text::new(
                format!("{name} {}", short_ms(s * 1e3)),
                (x, at.1),
                ("sans-serif", 12).into_font(),
            )])?;
            i = last + 1;
        }
        Ok(())
    })
}

/// The histogram: each bucket's records over its latency range (log axis).
pub fn histogram(d: &Distribution) -> String {
    let (Some(first), Some(last)) = (d.buckets.first(), d.buckets.last()) else {
        return String::new();
    };
    let (low, high) = (first.0 * 1e3, last.1 * 1e3);
    let top = d.buckets.iter().map(|b| b.2).max().unwrap_or(1).max(1);
    svg(|root| {
        let mut chart = framed(root).build_cartesian_2d(
            ms_range(low, high)
                .log_scale()
                .with_key_points(nice(&ms_range(low, high))),
            0u64..top + top / 10 + 1,
        )?;
        chart
            .configure_mesh()
            .x_desc("latency (ms)")
            .y_desc("records")
            .x_label_formatter(&|x| num(*x))
            .draw()?;
        chart.draw_series(d.buckets.iter().filter(|b| b.2 > 0).map(|&(from, to, n)| {
            Rectangle::new([(from * 1e3, 0), (to * 1e3, n)], LINE.mix(0.6).filled())
        }))?;
        Ok(())
    })
}

/// Every record in `points`: x the seconds since the first was scheduled, y its latency (log
/// axis). Verified records are dots, corrupt ones triangles (at their latency when known, else
/// along the top), lost and unsent ones crosses along the top.
pub fn timeline(points: &[Point]) -> String {
    let Some(t0) = points.iter().map(|p| p.scheduled_at_ns).min() else {
        return String::new();
    };
    let at = |p: &Point| (p.scheduled_at_ns - t0) as f64 / 1e9;
    let span = points.iter().map(at).fold(0.0, f64::max).max(1.0);
    let latencies = points
        .iter()
        .filter_map(|p| p.latency.map(|l| l.as_secs_f64() * 1e3));
    let (low, high) = latencies.fold((f64::INFINITY, 0.0_f64), |(lo, hi), l| {
        (lo.min(l), hi.max(l))
    });
    let (low, high) = if high > 0.0 { (low, high) } else { (1.0, 10.0) };
    let range = ms_range(low, high);
    let ceiling = range.end / 1.1;
    svg(|root| {
        let mut chart = framed(root).build_cartesian_2d(
            0.0..span * 1.02,
            range.clone().log_scale().with_key_points(nice(&range)),
        )?;
        chart
            .configure_mesh()
            .x_desc("scheduled (s after the first record)")
            .y_desc("latency (ms)")
            .y_label_formatter(&|y| num(*y))
            .draw()?;
        let ms = |p: &Point| p.latency.map_or(ceiling, |l| l.as_secs_f64() * 1e3);
        let of = |outcome: Outcome| points.iter().filter(move |p| p.outcome == outcome);
        chart
            .draw_series(of(Outcome::Ok).map(|p| Circle::new((at(p), ms(p)), 2, LINE.filled())))?;
        // a corrupt record arrived: at its latency when known
        chart.draw_series(
            of(Outcome::Corrupt).map(|p| TriangleMarker::new((at(p), ms(p)), 5, CORRUPT.filled())),
        )?;
        for (outcome, color) in [(Outcome::Lost, LOST), (Outcome::SendFailed, UNSENT)] {
            chart.draw_series(
                of(outcome).map(|p| Cross::new((at(p), ceiling), 5, color.stroke_width(2))),
            )?;
        }
        Ok(())
    })
}

fn short_ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0} ms")
    } else if v >= 10.0 {
        format!("{v:.1} ms")
    } else {
        format!("{v:.2} ms")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn distribution() -> Distribution {
        let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
        for ms in 1..=500u64 {
            h.record(ms * 1000).unwrap();
        }
        crate::stats::distribution(&h).unwrap()
    }

    #[test]
    fn charts_are_self_contained_svg() {
        let d = distribution();
        let points: Vec<Point> = (0..50u64)
            .map(|i| Point {
                scheduled_at_ns: 1_700_000_000_000_000_000 + i * 100_000_000,
                latency: (i % 10 != 3).then(|| Duration::from_millis(5 + i)),
                outcome: if i % 10 == 3 {
                    Outcome::Lost
                } else {
                    Outcome::Ok
                },
            })
            .collect();
        for svg in [quantile_curve(&d), histogram(&d), timeline(&points)] {
            assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
            assert!(
                !svg.contains("href") && !svg.contains("url("),
                "nothing loaded"
            );
        }
        let curve = quantile_curve(&d);
        for label in ["p50", "p90", "p99", "p99.9", "p99.99"] {
            let alone_or_in_a_range = [
                format!("\n{label} "),
                format!("\n{label}-"),
                format!("-{label} "),
            ];
            assert!(
                alone_or_in_a_range.iter().any(|l| curve.contains(l)),
                "{label} marked"
            );
        }
        // a short run: p90 to p99.99 are the same record, one label
        let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
        for ms in [3u64, 4, 5, 400] {
            h.record(ms * 1000).unwrap();
        }
        let short = quantile_curve(&crate::stats::distribution(&h).unwrap());
        assert!(short.contains("\np90-p99.99 400 ms"), "{short}");
        assert!(!short.contains("\np99 "), "{short}");
        assert!(timeline(&[]).is_empty());
    }

    #[test]
    fn log_axes_are_labelled_1_2_5() {
        assert_eq!(nice(&(3.0..120.0)), [5.0, 10.0, 20.0, 50.0, 100.0]);
        assert_eq!(nice(&(0.05..0.3)), [0.05, 0.1, 0.2]);
    }

    #[test]
    fn percent_labels() {
        assert_eq!(percent(0.5), "p50");
        assert_eq!(percent(0.999), "p99.9");
        assert_eq!(percent(0.9999), "p99.99");
        assert_eq!(percent(0.99), "p99");
    }
}
