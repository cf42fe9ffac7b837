//! The calibrated cost model: per-operator coefficients fitted to real kernel timings taken on this machine
//! by `servesim calibrate`, stored in a profile file with the raw timings and the fit's held-out error.
//!
//! Operator models (t in seconds; E = weight elements of a linear layer, T = tokens):
//! - linear, T = 1 (a matrix-vector product, bandwidth-bound): a + g E;
//! - linear, T >= 2, piecewise in T (small-token matmuls on CPU are not affine from T = 1, so each T range
//!   gets its own fit): a + b E + c E T;
//! - decode attention over a batch: a + b (sequences) + c (sum of contexts x query width);
//! - prefill attention: a (per chunk) + b (q x c rectangle x query width);
//! - RMSNorm, SiLU-and-multiply, residual add: the measured time-versus-elements curve, interpolated in
//!   log-log space (these bend where the data leaves the caches);
//! - the step residual (`overhead`): what whole steps, executed as `servesim validate` executes them, take
//!   beyond their operators timed alone: a L + b L (decode sequences) + c L (prefill tokens) (layer
//!   weight elements), fitted to the remainder (see [`residual_features`]).
//!
//! Coefficients are per element or per (token x width), so a profile measured on a scaled-down shape predicts
//! a full-size model of the same family on this host.

use super::catalog::ModelShape;
use super::{BatchShape, CostModel, OpTimes, StepShape};
use crate::cost::op;
use crate::error::ConfigError;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Coefficients of `a + sum(coef_i x feature_i)`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Fit {
    pub coef: Vec<f64>,
}

impl Fit {
    pub fn eval(&self, features: &[f64]) -> f64 {
        self.coef
            .iter()
            .zip(features)
            .map(|(c, f)| c * f)
            .sum::<f64>()
            .max(0.0)
    }
}

/// A measured curve, interpolated linearly in log-log space (and extended by its end segments): for
/// element-wise kernels, whose time depends only on the element count but bends where data leaves the
/// caches, so no single line fits.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LogCurve {
    /// (elements, seconds), sorted by elements.
    pub points: Vec<(f64, f64)>,
}

impl LogCurve {
    pub fn from_points(mut pts: Vec<(f64, f64)>) -> Option<LogCurve> {
        pts.retain(|p| p.0 > 0.0 && p.1 > 0.0);
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        pts.dedup_by(|a, b| a.0 == b.0);
        (pts.len() >= 2).then_some(LogCurve { points: pts })
    }

    pub fn eval(&self, x: f64) -> f64 {
        if x <= 0.0 || self.points.is_empty() {
            return 0.0;
        }
        let p = &self.points;
        let i = p.partition_point(|q| q.0 < x).clamp(1, p.len() - 1);
        let (x0, y0) = (p[i - 1].0.ln(), p[i - 1].1.ln());
        let (x1, y1) = (p[i].0.ln(), p[i].1.ln());
        (y0 + (y1 - y0) * (x.ln() - x0) / (x1 - x0)).exp()
    }
}

/// One token range of the linear-layer model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinearSegment {
    pub t_min: u64,
    /// Features [1, E, E x T].
    pub fit: Fit,
}

fn cpu_device() -> String {
    "cpu".into()
}

/// Host and library facts, so a profile says where it came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Host {
    pub cpu: String,
    /// Where the operators ran: `cpu`, or `cuda:N` (in bf16).
    #[serde(default = "cpu_device")]
    pub device: String,
    pub threads: usize,
    pub candle_version: String,
    pub servesim_version: String,
    pub calibrated_model: String,
    pub scale: u32,
    pub repeats: usize,
    /// Wall-clock seconds the calibration took.
    pub seconds: f64,
}

/// This host as a hardware-catalog entry (same keys as catalog/hardware.toml), from the calibration's own
/// measurements: the best GEMM throughput seen (f32, not bf16: the CPU path) and the best weight-streaming
/// rate of the T = 1 products. Paste it under a `[host-cpu]` heading in a file given as `hardware.catalog`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostHardware {
    pub device_name: String,
    pub peak_bf16_tflops: f64,
    pub memory_bandwidth_gbps: f64,
    pub memory_gib: f64,
}

