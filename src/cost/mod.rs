//! Cost models: a step's shape in, its duration (and a per-operator breakdown) out.
//!
//! What lives here: the step's shape ([`StepShape`]: sums over its requests, each prefill chunk, padding
//! and transfer bytes), the [`CostModel`] trait with the leap's re-pricing contract, the operator names
//! ([`op`]), and one file per model: `roofline.rs` (datasheet roofline), `table.rs` (measured operator
//! tables; attention and the LM head measured or from the roofline), `calibrated.rs` (candle kernel
//! timings), `linear.rs` (a linear model for tests and hand-derived checks); `catalog.rs` holds model
//! shapes and GPU datasheets.
//!
//! To add a model: one file here implementing [`CostModel`] (name its operators with [`op`] constants,
//! adding any new one there and to [`OPERATOR_CLASSES`]), one `CostKind` arm in `config.rs`, and its
//! construction in `System::cost_model` (`system.rs`). Leaps work with any model; implementing
//! `decode_context_time` (checked by [`check_decode_context_contract`]) makes them fast.

pub mod calibrated;
pub mod catalog;
pub mod linear;
pub mod roofline;
pub mod speculative;
pub mod table;

use crate::time::SimDuration;

/// What one engine step computes, summed over its requests. The roofline's and the linear model's
/// attention costs are linear in these sums, so for them the sums lose nothing; a model that needs each
/// chunk reads [`StepShape::prefill_chunks`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchShape {
    /// Tokens computed in prefill chunks.
    pub prefill_tokens: u64,
    /// Requests with a prefill chunk this step.
    pub prefill_seqs: u64,
    /// Causal (query, key) pairs of the prefill chunks: for a chunk of q tokens ending at context c,
    /// q x (c - q) + q (q + 1) / 2.
    pub prefill_attn_pairs: u64,
    /// KV tokens the prefill chunks read (sum of their end contexts).
    pub prefill_context_tokens: u64,
    /// The full (query, key) rectangle of the prefill chunks, q x c summed: what an attention kernel that
    /// does not skip masked blocks computes.
    pub prefill_attn_rect: u64,
    /// Requests decoding one token.
    pub decode_seqs: u64,
    /// KV tokens the decode sequences read (sum of their contexts).
    pub decode_context_tokens: u64,
    /// The longest decode context (0 where unknown: shapes given by their sums only). A split-KV decode
    /// kernel waits for its longest sequence, so a skewed batch costs more than its mean says.
    pub decode_max_context: u64,
    /// Requests that sample a token at the end of the step (LM head rows).
    pub sampled: u64,
}

impl BatchShape {
    /// Adds one request's chunk of `q` tokens whose context ends at `context` (previously computed + q).
    pub fn add(&mut self, q: u32, context: u32, decode: bool, samples: bool) {
        let (q, c) = (q as u64, context as u64);
        if decode {
            self.decode_seqs += 1;
            self.decode_context_tokens += c;
            self.decode_max_context = self.decode_max_context.max(c);
        } else {
            self.prefill_tokens += q;
            self.prefill_seqs += 1;
            self.prefill_attn_pairs += q * (c - q) + q * (q + 1) / 2;
            self.prefill_attn_rect += q * c;
            self.prefill_context_tokens += c;
        }
        if samples {
            self.sampled += 1;
        }
    }

    pub fn total_tokens(&self) -> u64 {
        self.prefill_tokens + self.decode_seqs
    }

    /// The decode part `steps` decode steps later, every sequence one token longer per step: the context
    /// sum grows by `step_tokens` (the sequences) per step, the longest context by one.
    pub fn advanced(&self, steps: u64, step_tokens: u64) -> BatchShape {
        BatchShape {
            decode_context_tokens: self.decode_context_tokens + steps * step_tokens,
            decode_max_context: if self.decode_max_context > 0 {
                self.decode_max_context + steps
            } else {
                0
            },
            ..*self
        }
    }
}

