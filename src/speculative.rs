//! Speculative decoding's acceptance model and counters (`[engine.speculative]`).
//!
//! The scheduler plans the verification chunks (vLLM V1: a decoding request schedules its sampled token
//! plus its k draft tokens, `num_tokens_with_spec - num_computed_tokens`, capped by the token budget and
//! `max_model_len - 1`) and the replica applies each step's outcome. What the model would accept is not
//! computed but drawn, as the stop oracle draws where a response ends: each draft token is accepted with
//! probability `a` given that the ones before it were, and the first rejection ends the run (vLLM's
//! rejection sampler keeps the accepted prefix and adds one token, the bonus token when every draft was
//! accepted, the corrected one otherwise). With k drafts a step then appends j + 1 tokens, where
//! P(j) = a^j (1 - a) for j < k and P(k) = a^k, so E[j + 1] = (1 - a^(k+1)) / (1 - a).
//!
//! The draws are counter-based: a hash of (seed, request, its output position, draft index), so a step's
//! outcome depends on nothing but the request and where it stands, not on event order, threads or which
//! other requests share the step. A request's own rate (`acceptance_rate_dist`) is drawn once from the
//! `engine.speculative` stream indexed by its id.

use crate::config::SpeculativeConfig;
use crate::rng::{mix, RngStreams};
use crate::workload::dist::Sampler;

/// The acceptance model of one run.
#[derive(Clone, Debug)]
pub struct Acceptance {
    /// Draft tokens per step, k.
    pub k: u32,
    rate: f64,
    dist: Option<Sampler>,
    streams: RngStreams,
    key: u64,
}

impl Acceptance {
    pub fn new(cfg: &SpeculativeConfig, seed: u64) -> Acceptance {
        Acceptance {
            k: cfg.num_speculative_tokens,
            rate: cfg.acceptance_rate.unwrap_or(0.0),
            dist: cfg.acceptance_rate_dist.as_ref().map(|d| d.sampler()),
            streams: RngStreams::new(seed),
            key: mix(seed ^ 0x5350_4543_4445_434f, crate::rng::fnv1a(b"accept")),
        }
    }

    /// Request `id`'s acceptance rate: the configured one, or its own draw clamped to [0, 1].
    pub fn rate_for(&self, id: u64) -> f64 {
        match &self.dist {
            None => self.rate,
            Some(s) => {
                let mut rng = self.streams.indexed("engine.speculative", id);
                s.sample(&mut rng).clamp(0.0, 1.0)
            }
        }
    }

    /// How many of `drafts` draft tokens request `id` has accepted at rate `rate` in the step that
    /// follows its `position`-th output token: the drafts in order, each accepted when its uniform draw
    /// falls below the rate, up to the first rejection.
    pub fn accepted(&self, id: u64, position: u32, drafts: u32, rate: f64) -> u32 {
        let base = mix(mix(self.key, id), position as u64);
        (0..drafts)
            .take_while(|&i| unit(mix(base, i as u64)) < rate)
            .count() as u32
    }
}

