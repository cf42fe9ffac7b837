//! Cost models: a step's shape in, its duration (and a per-operator breakdown) out.

pub mod calibrated;
pub mod catalog;
pub mod linear;
pub mod roofline;
pub mod table;

use crate::time::SimDuration;

/// What one engine step computes, aggregated over its requests. Attention costs are linear in these sums,
/// so aggregates lose nothing for the models here.
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
}

/// One operator class's share of a step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OpTime {
    pub op: &'static str,
    pub seconds: f64,
}

/// Most operator classes a breakdown may hold.
pub const MAX_OPS: usize = 16;

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
    /// The time of the operator named `op` (matched by address: names are static strings), mutable.
    pub fn get_mut(&mut self, op: &'static str) -> Option<&mut f64> {
        self.items[..self.len]
            .iter_mut()
            .find(|o| std::ptr::eq(o.op, op))
            .map(|o| &mut o.seconds)
    }

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
    fn breakdown(&self, shape: &BatchShape) -> OpTimes;
    /// Re-prices, in place, a breakdown of a shape that differs from `shape` only in
    /// `decode_context_tokens` (a run of decode steps, where contexts grow by one token per sequence per
    /// step): on true, `ops` equals `breakdown(shape)` exactly; on false (the default) nothing was done and
    /// the caller calls `breakdown`. A leap prices millions of such steps, so a model whose other operators
    /// do not depend on the contexts saves recomputing and copying them.
    fn reprice_decode_context(&self, _ops: &mut OpTimes, _shape: &BatchShape) -> bool {
        false
    }
    /// The step's duration.
    fn step_time(&self, shape: &BatchShape) -> SimDuration {
        let s: f64 = self.breakdown(shape).iter().map(|o| o.seconds).sum();
        SimDuration::from_secs_f64(s).max(SimDuration(1))
    }
}