/// One prefill chunk of a step: `tokens` query tokens whose context ends at `context` (previously
/// computed + tokens).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefillChunk {
    pub tokens: u32,
    pub context: u32,
}

/// The shape of one engine step as a cost model sees it: the sums ([`BatchShape`]), each prefill chunk
/// in scheduling order (attention tables are priced per chunk), the padding among them, and the KV bytes
/// moved between memory tiers during the step. A replica reuses one shape from step to step
/// ([`StepShape::clear`]), so the chunk list is not allocated anew.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepShape {
    pub sums: BatchShape,
    /// Every prefill chunk (padding included), in the order they were added; its sums are in `sums`.
    pub prefill_chunks: Vec<PrefillChunk>,
    /// Tokens computed for no request (a request-level batch padded to its longest prompt), included in
    /// the prefill chunks and sums as a chunk of their own.
    pub padding_tokens: u64,
    /// KV bytes loaded from or stored to another memory tier within the step. No store moves any yet and
    /// no model prices them; a decode step that carries any must not leap (leap contract, condition 4).
    pub kv_transfer_bytes: u64,
    /// Speculative decoding: the drafter's work after the forward pass, one decode row per request that
    /// sampled, at its new context (priced by `cost::speculative`, once per draft token); empty without.
    pub draft: BatchShape,
}

impl StepShape {
    /// A decode-only step given by its sums (the leap's steps, tests). Panics in debug builds if `sums`
    /// has a prefill part, which would have no chunks.
    pub fn decode(sums: BatchShape) -> StepShape {
        debug_assert_eq!(sums.prefill_seqs, 0, "a decode-only shape");
        StepShape {
            sums,
            ..StepShape::default()
        }
    }

    /// Empties the shape, keeping the chunk list's capacity.
    pub fn clear(&mut self) {
        self.sums = BatchShape::default();
        self.prefill_chunks.clear();
        self.padding_tokens = 0;
        self.kv_transfer_bytes = 0;
        self.draft = BatchShape::default();
    }

    /// Adds one request's chunk, as [`BatchShape::add`], listing it if it is a prefill chunk.
    pub fn add(&mut self, q: u32, context: u32, decode: bool, samples: bool) {
        self.sums.add(q, context, decode, samples);
        if !decode {
            self.prefill_chunks
                .push(PrefillChunk { tokens: q, context });
        }
    }

    /// Adds a speculative verification chunk: `q` tokens (the sampled one and its drafts) ending at
    /// `context`, attended causally as a prefill chunk is, with logits sampled at every position.
    pub fn add_verify(&mut self, q: u32, context: u32) {
        self.add(q, context, false, true);
        self.sums.sampled += q as u64 - 1;
    }

    /// Adds `tokens` of padding ending at `context`: a prefill chunk (prompt padding), or with `decode`
    /// one decode row that samples (the row of a finished request in a lockstep batch).
    pub fn add_padding(&mut self, tokens: u32, context: u32, decode: bool) {
        self.add(tokens, context, decode, decode);
        self.padding_tokens += tokens as u64;
    }
}

/// One operator class's share of a step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OpTime {
    pub op: &'static str,
    pub seconds: f64,
}

