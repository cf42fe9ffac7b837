//! Measured operator tables (`cost.kind = "table"`): per-layer operator times versus token count, in the
//! format of Vidur's published profiles (`data/profiling/compute/<gpu>/<model>/mlp.csv`, milliseconds),
//! and, in the H200 format (`data/profiles/h200/llama-3.1-8b/README.md`), attention and the LM head.
//! Times between measured token counts are interpolated linearly; beyond the largest they are extended
//! by the last segment's slope.
//!
//! Attention is interpolated in the variables its kernels scale with:
//! - decode, per layer over the (batch B, context L) grid: the log of the time bilinear in (log2 B, log2 L)
//!   inside the grid; a step's B sequences are priced at their mean context (the split-KV kernel's time
//!   follows the KV tokens read), and never below one sequence at the batch's longest context (the kernel
//!   waits for its longest sequence). Past the grid's largest batch or context the time grows in proportion to the KV tokens read;
//!   below its smallest it stays at the smallest measured time (the kernels are latency-bound there);
//! - prefill, per chunk and layer, over causal (query, key) pairs q (c - q) + q (q + 1) / 2, linearly
//!   between measured pair counts and in proportion to the pairs past the largest: a prefill from an
//!   empty context on the from-empty rows, a chunk after earlier tokens on the chunk rows;
//! - the LM head, per step, over the rows sampled.
//!
//! Outside the per-layer operators but priced from the same table: the embedding gather (Vidur's `emb`
//! column, once per step), the final RMSNorm (one more `input_layernorm`), and the kernels no table
//! measures but that move bytes as an `add` does, priced on the `add` curve at the token count that moves
//! as many bytes (the KV write, two kernels per layer reading and writing 2 x t x kv_dim; the gather of
//! the sampled rows before the LM head). Priced by the roofline: the all-reduce of tensor parallelism
//! and host time (hidden under async scheduling); without an attention or LM-head table, those
//! operators too.

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

/// The embedding gather's column in `mlp.csv` (once per step, not per layer).
const EMB: &str = "emb";

/// One operator's time (seconds) at measured token counts.
#[derive(Clone, Debug, PartialEq)]
pub struct Curve {
    pub points: Vec<(f64, f64)>,
}

impl Curve {
    /// Linear interpolation between points; at or below the first, its value (a latency floor); past the
    /// last, in proportion to `x` (work that grows with `x` on a saturated kernel).
    pub fn at_proportional(&self, x: f64) -> f64 {
        let p = &self.points;
        let (first, last) = (p[0], p[p.len() - 1]);
        if x <= first.0 {
            first.1
        } else if x >= last.0 {
            last.1 * x / last.0
        } else {
            self.at(x)
        }
    }

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

/// A measured table read from a user's CSV file: its header and rows, with errors that name the file,
/// the line and the field. `what` names the format for a missing column ("a Vidur mlp.csv profile").
struct CsvTable {
    origin: String,
    what: &'static str,
    header: csv::StringRecord,
    /// (line number, row).
    rows: Vec<(usize, csv::StringRecord)>,
}

impl CsvTable {
    fn read(path: &Path, what: &'static str) -> Result<CsvTable, ConfigError> {
        let text = crate::input::read_text(crate::input::InputKind::Table, path)?;
        let mut t = CsvTable {
            origin: path.display().to_string(),
            what,
            header: csv::StringRecord::new(),
            rows: Vec::new(),
        };
        let mut rdr = csv::Reader::from_reader(text.as_bytes());
        t.header = rdr.headers().map_err(|e| t.bad(1, e.to_string()))?.clone();
        for (i, rec) in rdr.records().enumerate() {
            let line = i + 2;
            let rec = rec.map_err(|e| t.bad(line, format!("malformed row: {e}")))?;
            t.rows.push((line, rec));
        }
        Ok(t)
    }

    fn bad(&self, line: usize, message: String) -> ConfigError {
        ConfigError::Parse {
            origin: format!("{} line {line}", self.origin),
            message,
        }
    }

    fn col(&self, name: &str) -> Result<usize, ConfigError> {
        self.header
            .iter()
            .position(|x| x == name)
            .ok_or_else(|| self.bad(1, format!("missing column `{name}` ({})", self.what)))
    }

