//! Summaries of repeated measurements. The machines are shared and noisy, so a figure is
//! never one run: min, median and p99 over many, and ratios of medians measured in the
//! same run.

use serde::{Deserialize, Serialize};

/// min / median / p99 / max / mean of a sample, in the sample's unit.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub n: usize,
    pub min: f64,
    pub median: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Summary {
    /// `None` for an empty sample or one holding NaN.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        if samples.is_empty() || samples.iter().any(|x| x.is_nan()) {
            return None;
        }
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        Some(Summary {
            n: v.len(),
            min: v[0],
            median: percentile_sorted(&v, 50.0),
            p99: percentile_sorted(&v, 99.0),
            max: v[v.len() - 1],
            mean: v.iter().sum::<f64>() / v.len() as f64,
        })
    }
}

/// The `p`th percentile (0-100) of sorted, non-empty `v`, interpolating linearly between
/// the two nearest ranks (numpy's default), so the median of an even sample is the mean
/// of its middle pair.
pub fn percentile_sorted(v: &[f64], p: f64) -> f64 {
    debug_assert!(!v.is_empty());
    let rank = (p.clamp(0.0, 100.0) / 100.0) * (v.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    v[lo] + (v[hi] - v[lo]) * (rank - lo as f64)
}

/// `a / b`, or `None` when `b` is not a positive number.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite()).then(|| a / b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries() {
        type MinMedP99Max = (f64, f64, f64, f64);
        let cases: [(&[f64], Option<MinMedP99Max>); 5] = [
            (&[], None),
            (&[f64::NAN, 1.0], None),
            (&[3.0], Some((3.0, 3.0, 3.0, 3.0))),
            (&[4.0, 1.0, 3.0, 2.0], Some((1.0, 2.5, 3.97, 4.0))),
            (&[5.0, 1.0, 4.0, 2.0, 3.0], Some((1.0, 3.0, 4.96, 5.0))),
        ];
        for (sample, want) in cases {
            let got = Summary::of(sample).map(|s| (s.min, s.median, s.p99, s.max));
            match (got, want) {
                (None, None) => {}
                (Some(g), Some(w)) => {
                    for (a, b) in [(g.0, w.0), (g.1, w.1), (g.2, w.2), (g.3, w.3)] {
                        assert!((a - b).abs() < 1e-9, "{sample:?}: {g:?} != {w:?}");
                    }
                }
                (g, w) => panic!("{sample:?}: {g:?} != {w:?}"),
            }
        }
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(1.0, 2.0), Some(0.5));
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio(1.0, -1.0), None);
        assert_eq!(ratio(f64::INFINITY, 1.0), None);
    }
}