/// Operator class names, defined once; cost models push these, and the summary reports each as
/// `cost_<name>_s`.
pub mod op {
    pub const QKV_PROJ: &str = "qkv_proj";
    pub const ATTN_ROPE: &str = "attn_rope";
    pub const O_PROJ: &str = "o_proj";
    pub const MLP_UP: &str = "mlp_up";
    pub const MLP_ACT: &str = "mlp_act";
    pub const MLP_DOWN: &str = "mlp_down";
    pub const NORMS: &str = "norms";
    pub const ATTN_PREFILL: &str = "attn_prefill";
    pub const ATTN_DECODE: &str = "attn_decode";
    pub const LM_HEAD: &str = "lm_head";
    pub const ALLREDUCE: &str = "allreduce";
    pub const OVERHEAD: &str = "overhead";
    pub const KV_WRITE: &str = "kv_write";
    /// A synchronous KV load from a lower tier (`kv.offload`, LMCache), priced by the replica, not a
    /// cost model.
    pub const KV_LOAD: &str = "kv_load";
    pub const EMBEDDING: &str = "embedding";
    /// Speculative decoding's drafter (EAGLE heads, a draft model), after the target's forward pass.
    pub const SPEC_DRAFT: &str = "spec_draft";
    pub const STEP: &str = "step";
    pub const PREFILL_TOKENS: &str = "prefill_tokens";
    pub const DECODE_SEQS: &str = "decode_seqs";
    pub const DECODE_CONTEXT: &str = "decode_context";
    pub const INPUT_LAYERNORM: &str = "input_layernorm";
    pub const ATTN_PRE_PROJ: &str = "attn_pre_proj";
    pub const ATTN_POST_PROJ: &str = "attn_post_proj";
    pub const POST_ATTENTION_LAYERNORM: &str = "post_attention_layernorm";
    pub const MLP_UP_PROJ: &str = "mlp_up_proj";
    pub const MLP_DOWN_PROJ: &str = "mlp_down_proj";
    pub const ADD: &str = "add";
}

/// Every operator class a cost model may report, in the order the summary lists them (`cost_<op>_s`,
/// zero where a model has no such operator, so summaries of different models stack into one table).
/// The roofline and calibrated models use the first fourteen; the table model Vidur's layer operators (the
/// last seven) with the KV write, embedding, attention and the LM head (from tables or the roofline), the
/// roofline's all-reduce and host overhead; the linear model its own four.
pub const OPERATOR_CLASSES: &[&str] = &[
    op::QKV_PROJ,
    op::ATTN_ROPE,
    op::O_PROJ,
    op::MLP_UP,
    op::MLP_ACT,
    op::MLP_DOWN,
    op::NORMS,
    op::KV_WRITE,
    op::EMBEDDING,
    op::ATTN_PREFILL,
    op::ATTN_DECODE,
    op::LM_HEAD,
    op::ALLREDUCE,
    op::OVERHEAD,
    op::STEP,
    op::PREFILL_TOKENS,
    op::DECODE_SEQS,
    op::DECODE_CONTEXT,
    op::INPUT_LAYERNORM,
    op::ATTN_PRE_PROJ,
    op::ATTN_POST_PROJ,
    op::POST_ATTENTION_LAYERNORM,
    op::MLP_UP_PROJ,
    op::MLP_DOWN_PROJ,
    op::ADD,
    op::KV_LOAD,
    op::SPEC_DRAFT,
];

/// Most operator classes a breakdown may hold.
pub const MAX_OPS: usize = 24;

/// A step's per-operator times, kept inline: one breakdown is computed per engine step, millions per run,
/// and a heap allocation each was a measurable share of a run.
#[derive(Clone, Copy, Debug)]
pub struct OpTimes {
    len: usize,
    items: [OpTime; MAX_OPS],
}

impl Default for OpTimes {
    fn default() -> OpTimes {
        OpTimes {
            len: 0,
            items: [OpTime {
                op: "",
                seconds: 0.0,
            }; MAX_OPS],
        }
    }
}

impl OpTimes {
    /// Appends an operator's time. Panics past `MAX_OPS` (a cost model with more classes must raise it).
    pub fn push(&mut self, op: &'static str, seconds: f64) {
        assert!(self.len < MAX_OPS, "more than MAX_OPS operator classes");
        self.items[self.len] = OpTime { op, seconds };
        self.len += 1;
    }
}

impl std::ops::Deref for OpTimes {
    type Target = [OpTime];
    fn deref(&self) -> &[OpTime] {
        &self.items[..self.len]
    }
}

impl Extend<OpTime> for OpTimes {
    fn extend<I: IntoIterator<Item = OpTime>>(&mut self, iter: I) {
        for o in iter {
            self.push(o.op, o.seconds);
        }
    }
}

