//! Parametric distributions for workload parameters, as written in workload TOML files.
//!
//! Every distribution is sampled from a caller-provided named stream (see `rng.rs`), so the draws are
//! reproducible. Optional `min`/`max` clamp the draw: traces show hard caps (a context window, a response
//! limit), and a clamp is how they are written.

use crate::rng::StreamRng;
use rand::Rng;
use rand_distr::{Distribution, Exp, Gamma, LogNormal};
use serde::{Deserialize, Serialize};

/// A distribution over non-negative reals (token counts are rounded by the caller).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "dist", rename_all = "lowercase", deny_unknown_fields)]
pub enum Dist {
    /// Always `value`.
    Constant { value: f64 },
    /// Uniform on [min, max].
    Uniform { min: f64, max: f64 },
    /// Exponential with the given mean.
    Exponential {
        mean: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<f64>,
    },
    /// Lognormal given by its median (= exp(mu)) and the sigma of the underlying normal.
    Lognormal {
        median: f64,
        sigma: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<f64>,
    },
    /// Gamma given by its shape and mean (scale = mean / shape).
    Gamma {
        shape: f64,
        mean: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<f64>,
    },
    /// Zipf on the integers min..=max: P(k) proportional to k^-alpha.
    Zipf { alpha: f64, min: u64, max: u64 },
}

/// The largest support a Zipf may have: its sampler holds one CDF entry per value.
pub const ZIPF_MAX_SUPPORT: u64 = 1_000_000;

impl Dist {
    /// Checks the parameters; the error says what is wrong in words a user can act on.
    pub fn validate(&self) -> Result<(), String> {
        let pos = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!(
                    "`{name}` must be a positive finite number, got {v}"
                ))
            }
        };
        let clamp = |min: &Option<f64>, max: &Option<f64>| match (min, max) {
            (Some(a), _) if !a.is_finite() || *a < 0.0 => {
                Err(format!("`min` must be >= 0, got {a}"))
            }
            (_, Some(b)) if !b.is_finite() || *b < 0.0 => {
                Err(format!("`max` must be >= 0, got {b}"))
            }
            (Some(a), Some(b)) if a > b => Err(format!("`min` ({a}) is larger than `max` ({b})")),
            _ => Ok(()),
        };
        match self {
            Dist::Constant { value } => {
                if value.is_finite() && *value >= 0.0 {
                    Ok(())
                } else {
                    Err(format!("`value` must be >= 0, got {value}"))
                }
            }
            Dist::Uniform { min, max } => {
                if !(min.is_finite() && max.is_finite() && *min >= 0.0 && min <= max) {
                    Err(format!("need 0 <= min <= max, got min={min}, max={max}"))
                } else {
                    Ok(())
                }
            }
            Dist::Exponential { mean, min, max } => {
                pos("mean", *mean)?;
                clamp(min, max)
            }
            Dist::Lognormal {
                median,
                sigma,
                min,
                max,
            } => {
                pos("median", *median)?;
                if !(sigma.is_finite() && *sigma >= 0.0) {
                    return Err(format!("`sigma` must be >= 0, got {sigma}"));
                }
                clamp(min, max)
            }
            Dist::Gamma {
                shape,
                mean,
                min,
                max,
            } => {
                pos("shape", *shape)?;
                pos("mean", *mean)?;
                clamp(min, max)
            }
            Dist::Zipf { alpha, min, max } => {
                if !(alpha.is_finite() && *alpha > 0.0) {
                    return Err(format!("`alpha` must be > 0, got {alpha}"));
                }
                if *min < 1 || min > max {
                    return Err(format!("need 1 <= min <= max, got min={min}, max={max}"));
                }
                if max - min >= ZIPF_MAX_SUPPORT {
                    return Err(format!(
                        "support min..=max has more than {ZIPF_MAX_SUPPORT} values; narrow it"
                    ));
                }
                Ok(())
            }
        }
    }

    /// The largest value a draw can take: the clamp's `max`, the constant, the uniform's or Zipf's upper
    /// end; infinity for an unclamped exponential, lognormal or gamma.
    pub fn max_value(&self) -> f64 {
        match *self {
            Dist::Constant { value } => value,
            Dist::Uniform { max, .. } => max,
            Dist::Exponential { max, .. }
            | Dist::Lognormal { max, .. }
            | Dist::Gamma { max, .. } => max.unwrap_or(f64::INFINITY),
            Dist::Zipf { max, .. } => max as f64,
        }
    }

    /// Builds a sampler. Call only after `validate` succeeded.
    pub fn sampler(&self) -> Sampler {
        let inner = match *self {
            Dist::Constant { value } => Inner::Constant(value),
            Dist::Uniform { min, max } => Inner::Uniform(min, max),
            Dist::Exponential { mean, .. } => Inner::Exp(Exp::new(1.0 / mean).expect("validated")),
            Dist::Lognormal { median, sigma, .. } => {
                Inner::LogNormal(LogNormal::new(median.ln(), sigma).expect("validated"))
            }
            Dist::Gamma { shape, mean, .. } => {
                Inner::Gamma(Gamma::new(shape, mean / shape).expect("validated"))
            }
            Dist::Zipf { alpha, min, max } => {
                let mut cdf = Vec::with_capacity((max - min + 1) as usize);
                let mut acc = 0.0;
                for k in min..=max {
                    acc += (k as f64).powf(-alpha);
                    cdf.push(acc);
                }
                for c in &mut cdf {
                    *c /= acc;
                }
                Inner::Zipf { min, cdf }
            }
        };
        let (lo, hi) = match *self {
            Dist::Exponential { min, max, .. }
            | Dist::Lognormal { min, max, .. }
            | Dist::Gamma { min, max, .. } => (min, max),
            _ => (None, None),
        };
        Sampler {
            inner,
            lo: lo.unwrap_or(0.0),
            hi: hi.unwrap_or(f64::INFINITY),
        }
    }

    /// The mean before clamping, where it has a closed form (used for documentation and sanity checks).
    pub fn unclamped_mean(&self) -> f64 {
        match *self {
            Dist::Constant { value } => value,
            Dist::Uniform { min, max } => (min + max) / 2.0,
            Dist::Exponential { mean, .. } | Dist::Gamma { mean, .. } => mean,
            Dist::Lognormal { median, sigma, .. } => median * (sigma * sigma / 2.0).exp(),
            Dist::Zipf { alpha, min, max } => {
                let (mut num, mut den) = (0.0, 0.0);
                for k in min..=max {
                    let p = (k as f64).powf(-alpha);
                    num += k as f64 * p;
                    den += p;
                }
                num / den
            }
        }
    }
}

