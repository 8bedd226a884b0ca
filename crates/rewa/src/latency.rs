//! Per-query latencies of searches run one at a time, and their percentiles. Below the index
//! (which measures them) and `eval` (which re-exports them): this file imports nothing from
//! the crate.

/// Per-query latencies (seconds) of queries searched one at a time: percentiles by the
/// nearest-rank rule (the smallest latency at or above which a fraction `p` of the queries
/// finished).
#[derive(Clone, Debug, Default)]
pub struct Latencies {
    sorted: Vec<f64>,
}

impl Latencies {
    /// From per-query seconds, in any order.
    pub fn new(mut seconds: Vec<f64>) -> Latencies {
        seconds.sort_unstable_by(f64::total_cmp);
        Latencies { sorted: seconds }
    }
    /// The latency of percentile `p` (0 to 1; 0.5 the median, 0.99 p99) in seconds; 0 with
    /// no queries.
    pub fn percentile(&self, p: f64) -> f64 {
        let n = self.sorted.len();
        if n == 0 {
            return 0.0;
        }
        let i = ((n as f64 * p.clamp(0.0, 1.0)).ceil() as usize).clamp(1, n) - 1;
        self.sorted[i]
    }
    /// The mean, in seconds.
    pub fn mean(&self) -> f64 {
        self.sorted.iter().sum::<f64>() / self.sorted.len().max(1) as f64
    }
    /// How many queries.
    pub fn len(&self) -> usize {
        self.sorted.len()
    }
    /// `true` with no queries.
    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_percentiles_are_nearest_rank() {
        let l = Latencies::new((1..=100).rev().map(|i| i as f64).collect());
        assert_eq!(
            (
                l.percentile(0.5),
                l.percentile(0.99),
                l.percentile(1.0),
                l.percentile(0.0)
            ),
            (50.0, 99.0, 100.0, 1.0)
        );
        assert_eq!(Latencies::new(vec![3.0]).percentile(0.99), 3.0);
        assert_eq!(Latencies::default().percentile(0.5), 0.0);
        assert_eq!(l.mean(), 50.5);
    }
}
