//! Speculative decoding's step cost: the target model's pass (its verification chunks are in the step's
//! shape) plus the drafter's, which proposes the next step's k draft tokens one at a time after the
//! target's pass (vLLM V1 runs `propose_draft_token_ids` in the same `execute_model`, serially).

use super::{op, total_seconds, BatchShape, CostModel, OpTimes, StepShape};

/// A target cost model with a drafter: each step adds `passes` decode passes of the drafter over the
/// step's `draft` rows (one per request that sampled) as the operator `spec_draft`. Without a drafter
/// (n-gram prompt lookup, proposed on the CPU) it is the target alone.
pub struct SpeculativeCost {
    pub target: Box<dyn CostModel>,
    pub drafter: Option<Box<dyn CostModel>>,
    /// Drafter passes per step: k, one per draft token.
    pub passes: u32,
}

impl SpeculativeCost {
    /// The drafter's seconds for a step whose draft rows are `draft` (0 without rows or drafter).
    pub fn draft_seconds(&self, draft: &BatchShape) -> f64 {
        match &self.drafter {
            Some(d) if draft.decode_seqs > 0 => {
                self.passes as f64 * total_seconds(&d.breakdown(&StepShape::decode(*draft)))
            }
            _ => 0.0,
        }
    }
}

impl CostModel for SpeculativeCost {
    fn name(&self) -> &'static str {
        self.target.name()
    }

    fn breakdown(&self, shape: &StepShape) -> OpTimes {
        let mut ops = self.target.breakdown(shape);
        let t = self.draft_seconds(&shape.draft);
        if t > 0.0 {
            ops.push(op::SPEC_DRAFT, t);
        }
        ops
    }
    // No decode_context_time: speculative steps are never leapt (their outcomes are draws).
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LinearConfig;
    use crate::cost::linear::LinearCost;

    #[test]
    fn a_step_adds_k_drafter_passes_over_its_sampling_rows() {
        let lin = |per_seq: f64| LinearCost {
            p: LinearConfig {
                step_s: 0.001,
                prefill_token_s: 0.0,
                decode_seq_s: per_seq,
                decode_context_token_s: 0.0,
            },
        };
        let cost = SpeculativeCost {
            target: Box::new(lin(0.0001)),
            drafter: Some(Box::new(lin(0.00001))),
            passes: 3,
        };
        let mut shape = StepShape::default();
        for _ in 0..4 {
            shape.add_verify(4, 100);
            shape.draft.add(1, 100, true, true);
        }
        let ops = cost.breakdown(&shape);
        let draft = ops
            .iter()
            .find(|o| o.op == op::SPEC_DRAFT)
            .expect("drafted");
        // 3 passes x (0.001 + 4 x 0.00001) s.
        assert!(
            (draft.seconds - 3.0 * 0.00104).abs() < 1e-12,
            "{}",
            draft.seconds
        );
        let no_rows = cost.breakdown(&StepShape::decode(BatchShape {
            decode_seqs: 1,
            decode_context_tokens: 10,
            sampled: 1,
            ..BatchShape::default()
        }));
        assert!(no_rows.iter().all(|o| o.op != op::SPEC_DRAFT));
    }
}
