//! Automatic warm-up detection (`output.warmup_s = "auto"`): MSER-5, the Marginal Standard Error Rule on
//! batch means of 5 (White 1997; White, Cobb and Spratt 2000), the rule Hoad, Robinson and Davies
//! (2010, "Automating warm-up length estimation", JORS 61) found the most reliable of 44 automatic methods.
//!
//! For a series batched into means `Z_1..Z_k` of 5 observations, truncating the first `d` batches leaves
//! `m = k - d` of them, and `MSER(d) = sum_{j>d} (Z_j - mean_{j>d} Z)^2 / m^2`: the squared standard error of
//! the truncated mean, which falls while dropping biased start-up values and rises once the dropped values
//! are as good as the rest. The warm-up is the `d` minimising it over the first half of the batches.
//! Whether the series then holds steady is a separate check ([`holds_steady`]): a least-squares line through the
//! batches after the warm-up must not rise or fall over them by more than twice their scatter around it
//! (a series still climbing at the end of the run has no steady state to measure). MSER's own failure
//! sign, a minimum past the half, is not used for it: on a stationary but autocorrelated series (a
//! session population whose sessions live minutes) the last few batches often lie close together and
//! put the minimum there by chance.

/// Observations per batch (MSER-5).
const BATCH: usize = 5;

fn batch_means(series: &[f64]) -> Vec<f64> {
    series
        .chunks_exact(BATCH)
        .map(|c| c.iter().sum::<f64>() / BATCH as f64)
        .collect()
}

/// MSER-5 on `series` (observations at equal spacing): how many observations to drop from the start (a
/// multiple of 5). Fewer than 4 batches (20 observations): none. Ties go to the shorter warm-up.
pub fn mser5(series: &[f64]) -> usize {
    let z = batch_means(series);
    let k = z.len();
    if k < 4 {
        return 0;
    }
    // Suffix sums from the end: MSER(d) for every d in one pass. Values are centred on the overall mean
    // first so that the sum of squares does not cancel catastrophically on large, flat series.
    let c = z.iter().sum::<f64>() / k as f64;
    let (mut sum, mut sq) = (0.0f64, 0.0f64);
    let mut mser = vec![f64::INFINITY; k];
    for d in (0..k).rev() {
        let v = z[d] - c;
        sum += v;
        sq += v * v;
        let m = (k - d) as f64;
        if k - d >= 2 {
            mser[d] = (sq - sum * sum / m).max(0.0) / (m * m);
        }
    }
    let argmin =
        |to: usize| (0..=to).fold(0, |best, d| if mser[d] < mser[best] { d } else { best });
    argmin(k / 2) * BATCH
}

/// Whether `series` holds steady: its batch means of 5 rise or fall along their least-squares line by
/// no more than twice their scatter around it. None with fewer than 4 batches (20 observations).
pub fn holds_steady(series: &[f64]) -> Option<bool> {
    let z = batch_means(series);
    if z.len() < 4 {
        return None;
    }
    let (slope, resid) = trend(&z);
    let rise = (slope * (z.len() - 1) as f64).abs();
    let scale = z.iter().map(|v| v.abs()).fold(1.0, f64::max);
    Some(rise <= 2.0 * resid + 1e-9 * scale)
}

/// The least-squares line through `y` at x = 0, 1, ...: (slope per step, root mean square residual).
pub fn trend(y: &[f64]) -> (f64, f64) {
    let pts: Vec<(f64, f64)> = y.iter().enumerate().map(|(i, &v)| (i as f64, v)).collect();
    trend_xy(&pts)
}

/// The least-squares line through the points `(x, y)`: (slope, root mean square residual); a slope of 0
/// when every x is equal (fewer than two points included).
pub fn trend_xy(pts: &[(f64, f64)]) -> (f64, f64) {
    if pts.is_empty() {
        return (0.0, 0.0);
    }
    let n = pts.len() as f64;
    let mt = pts.iter().map(|p| p.0).sum::<f64>() / n;
    let mw = pts.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = pts.iter().map(|p| (p.0 - mt).powi(2)).sum();
    let sxy: f64 = pts.iter().map(|p| (p.0 - mt) * (p.1 - mw)).sum();
    let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    let resid = (pts
        .iter()
        .map(|p| (p.1 - mw - slope * (p.0 - mt)).powi(2))
        .sum::<f64>()
        / n)
        .sqrt();
    (slope, resid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flat_series_drops_nothing() {
        // Alternating 0, 1: every batch mean is 0.4 or 0.6; no start-up bias to remove.
        let s: Vec<f64> = (0..200).map(|i| (i % 2) as f64).collect();
        assert_eq!(mser5(&s), 0);
        assert_eq!(holds_steady(&s), Some(true));
    }

    #[test]
    fn a_ramp_then_plateau_is_cut_at_the_knee() {
        // A linear ramp over 50 observations to a noisy plateau of 100 (+-1 alternating) for 450 more.
        // The batches of the ramp (means 4, 14, ..., 94) lie far below the plateau's; dropping all ten
        // gives MSER = 90 x 0.2^2 / 90^2 = 4.4e-4, and dropping one batch fewer or more gives 4.6e-3 and
        // 4.5e-4.
        let s: Vec<f64> = (0..500)
            .map(|i| {
                if i < 50 {
                    2.0 * i as f64
                } else {
                    100.0 + if i % 2 == 0 { 1.0 } else { -1.0 }
                }
            })
            .collect();
        assert_eq!(mser5(&s), 50);
        assert_eq!(holds_steady(&s[50..]), Some(true));
    }

    #[test]
    fn a_series_still_rising_does_not_hold_steady() {
        let s: Vec<f64> = (0..300).map(|i| i as f64).collect();
        // MSER on a ramp keeps cutting: its minimum is at the half-way bound.
        assert_eq!(mser5(&s), 150);
        assert_eq!(holds_steady(&s[150..]), Some(false));
    }

    #[test]
    fn too_short_a_series_is_unknown() {
        assert_eq!(mser5(&[1.0; 19]), 0);
        assert_eq!(holds_steady(&[1.0; 19]), None);
    }
}