    /// Field `c` (named `name`) of the row at `line`, a finite number >= 0.
    fn num(
        &self,
        line: usize,
        rec: &csv::StringRecord,
        c: usize,
        name: &str,
    ) -> Result<f64, ConfigError> {
        rec.get(c)
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| self.bad(line, format!("field `{name}` is not a number >= 0")))
    }

    /// Field `c` (named `name`) of the row at `line`, a whole number from 0 to `max`.
    fn count(
        &self,
        line: usize,
        rec: &csv::StringRecord,
        c: usize,
        name: &str,
        max: u64,
    ) -> Result<u64, ConfigError> {
        match rec.get(c).map(|v| v.trim().parse::<u64>()) {
            Some(Ok(n)) if n <= max => Ok(n),
            _ => Err(self.bad(
                line,
                format!("field `{name}` is not a whole number from 0 to {max}"),
            )),
        }
    }
}

/// Reads the per-operator medians for one tensor-parallel degree; checks the table matches the model.
pub fn read_mlp_table(
    path: &Path,
    model: &ModelShape,
    tp: u32,
) -> Result<BTreeMap<&'static str, Curve>, ConfigError> {
    let t = CsvTable::read(path, "a Vidur mlp.csv profile")?;
    let c_tokens = t.col("num_tokens")?;
    let c_tp = t.col("num_tensor_parallel_workers")?;
    let c_embd = t.col("n_embd")?;
    let c_exp = t.col("n_expanded_embd")?;
    let mut cols: Vec<(&'static str, usize)> = LAYER_OPS
        .iter()
        .map(|&(op, _)| Ok((op, t.col(&format!("time_stats.{op}.median"))?)))
        .collect::<Result<_, ConfigError>>()?;
    // The embedding is optional: without it the roofline prices the gather.
    if let Ok(c) = t.col(&format!("time_stats.{EMB}.median")) {
        cols.push((EMB, c));
    }
    let mut acc: BTreeMap<&'static str, BTreeMap<u64, (f64, u32)>> = BTreeMap::new();
    for (line, rec) in &t.rows {
        let (line, num) = (*line, |c: usize, name: &str| t.num(*line, rec, c, name));
        if num(c_tp, "num_tensor_parallel_workers")? as u32 != tp {
            continue;
        }
        let embd = num(c_embd, "n_embd")? as u64;
        let exp = num(c_exp, "n_expanded_embd")? as u64;
        if embd != model.hidden_size || exp != model.intermediate_size {
            return Err(t.bad(
                line,
                format!(
                    "the table is for n_embd {embd} / n_expanded_embd {exp}, but model {} has hidden_size {} / \
                     intermediate_size {}; use the table measured for this model",
                    model.name, model.hidden_size, model.intermediate_size
                ),
            ));
        }
        let tokens = num(c_tokens, "num_tokens")? as u64;
        for &(op, c) in &cols {
            let ms = num(c, &format!("time_stats.{op}.median"))?;
            let e = acc.entry(op).or_default().entry(tokens).or_insert((0.0, 0));
            e.0 += ms / 1e3;
            e.1 += 1;
        }
    }
    if acc.is_empty() {
        return Err(t.bad(
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

/// Decode attention per layer (seconds) on a complete (batch, context) grid.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodeGrid {
    batches: Vec<f64>,
    contexts: Vec<f64>,
    /// Row-major: `secs[i * contexts.len() + j]` at `batches[i]`, `contexts[j]`.
    secs: Vec<f64>,
}

impl DecodeGrid {
    /// Seconds per layer for `b` sequences at mean context `l` (see the module docs).
    pub fn at(&self, b: f64, l: f64) -> f64 {
        let (bs, cs) = (&self.batches, &self.contexts);
        let scale = (b / bs[bs.len() - 1]).max(1.0) * (l / cs[cs.len() - 1]).max(1.0);
        let b = b.clamp(bs[0], bs[bs.len() - 1]);
        let l = l.clamp(cs[0], cs[cs.len() - 1]);
        // The cell and the position inside it, in log2.
        let cell = |v: &[f64], x: f64| {
            let i = v.partition_point(|&p| p < x).clamp(1, v.len().max(2) - 1);
            if v.len() == 1 {
                return (0, 0, 0.0);
            }
            let (x0, x1) = (v[i - 1].log2(), v[i].log2());
            (i - 1, i, ((x.log2() - x0) / (x1 - x0)).clamp(0.0, 1.0))
        };
        let (i0, i1, u) = cell(bs, b);
        let (j0, j1, w) = cell(cs, l);
        let n = cs.len();
        // Bilinear in the log of the time: between grid points the time follows the local power law
        // (t ~ B^a L^b), as the kernels do; bilinear in the time itself overshoots by up to 12% mid-cell.
        let t = |i: usize, j: usize| self.secs[i * n + j].ln();
        let lo = t(i0, j0) * (1.0 - w) + t(i0, j1) * w;
        let hi = t(i1, j0) * (1.0 - w) + t(i1, j1) * w;
        (lo * (1.0 - u) + hi * u).exp() * scale
    }
}

/// Attention tables: decode over (batch, context), prefill over causal pairs.
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionTable {
    pub decode: DecodeGrid,
    /// Seconds per layer of a prefill from an empty context against its causal pairs.
    pub prefill: Curve,
    /// The same for a chunk after earlier tokens (its queries attend to a longer prefix at once, which
    /// the kernels run at another speed than a prefill of as many pairs); the prefill curve where the
    /// table has no chunk rows.
    pub chunk: Curve,
}

impl AttentionTable {
    /// Seconds per layer of one chunk of `q` tokens ending at context `c` (see the module docs).
    pub fn chunk_seconds(&self, q: f64, c: f64) -> f64 {
        let pairs = q * (c - q) + q * (q + 1.0) / 2.0;
        if c > q {
            self.chunk.at_proportional(pairs)
        } else {
            self.prefill.at_proportional(pairs)
        }
    }
}

/// One row of `attention.csv` (H200 format): seconds per layer.
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionRow {
    /// `decode_*`, `prefill_*` or `chunk_*`.
    pub case: String,
    pub backend: String,
    pub batch: u64,
    pub q_tokens: u64,
    pub context: u64,
    pub secs: f64,
}

impl AttentionRow {
    /// A decode row (`decode_*`): `batch` sequences at context `context`.
    pub fn is_decode(&self) -> bool {
        self.case.starts_with("decode")
    }

    /// A prefill (`prefill_*`, from an empty context) or chunk (`chunk_*`) row: `q_tokens` ending at
    /// `context`.
    pub fn is_prefill(&self) -> bool {
        self.case.starts_with("prefill") || self.case.starts_with("chunk")
    }
}

/// Reads every row of `attention.csv` in the H200 format; errors name the file, line and field.
pub fn read_attention_rows(path: &Path) -> Result<Vec<AttentionRow>, ConfigError> {
    let t = CsvTable::read(path, "an attention.csv in the H200 format")?;
    let (c_case, c_backend, c_batch) = (t.col("case")?, t.col("backend")?, t.col("batch")?);
    let (c_q, c_ctx, c_ms) = (
        t.col("q_tokens")?,
        t.col("context")?,
        t.col("ms_per_layer_median")?,
    );
    let mut rows = Vec::new();
    for (line, rec) in &t.rows {
        let line = *line;
        let count = |c: usize, name: &str, max: u64| t.count(line, rec, c, name, max);
        let row = AttentionRow {
            case: rec.get(c_case).unwrap_or("").to_string(),
            backend: rec.get(c_backend).unwrap_or("").to_string(),
            batch: count(c_batch, "batch", MAX_BATCH)?,
            q_tokens: count(c_q, "q_tokens", MAX_TOKENS)?,
            context: count(c_ctx, "context", MAX_TOKENS)?,
            secs: t.num(line, rec, c_ms, "ms_per_layer_median")? / 1e3,
        };
        if !row.is_decode() && !row.is_prefill() {
            return Err(t.bad(
                line,
                format!(
                    "case `{}` is none of decode_*, prefill_* or chunk_*",
                    row.case
                ),
            ));
        }
        if row.is_decode() && row.secs <= 0.0 {
            return Err(t.bad(
                line,
                "field `ms_per_layer_median` is 0 in a decode row; decode times are interpolated in their \
                 logarithm and must be above 0"
                    .into(),
            ));
        }
        if row.is_prefill() && (row.q_tokens == 0 || row.context < row.q_tokens) {
            return Err(t.bad(
                line,
                format!(
                    "a chunk of {} tokens cannot end at context {}",
                    row.q_tokens, row.context
                ),
            ));
        }
        if row.is_decode() && (row.batch == 0 || row.context == 0) {
            return Err(t.bad(line, "a decode row needs batch and context above 0".into()));
        }
        rows.push(row);
    }
    Ok(rows)
}

/// Causal (query, key) pairs of a chunk of `q` tokens ending at context `c` (both at most `MAX_TOKENS`).
fn causal_pairs(q: u64, c: u64) -> u64 {
    q * (c - q) + q * (q + 1) / 2
}

/// Largest batch, chunk and context a table row may give (2^20 sequences, 2^24 tokens).
const MAX_BATCH: u64 = 1 << 20;
const MAX_TOKENS: u64 = 1 << 24;

/// A curve over averaged (x, seconds) points.
fn curve(points: &BTreeMap<u64, (f64, u32)>) -> Curve {
    Curve {
        points: points
            .iter()
            .map(|(&x, &(s, n))| (x as f64, s / n as f64))
            .collect(),
    }
}

/// Reads `attention.csv` in the H200 format, keeping the rows of the named decode and prefill backends.
pub fn read_attention_table(
    path: &Path,
    decode_backend: &str,
    prefill_backend: &str,
) -> Result<AttentionTable, ConfigError> {
    let origin = path.display().to_string();
    let bad = |line: usize, m: String| ConfigError::Parse {
        origin: format!("{origin} line {line}"),
        message: m,
    };
    let mut decode: BTreeMap<(u64, u64), (f64, u32)> = BTreeMap::new();
    // From an empty context, and chunks after earlier tokens.
    let mut pairs: [BTreeMap<u64, (f64, u32)>; 2] = Default::default();
    let mut backends = std::collections::BTreeSet::new();
    for r in read_attention_rows(path)? {
        if r.is_decode() {
            backends.insert(("decode", r.backend.clone()));
            if r.backend == decode_backend {
                let e = decode.entry((r.batch, r.context)).or_insert((0.0, 0));
                e.0 += r.secs;
                e.1 += 1;
            }
        } else {
            backends.insert(("prefill", r.backend.clone()));
            if r.backend == prefill_backend {
                let family = usize::from(r.context > r.q_tokens);
                let e = pairs[family]
                    .entry(causal_pairs(r.q_tokens, r.context))
                    .or_insert((0.0, 0));
                e.0 += r.secs;
                e.1 += 1;
            }
        }
    }
    let known = |kind: &str| {
        backends
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, b)| b.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if decode.is_empty() {
        return Err(ConfigError::invalid(
            "cost.table.decode_attention",
            format!(
                "{origin} has no decode rows for backend \"{decode_backend}\"; it has: {}",
                known("decode")
            ),
        ));
    }
    if pairs[0].is_empty() {
        return Err(ConfigError::invalid(
            "cost.table.prefill_attention",
            format!(
                "{origin} has no prefill rows from an empty context for backend \"{prefill_backend}\"; \
                 it has: {}",
                known("prefill")
            ),
        ));
    }
    let batches: Vec<u64> = decode
        .keys()
        .map(|k| k.0)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let contexts: Vec<u64> = decode
        .keys()
        .map(|k| k.1)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut secs = Vec::new();
    for &b in &batches {
        for &c in &contexts {
            match decode.get(&(b, c)) {
                Some(&(s, n)) => secs.push(s / n as f64),
                _ => {
                    return Err(bad(
                        1,
                        format!(
                            "the decode grid of backend \"{decode_backend}\" misses batch {b} at context {c}: \
                             it must hold every (batch, context) combination of the values it uses"
                        ),
                    ))
                }
            }
        }
    }
    Ok(AttentionTable {
        decode: DecodeGrid {
            batches: batches.iter().map(|&b| b as f64).collect(),
            contexts: contexts.iter().map(|&c| c as f64).collect(),
            secs,
        },
        prefill: curve(&pairs[0]),
        chunk: curve(if pairs[1].is_empty() {
            &pairs[0]
        } else {
            &pairs[1]
        }),
    })
}

/// Reads `lm_head.csv` in the H200 format: seconds per call against the rows sampled.
pub fn read_lm_head_table(path: &Path) -> Result<Curve, ConfigError> {
    let t = CsvTable::read(path, "an lm_head.csv in the H200 format")?;
    let (c_rows, c_ms) = (t.col("rows")?, t.col("ms_median")?);
    let mut pts: BTreeMap<u64, f64> = BTreeMap::new();
    for (line, rec) in &t.rows {
        let rows = t.count(*line, rec, c_rows, "rows", MAX_BATCH)?;
        pts.insert(rows, t.num(*line, rec, c_ms, "ms_median")? / 1e3);
    }
    if pts.is_empty() {
        return Err(t.bad(1, "no rows".into()));
    }
    Ok(Curve {
        points: pts.into_iter().map(|(r, s)| (r as f64, s)).collect(),
    })
}

/// Per-layer operators from a measured table; attention and the LM head from tables where given, else
/// from the roofline; overheads from the roofline.
#[derive(Debug)]
pub struct TableCost {
    /// (operator, kernels per layer, curve) in `LAYER_OPS` order.
    ops: Vec<(&'static str, f64, Curve)>,
    /// The embedding gather per step, where the table has it.
    emb: Option<Curve>,
    /// The residual add, for kernels no table measures that move bytes as it does.
    add: Option<Curve>,
    pub roofline: Roofline,
    attention: Option<AttentionTable>,
    lm_head: Option<Curve>,
    /// The operators that depend only on the token count, which repeats step after step: memoised.
    memo: std::cell::RefCell<crate::fasthash::FastMap<u64, Vec<OpTime>>>,
}

impl TableCost {
    /// Per-layer operators from `table` (`read_mlp_table`); everything else from `roofline` until
    /// [`TableCost::with_tables`] adds attention and LM-head tables.
    pub fn new(table: BTreeMap<&'static str, Curve>, roofline: Roofline) -> TableCost {
        let ops = LAYER_OPS
            .iter()
            .filter_map(|&(op, times)| table.get(op).map(|c| (op, times, c.clone())))
            .collect();
        TableCost {
            ops,
            emb: table.get(EMB).cloned(),
            add: table.get(op::ADD).cloned(),
            roofline,
            attention: None,
            lm_head: None,
            memo: Default::default(),
        }
    }

    /// With measured attention and LM-head tables (either may be absent: the roofline prices it).
    pub fn with_tables(
        mut self,
        attention: Option<AttentionTable>,
        lm_head: Option<Curve>,
    ) -> Self {
        self.attention = attention;
        self.lm_head = lm_head;
        self
    }

    /// An element-wise kernel moving the bytes an `add` of `tokens_equiv` tokens moves (3 x t x hidden
    /// bytes), from the `add` curve, never under its smallest measured time.
    fn like_add(&self, tokens_equiv: f64) -> Option<f64> {
        self.add.as_ref().map(|c| c.at_proportional(tokens_equiv))
    }

    /// Decode attention over all layers for the decode part of a step.
    fn decode_attention(&self, a: &AttentionTable, b: &BatchShape) -> f64 {
        if b.decode_seqs == 0 {
            return 0.0;
        }
        let seqs = b.decode_seqs as f64;
        let mean = b.decode_context_tokens as f64 / seqs;
        let mut t = a.decode.at(seqs, mean);
        // A batch cannot finish before its longest sequence would alone: the split-KV kernel waits for
        // it (measured: 15 sequences at 256 and one at 16,384 took longer than 16 at their mean 1,264).
        if b.decode_seqs > 1 && b.decode_max_context as f64 > mean {
            t = t.max(a.decode.at(1.0, b.decode_max_context as f64));
        }
        self.roofline.model.num_layers as f64 * t
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
            // Every operator that depends only on the token count, memoised.
            let mut memo = self.memo.borrow_mut();
            let token_ops = memo.entry(t).or_insert_with(|| {
                let tf = t as f64;
                let m = &self.roofline.model;
                let mut v: Vec<OpTime> = self
                    .ops
                    .iter()
                    .map(|(op, times, c)| {
                        // The final RMSNorm runs once more, after the last layer.
                        let calls =
                            layers * times + if *op == op::INPUT_LAYERNORM { 1.0 } else { 0.0 };
                        OpTime {
                            op,
                            seconds: calls * c.at(tf),
                        }
                    })
                    .collect();
                if let Some(c) = &self.emb {
                    v.push(OpTime {
                        op: op::EMBEDDING,
                        seconds: c.at(tf),
                    });
                }
                // K and V, each read and written (2 x t x kv_dim elements per kernel): an add of
                // 2 kv_dim t / (3 h) tokens moves as many bytes.
                let equiv = 2.0 * m.kv_dim() as f64 * tf / (3.0 * m.hidden_size as f64);
                if let Some(one) = self.like_add(equiv) {
                    v.push(OpTime {
                        op: op::KV_WRITE,
                        seconds: 2.0 * layers * one,
                    });
                }
                v
            });
            out.extend(token_ops.iter().copied());
        }
        // Attention, LM head and overheads: the roofline's, replaced by the tables' where measured; the
        // embedding and KV write the roofline's only where the table has no `emb` or `add` to price them.
        for o in self.roofline.breakdown(shape).iter() {
            let seconds = match (o.op, &self.attention, &self.lm_head) {
                (op::ATTN_DECODE, Some(a), _) => self.decode_attention(a, b),
                (op::ATTN_PREFILL, Some(a), _) => {
                    let per_layer: f64 = shape
                        .prefill_chunks
                        .iter()
                        .map(|c| a.chunk_seconds(c.tokens as f64, c.context as f64))
                        .sum();
                    layers * per_layer
                }
                (op::LM_HEAD, _, Some(curve)) => {
                    if b.sampled > 0 {
                        // The gather of the sampled rows (2 x rows x hidden bytes) as an add of as many.
                        let rows = b.sampled as f64;
                        let gather = self.like_add(2.0 * rows / 3.0).unwrap_or(0.0);
                        curve.at(rows) + gather
                    } else {
                        0.0
                    }
                }
                (op::EMBEDDING, _, _) if self.emb.is_none() => o.seconds,
                (op::KV_WRITE, _, _) if self.add.is_none() => o.seconds,
                (
                    op::ATTN_PREFILL | op::ATTN_DECODE | op::LM_HEAD | op::OVERHEAD | op::ALLREDUCE,
                    _,
                    _,
                ) => o.seconds,
                _ => continue,
            };
            out.push(o.op, seconds);
        }
        out
    }

    /// Decode attention (the table's or the roofline's) is the only operator that reads the contexts.
    fn decode_context_time(&self, shape: &BatchShape) -> Option<(&'static str, f64)> {
        match &self.attention {
            Some(a) => {
                (shape.decode_seqs > 0).then(|| (op::ATTN_DECODE, self.decode_attention(a, shape)))
            }
            None => self.roofline.decode_context_time(shape),
        }
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

/// The roofline's attention per layer (seconds) for each measured row's shape: a decode row is `batch`
/// sequences at context `context`, a prefill row one chunk of `q_tokens` ending at `context`.
pub fn roofline_attention(rows: &[AttentionRow], roofline: &Roofline) -> Vec<f64> {
    let layers = roofline.model.num_layers as f64;
    rows.iter()
        .map(|r| {
            let mut s = StepShape::default();
            let want = if r.is_decode() {
                s.sums.decode_seqs = r.batch;
                s.sums.decode_context_tokens = r.batch * r.context;
                op::ATTN_DECODE
            } else {
                s.add(r.q_tokens as u32, r.context as u32, false, false);
                op::ATTN_PREFILL
            };
            roofline
                .breakdown(&s)
                .iter()
                .find(|o| o.op == want)
                .map_or(0.0, |o| o.seconds / layers)
        })
        .collect()
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
