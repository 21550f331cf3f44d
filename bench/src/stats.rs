//! Samples and their summary (count, p50, p99, max), nearest-rank percentiles.

use serde::Serialize;

/// A summary of latency samples in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// Number of samples.
    pub n: usize,
    /// Median.
    pub p50: f64,
    /// 99th percentile (nearest rank).
    pub p99: f64,
    /// Largest sample.
    pub max: f64,
}

/// The `p` quantile (0..=1) of `sorted` by nearest rank: the smallest sample with at
/// least `p` of all samples at or below it.
pub fn quantile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Summary {
    /// Summarizes samples (in any order); `None` when there are none.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        Some(Summary { n: v.len(), p50: quantile(&v, 0.5), p99: quantile(&v, 0.99), max: v[v.len() - 1] })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert_eq!(quantile(&v, 0.0), 1.0);
        // With 30 samples the p99 is the largest one: fewer than 100 samples cannot
        // tell the 99th percentile from the maximum.
        let v: Vec<f64> = (1..=30).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.99), 30.0);
        assert_eq!(quantile(&v, 0.5), 15.0);
    }

    #[test]
    fn summary_sorts_and_handles_empty() {
        let s = Summary::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.n, s.p50, s.p99, s.max), (3, 2.0, 3.0, 3.0));
        assert!(Summary::of(&[]).is_none());
    }
}
