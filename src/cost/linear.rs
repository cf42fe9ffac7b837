//! A linear step-time model: simple enough to derive expected results by hand in tests.

use super::{BatchShape, CostModel, OpTimes, StepShape};
use crate::config::LinearConfig;
use crate::cost::op;

#[derive(Clone, Debug)]
pub struct LinearCost {
    pub p: LinearConfig,
}

impl CostModel for LinearCost {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn breakdown(&self, shape: &StepShape) -> OpTimes {
        let b = &shape.sums;
        let p = &self.p;
        let mut out = OpTimes::default();
        out.push(op::STEP, p.step_s);
        out.push(
            op::PREFILL_TOKENS,
            p.prefill_token_s * b.prefill_tokens as f64,
        );
        out.push(op::DECODE_SEQS, p.decode_seq_s * b.decode_seqs as f64);
        out.push(DECODE_CONTEXT, self.context_time(b));
        out
    }

    fn decode_context_time(&self, shape: &BatchShape) -> Option<(&'static str, f64)> {
        Some((DECODE_CONTEXT, self.context_time(shape)))
    }
}

const DECODE_CONTEXT: &str = op::DECODE_CONTEXT;

impl LinearCost {
    fn context_time(&self, b: &BatchShape) -> f64 {
        self.p.decode_context_token_s * b.decode_context_tokens as f64
    }
}
