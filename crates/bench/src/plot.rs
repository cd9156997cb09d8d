//! The figures, drawn by the suite itself as SVG (plotters' SVG backend: no font or system
//! library): ADD latency distributions per variant, cold ADD vs VTEPs, convergence vs
//! members.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use plotters::prelude::*;

use crate::cni_lat::{CniLatency, VARIANTS};
use crate::converge::Measured;
use crate::vteps::ColdVteps;

const SIZE: (u32, u32) = (820, 480);
const COLORS: [RGBColor; 4] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
];

/// A log axis range covering `values` with some room.
fn log_range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (mut lo, mut hi) = (f64::MAX, f64::MIN);
    for v in values.filter(|v| *v > 0.0) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        return 0.1..10.0;
    }
    (lo / 1.5)..(hi * 1.5)
}

/// The empirical CDF of `samples`: (value, fraction at or below it).
pub fn cdf(samples: &[f64]) -> Vec<(f64, f64)> {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len() as f64;
    v.into_iter()
        .enumerate()
        .map(|(i, x)| (x, (i + 1) as f64 / n))
        .collect()
}

/// `add_<state>.svg`: the CDF of ADD latency of every variant on a `state` node.
pub fn add_latency(dir: &Path, c: &CniLatency, state: &str) -> Result<PathBuf> {
    let path = dir.join(format!("add_{state}.svg"));
    let series: Vec<(&str, Vec<f64>)> = VARIANTS
        .iter()
        .filter_map(|v| Some((*v, c.get(state, v, "ADD")?.samples_ms.clone())))
        .collect();
    let x = log_range(series.iter().flat_map(|(_, s)| s.iter().copied()));
    let svg = path.clone();
    let root = SVGBackend::new(&svg, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("CNI ADD latency, {state} node (CDF over runs)"),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d(x.log_scale(), 0f64..1.0)?;
    chart
        .configure_mesh()
        .x_desc("ADD latency (ms, log scale)")
        .y_desc("fraction of runs")
        .draw()?;
    for (i, (name, samples)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(cdf(samples), color.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present().context("write the SVG")?;
    Ok(path)
}

/// `cold_vteps.svg`: cold ADD median (with min..p99 bars) vs VTEPs, linen and ovs-vsctl.
pub fn cold_vteps(dir: &Path, v: &ColdVteps) -> Result<PathBuf> {
    let path = dir.join("cold_vteps.svg");
    let xs = log_range(v.points.iter().map(|p| p.vteps as f64));
    let ys = log_range(v.points.iter().flat_map(|p| {
        let b = p
            .ovs_vsctl_ms
            .map(|s| [s.min, s.p99])
            .unwrap_or([p.linen_ms.min; 2]);
        [p.linen_ms.min, p.linen_ms.p99, b[0], b[1]]
    }));
    let svg = path.clone();
    let root = SVGBackend::new(&svg, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Cold ADD latency vs remote VTEPs (median, min..p99)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d(xs.log_scale(), ys.log_scale())?;
    chart
        .configure_mesh()
        .x_desc("remote VTEPs (log scale)")
        .y_desc("ADD latency (ms, log scale)")
        .draw()?;
    // (VTEPs, median, min, p99)
    type Points = Vec<(f64, f64, f64, f64)>;
    let lines: [(&str, Points); 2] = [
        (
            "linen",
            v.points
                .iter()
                .map(|p| {
                    (
                        p.vteps as f64,
                        p.linen_ms.median,
                        p.linen_ms.min,
                        p.linen_ms.p99,
                    )
                })
                .collect(),
        ),
        (
            "ovs-vsctl baseline",
            v.points
                .iter()
                .filter_map(|p| {
                    let s = p.ovs_vsctl_ms?;
                    Some((p.vteps as f64, s.median, s.min, s.p99))
                })
                .collect(),
        ),
    ];
    for (i, (name, pts)) in lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|p| (p.0, p.1)),
                color.stroke_width(2),
            ))?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(
            pts.iter()
                .map(|p| Circle::new((p.0, p.1), 4, color.filled())),
        )?;
        chart.draw_series(
            pts.iter()
                .map(|p| PathElement::new(vec![(p.0, p.2), (p.0, p.3)], color.stroke_width(1))),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present().context("write the SVG")?;
    Ok(path)
}

/// `convergence.svg`: convergence time vs members.
pub fn convergence(dir: &Path, m: &Measured) -> Result<PathBuf> {
    let path = dir.join("convergence.svg");
    let lines: [(&str, Vec<(f64, f64)>); 4] = [
        (
            "all M join at once",
            m.scale
                .iter()
                .map(|p| (p.members as f64, p.bulk_join_ms))
                .collect(),
        ),
        (
            "all M leave at once",
            m.scale
                .iter()
                .map(|p| (p.members as f64, p.bulk_leave_ms))
                .collect(),
        ),
        (
            "one more joins (median)",
            m.scale
                .iter()
                .map(|p| (p.members as f64, p.join_one_ms.median))
                .collect(),
        ),
        (
            "one leaves (median)",
            m.scale
                .iter()
                .map(|p| (p.members as f64, p.leave_one_ms.median))
                .collect(),
        ),
    ];
    let xs = log_range(lines.iter().flat_map(|(_, l)| l.iter().map(|p| p.0)));
    let ys = log_range(lines.iter().flat_map(|(_, l)| l.iter().map(|p| p.1)));
    let svg = path.clone();
    let root = SVGBackend::new(&svg, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "flaxd membership convergence vs members (every node)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d(xs.log_scale(), ys.log_scale())?;
    chart
        .configure_mesh()
        .x_desc("members in etcd (log scale)")
        .y_desc("until every node converged (ms, log scale)")
        .draw()?;
    for (i, (name, pts)) in lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 4, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present().context("write the SVG")?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdf_is_monotone_and_ends_at_one() {
        let c = cdf(&[3.0, 1.0, 2.0, 2.0]);
        assert_eq!(c.first(), Some(&(1.0, 0.25)));
        assert_eq!(c.last(), Some(&(3.0, 1.0)));
        assert!(c.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 < w[1].1));
    }

    #[test]
    fn log_ranges() {
        let r = log_range([2.0, 0.0, 8.0].into_iter());
        assert!(r.start < 2.0 && r.start > 0.0 && r.end > 8.0);
        assert_eq!(log_range(std::iter::empty()), 0.1..10.0);
    }
}
