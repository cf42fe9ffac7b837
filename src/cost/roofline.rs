//! A roofline step-time model from a model shape and a hardware spec.
//!
//! Each kernel costs max(FLOPs / (peak x its class's compute efficiency), bytes / (bandwidth x its class's
//! memory efficiency)) plus its class's fixed latency, per layer where it is per layer. The classes, each
//! with its own efficiencies (`RooflineConfig`): GEMMs (projections, MLP, LM head), element-wise kernels
//! (norms, adds, rotary, SiLU, KV write, embedding gather), decode attention (reads the KV cache), prefill
//! attention (computes the causal pairs). Weights are read once per step per layer, whatever the batch:
//! that is what makes small batches memory-bound and large ones compute-bound. Host time
//! (`step_overhead_s`, `layer_overhead_s`) adds to a step only without async scheduling.

use super::catalog::{HardwareSpec, ModelShape};
use super::{BatchShape, CostModel, OpTimes, StepShape};
use crate::config::RooflineConfig;
use crate::cost::op;
use std::cell::RefCell;

#[derive(Clone, Debug)]
pub struct Roofline {
    /// The shape one GPU computes: the model split `tp` ways (see `ModelShape::per_rank`).
    pub model: ModelShape,
    pub hw: HardwareSpec,
    pub p: RooflineConfig,
    /// Tensor-parallel degree (1: no all-reduce).
    pub tp: u32,
    /// All-reduce link bandwidth per GPU, GB/s, and fixed latency per all-reduce, s.
    pub interconnect_gbps: f64,
    pub allreduce_latency_s: f64,
    /// The operators that depend only on the step's token count, for the last count seen: every step of a
    /// decode run has the same count, and recomputing a dozen rooflines per step was a visible share of a
    /// run. A pure cache: the values are exactly what `token_ops` returns, as long as the fields above are
    /// not changed after `new` (nothing does; change them only on a fresh `Roofline::new`).
    memo: RefCell<Option<(u64, OpTimes)>>,
    /// Decode attention's constants, computed once (as above): it is priced once per decode step.
    attn: DecodeAttnConstants,
    /// vLLM's async scheduling: host time overlaps the GPU and adds nothing to a step.
    pub host_overlapped: bool,
}

/// Constants of `Roofline::attn_decode`, each computed by the same expression it replaces, so the
/// operator's times are bit for bit those of computing them per call.
#[derive(Clone, Debug)]
struct DecodeAttnConstants {
    layers: f64,
    d: f64,
    qk_width: f64,
    /// 4 x qk_width: QK^T and PV FLOPs per context token.
    flops_per_token: f64,
    kv_bytes_per_token: f64,
    flops_per_s: f64,
    bytes_per_s: f64,
    latency_s: f64,
}

impl Roofline {
    pub fn new(
        model: ModelShape,
        hw: HardwareSpec,
        p: RooflineConfig,
        tp: u32,
        interconnect_gbps: f64,
        allreduce_latency_s: f64,
    ) -> Roofline {
        let d = model.dtype_bytes as f64;
        let qk_width = (model.num_heads * model.head_dim) as f64;
        let attn = DecodeAttnConstants {
            layers: model.num_layers as f64,
            d,
            qk_width,
            flops_per_token: 4.0 * qk_width,
            kv_bytes_per_token: 2.0 * model.kv_dim() as f64 * d,
            flops_per_s: hw.peak_bf16_tflops * 1e12 * p.compute_efficiency,
            bytes_per_s: hw.memory_bandwidth_gbps * 1e9 * p.decode_attention_efficiency,
            latency_s: p.attention_latency_s,
        };
        Roofline {
            model,
            hw,
            p,
            tp,
            interconnect_gbps,
            allreduce_latency_s,
            memo: RefCell::new(None),
            attn,
            host_overlapped: false,
        }
    }

    /// With vLLM's async scheduling on (`engine.async_scheduling`), host time adds nothing to a step.
    pub fn with_async_scheduling(mut self, on: bool) -> Roofline {
        self.host_overlapped = on;
        self
    }

    fn flops_per_s(&self) -> f64 {
        self.hw.peak_bf16_tflops * 1e12 * self.p.compute_efficiency
    }

    fn bytes_per_s(&self) -> f64 {
        self.hw.memory_bandwidth_gbps * 1e9 * self.p.memory_efficiency
    }

