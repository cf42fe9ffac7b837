//! One latency metric's per-request values (TTFT, TPOT, E2E, queueing), for the summary's mean, median,
//! std and tail percentiles: every value kept and the statistics exact (`stats::describe`, numpy's
//! definitions) up to `output.exact_percentiles_up_to` values; past it a DDSketch (Masson, Rim and Lee,
//! VLDB 2019; the `sketches-ddsketch` crate) with relative accuracy [`SKETCH_RELATIVE_ERROR`], so that a
//! run's memory does not grow with its length. The mean and std stay exact sums over every value
//! (Welford's running moments); only the percentiles are approximate.

use super::stats::{describe, Dist5};
use sketches_ddsketch::{Config, DDSketch};

/// Relative accuracy of sketched percentiles: a sketched quantile q is within 0.1% of the value at rank
/// floor(q (n - 1)) of the sorted values (DDSketch's guarantee), where numpy's interpolated percentile lies
/// between that value and the next.
pub const SKETCH_RELATIVE_ERROR: f64 = 0.001;

/// Bins the sketch may grow to: at 0.1% accuracy one bin spans a factor 1.002, so 32,768 bins cover
/// 28 decades (values from 1 ns upwards are kept apart; a wider span collapses the lowest bins, which only
/// the smallest percentiles read).
const SKETCH_MAX_BINS: u32 = 32_768;

/// Values below this (seconds) count as zero in the sketch: the clock's resolution.
const SKETCH_MIN_VALUE: f64 = 1e-9;

/// A metric's values: exact up to a limit, sketched beyond it.
pub struct Values {
    exact: Vec<f64>,
    sketch: Option<Box<Sketched>>,
    limit: usize,
}

struct Sketched {
    dd: DDSketch,
    n: u64,
    mean: f64,
    /// Sum of squared deviations from the running mean (Welford).
    m2: f64,
}

impl std::fmt::Debug for Values {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Values")
            .field("len", &self.len())
            .field("exact", &self.is_exact())
            .finish()
    }
}

impl Sketched {
    fn new() -> Sketched {
        Sketched {
            dd: DDSketch::new(Config::new(
                SKETCH_RELATIVE_ERROR,
                SKETCH_MAX_BINS,
                SKETCH_MIN_VALUE,
            )),
            n: 0,
            mean: 0.0,
            m2: 0.0,
        }
    }

    fn add(&mut self, v: f64) {
        self.dd.add(v);
        self.n += 1;
        let d = v - self.mean;
        self.mean += d / self.n as f64;
        self.m2 += d * (v - self.mean);
    }

    fn quantile(&self, q: f64) -> Option<f64> {
        self.dd.quantile(q).ok().flatten()
    }
}

impl Values {
    /// Values kept exactly while there are at most `limit` of them.
    pub fn new(limit: u64) -> Values {
        Values {
            exact: Vec::new(),
            sketch: None,
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
        }
    }

    /// Adds a value (seconds, >= 0). The value past the limit moves every kept value into the sketch.
    pub fn push(&mut self, v: f64) {
        if let Some(s) = &mut self.sketch {
            s.add(v);
            return;
        }
        if self.exact.len() < self.limit {
            self.exact.push(v);
            return;
        }
        let mut s = Box::new(Sketched::new());
        for &x in &self.exact {
            s.add(x);
        }
        s.add(v);
        self.exact = Vec::new();
        self.sketch = Some(s);
    }

    /// How many values were added.
    pub fn len(&self) -> u64 {
        self.sketch
            .as_ref()
            .map_or(self.exact.len() as u64, |s| s.n)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether every value is still kept (the statistics are exact).
    pub fn is_exact(&self) -> bool {
        self.sketch.is_none()
    }

    /// Mean, median, population std, p90 and p99: exact while every value is kept; past the limit the
    /// moments are exact (to rounding) and the percentiles the sketch's.
    pub fn describe(&mut self) -> Dist5 {
        match &self.sketch {
            None => describe(&mut self.exact),
            Some(s) => Dist5 {
                mean: Some(s.mean),
                median: s.quantile(0.5),
                std: Some((s.m2 / s.n as f64).sqrt()),
                p90: s.quantile(0.9),
                p99: s.quantile(0.99),
            },
        }
    }
}

impl Extend<f64> for Values {
    fn extend<I: IntoIterator<Item = f64>>(&mut self, iter: I) {
        for v in iter {
            self.push(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Lognormal latencies (median 1 s, sigma 1.5: five decades): past the limit every percentile is within
    /// 0.1% of the exact order statistic at rank floor(q (n - 1)), and the moments agree with the exact
    /// ones to 1e-9 relative.
    #[test]
    fn sketched_percentiles_are_within_the_stated_error() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let normal = rand_distr::StandardNormal;
        let xs: Vec<f64> = (0..200_000)
            .map(|_| (1.5 * rng.sample::<f64, _>(normal)).exp())
            .collect();
        let mut exact = Values::new(u64::MAX);
        let mut sketched = Values::new(50_000);
        exact.extend(xs.iter().copied());
        sketched.extend(xs.iter().copied());
        assert!(exact.is_exact() && !sketched.is_exact());
        assert_eq!(sketched.len(), 200_000);
        let e = exact.describe();
        let s = sketched.describe();
        let mut sorted = xs.clone();
        sorted.sort_by(f64::total_cmp);
        for (q, got) in [(0.5, s.median), (0.9, s.p90), (0.99, s.p99)] {
            let at_rank = sorted[(q * (sorted.len() - 1) as f64) as usize];
            let err = (got.unwrap() - at_rank).abs() / at_rank;
            assert!(err <= SKETCH_RELATIVE_ERROR, "q {q}: error {err}");
        }
        for (a, b) in [(s.mean, e.mean), (s.std, e.std)] {
            let (a, b) = (a.unwrap(), b.unwrap());
            assert!((a - b).abs() <= 1e-9 * b, "{a} vs {b}");
        }
    }

    /// Up to the limit the statistics are `describe`'s, bit for bit; zero values are counted.
    #[test]
    fn exact_up_to_the_limit() {
        let xs = [0.0, 3.0, 1.0, 2.0];
        let mut v = Values::new(4);
        v.extend(xs);
        assert!(v.is_exact());
        assert_eq!(v.describe(), describe(&mut xs.to_vec()));
        v.push(0.0);
        assert!(!v.is_exact());
        // Five values, two zeros: the median (rank 2) is 1.0 within the error.
        let m = v.describe().median.unwrap();
        assert!((m - 1.0).abs() <= SKETCH_RELATIVE_ERROR);
        assert_eq!(v.len(), 5);
    }
}
