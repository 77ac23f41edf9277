//! A log-linear latency histogram in microseconds (HDR-like): exact below
//! 2048 µs, then 1024 buckets per power of two (under 0.1% relative error).
//! Fixed size, allocated once; recording is a few instructions.

/// Values below this are counted exactly.
const EXACT: u64 = 2048;
/// Buckets per power of two above `EXACT`.
const SUB: usize = 1024;
/// Enough buckets for any u64.
const BUCKETS: usize = 55 * SUB;

/// Latency histogram.
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

#[inline]
fn index(v: u64) -> usize {
    if v < EXACT {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros() as usize; // >= 11
    let shift = msb - 10;
    shift * SUB + (v >> shift) as usize
}

/// The range of values bucket `i` holds, inclusive.
fn bounds(i: usize) -> (u64, u64) {
    if (i as u64) < EXACT {
        return (i as u64, i as u64);
    }
    let shift = i / SUB - 1;
    let m = (i % SUB + SUB) as u64;
    (m << shift, ((m + 1) << shift) - 1)
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }

    /// Counts one value (µs).
    #[inline]
    pub fn record(&mut self, us: u64) {
        self.counts[index(us)] += 1;
        self.total += 1;
        self.max = self.max.max(us);
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The largest value recorded (exact), 0 if none.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at percentile `p` (0-100): the smallest bucket holding at
    /// least `p`% of the values, reported as its midpoint (exact below
    /// 2048 µs) and never above the maximum. 0 if empty.
    pub fn percentile(&self, p: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        // The epsilon keeps e.g. 99.9% of 1000 at rank 999 despite rounding.
        let rank = ((p / 100.0 * self.total as f64 - 1e-9).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (lo, hi) = bounds(i);
                return (lo + (hi - lo) / 2).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_tile_the_range_without_gaps() {
        let mut next = 0u64;
        for i in 0..=index(1 << 40) {
            let (lo, hi) = bounds(i);
            assert_eq!(lo, next, "bucket {i}");
            assert_eq!(index(lo), i);
            assert_eq!(index(hi), i);
            next = hi + 1;
        }
        assert_eq!(index(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn small_values_are_exact() {
        let mut h = Histogram::new();
        for v in 1..=1000 {
            h.record(v);
        }
        assert_eq!(h.count(), 1000);
        assert_eq!(h.percentile(50.0), 500);
        assert_eq!(h.percentile(90.0), 900);
        assert_eq!(h.percentile(99.0), 990);
        assert_eq!(h.percentile(99.9), 999);
        assert_eq!(h.percentile(100.0), 1000);
        assert_eq!(h.max(), 1000);
    }

    #[test]
    fn large_values_are_within_a_tenth_of_a_percent() {
        let mut h = Histogram::new();
        let values: Vec<u64> = (0..100_000u64).map(|i| 1_000 + i * 997).collect();
        for &v in &values {
            h.record(v);
        }
        for p in [50.0, 90.0, 99.0, 99.9] {
            let exact = values[((p / 100.0 * values.len() as f64).ceil() as usize) - 1];
            let got = h.percentile(p);
            let err = (got as f64 - exact as f64).abs() / exact as f64;
            assert!(err < 0.001, "p{p}: {got} vs {exact}");
        }
        assert_eq!(h.max(), *values.last().unwrap());
    }

    #[test]
    fn percentile_never_exceeds_the_max_and_empty_is_zero() {
        let mut h = Histogram::new();
        assert_eq!(h.percentile(99.0), 0);
        h.record(1_000_001);
        h.record(1_000_200);
        assert!(h.percentile(100.0) <= 1_000_200);
        assert!(h.percentile(100.0) >= 1_000_200 - 1_000_200 / 1000);
        assert!(h.percentile(50.0) >= 1_000_001 - 1_000_001 / 1000);
    }
}