    /// One GEMM kernel: its roofline time plus the kernel latency.
    fn op(&self, flops: f64, bytes: f64) -> f64 {
        (flops / self.flops_per_s()).max(bytes / self.bytes_per_s()) + self.p.kernel_latency_s
    }

    /// An element-wise operator moving `bytes` in `kernels` kernels.
    fn elementwise(&self, bytes: f64, kernels: f64) -> f64 {
        let bw = self.hw.memory_bandwidth_gbps * 1e9 * self.p.elementwise_efficiency;
        bytes / bw + kernels * self.p.elementwise_latency_s
    }

    /// A linear layer of `inp` x `out` weights over `t` tokens: 2 t in out FLOPs; weights plus input and
    /// output activations moved.
    fn linear(&self, t: f64, inp: u64, out: u64) -> f64 {
        let d = self.model.dtype_bytes as f64;
        let (i, o) = (inp as f64, out as f64);
        self.op(2.0 * t * i * o, (i * o + t * (i + o)) * d)
    }

    /// The decode attention operator: reads every decode sequence's context.
    fn attn_decode(&self, b: &BatchShape) -> f64 {
        let c = &self.attn;
        let flops = c.flops_per_token * b.decode_context_tokens as f64;
        let bytes = b.decode_context_tokens as f64 * c.kv_bytes_per_token
            + b.decode_seqs as f64 * 2.0 * c.qk_width * c.d;
        c.layers * ((flops / c.flops_per_s).max(bytes / c.bytes_per_s) + c.latency_s)
    }

    /// The GEMMs, element-wise operators and all-reduces of a step of `tokens` tokens.
    fn token_ops(&self, tokens: u64) -> OpTimes {
        let m = &self.model;
        let layers = m.num_layers as f64;
        let d = m.dtype_bytes as f64;
        let t = tokens as f64;
        let h = m.hidden_size;
        let mut ops = OpTimes::default();
        let mut push = |op: &'static str, seconds: f64| ops.push(op, seconds);
        if t > 0.0 {
            let (hd, qd, kvd, i) = (
                h as f64,
                m.q_dim() as f64,
                m.kv_dim() as f64,
                m.intermediate_size as f64,
            );
            push(
                op::QKV_PROJ,
                layers * self.linear(t, h, m.q_dim() + 2 * m.kv_dim()),
            );
            // Rotary embedding reads and writes Q and K.
            push(
                op::ATTN_ROPE,
                layers * self.elementwise(2.0 * t * (qd + kvd) * d, 1.0),
            );
            push(op::O_PROJ, layers * self.linear(t, m.q_dim(), h));
            // Gate and up share the input (one fused GEMM); SiLU-and-multiply reads both, writes one.
            push(
                op::MLP_UP,
                layers * self.linear(t, h, 2 * m.intermediate_size),
            );
            push(op::MLP_ACT, layers * self.elementwise(3.0 * t * i * d, 1.0));
            push(
                op::MLP_DOWN,
                layers * self.linear(t, m.intermediate_size, h),
            );
            // Two RMSNorms (read and write t x h) and two residual adds (read two, write one) per layer,
            // and the final RMSNorm once.
            push(
                op::NORMS,
                layers * self.elementwise(10.0 * t * hd * d, 4.0)
                    + self.elementwise(2.0 * t * hd * d, 1.0),
            );
            // The new tokens' K and V copied into the cache: read and written, one kernel each.
            push(
                op::KV_WRITE,
                layers * self.elementwise(2.0 * 2.0 * t * kvd * d, 2.0),
            );
            // The embedding gather: t rows of h read and written, once per step.
            push(op::EMBEDDING, self.elementwise(2.0 * t * hd * d, 1.0));
            if self.tp > 1 {
                // Two all-reduces of t x h activations per layer (after attention and after the MLP), ring
                // algorithm: 2 (tp - 1) / tp of the bytes cross each link.
                let bytes = t * hd * d;
                let tp = self.tp as f64;
                let one = 2.0 * (tp - 1.0) / tp * bytes / (self.interconnect_gbps * 1e9)
                    + self.allreduce_latency_s;
                push(op::ALLREDUCE, layers * 2.0 * one);
            }
        }
        ops
    }
}

/// Operator name of decode attention (found by address when re-pricing).
const ATTN_DECODE: &str = op::ATTN_DECODE;

