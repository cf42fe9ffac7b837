//! A linear step-time model: simple enough to derive expected results by hand in tests.

use super::{BatchShape, CostModel, OpTime};
use crate::config::LinearConfig;

#[derive(Clone, Debug)]
pub struct LinearCost {
    pub p: LinearConfig,
}

impl CostModel for LinearCost {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn breakdown(&self, b: &BatchShape) -> Vec<OpTime> {
        let p = &self.p;
        vec![
            OpTime {
                op: "step",
                seconds: p.step_s,
            },
            OpTime {
                op: "prefill_tokens",
                seconds: p.prefill_token_s * b.prefill_tokens as f64,
            },
            OpTime {
                op: "decode_seqs",
                seconds: p.decode_seq_s * b.decode_seqs as f64,
            },
            OpTime {
                op: "decode_context",
                seconds: p.decode_context_token_s * b.decode_context_tokens as f64,
            },
        ]
    }
}