/// Held-out error of one operator group's fit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FitError {
    pub op: String,
    pub fitted_points: usize,
    pub held_out_points: usize,
    pub median_rel_error: f64,
    pub max_rel_error: f64,
}

/// One measured point.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RawTiming {
    pub op: String,
    /// The op's features (its model's, without the constant), e.g. [E, E x T] for linear.
    pub features: Vec<f64>,
    /// A readable description of the shape.
    pub shape: String,
    pub median_s: f64,
    pub min_s: f64,
    pub held_out: bool,
}

/// A calibration profile.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub host: Host,
    pub hardware: HostHardware,
    /// T = 1: features [1, E].
    pub gemv: Fit,
    pub linear: Vec<LinearSegment>,
    /// Features [1, sequences, sum(ctx) x qdim].
    pub attn_decode: Fit,
    /// Features [1 per chunk, rect x qdim].
    pub attn_prefill: Fit,
    /// Time versus elements.
    pub rmsnorm: LogCurve,
    pub silu_mul: LogCurve,
    pub add: LogCurve,
    /// Whole steps' time beyond the sum of their operators timed alone, features
    /// [`residual_features`]: executed as `servesim validate` executes them (operators timed alone keep
    /// their operands in cache; inside a step the other layers evict them, and the step allocates its
    /// activations). Empty (no residual) in profiles taken on a GPU or before it was measured.
    #[serde(default)]
    pub step_residual: Fit,
    pub errors: Vec<FitError>,
    /// Over all held-out points of all operators.
    pub median_rel_error: f64,
    pub max_rel_error: f64,
    pub raw: Vec<RawTiming>,
}

impl Profile {
    pub fn load(path: &Path) -> Result<Profile, ConfigError> {
        let text = crate::input::read_text(crate::input::InputKind::Profile, path)?;
        let p: Profile = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            origin: path.display().to_string(),
            message: format!("not a servesim calibration profile: {e}"),
        })?;
        if p.linear.is_empty() || p.gemv.coef.len() != 2 {
            return Err(ConfigError::Parse {
                origin: path.display().to_string(),
                message: "the profile has no linear-layer fit; re-run servesim calibrate".into(),
            });
        }
        Ok(p)
    }

    /// Time of a linear layer with `e` weight elements over `t` tokens.
    pub fn linear(&self, e: f64, t: f64) -> f64 {
        if t <= 0.0 {
            return 0.0;
        }
        if t < 1.5 {
            return self.gemv.eval(&[1.0, e]);
        }
        let seg = self
            .linear
            .iter()
            .rev()
            .find(|s| t >= s.t_min as f64)
            .unwrap_or(&self.linear[0]);
        seg.fit.eval(&[1.0, e, e * t])
    }
}

/// The features of a step's residual time ([`Profile::step_residual`]): per layer, per layer and decode
/// sequence, and per layer and prefill token times the layer's linear weight elements (so a residual
/// measured on a scaled-down shape grows with the full shape's GEMM work).
pub fn residual_features(m: &ModelShape, b: &BatchShape) -> [f64; 3] {
    let l = m.num_layers as f64;
    let (h, q, kv, i) = (
        m.hidden_size as f64,
        m.q_dim() as f64,
        m.kv_dim() as f64,
        m.intermediate_size as f64,
    );
    let layer_weights = h * (q + 2.0 * kv) + q * h + 3.0 * h * i;
    [
        l,
        l * b.decode_seqs as f64,
        l * b.prefill_tokens as f64 * layer_weights,
    ]
}

/// The cost model a profile defines, for one model shape (per GPU rank).
#[derive(Clone, Debug)]
pub struct CalibratedCost {
    pub profile: Profile,
    pub model: ModelShape,
}

impl CalibratedCost {
    /// The cost model of `model` (one GPU rank's shape) under the profile at `path`.
    pub fn load(path: &Path, model: &ModelShape) -> Result<CalibratedCost, ConfigError> {
        Ok(CalibratedCost {
            profile: Profile::load(path)?,
            model: model.clone(),
        })
    }
}

const ATTN_DECODE: &str = op::ATTN_DECODE;