impl CostModel for Roofline {
    fn name(&self) -> &'static str {
        "roofline"
    }

    /// Decode attention is the only operator that reads `decode_context_tokens`.
    fn decode_context_time(&self, shape: &BatchShape) -> Option<(&'static str, f64)> {
        (shape.decode_seqs > 0).then(|| (ATTN_DECODE, self.attn_decode(shape)))
    }

    fn decode_context_times(
        &self,
        shape: &BatchShape,
        step_tokens: u64,
        out: &mut [f64],
    ) -> Option<&'static str> {
        if shape.decode_seqs == 0 {
            return None;
        }
        let mut s = *shape;
        for o in out.iter_mut() {
            *o = self.attn_decode(&s);
            s.decode_context_tokens += step_tokens;
        }
        Some(ATTN_DECODE)
    }

    fn breakdown(&self, shape: &StepShape) -> OpTimes {
        let b = &shape.sums;
        let m = &self.model;
        let layers = m.num_layers as f64;
        let d = m.dtype_bytes as f64;
        let h = m.hidden_size;
        let tokens = b.total_tokens();
        let mut ops = {
            let mut memo = self.memo.borrow_mut();
            match *memo {
                Some((n, o)) if n == tokens => o,
                _ => {
                    let o = self.token_ops(tokens);
                    *memo = Some((tokens, o));
                    o
                }
            }
        };
        let mut push = |op: &'static str, seconds: f64| ops.push(op, seconds);
        let qk_width = (m.num_heads * m.head_dim) as f64;
        let kv_bytes_per_token = 2.0 * m.kv_dim() as f64 * d;
        if b.prefill_tokens > 0 {
            // QK^T and PV: 2 FLOPs each per (query, key, dim), at prefill attention's own efficiency.
            let flops = 4.0 * qk_width * b.prefill_attn_pairs as f64;
            let bytes = b.prefill_context_tokens as f64 * kv_bytes_per_token
                + b.prefill_tokens as f64 * 2.0 * qk_width * d;
            let peak = self.hw.peak_bf16_tflops * 1e12 * self.p.prefill_attention_efficiency;
            push(
                op::ATTN_PREFILL,
                layers
                    * ((flops / peak).max(bytes / self.bytes_per_s()) + self.p.attention_latency_s),
            );
        }
        if b.decode_seqs > 0 {
            push(ATTN_DECODE, self.attn_decode(b));
        }
        if b.sampled > 0 {
            // The sampled rows gathered, then one GEMM writing float32 logits.
            let rows = b.sampled as f64;
            let (hh, v) = (h as f64, m.vocab_size as f64);
            push(
                op::LM_HEAD,
                self.elementwise(2.0 * rows * hh * d, 1.0)
                    + self.op(2.0 * rows * hh * v, hh * v * d + rows * v * 4.0),
            );
        }
        if !self.host_overlapped {
            push(
                op::OVERHEAD,
                self.p.step_overhead_s + layers * self.p.layer_overhead_s,
            );
        }
        ops
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_worked_decode_step_of_tiny_model() {
        // Tiny model: h = 256, I = 688, 4 layers, 4 heads x 64, 2 KV heads, vocab 1024, fp32 (4 B).
        // Hardware: 100 TFLOP/s x 0.5 = 5e13 FLOP/s; 1000 GB/s x 0.5 = 5e11 B/s. Overheads 0.
        // Batch: one decode sequence at context 100 that samples: t = 1.
        //  qkv: in 256, out 256 + 2 x 128 = 512: FLOPs 2 x 256 x 512 = 262,144 -> 5.24e-9 s;
        //       bytes (131,072 + 768) x 4 = 527,360 -> 1.05472e-6 s; max = 1.05472e-6; x 4 layers = 4.21888e-6.
        //  o:   256 x 256: bytes (65,536 + 512) x 4 = 264,192 -> 5.28384e-7; x 4 = 2.113536e-6.
        //  rope: 2 x 1 x (256 + 128) x 4 = 3,072 B -> 6.144e-9; x 4 = 2.4576e-8.
        //  mlp: up/gate 256 x 1376: (352,256 + 1,632) x 4 = 1,415,552 B -> 2.831104e-6;
        //       down 688 x 256: (176,128 + 944) x 4 = 708,288 B -> 1.416576e-6; sum 4.24768e-6; x 4 = 1.699072e-5.
        //  mlp_act: 3 x 1 x 688 x 4 = 8,256 B -> 1.6512e-8; x 4 = 6.6048e-8.
        //  norms: two RMSNorms (2 x 256 x 4 B each) and two adds (3 x 256 x 4 B each) = 10,240 B -> 2.048e-8;
        //       x 4 = 8.192e-8; the final RMSNorm 2,048 B -> 4.096e-9; sum 8.6016e-8.
        //  kv_write: 2 x 2 x 1 x 128 x 4 = 2,048 B -> 4.096e-9; x 4 = 1.6384e-8.
        //  embedding: 2 x 1 x 256 x 4 = 2,048 B -> 4.096e-9.
        //  attn_decode: bytes 100 x (2 x 128 x 4) + 1 x 2 x 256 x 4 = 102,400 + 2,048 = 104,448 -> 2.08896e-7;
        //       FLOPs 4 x 256 x 100 = 102,400 -> 2.048e-9; x 4 layers = 8.35584e-7.
        //  lm_head: gather 2 x 256 x 4 = 2,048 B -> 4.096e-9; GEMM bytes 256 x 1024 x 4 + 1024 x 4 = 1,052,672
        //       -> 2.105344e-6; sum 2.10944e-6.
        //  total = 4.21888e-6 + 2.4576e-8 + 2.113536e-6 + 1.699072e-5 + 6.6048e-8 + 8.6016e-8 + 1.6384e-8
        //          + 4.096e-9 + 8.35584e-7 + 2.10944e-6 = 2.646528e-5 s = 26,465 ns (rounded).
        let r = Roofline::new(
            ModelShape::load("tiny").unwrap(),
            HardwareSpec {
                name: "test".into(),
                device_name: "test".into(),
                peak_bf16_tflops: 100.0,
                memory_bandwidth_gbps: 1000.0,
                memory_gib: 1.0,
            },
            RooflineConfig {
                compute_efficiency: 0.5,
                memory_efficiency: 0.5,
                elementwise_efficiency: 0.5,
                decode_attention_efficiency: 0.5,
                prefill_attention_efficiency: 0.5,
                kernel_latency_s: 0.0,
                elementwise_latency_s: 0.0,
                attention_latency_s: 0.0,
                step_overhead_s: 0.0,
                layer_overhead_s: 0.0,
            },
            1,
            450.0,
            0.0,
        );
        let mut b = StepShape::default();
        b.add(1, 100, true, true);
        assert_eq!(r.step_time(&b).0, 26_465);
    }

    #[test]
    fn big_prefill_is_compute_bound_and_decode_memory_bound() {
        let r = Roofline::new(
            ModelShape::load("llama-3.1-8b").unwrap(),
            HardwareSpec::load("h100-sxm").unwrap(),
            RooflineConfig::default(),
            1,
            450.0,
            1e-5,
        );
        let mut dec = StepShape::default();
        dec.add(1, 1000, true, true);
        let mut pre = StepShape::default();
        pre.add(8192, 8192, false, true);
        let td = r.step_time(&dec).as_secs_f64();
        let tp = r.step_time(&pre).as_secs_f64();
        // Decode at batch 1 streams 16 GB of weights at 2.68 TB/s: about 6 ms.
        assert!(td > 0.005 && td < 0.008, "{td}");
        // 8192-token prefill: 2 x 8192 x 7.5e9 FLOPs at 594 TFLOP/s = about 0.2 s.
        assert!(tp > 0.15 && tp < 0.3, "{tp}");
    }

    proptest::proptest! {
        /// The leap's re-pricing contract (`CostModel::decode_context_time`), with or without prefill
        /// chunks in the step.
        #[test]
        fn decode_context_time_keeps_its_contract(
            seqs in 0u64..300, ctx in 0u64..5_000_000, grow in 0u64..100_000,
            prefill in 0u32..4096, tp in 1u32..3,
        ) {
            let r = Roofline::new(
                ModelShape::load("llama-3.1-8b").unwrap(),
                HardwareSpec::load("h100-sxm").unwrap(),
                RooflineConfig::default(),
                tp,
                450.0,
                1e-5,
            );
            let mut a = StepShape::decode(BatchShape { decode_seqs: seqs, decode_context_tokens: ctx, sampled: seqs, ..BatchShape::default() });
            if prefill > 0 {
                a.add(prefill, prefill + 100, false, true);
            }
            let priced = crate::cost::check_decode_context_contract(&r, &a, grow);
            proptest::prop_assert_eq!(priced, Ok(seqs > 0));
        }
    }
}
