//! Percentiles of a set of samples (nearest-rank, so every figure is one
//! that was really measured).

/// Samples sorted once, for several percentiles.
#[derive(Debug, Clone, Default)]
pub(crate) struct Samples {
    sorted: Vec<f64>,
}

impl Samples {
    /// Sorts the samples (NaNs last).
    pub(crate) fn new(mut values: Vec<f64>) -> Self {
        values.sort_by(f64::total_cmp);
        Self { sorted: values }
    }

    /// The `p`-th percentile (0–100) by nearest rank: the smallest sample
    /// with at least `p` % of the samples at or below it. `None` when
    /// there are no samples.
    pub(crate) fn percentile(&self, p: f64) -> Option<f64> {
        let n = self.sorted.len();
        if n == 0 {
            return None;
        }
        let rank = (p.clamp(0.0, 100.0) / 100.0 * n as f64).ceil() as usize;
        Some(self.sorted[rank.clamp(1, n) - 1])
    }

    /// The median (50th percentile).
    pub(crate) fn median(&self) -> Option<f64> {
        self.percentile(50.0)
    }

    /// The largest sample.
    pub(crate) fn max(&self) -> Option<f64> {
        self.sorted.last().copied()
    }

    /// The smallest sample.
    pub(crate) fn min(&self) -> Option<f64> {
        self.sorted.first().copied()
    }
}

/// Rounds to three decimals, so that JSON lines stay readable.
pub(crate) fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let samples = Samples::new((1..=100).rev().map(f64::from).collect());
        assert_eq!(samples.median(), Some(50.0));
        assert_eq!(samples.percentile(99.0), Some(99.0));
        assert_eq!(samples.percentile(99.5), Some(100.0));
        assert_eq!(samples.percentile(0.0), Some(1.0));
        assert_eq!(samples.max(), Some(100.0));
        assert_eq!(samples.min(), Some(1.0));

        let few = Samples::new(vec![3.0, 1.0, 2.0]);
        assert_eq!(few.median(), Some(2.0));
        assert_eq!(few.percentile(99.0), Some(3.0));
        assert_eq!(Samples::new(vec![7.5]).percentile(99.0), Some(7.5));
        assert_eq!(Samples::default().median(), None);
    }

    #[test]
    fn rounding_keeps_three_decimals() {
        assert!((round3(1.234_56) - 1.235).abs() < 1e-12);
        assert!((round3(-0.000_4)).abs() < 1e-12);
    }
}
