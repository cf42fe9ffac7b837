//! A log-bucketed histogram for values too numerous to keep (inter-token latencies: one per output token).
//!
//! Values are integer nanoseconds. Each power of two is split into 1,024 equal buckets (HDR-style: a bucket
//! is at most 0.1% of its value wide), so a reported percentile is within 0.1% of the exact value; the count, mean and standard deviation are exact, kept as integer sums so that the order in
//! which values arrive (one by one, or many at once from a leap over decode steps) cannot change a bit.

/// Sub-buckets per power of two (2^SUB_BITS).
const SUB_BITS: u32 = 10;

/// Bucket of a value: values below 2^SUB_BITS are exact; above, (power of two, top SUB_BITS bits below the
/// leading one).
fn bucket(ns: u64) -> usize {
    if ns < (1 << SUB_BITS) {
        return ns as usize;
    }
    let e = 63 - ns.leading_zeros(); // position of the leading one, >= SUB_BITS
    let shift = e - SUB_BITS;
    let sub = (ns >> shift) as usize & ((1 << SUB_BITS) - 1);
    (((e - SUB_BITS + 1) as usize) << SUB_BITS) + sub
}

/// The middle of a bucket, in nanoseconds.
fn bucket_mid(i: usize) -> f64 {
    let (lo, hi) = bucket_bounds(i);
    lo as f64 + ((hi - lo) as f64 - 1.0) / 2.0
}

/// A bucket's bounds [lo, hi) in nanoseconds (the inverse of `bucket`).
fn bucket_bounds(i: usize) -> (u64, u64) {
    let block = i >> SUB_BITS;
    if block == 0 {
        return (i as u64, i as u64 + 1);
    }
    let shift = (block - 1) as u32;
    let sub = (i & ((1 << SUB_BITS) - 1)) as u64;
    let lo = ((1u64 << SUB_BITS) | sub) << shift;
    (lo, lo + (1u64 << shift))
}

/// Values recorded in a tight loop (a decode leap's steps) and added to a `LogHistogram` at once
/// (`LogHistogram::merge`): the same counts and sums as recording each there, with a value's bucket found
/// only when it leaves the previous value's (consecutive steps' gaps mostly share one).
#[derive(Clone, Debug, Default)]
pub struct Batch {
    n: u64,
    zeros: u64,
    sum_ns: u128,
    sum_sq_ns: u128,
    /// (bucket, count), a run per stretch of values in one bucket.
    runs: Vec<(usize, u64)>,
    /// The last run's bucket bounds, [lo, hi) ns (empty before the first).
    lo: u64,
    hi: u64,
}

impl Batch {
    /// Records `count` values of `ns` nanoseconds each.
    #[inline]
    pub fn record_ns_n(&mut self, ns: u64, count: u64) {
        if count == 0 {
            return;
        }
        self.n += count;
        self.sum_ns += ns as u128 * count as u128;
        self.sum_sq_ns += (ns as u128 * ns as u128) * count as u128;
        if self.lo <= ns && ns < self.hi {
            self.runs.last_mut().expect("a run holds [lo, hi)").1 += count;
        } else if ns == 0 {
            self.zeros += count;
        } else {
            let i = bucket(ns);
            (self.lo, self.hi) = bucket_bounds(i);
            self.runs.push((i, count));
        }
    }

    pub fn clear(&mut self) {
        self.n = 0;
        self.zeros = 0;
        self.sum_ns = 0;
        self.sum_sq_ns = 0;
        self.runs.clear();
        (self.lo, self.hi) = (0, 0);
    }
}

#[derive(Clone, Debug, Default)]
pub struct LogHistogram {
    counts: Vec<u64>,
    zeros: u64,
    n: u64,
    sum_ns: u128,
    sum_sq_ns: u128,
}

impl LogHistogram {
    /// Records one value of `ns` nanoseconds.
    pub fn record_ns(&mut self, ns: u64) {
        self.record_ns_n(ns, 1);
    }

    /// Records `count` values of `ns` nanoseconds each.
    pub fn record_ns_n(&mut self, ns: u64, count: u64) {
        if count == 0 {
            return;
        }
        self.n += count;
        self.sum_ns += ns as u128 * count as u128;
        self.sum_sq_ns += (ns as u128) * (ns as u128) * count as u128;
        if ns == 0 {
            self.zeros += count;
            return;
        }
        let idx = bucket(ns);
        if idx >= self.counts.len() {
            self.counts.resize(idx + 1, 0);
        }
        self.counts[idx] += count;
    }