impl CalibratedCost {
    fn attn_decode(&self, b: &BatchShape) -> f64 {
        let m = &self.model;
        m.num_layers as f64
            * self.profile.attn_decode.eval(&[
                1.0,
                b.decode_seqs as f64,
                b.decode_context_tokens as f64 * m.q_dim() as f64,
            ])
    }
}

impl CostModel for CalibratedCost {
    fn name(&self) -> &'static str {
        "calibrated"
    }

    /// Decode attention is the only operator that reads `decode_context_tokens`.
    fn decode_context_time(&self, shape: &BatchShape) -> Option<(&'static str, f64)> {
        (shape.decode_seqs > 0).then(|| (ATTN_DECODE, self.attn_decode(shape)))
    }

    fn breakdown(&self, shape: &StepShape) -> OpTimes {
        let b = &shape.sums;
        let p = &self.profile;
        let m = &self.model;
        let l = m.num_layers as f64;
        let t = b.total_tokens() as f64;
        let (h, q, kv, i) = (
            m.hidden_size as f64,
            m.q_dim() as f64,
            m.kv_dim() as f64,
            m.intermediate_size as f64,
        );
        let mut out = OpTimes::default();
        let mut push = |op, seconds| out.push(op, seconds);
        if t > 0.0 {
            push(op::QKV_PROJ, l * p.linear(h * (q + 2.0 * kv), t));
            push(op::O_PROJ, l * p.linear(q * h, t));
            push(op::MLP_UP, l * p.linear(h * 2.0 * i, t));
            push(op::MLP_ACT, l * p.silu_mul.eval(t * i));
            push(op::MLP_DOWN, l * p.linear(i * h, t));
            push(
                op::NORMS,
                l * 2.0 * (p.rmsnorm.eval(t * h) + p.add.eval(t * h)),
            );
        }
        if b.prefill_seqs > 0 {
            let rect = b.prefill_attn_rect as f64;
            push(
                op::ATTN_PREFILL,
                l * p.attn_prefill.eval(&[b.prefill_seqs as f64, rect * q]),
            );
        }
        if b.decode_seqs > 0 {
            push(ATTN_DECODE, self.attn_decode(b));
        }
        if b.sampled > 0 {
            push(
                op::LM_HEAD,
                p.linear(h * m.vocab_size as f64, b.sampled as f64),
            );
        }
        if t > 0.0 && p.step_residual.coef.len() == 3 {
            push(op::OVERHEAD, p.step_residual.eval(&residual_features(m, b)));
        }
        out
    }
}

/// As [`fit_relative`], with every coefficient >= 0 (a time never shrinks as a shape grows): features whose
/// coefficient comes out negative are dropped, most negative first, and the rest refitted.
pub fn fit_relative_nonneg(rows: &[(Vec<f64>, f64)]) -> Option<Fit> {
    fit_weighted_nonneg(&relative(rows))
}

/// As [`fit_weighted`], with every coefficient >= 0, as [`fit_relative_nonneg`] keeps them.
pub fn fit_weighted_nonneg(rows: &[(Vec<f64>, f64, f64)]) -> Option<Fit> {
    let k = rows.first()?.0.len();
    let mut active: Vec<usize> = (0..k).collect();
    loop {
        let sub: Vec<(Vec<f64>, f64, f64)> = rows
            .iter()
            .map(|(x, y, w)| (active.iter().map(|&j| x[j]).collect(), *y, *w))
            .collect();
        let f = fit_weighted(&sub)?;
        let worst = f
            .coef
            .iter()
            .enumerate()
            .filter(|(_, c)| **c < 0.0)
            .min_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i);
        match worst {
            None => {
                let mut coef = vec![0.0; k];
                for (c, &j) in f.coef.iter().zip(&active) {
                    coef[j] = *c;
                }
                return Some(Fit { coef });
            }
            Some(_) if active.len() == 1 => return None,
            Some(i) => {
                active.remove(i);
            }
        }
    }
}

/// Rows weighted by 1 / observed^2, so least squares minimises the squared relative errors.
fn relative(rows: &[(Vec<f64>, f64)]) -> Vec<(Vec<f64>, f64, f64)> {
    rows.iter()
        .map(|(x, y)| (x.clone(), *y, 1.0 / (y * y).max(1e-30)))
        .collect()
}

