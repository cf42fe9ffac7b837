//! Measured operator tables (`cost.kind = "table"`): per-layer operator times versus token count, in the
//! format of Vidur's published profiles (`data/profiling/compute/<gpu>/<model>/mlp.csv`, milliseconds).
//! Times between measured token counts are interpolated linearly; beyond the largest they are extended
//! by the last segment's slope. The tables have no attention kernels or LM head for these models, so those
//! operators come from the roofline, and the breakdown says so.

use super::catalog::ModelShape;
use super::roofline::Roofline;
use super::{BatchShape, CostModel, OpTime, OpTimes, StepShape};
use crate::cost::op;
use crate::error::ConfigError;
use std::collections::BTreeMap;
use std::path::Path;

/// Per-layer operators in the table, with how many times each runs per layer.
const LAYER_OPS: &[(&str, f64)] = &[
    (op::INPUT_LAYERNORM, 1.0),
    (op::ATTN_PRE_PROJ, 1.0),
    (op::ATTN_ROPE, 1.0),
    (op::ATTN_POST_PROJ, 1.0),
    (op::POST_ATTENTION_LAYERNORM, 1.0),
    (op::MLP_UP_PROJ, 1.0),
    (op::MLP_ACT, 1.0),
    (op::MLP_DOWN_PROJ, 1.0),
    (op::ADD, 2.0),
];

/// One operator's time (seconds) at measured token counts.
#[derive(Clone, Debug, PartialEq)]
pub struct Curve {
    pub points: Vec<(f64, f64)>,
}

impl Curve {
    /// Linear interpolation; linear extrapolation past the ends.
    pub fn at(&self, x: f64) -> f64 {
        let p = &self.points;
        if p.len() == 1 {
            return p[0].1;
        }
        let i = p.partition_point(|&(px, _)| px < x).clamp(1, p.len() - 1);
        let (x0, y0) = p[i - 1];
        let (x1, y1) = p[i];
        (y0 + (y1 - y0) * (x - x0) / (x1 - x0)).max(0.0)
    }
}

/// Reads the per-operator medians for one tensor-parallel degree; checks the table matches the model.
pub fn read_mlp_table(
    path: &Path,
    model: &ModelShape,
    tp: u32,
) -> Result<BTreeMap<&'static str, Curve>, ConfigError> {
    let origin = path.display().to_string();
    let bad = |line: usize, m: String| ConfigError::Parse {
        origin: format!("{origin} line {line}"),
        message: m,
    };
    let text = crate::input::read_text(crate::input::InputKind::Table, path)?;
    let mut rdr = csv::Reader::from_reader(text.as_bytes());
    let h = rdr.headers().map_err(|e| bad(1, e.to_string()))?.clone();
    let col = |name: &str| {
        h.iter().position(|x| x == name).ok_or_else(|| {
            bad(
                1,
                format!("missing column `{name}` (a Vidur mlp.csv profile)"),
            )
        })
    };
    let c_tokens = col("num_tokens")?;
    let c_tp = col("num_tensor_parallel_workers")?;
    let c_embd = col("n_embd")?;
    let c_exp = col("n_expanded_embd")?;
    let cols: Vec<(&'static str, usize)> = LAYER_OPS
        .iter()
        .map(|&(op, _)| Ok((op, col(&format!("time_stats.{op}.median"))?)))
        .collect::<Result<_, ConfigError>>()?;
    let mut acc: BTreeMap<&'static str, BTreeMap<u64, (f64, u32)>> = BTreeMap::new();
    for (i, rec) in rdr.records().enumerate() {
        let line = i + 2;
        let rec = rec.map_err(|e| bad(line, format!("malformed row: {e}")))?;
        let num = |c: usize, name: &str| -> Result<f64, ConfigError> {
            rec.get(c)
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| bad(line, format!("field `{name}` is not a number >= 0")))
        };
        if num(c_tp, "num_tensor_parallel_workers")? as u32 != tp {
            continue;
        }
        let embd = num(c_embd, "n_embd")? as u64;
        let exp = num(c_exp, "n_expanded_embd")? as u64;
        if embd != model.hidden_size || exp != model.intermediate_size {
            return Err(bad(
                line,
                format!(
                    "the table is for n_embd {embd} / n_expanded_embd {exp}, but model {} has hidden_size {} / \
                     intermediate_size {}; use the table measured for this model",
                    model.name, model.hidden_size, model.intermediate_size
                ),
            ));
        }
        let t = num(c_tokens, "num_tokens")? as u64;
        for &(op, c) in &cols {
            let ms = num(c, &format!("time_stats.{op}.median"))?;
            let e = acc.entry(op).or_default().entry(t).or_insert((0.0, 0));
            e.0 += ms / 1e3;
            e.1 += 1;
        }
    }
    if acc.is_empty() {
        return Err(bad(
            1,
            format!("no rows for num_tensor_parallel_workers = {tp}; the table has other degrees"),
        ));
    }
    Ok(acc
        .into_iter()
        .map(|(op, pts)| {
            (
                op,
                Curve {
                    points: pts
                        .into_iter()
                        .map(|(t, (s, n))| (t as f64, s / n as f64))
                        .collect(),
                },
            )
        })
        .collect())
}

