//! Exact summary statistics over per-request values, as `vllm bench serve` computes them (B5): mean, median,
//! population std, and percentiles by numpy's default linear interpolation.

use serde::Serialize;

/// Mean, median, std and tail percentiles of one metric, in seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Dist5 {
    pub mean: Option<f64>,
    pub median: Option<f64>,
    pub std: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
}

/// numpy.percentile(v, p) with linear interpolation; `sorted` must be sorted ascending.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let pos = p / 100.0 * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * frac)
}

pub fn describe(values: &mut [f64]) -> Dist5 {
    if values.is_empty() {
        return Dist5::default();
    }
    // Unstable is fine: values equal under `total_cmp` are the same bits, so the order is the same as a
    // stable sort's, and so is the sum below (taken in sorted order, as it always was).
    values.sort_unstable_by(f64::total_cmp);
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    Dist5 {
        mean: Some(mean),
        median: percentile(values, 50.0),
        std: Some(var.sqrt()),
        p90: percentile(values, 90.0),
        p99: percentile(values, 99.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_numpy_linear_interpolation() {
        // numpy.percentile([1, 2, 3, 4], 90) = 3.7; median = 2.5; std (ddof 0) = 1.118034.
        let mut v = [4.0, 1.0, 3.0, 2.0];
        let d = describe(&mut v);
        assert!((d.p90.unwrap() - 3.7).abs() < 1e-12);
        assert_eq!(d.median, Some(2.5));
        assert!((d.std.unwrap() - 1.118_033_988_7).abs() < 1e-9);
    }
}