    /// Adds what `b` recorded, as if each value had been recorded here.
    pub fn merge(&mut self, b: &Batch) {
        self.n += b.n;
        self.zeros += b.zeros;
        self.sum_ns += b.sum_ns;
        self.sum_sq_ns += b.sum_sq_ns;
        for &(i, c) in &b.runs {
            if i >= self.counts.len() {
                self.counts.resize(i + 1, 0);
            }
            self.counts[i] += c;
        }
    }

    pub fn count(&self) -> u64 {
        self.n
    }

    /// Mean, seconds.
    pub fn mean(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum_ns as f64 / self.n as f64 / 1e9)
    }

    /// Population standard deviation (numpy's default, as `vllm bench serve` reports), seconds.
    pub fn std(&self) -> Option<f64> {
        if self.n == 0 {
            return None;
        }
        let n = self.n as f64;
        let m = self.sum_ns as f64 / n;
        Some(((self.sum_sq_ns as f64 / n - m * m).max(0.0)).sqrt() / 1e9)
    }

    /// The q-quantile (0..=1), at the geometric middle of its bucket, seconds.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.n == 0 {
            return None;
        }
        let rank = ((q * (self.n - 1) as f64).round() as u64).min(self.n - 1);
        if rank < self.zeros {
            return Some(0.0);
        }
        let mut seen = self.zeros;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen > rank {
                return Some(bucket_mid(i) / 1e9);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A batch merged equals recording each value (counts, sums, so every statistic); bounds invert
        /// `bucket`.
        #[test]
        fn batches_merge_as_single_records(
            vals in proptest::collection::vec((0u64..3_000_000_000, 0u64..300), 0..200),
            base in 0u64..100_000_000, step in 0u64..2_000,
        ) {
            let (mut a, mut b) = (LogHistogram::default(), LogHistogram::default());
            let mut batch = Batch::default();
            // Random values, then a slowly growing run like a leap's gaps.
            let run = (0..200u64).map(|k| (base + k * step, 8));
            for (ns, n) in vals.iter().copied().chain(run) {
                a.record_ns_n(ns, n);
                batch.record_ns_n(ns, n);
                let (lo, hi) = bucket_bounds(bucket(ns.max(1)));
                prop_assert!(lo <= ns.max(1) && ns.max(1) < hi);
            }
            b.merge(&batch);
            prop_assert_eq!((a.n, a.zeros, a.sum_ns, a.sum_sq_ns), (b.n, b.zeros, b.sum_ns, b.sum_sq_ns));
            let trim = |c: &[u64]| c.iter().rposition(|&x| x > 0).map_or(0, |i| i + 1);
            prop_assert_eq!(&a.counts[..trim(&a.counts)], &b.counts[..trim(&b.counts)]);
        }
    }

    #[test]
    fn quantiles_within_a_tenth_of_a_percent() {
        let mut h = LogHistogram::default();
        let vals: Vec<u64> = (1..=10_000).map(|i| i * 10_000).collect();
        for &v in &vals {
            h.record_ns(v);
        }
        let p50 = h.quantile(0.5).unwrap();
        let exact = vals[(0.5f64 * 9999.0).round() as usize] as f64 / 1e9;
        assert!((p50 / exact - 1.0).abs() < 0.001, "{p50} vs {exact}");
        assert!((h.mean().unwrap() - 0.050005).abs() < 1e-12);
    }

    #[test]
    fn buckets_are_monotone_and_narrow() {
        let mut last = 0;
        for ns in [1u64, 1023, 1024, 1025, 2047, 2048, 123_456_789, 1 << 40] {
            let b = bucket(ns);
            assert!(b >= last);
            last = b;
            let mid = bucket_mid(b);
            assert!((mid / ns as f64 - 1.0).abs() <= 0.001, "{ns}: {mid}");
        }
    }

    #[test]
    fn batched_records_equal_single_records() {
        let (mut a, mut b) = (LogHistogram::default(), LogHistogram::default());
        for _ in 0..7 {
            a.record_ns(1_234_567);
        }
        a.record_ns(99);
        b.record_ns_n(99, 1);
        b.record_ns_n(1_234_567, 7);
        assert_eq!(a.mean(), b.mean());
        assert_eq!(a.std(), b.std());
        assert_eq!(a.quantile(0.9), b.quantile(0.9));
    }
}
