//! Confidence intervals across seeds (Student t, via statrs).

use statrs::distribution::{ContinuousCDF, StudentsT};

/// Mean and the half-width of its two-sided 95% confidence interval, t_{0.975, n-1} x s / sqrt(n), with s
/// the sample standard deviation. The half-width is None for fewer than two values.
pub fn mean_ci95(values: &[f64]) -> (f64, Option<f64>) {
    let n = values.len();
    if n == 0 {
        return (f64::NAN, None);
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return (mean, None);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let t = StudentsT::new(0.0, 1.0, (n - 1) as f64)
        .expect("n - 1 >= 1 degrees of freedom")
        .inverse_cdf(0.975);
    (mean, Some(t * (var / n as f64).sqrt()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_hand_computed_interval() {
        // Values 1, 2, 3, 4, 5: mean 3, s = sqrt(2.5) = 1.5811, t(0.975, 4) = 2.7764;
        // half-width = 2.7764 x 1.5811 / sqrt(5) = 1.9632.
        let (m, h) = mean_ci95(&[1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(m, 3.0);
        assert!((h.unwrap() - 1.9632).abs() < 1e-3);
        assert_eq!(mean_ci95(&[7.0]).1, None);
    }

    #[test]
    fn half_width_shrinks_as_seeds_grow_on_a_fixed_population() {
        // A deterministic population alternating 1 and 3: the sample sd stays near 1 while t and sqrt(n)
        // both shrink the half-width, strictly, from 2 to 64 values.
        let pop: Vec<f64> = (0..64)
            .map(|i| if i % 2 == 0 { 1.0 } else { 3.0 })
            .collect();
        let widths: Vec<f64> = [2, 4, 8, 16, 32, 64]
            .iter()
            .map(|&n| mean_ci95(&pop[..n]).1.unwrap())
            .collect();
        assert!(widths.windows(2).all(|w| w[1] < w[0]), "{widths:?}");
    }
}