/// A step-time model.
///
/// Contract: `step_time` is a pure function of the shape (same shape, same duration), at least 1 ns for any
/// non-empty step, and equals the sum of `breakdown` rounded to nanoseconds.
pub trait CostModel {
    /// A short name for outputs (`roofline`, `linear`).
    fn name(&self) -> &'static str;
    /// Per-operator times in seconds, overheads included.
    fn breakdown(&self, shape: &StepShape) -> OpTimes;
    /// For runs of decode steps, which differ from step to step only in `decode_context_tokens` and
    /// `decode_max_context` ([`BatchShape::advanced`]): the one operator whose time depends on them, and
    /// its time for a step whose sums are `shape`. Contract: on `Some((op, t))`, the breakdown of any step
    /// with these sums lists `op` with time exactly `t`, and each of its other operators has the same time
    /// in the breakdown of any step whose sums differ from `shape` only in those two. A leap prices
    /// millions of steps, so it prices the rest once. None (the default): every step is priced with
    /// `breakdown`.
    fn decode_context_time(&self, _shape: &BatchShape) -> Option<(&'static str, f64)> {
        None
    }
    /// `decode_context_time` for consecutive steps: `out[k]` is the operator's time for
    /// `shape.advanced(k, step_tokens)`, exactly as `decode_context_time` gives it; returns the
    /// operator, or None (and `out` unspecified) where `decode_context_time` gives None (for an empty
    /// `out`, either). A model overrides this to price a run of steps in one tight loop.
    fn decode_context_times(
        &self,
        shape: &BatchShape,
        step_tokens: u64,
        out: &mut [f64],
    ) -> Option<&'static str> {
        let mut op = None;
        for (k, o) in out.iter_mut().enumerate() {
            let s = shape.advanced(k as u64, step_tokens);
            let (name, t) = self.decode_context_time(&s)?;
            *o = t;
            op = Some(name);
        }
        op
    }
    /// The step's duration.
    fn step_time(&self, shape: &StepShape) -> SimDuration {
        step_duration(total_seconds(&self.breakdown(shape)))
    }
}

/// The sum of a breakdown's times, added left to right from zero. Every step is priced through this (a
/// leap adds the same terms in the same order, starting from a partial sum), so equal breakdowns give
/// bit-equal durations.
pub fn total_seconds(ops: &[OpTime]) -> f64 {
    ops.iter().fold(0.0, |s, o| s + o.seconds)
}

/// A step's duration from its total seconds: rounded to nanoseconds, at least 1 ns.
pub fn step_duration(seconds: f64) -> SimDuration {
    SimDuration::from_secs_f64(seconds).max(SimDuration(1))
}

/// Seconds as integer femtoseconds, rounded (0 for negative or NaN). Operator times are summed over
/// millions of steps as integers, so the sums do not depend on the order of the additions.
pub fn seconds_to_fs(s: f64) -> u128 {
    let x = s * 1e15;
    if x.is_nan() || x <= 0.0 {
        0
    } else if x < u64::MAX as f64 {
        crate::time::round_half_away(x) as u128
    } else {
        x.round() as u128
    }
}