/// A uniform draw in [0, 1) from 53 bits of a hash.
fn unit(h: u64) -> f64 {
    (h >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// vLLM's `SpecDecodingStats`, summed over a replica's steps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpecStats {
    /// Verifications run: (request, step) pairs that carried draft tokens.
    pub num_drafts: u64,
    /// Draft tokens verified.
    pub num_draft_tokens: u64,
    /// Draft tokens accepted.
    pub num_accepted_tokens: u64,
    /// Accepted tokens by draft position (0-based): position i counts the verifications that accepted
    /// more than i drafts.
    pub accepted_per_pos: Vec<u64>,
}

impl SpecStats {
    /// Counts one verification of `drafts` draft tokens of which `accepted` were accepted.
    pub fn record(&mut self, drafts: u32, accepted: u32) {
        self.num_drafts += 1;
        self.num_draft_tokens += drafts as u64;
        self.num_accepted_tokens += accepted as u64;
        if self.accepted_per_pos.len() < drafts as usize {
            self.accepted_per_pos.resize(drafts as usize, 0);
        }
        for p in &mut self.accepted_per_pos[..accepted as usize] {
            *p += 1;
        }
    }

    /// Adds another replica's counts.
    pub fn merge(&mut self, o: &SpecStats) {
        self.num_drafts += o.num_drafts;
        self.num_draft_tokens += o.num_draft_tokens;
        self.num_accepted_tokens += o.num_accepted_tokens;
        if self.accepted_per_pos.len() < o.accepted_per_pos.len() {
            self.accepted_per_pos.resize(o.accepted_per_pos.len(), 0);
        }
        for (a, b) in self.accepted_per_pos.iter_mut().zip(&o.accepted_per_pos) {
            *a += b;
        }
    }

    /// vLLM's draft acceptance rate: accepted over drafted tokens (None before any draft).
    pub fn acceptance_rate(&self) -> Option<f64> {
        (self.num_draft_tokens > 0)
            .then(|| self.num_accepted_tokens as f64 / self.num_draft_tokens as f64)
    }

    /// vLLM's per-position acceptance rates: position i's accepted count over the verifications (the
    /// share of them that accepted more than i drafts; a^(i+1) at a constant rate a).
    pub fn acceptance_rate_per_pos(&self) -> Vec<f64> {
        self.accepted_per_pos
            .iter()
            .map(|&c| c as f64 / self.num_drafts.max(1) as f64)
            .collect()
    }

    /// vLLM's mean acceptance length: tokens a verification emits, 1 + accepted / verifications.
    pub fn mean_acceptance_length(&self) -> Option<f64> {
        (self.num_drafts > 0)
            .then(|| 1.0 + self.num_accepted_tokens as f64 / self.num_drafts as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SpecMethod;

    fn acceptance(a: f64, k: u32) -> Acceptance {
        let cfg = SpeculativeConfig {
            method: SpecMethod::Ngram,
            num_speculative_tokens: k,
            acceptance_rate: Some(a),
            acceptance_rate_dist: None,
            model: None,
        };
        Acceptance::new(&cfg, 7)
    }

    /// E[j + 1] = sum_{i=0..k} a^i = (1 - a^(k+1)) / (1 - a), over 200,000 verifications; the draws'
    /// standard error is below 0.003 (the variance of j + 1 is below k^2 / 4), so 0.01 is over 3 of them.
    #[test]
    fn tokens_per_step_follow_the_truncated_geometric_mean() {
        for (a, k) in [(0.7, 3u32), (0.5, 5), (0.9, 4), (0.0, 3), (1.0, 3)] {
            let m = acceptance(a, k);
            let n = 200_000u64;
            let mut s = SpecStats::default();
            for i in 0..n {
                s.record(k, m.accepted(i / 50, (i % 50) as u32, k, a));
            }
            let got = 1.0 + s.num_accepted_tokens as f64 / n as f64;
            let want = if a == 1.0 {
                (k + 1) as f64
            } else {
                (1.0 - a.powi(k as i32 + 1)) / (1.0 - a)
            };
            assert!((got - want).abs() < 0.01, "a={a} k={k}: {got} vs {want}");
            // Position i is reached with probability a^(i+1).
            for (i, &c) in s.accepted_per_pos.iter().enumerate() {
                let p = c as f64 / n as f64;
                assert!(
                    (p - a.powi(i as i32 + 1)).abs() < 0.01,
                    "a={a} pos {i}: {p}"
                );
            }
            assert_eq!(s.mean_acceptance_length(), Some(got));
        }
    }

    #[test]
    fn draws_depend_only_on_the_request_and_its_position() {
        let m = acceptance(0.6, 4);
        let first: Vec<u32> = (0..100).map(|p| m.accepted(3, p, 4, 0.6)).collect();
        let again: Vec<u32> = (0..100).rev().map(|p| m.accepted(3, p, 4, 0.6)).collect();
        assert!(first.iter().eq(again.iter().rev()));
        // Fewer drafts (a budget cut them) accept a prefix of the same draws.
        for p in 0..100 {
            assert_eq!(m.accepted(3, p, 2, 0.6), first[p as usize].min(2));
        }
    }
}