/// Weighted least squares minimising the sum of squared *relative* errors: rows (features, observed).
/// Columns are scaled to unit maximum before solving the normal equations, for conditioning.
pub fn fit_relative(rows: &[(Vec<f64>, f64)]) -> Option<Fit> {
    fit_weighted(&relative(rows))
}

/// Weighted least squares: rows (features, observed, weight), minimising the sum of weight x (fit -
/// observed)^2. Columns are scaled to unit maximum before solving the normal equations, for conditioning.
/// None with fewer rows than features or a singular design.
pub fn fit_weighted(rows: &[(Vec<f64>, f64, f64)]) -> Option<Fit> {
    let k = rows.first()?.0.len();
    if rows.len() < k {
        return None;
    }
    let mut scale = vec![0.0f64; k];
    for (x, _, _) in rows {
        for (s, v) in scale.iter_mut().zip(x) {
            *s = s.max(v.abs());
        }
    }
    for s in &mut scale {
        if *s == 0.0 {
            *s = 1.0;
        }
    }
    let mut a = vec![vec![0.0; k + 1]; k];
    for (x, y, w) in rows {
        let xs: Vec<f64> = x.iter().zip(&scale).map(|(v, s)| v / s).collect();
        for r in 0..k {
            for c in 0..k {
                a[r][c] += w * xs[r] * xs[c];
            }
            a[r][k] += w * xs[r] * y;
        }
    }
    // Gaussian elimination with partial pivoting (with a tiny ridge for rank-deficient designs).
    for (r, row) in a.iter_mut().enumerate() {
        row[r] += 1e-12 * row[r].abs().max(1e-300);
    }
    for col in 0..k {
        let piv = (col..k).max_by(|&x, &y| a[x][col].abs().total_cmp(&a[y][col].abs()))?;
        if a[piv][col].abs() < 1e-300 {
            return None;
        }
        a.swap(col, piv);
        let pivot_row = a[col].clone();
        for (r, row) in a.iter_mut().enumerate() {
            if r != col {
                let f = row[col] / pivot_row[col];
                for (x, p) in row.iter_mut().zip(&pivot_row).skip(col) {
                    *x -= f * p;
                }
            }
        }
    }
    let coef = (0..k).map(|r| a[r][k] / a[r][r] / scale[r]).collect();
    Some(Fit { coef })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonneg_fit_drops_a_negative_intercept() {
        // y = 1e-9 x exactly, observed on x in [1e3, 1e6]; with noise making the free intercept negative,
        // the constrained fit keeps it at 0 and the slope near 1e-9.
        let rows: Vec<(Vec<f64>, f64)> = [1e3, 1e4, 1e5, 1e6]
            .iter()
            .zip([0.9, 1.0, 1.0, 1.0])
            .map(|(&x, k)| (vec![1.0, x], k * 1e-9 * x))
            .collect();
        let f = fit_relative_nonneg(&rows).unwrap();
        assert!(f.coef.iter().all(|&c| c >= 0.0));
        assert!((f.coef[1] / 1e-9 - 1.0).abs() < 0.1, "{:?}", f.coef);
    }

    #[test]
    fn a_weighted_fit_recovers_a_residual_that_is_negative_on_some_rows() {
        // y = -1e-4 + 2e-6 x on x in 40..1000: negative at x = 40 (-2e-5), which a relative fit (weights
        // 1 / y^2) cannot take as an observation but a weighted one with other weights can.
        let rows: Vec<(Vec<f64>, f64, f64)> = [40.0, 300.0, 600.0, 1000.0]
            .iter()
            .map(|&x: &f64| (vec![1.0, x], -1e-4 + 2e-6 * x, 1.0 / (x * x)))
            .collect();
        let f = fit_weighted(&rows).unwrap();
        assert!((f.coef[0] / -1e-4 - 1.0).abs() < 1e-6, "{:?}", f.coef);
        assert!((f.coef[1] / 2e-6 - 1.0).abs() < 1e-6, "{:?}", f.coef);
        // Kept >= 0, the negative intercept goes and the slope alone is the weighted mean of y / x:
        // (-5e-7 + 5e-4/300 + 1.1e-3/600 + 1.9e-3/1000) / 4 = 1.225e-6.
        let f = fit_weighted_nonneg(&rows).unwrap();
        assert_eq!(f.coef[0], 0.0);
        assert!((f.coef[1] / 1.225e-6 - 1.0).abs() < 1e-3, "{:?}", f.coef);
    }

    #[test]
    fn the_step_residual_adds_its_features_times_its_coefficients() {
        let model = ModelShape::load("tiny").unwrap();
        let mut shape = StepShape::default();
        shape.add(10, 10, false, true);
        shape.add(1, 50, true, true);
        shape.add(1, 70, true, true);
        let f = residual_features(&model, &shape.sums);
        // tiny: L layers, hidden h, query width q, KV width kv, intermediate i.
        let (l, h, q, kv, i) = (
            model.num_layers as f64,
            model.hidden_size as f64,
            model.q_dim() as f64,
            model.kv_dim() as f64,
            model.intermediate_size as f64,
        );
        let per_layer = h * (q + 2.0 * kv) + q * h + 3.0 * h * i;
        assert_eq!(f, [l, 2.0 * l, 10.0 * l * per_layer]);
        let profile = |residual: Vec<f64>| Profile {
            step_residual: Fit { coef: residual },
            ..crate::cost::calibrated::tests::profile()
        };
        let cost = |p| CalibratedCost {
            profile: p,
            model: model.clone(),
        };
        let without = total_of(&cost(profile(vec![])).breakdown(&shape));
        let with = cost(profile(vec![1e-4, 2e-5, 3e-12])).breakdown(&shape);
        let overhead = with.iter().find(|o| o.op == op::OVERHEAD).unwrap().seconds;
        let want = 1e-4 * f[0] + 2e-5 * f[1] + 3e-12 * f[2];
        assert!(
            (overhead / want - 1.0).abs() < 1e-12,
            "{overhead} vs {want}"
        );
        assert!((total_of(&with) - without - want).abs() < 1e-12);
    }

    fn total_of(ops: &[crate::cost::OpTime]) -> f64 {
        ops.iter().map(|o| o.seconds).sum()
    }

    /// A profile with every operator at a made-up constant cost.
    pub(crate) fn profile() -> Profile {
        let c = |v: f64, n: usize| Fit {
            coef: std::iter::once(v)
                .chain(std::iter::repeat_n(0.0, n - 1))
                .collect(),
        };
        let curve = LogCurve::from_points(vec![(1.0, 1e-6), (1e6, 1e-3)]).unwrap();
        Profile {
            host: Host {
                cpu: "test".into(),
                device: "cpu".into(),
                threads: 1,
                candle_version: "0".into(),
                servesim_version: "0".into(),
                calibrated_model: "tiny".into(),
                scale: 1,
                repeats: 1,
                seconds: 0.0,
            },
            hardware: HostHardware {
                device_name: "test".into(),
                peak_bf16_tflops: 1.0,
                memory_bandwidth_gbps: 10.0,
                memory_gib: 1.0,
            },
            gemv: c(1e-5, 2),
            linear: vec![LinearSegment {
                t_min: 2,
                fit: c(2e-5, 3),
            }],
            attn_decode: c(1e-5, 3),
            attn_prefill: c(1e-5, 2),
            rmsnorm: curve.clone(),
            silu_mul: curve.clone(),
            add: curve,
            step_residual: Fit::default(),
            errors: vec![],
            median_rel_error: 0.0,
            max_rel_error: 0.0,
            raw: vec![],
        }
    }

    #[test]
    fn fit_recovers_exact_coefficients() {
        // y = 2e-6 + 3e-9 E + 4e-12 E T on a grid: the fit must return them.
        let mut rows = Vec::new();
        for e in [1e5, 1e6, 1e7] {
            for t in [2.0, 16.0, 128.0, 1024.0] {
                rows.push((vec![1.0, e, e * t], 2e-6 + 3e-9 * e + 4e-12 * e * t));
            }
        }
        let f = fit_relative(&rows).unwrap();
        for (got, want) in f.coef.iter().zip([2e-6, 3e-9, 4e-12]) {
            assert!((got / want - 1.0).abs() < 1e-6, "{got} vs {want}");
        }
    }
}