/// Per-layer operators from a measured table; attention, LM head and overheads from the roofline.
#[derive(Debug)]
pub struct TableCost {
    /// (operator, kernels per layer, curve) in `LAYER_OPS` order.
    ops: Vec<(&'static str, f64, Curve)>,
    pub roofline: Roofline,
    /// The per-layer operators depend only on the token count, which repeats step after step: memoised.
    memo: std::cell::RefCell<crate::fasthash::FastMap<u64, Vec<OpTime>>>,
}

impl TableCost {
    pub fn new(table: BTreeMap<&'static str, Curve>, roofline: Roofline) -> TableCost {
        let ops = LAYER_OPS
            .iter()
            .filter_map(|&(op, times)| table.get(op).map(|c| (op, times, c.clone())))
            .collect();
        TableCost {
            ops,
            roofline,
            memo: Default::default(),
        }
    }
}

impl CostModel for TableCost {
    fn name(&self) -> &'static str {
        "table"
    }

    fn breakdown(&self, shape: &StepShape) -> OpTimes {
        let b = &shape.sums;
        let layers = self.roofline.model.num_layers as f64;
        let t = b.total_tokens();
        let mut out = OpTimes::default();
        if t > 0 {
            let mut memo = self.memo.borrow_mut();
            let layer_ops = memo.entry(t).or_insert_with(|| {
                self.ops
                    .iter()
                    .map(|(op, times, c)| OpTime {
                        op,
                        seconds: layers * times * c.at(t as f64),
                    })
                    .collect()
            });
            out.extend(layer_ops.iter().copied());
        }
        // Attention, LM head and overheads: the roofline's.
        out.extend(self.roofline.breakdown(shape).iter().copied().filter(|o| {
            matches!(
                o.op,
                op::ATTN_PREFILL | op::ATTN_DECODE | op::LM_HEAD | op::OVERHEAD
            )
        }));
        out
    }

    /// Decode attention is the roofline's, and nothing else here reads the contexts.
    fn decode_context_time(&self, shape: &BatchShape) -> Option<(&'static str, f64)> {
        self.roofline.decode_context_time(shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolates_and_extrapolates() {
        let c = Curve {
            points: vec![(1.0, 1.0), (3.0, 2.0), (5.0, 4.0)],
        };
        assert_eq!(c.at(2.0), 1.5);
        assert_eq!(c.at(5.0), 4.0);
        assert_eq!(c.at(7.0), 6.0);
        assert_eq!(c.at(0.0), 0.5);
    }
}

/// One operator at one token count: the measured table and the roofline, per layer, in seconds.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckRow {
    pub op: &'static str,
    pub tokens: u64,
    pub measured_s: f64,
    pub roofline_s: f64,
}

/// The roofline's operators next to a measured table's. Table operators map to roofline classes:
/// attn_pre_proj = qkv_proj, attn_post_proj = o_proj, mlp_up_proj = mlp_up, mlp_act = mlp_act,
/// mlp_down_proj = mlp_down, attn_rope = attn_rope, and the two layernorms plus two adds = norms.
pub fn roofline_vs_table(
    table: &BTreeMap<&'static str, Curve>,
    roofline: &Roofline,
    tokens: &[u64],
) -> Vec<CheckRow> {
    let pairs: [(&'static str, &[&str], &[f64]); 7] = [
        (op::QKV_PROJ, &[op::ATTN_PRE_PROJ], &[1.0]),
        (op::ATTN_ROPE, &[op::ATTN_ROPE], &[1.0]),
        (op::O_PROJ, &[op::ATTN_POST_PROJ], &[1.0]),
        (op::MLP_UP, &[op::MLP_UP_PROJ], &[1.0]),
        (op::MLP_ACT, &[op::MLP_ACT], &[1.0]),
        (op::MLP_DOWN, &[op::MLP_DOWN_PROJ], &[1.0]),
        (
            op::NORMS,
            &[op::INPUT_LAYERNORM, op::POST_ATTENTION_LAYERNORM, op::ADD],
            &[1.0, 1.0, 2.0],
        ),
    ];
    let layers = roofline.model.num_layers as f64;
    let mut out = Vec::new();
    for &t in tokens {
        let mut b = StepShape::default();
        b.add(t as u32, t as u32, false, false);
        let r = roofline.breakdown(&b);
        for (op, cols, mult) in pairs {
            let measured: Option<f64> = cols
                .iter()
                .zip(mult)
                .map(|(c, k)| table.get(c).map(|cv| k * cv.at(t as f64)))
                .sum();
            let roof = r.iter().find(|o| o.op == op).map(|o| o.seconds / layers);
            if let (Some(m), Some(rf)) = (measured, roof) {
                out.push(CheckRow {
                    op,
                    tokens: t,
                    measured_s: m,
                    roofline_s: rf,
                });
            }
        }
    }
    out
}
