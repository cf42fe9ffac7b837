//! A log-bucketed histogram for values too numerous to keep (inter-token latencies: one per output token).
//!
//! Buckets grow by 0.1%, so a reported percentile is within 0.05% of the exact value; mean and standard
//! deviation are exact (running sums).

const GROWTH: f64 = 1.001;

#[derive(Clone, Debug, Default)]
pub struct LogHistogram {
    counts: Vec<u64>,
    zeros: u64,
    n: u64,
    sum: f64,
    sum_sq: f64,
}

impl LogHistogram {
    /// Records a value in seconds (values below 1 ns count as zero).
    pub fn record(&mut self, v: f64) {
        self.n += 1;
        self.sum += v;
        self.sum_sq += v * v;
        let ns = v * 1e9;
        if ns < 1.0 {
            self.zeros += 1;
            return;
        }
        let idx = (ns.ln() / GROWTH.ln()) as usize;
        if idx >= self.counts.len() {
            self.counts.resize(idx + 1, 0);
        }
        self.counts[idx] += 1;
    }

    pub fn count(&self) -> u64 {
        self.n
    }

    pub fn mean(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / self.n as f64)
    }

    /// Population standard deviation (numpy's default, as `vllm bench serve` reports).
    pub fn std(&self) -> Option<f64> {
        let m = self.mean()?;
        Some((self.sum_sq / self.n as f64 - m * m).max(0.0).sqrt())
    }

    /// The q-quantile (0..=1), at the geometric middle of its bucket.
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
                let lo = GROWTH.powi(i as i32);
                return Some(lo * GROWTH.sqrt() / 1e9);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_within_a_tenth_of_a_percent() {
        let mut h = LogHistogram::default();
        let vals: Vec<f64> = (1..=10_000).map(|i| i as f64 * 1e-5).collect();
        for &v in &vals {
            h.record(v);
        }
        let p50 = h.quantile(0.5).unwrap();
        let exact = vals[(0.5f64 * 9999.0).round() as usize];
        assert!((p50 / exact - 1.0).abs() < 0.001, "{p50} vs {exact}");
        assert!((h.mean().unwrap() - 0.050005).abs() < 1e-9);
    }
}