/// A ready-to-draw distribution.
#[derive(Clone, Debug)]
pub struct Sampler {
    inner: Inner,
    lo: f64,
    hi: f64,
}

#[derive(Clone, Debug)]
enum Inner {
    Constant(f64),
    Uniform(f64, f64),
    Exp(Exp<f64>),
    LogNormal(LogNormal<f64>),
    Gamma(Gamma<f64>),
    Zipf { min: u64, cdf: Vec<f64> },
}

impl Sampler {
    /// One draw, clamped to the distribution's [min, max].
    pub fn sample(&self, rng: &mut StreamRng) -> f64 {
        let v = match &self.inner {
            Inner::Constant(v) => *v,
            Inner::Uniform(a, b) => {
                if a == b {
                    *a
                } else {
                    rng.random_range(*a..=*b)
                }
            }
            Inner::Exp(d) => d.sample(rng),
            Inner::LogNormal(d) => d.sample(rng),
            Inner::Gamma(d) => d.sample(rng),
            Inner::Zipf { min, cdf } => {
                let u: f64 = rng.random();
                let idx = cdf.partition_point(|&c| c < u).min(cdf.len() - 1);
                (*min + idx as u64) as f64
            }
        };
        v.clamp(self.lo, self.hi)
    }

    /// One draw rounded to a whole number of tokens, at least `floor`.
    pub fn sample_tokens(&self, rng: &mut StreamRng, floor: u32) -> u32 {
        let v = self.sample(rng).round();
        (v.min(u32::MAX as f64) as u32).max(floor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::RngStreams;

    #[test]
    fn zipf_default_matches_the_published_shape() {
        // Zipf alpha 2 on 1..=50: P(1) = 1 / H(50, 2) = 1 / 1.6251 = 0.615; mean = H(50,1)/H(50,2)
        // = 4.4992 / 1.6251 = 2.769.
        let d = Dist::Zipf {
            alpha: 2.0,
            min: 1,
            max: 50,
        };
        assert!((d.unclamped_mean() - 2.769).abs() < 0.01);
        let s = d.sampler();
        let mut rng = RngStreams::new(1).stream("t");
        let n = 200_000;
        let draws: Vec<f64> = (0..n).map(|_| s.sample(&mut rng)).collect();
        let ones = draws.iter().filter(|&&v| v == 1.0).count() as f64 / n as f64;
        let mean = draws.iter().sum::<f64>() / n as f64;
        // Binomial standard error of P(1) at n = 200k is 0.0011; 5 sigma is 0.0055.
        assert!((ones - 0.6153).abs() < 0.0055, "P(1) = {ones}");
        assert!((mean - 2.769).abs() < 0.05, "mean = {mean}");
        assert!(draws.iter().all(|&v| (1.0..=50.0).contains(&v)));
    }

    #[test]
    fn lognormal_median_and_clamp() {
        let d = Dist::Lognormal {
            median: 60.0,
            sigma: 1.4,
            min: None,
            max: Some(8192.0),
        };
        let s = d.sampler();
        let mut rng = RngStreams::new(2).stream("t");
        let mut v: Vec<f64> = (0..100_001).map(|_| s.sample(&mut rng)).collect();
        v.sort_by(f64::total_cmp);
        let median = v[50_000];
        assert!((median / 60.0 - 1.0).abs() < 0.03, "median = {median}");
        assert!(*v.last().unwrap() <= 8192.0);
    }

    #[test]
    fn validation_names_the_problem() {
        let bad = Dist::Exponential {
            mean: -1.0,
            min: None,
            max: None,
        };
        assert!(bad.validate().unwrap_err().contains("mean"));
        let bad = Dist::Zipf {
            alpha: 2.0,
            min: 5,
            max: 2,
        };
        assert!(bad.validate().is_err());
    }
}