/// Checks `decode_context_time`'s contract at `shape` against `breakdown`, for cost-model tests: the time
/// given for `shape` and for `shape` with `grow` more context tokens are those of fresh breakdowns, bit
/// for bit, and every other operator is the same in both. Returns whether the model priced the
/// operator alone (Some) at all, or what broke the contract.
pub fn check_decode_context_contract(
    model: &dyn CostModel,
    shape: &StepShape,
    grow: u64,
) -> Result<bool, String> {
    let mut grown = shape.clone();
    grown.sums.decode_context_tokens += grow;
    if grown.sums.decode_max_context > 0 {
        grown.sums.decode_max_context += grow.min(1);
    }
    let (Some((op, t)), Some((op2, t2))) = (
        model.decode_context_time(&shape.sums),
        model.decode_context_time(&grown.sums),
    ) else {
        return Ok(false);
    };
    let (a, b) = (model.breakdown(shape), model.breakdown(&grown));
    if op != op2 || a.len() != b.len() {
        return Err(format!(
            "{op} vs {op2}, {} vs {} operators",
            a.len(),
            b.len()
        ));
    }
    let mut found = false;
    for (x, y) in a.iter().zip(b.iter()) {
        if x.op != y.op {
            return Err(format!("operator {} became {}", x.op, y.op));
        }
        if x.op == op {
            found = true;
            if x.seconds.to_bits() != t.to_bits() || y.seconds.to_bits() != t2.to_bits() {
                return Err(format!(
                    "{op}: priced {t} and {t2}, breakdowns say {} and {}",
                    x.seconds, y.seconds
                ));
            }
        } else if x.seconds.to_bits() != y.seconds.to_bits() {
            return Err(format!(
                "{} changed with the context: {} -> {}",
                x.op, x.seconds, y.seconds
            ));
        }
    }
    if !found {
        return Err(format!("{op} is not in the breakdown"));
    }
    // The batched form: the same values, step by step.
    let step = grow / 7 + 1;
    let mut out = [0.0; 9];
    let shape = &shape.sums;
    if model.decode_context_times(shape, step, &mut out) != Some(op) {
        return Err(format!("decode_context_times does not name {op}"));
    }
    for (k, v) in out.iter().enumerate() {
        let s = shape.advanced(k as u64, step);
        let one = model.decode_context_time(&s).map(|x| x.1.to_bits());
        if one != Some(v.to_bits()) {
            return Err(format!(
                "decode_context_times[{k}] = {v}, one at a time {one:?}"
            ));
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn femtoseconds_round_and_clamp() {
        assert_eq!(seconds_to_fs(1.5e-6), 1_500_000_000);
        assert_eq!(seconds_to_fs(0.0123), 12_300_000_000_000);
        assert_eq!(seconds_to_fs(2.4e-15), 2);
        assert_eq!(seconds_to_fs(2.6e-15), 3);
        assert_eq!(seconds_to_fs(-1.0), 0);
        assert_eq!(seconds_to_fs(f64::NAN), 0);
        // Past u64 femtoseconds (5 hours in one operator): the wide path.
        assert_eq!(seconds_to_fs(1e5), 100_000 * 1_000_000_000_000_000u128);
    }

    #[test]
    fn a_step_shape_lists_each_prefill_chunk_and_its_padding() {
        let mut s = StepShape::default();
        s.add(100, 300, false, false);
        s.add(1, 50, true, true);
        s.add_padding(20, 20, false);
        assert_eq!(
            s.prefill_chunks,
            vec![
                PrefillChunk {
                    tokens: 100,
                    context: 300
                },
                PrefillChunk {
                    tokens: 20,
                    context: 20
                }
            ]
        );
        // 100 + 20 prefill tokens; pairs 100 x 200 + 100 x 101 / 2 = 25,050, and 20 x 21 / 2 = 210.
        assert_eq!(s.sums.prefill_tokens, 120);
        assert_eq!(s.sums.prefill_attn_pairs, 25_050 + 210);
        assert_eq!((s.sums.decode_seqs, s.padding_tokens), (1, 20));
        s.clear();
        assert_eq!(s, StepShape::default());
    }

    #[test]
    fn linear_prices_decode_context_alone() {
        let m = linear::LinearCost {
            p: crate::config::LinearConfig::default(),
        };
        let mut s = StepShape::decode(BatchShape {
            decode_seqs: 7,
            decode_context_tokens: 12_345,
            sampled: 7,
            ..BatchShape::default()
        });
        assert_eq!(check_decode_context_contract(&m, &s, 7 * 40), Ok(true));
        s.add(512, 2048, false, false);
        assert_eq!(check_decode_context_contract(&m, &s, 7), Ok(true));
        // The linear model lists its context term in every breakdown, even of an empty step.
        let none = StepShape::default();
        assert_eq!(check_decode_context_contract(&m, &none, 7), Ok(true));
    }
}
