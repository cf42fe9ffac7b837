//! A roofline step-time model from a model shape and a hardware spec.
//!
//! Each kernel costs max(FLOPs / (peak x its class's compute efficiency), bytes / (bandwidth x its class's
//! memory efficiency)) plus its class's fixed latency, per layer where it is per layer. The classes, each
//! with its own efficiencies (`RooflineConfig`): GEMMs (projections, MLP, LM head), element-wise kernels
//! (norms, adds, rotary, SiLU, KV write, embedding gather), decode attention (reads the KV cache), prefill
//! attention (computes the causal pairs). Weights are read once per step per layer, whatever the batch:
//! that is what makes small batches memory-bound and large ones compute-bound. Host time
//! (`step_overhead_s`, `layer_overhead_s`) adds to a step only without async scheduling.

use super::catalog::{HardwareSpec, ModelShape, QuantCompute};
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

/// Constants of `Roofline::attn_decode`, computed once from the shape; it is priced once per decode step
/// (and per step of a leap), so only the per-step arithmetic remains.
#[derive(Clone, Debug)]
struct DecodeAttnConstants {
    /// Layers over the whole context, and layers over a sliding window (`window` tokens).
    full_layers: f64,
    window_layers: f64,
    window: f64,
    /// FLOPs and KV bytes per context token read, and query/output bytes per sequence, per layer.
    flops_per_token: f64,
    kv_bytes_per_token: f64,
    q_bytes_per_seq: f64,
    flops_per_s: f64,
    bytes_per_s: f64,
    latency_s: f64,
    /// MLA's absorbed up-projections, per layer: FLOPs per decode sequence and the weight bytes read
    /// once (0 without MLA). vLLM runs them as 16-bit batched matmuls whatever the checkpoint's
    /// quantization (16-bit copies of the KV up-projection).
    absorb_flops_per_seq: f64,
    absorb_weight_bytes: f64,
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
        let heads = model.num_heads as f64;
        let (window_layers, window) = model
            .sliding_window
            .map_or((0.0, 0.0), |w| (w.layers as f64, w.window as f64));
        let kv_bytes_per_token = model.kv_elements_per_layer() as f64 * model.kv_dtype_bytes as f64;
        let (flops_per_token, q_bytes_per_seq, absorb_flops_per_seq, absorb_weight_bytes) =
            match &model.mla {
                // Grouped-query: QK^T and PV, 2 FLOPs each per (head, dim); Q read, output written.
                None => {
                    let qk = model.q_dim() as f64;
                    (4.0 * qk, 2.0 * qk * d, 0.0, 0.0)
                }
                // MLA decodes with the up-projections absorbed (vLLM's MLA backends): each head's query
                // is mapped into the latent (nope x kv_lora), scores are taken over latent and rotary
                // key (kv_lora + rope), values read from the latent (kv_lora) and mapped back (kv_lora x v).
                Some(m) => {
                    let (l, r) = (m.kv_lora_rank as f64, m.qk_rope_head_dim as f64);
                    let (nope, v) = (m.qk_nope_head_dim as f64, m.v_head_dim as f64);
                    (
                        2.0 * heads * (l + r) + 2.0 * heads * l,
                        heads * (l + r) * d + heads * l * d,
                        2.0 * heads * nope * l + 2.0 * heads * l * v,
                        heads * l * (nope + v) * d,
                    )
                }
            };
        let attn = DecodeAttnConstants {
            full_layers: model.num_layers as f64 - window_layers,
            window_layers,
            window,
            flops_per_token,
            kv_bytes_per_token,
            q_bytes_per_seq,
            flops_per_s: hw.peak_bf16_tflops * 1e12 * p.compute_efficiency,
            bytes_per_s: hw.memory_bandwidth_gbps * 1e9 * p.decode_attention_efficiency,
            latency_s: p.attention_latency_s,
            absorb_flops_per_seq,
            absorb_weight_bytes,
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
        self.op_at(flops, bytes, self.flops_per_s())
    }

    /// One GEMM kernel computing at `flops_per_s`.
    fn op_at(&self, flops: f64, bytes: f64, flops_per_s: f64) -> f64 {
        (flops / flops_per_s).max(bytes / self.bytes_per_s()) + self.p.kernel_latency_s
    }

    /// An element-wise operator moving `bytes` in `kernels` kernels.
    fn elementwise(&self, bytes: f64, kernels: f64) -> f64 {
        let bw = self.hw.memory_bandwidth_gbps * 1e9 * self.p.elementwise_efficiency;
        bytes / bw + kernels * self.p.elementwise_latency_s
    }

    /// The arithmetic rate of the decoder layers' GEMMs: W8A8 checkpoints at the GPU's fp8 or int8 peak
    /// where it has one; 16-bit and weight-only checkpoints (whose kernels dequantize in registers,
    /// hidden behind the tensor-core work: Frantar et al., "MARLIN", 2024) at the bf16 peak. All at
    /// `compute_efficiency`.
    fn layer_flops_per_s(&self) -> f64 {
        let peak = match self.model.quant.as_ref().map(|q| q.compute) {
            Some(QuantCompute::Fp8) => self.hw.peak_fp8_tflops,
            Some(QuantCompute::Int8) => self.hw.peak_int8_tops,
            _ => None,
        };
        peak.unwrap_or(self.hw.peak_bf16_tflops) * 1e12 * self.p.compute_efficiency
    }

    /// A decoder layer's linear layer of `inp` x `out` weights over `t` tokens: 2 t in out FLOPs; the
    /// (possibly quantized) weights plus input and output activations moved.
    fn linear(&self, t: f64, inp: u64, out: u64) -> f64 {
        let d = self.model.dtype_bytes as f64;
        let (i, o) = (inp as f64, out as f64);
        self.op_at(
            2.0 * t * i * o,
            i * o * self.model.linear_weight_bytes() + t * (i + o) * d,
            self.layer_flops_per_s(),
        )
    }

    /// An unquantized linear layer (router gates): 16-bit weights at the bf16 peak.
    fn linear_dtype(&self, t: f64, inp: u64, out: u64) -> f64 {
        let d = self.model.dtype_bytes as f64;
        let (i, o) = (inp as f64, out as f64);
        self.op(2.0 * t * i * o, (i * o + t * (i + o)) * d)
    }

    /// The decode attention operator: reads every decode sequence's context, on windowed layers at most
    /// the window of it. A step is priced from its sums, so windowed layers read `decode_seqs` x
    /// min(mean context, window) tokens: exact when every context is on one side of the window, an
    /// overestimate (by concavity) for a batch that straddles it.
    fn attn_decode(&self, b: &BatchShape) -> f64 {
        let c = &self.attn;
        let s = b.decode_seqs as f64;
        let layer = |tokens: f64| {
            ((c.flops_per_token * tokens) / c.flops_per_s)
                .max((tokens * c.kv_bytes_per_token + s * c.q_bytes_per_seq) / c.bytes_per_s)
                + c.latency_s
        };
        let ctx = b.decode_context_tokens as f64;
        let mut t = c.full_layers * layer(ctx);
        if c.window_layers > 0.0 && s > 0.0 {
            t += c.window_layers * layer(s * (ctx / s).min(c.window));
        }
        if c.absorb_weight_bytes > 0.0 {
            t += (c.full_layers + c.window_layers)
                * self.op(s * c.absorb_flops_per_seq, c.absorb_weight_bytes);
        }
        t
    }

    /// The prefill attention operator over the step's chunks: causal pairs at prefill attention's
    /// efficiency, on windowed layers only the pairs inside the window. MLA first re-expands the chunks'
    /// contexts from the latent (the KV up-projection over every context token, vLLM's MLA prefill).
    fn attn_prefill(&self, shape: &StepShape) -> f64 {
        let m = &self.model;
        let b = &shape.sums;
        let d = m.dtype_bytes as f64;
        let heads = m.num_heads as f64;
        let (flops_per_pair, q_bytes_per_token) = match &m.mla {
            None => (4.0 * m.q_dim() as f64, 2.0 * m.q_dim() as f64 * d),
            Some(a) => {
                let qk = (a.qk_nope_head_dim + a.qk_rope_head_dim) as f64;
                let v = a.v_head_dim as f64;
                (2.0 * heads * (qk + v), heads * (qk + v) * d)
            }
        };
        let peak = self.hw.peak_bf16_tflops * 1e12 * self.p.prefill_attention_efficiency;
        // MLA attends over the re-expanded K and V of every head, 16-bit.
        let kv_bytes = match &m.mla {
            None => m.kv_elements_per_layer() as f64 * m.kv_dtype_bytes as f64,
            Some(a) => heads * (a.qk_nope_head_dim + a.qk_rope_head_dim + a.v_head_dim) as f64 * d,
        };
        let layer = |pairs: f64, context: f64| {
            ((flops_per_pair * pairs) / peak).max(
                (context * kv_bytes + b.prefill_tokens as f64 * q_bytes_per_token)
                    / self.bytes_per_s(),
            ) + self.p.attention_latency_s
        };
        let (window_layers, window) = m.sliding_window.map_or((0, 0), |w| (w.layers, w.window));
        let full_layers = (m.num_layers - window_layers) as f64;
        let mut t =
            full_layers * layer(b.prefill_attn_pairs as f64, b.prefill_context_tokens as f64);
        if window_layers > 0 {
            let (mut pairs, mut context) = (0u64, 0u64);
            for c in &shape.prefill_chunks {
                pairs += windowed_pairs(c.tokens as u64, c.context as u64, window);
                context += (c.context as u64).min(c.tokens as u64 + window - 1);
            }
            t += window_layers as f64 * layer(pairs as f64, context as f64);
        }
        if let Some(a) = &m.mla {
            let out = heads * (a.qk_nope_head_dim + a.v_head_dim) as f64;
            let l = a.kv_lora_rank as f64;
            let ctx = b.prefill_context_tokens as f64;
            t += m.num_layers as f64
                * self.op_at(
                    2.0 * ctx * l * out,
                    l * out * m.linear_weight_bytes() + ctx * (l + out) * d,
                    self.layer_flops_per_s(),
                );
        }
        t
    }

    /// The GEMMs, element-wise operators and all-reduces of a step of `tokens` tokens.
    fn token_ops(&self, tokens: u64) -> OpTimes {
        let m = &self.model;
        let layers = m.num_layers as f64;
        let d = m.dtype_bytes as f64;
        let t = tokens as f64;
        let h = m.hidden_size;
        let hd = h as f64;
        let mut ops = OpTimes::default();
        if t == 0.0 {
            return ops;
        }
        let mut norms = layers * self.elementwise(10.0 * t * hd * d, 4.0)
            + self.elementwise(2.0 * t * hd * d, 1.0);
        match &m.mla {
            None => {
                let (qd, kvd) = (m.q_dim() as f64, m.kv_dim() as f64);
                ops.push(
                    op::QKV_PROJ,
                    layers * self.linear(t, h, m.q_dim() + 2 * m.kv_dim()),
                );
                // Rotary embedding reads and writes Q and K.
                ops.push(
                    op::ATTN_ROPE,
                    layers * self.elementwise(2.0 * t * (qd + kvd) * d, 1.0),
                );
                ops.push(op::O_PROJ, layers * self.linear(t, m.q_dim(), h));
            }
            Some(a) => {
                let heads = m.num_heads;
                let qk = heads * (a.qk_nope_head_dim + a.qk_rope_head_dim);
                let q = match a.q_lora_rank {
                    Some(r) => {
                        norms += layers * self.elementwise(2.0 * t * r as f64 * d, 1.0);
                        self.linear(t, h, r) + self.linear(t, r, qk)
                    }
                    None => self.linear(t, h, qk),
                };
                norms += layers * self.elementwise(2.0 * t * a.kv_lora_rank as f64 * d, 1.0);
                ops.push(
                    op::QKV_PROJ,
                    layers * (q + self.linear(t, h, a.kv_elements())),
                );
                // Rotary embedding of the queries' and the shared key's rotary parts.
                let rope = ((heads + 1) * a.qk_rope_head_dim) as f64;
                ops.push(
                    op::ATTN_ROPE,
                    layers * self.elementwise(2.0 * t * rope * d, 1.0),
                );
                ops.push(op::O_PROJ, layers * self.linear(t, heads * a.v_head_dim, h));
            }
        }
        let (up, act, down) = self.mlp(t);
        ops.push(op::MLP_UP, up);
        ops.push(op::MLP_ACT, act);
        ops.push(op::MLP_DOWN, down);
        // Two RMSNorms (read and write t x h) and two residual adds (read two, write one) per layer,
        // and the final RMSNorm once.
        ops.push(op::NORMS, norms);
        // The new tokens' KV copied into the cache: read and written, one kernel each for K and V
        // (one for MLA's latent).
        let kv = m.kv_elements_per_layer() as f64;
        let kernels = if m.mla.is_some() { 1.0 } else { 2.0 };
        ops.push(
            op::KV_WRITE,
            layers * self.elementwise(t * kv * (d + m.kv_dtype_bytes as f64), kernels),
        );
        // The embedding gather: t rows of h read and written, once per step.
        ops.push(op::EMBEDDING, self.elementwise(2.0 * t * hd * d, 1.0));
        if self.tp > 1 {
            // Two all-reduces of t x h activations per layer (after attention and after the MLP), ring
            // algorithm: 2 (tp - 1) / tp of the bytes cross each link.
            let bytes = t * hd * d;
            let tp = self.tp as f64;
            let one = 2.0 * (tp - 1.0) / tp * bytes / (self.interconnect_gbps * 1e9)
                + self.allreduce_latency_s;
            ops.push(op::ALLREDUCE, layers * 2.0 * one);
        }
        ops
    }

    /// The MLPs of a step of `t` tokens, over all layers: (gate and up, activation and routing, down).
    ///
    /// Dense layers: gate and up in one fused GEMM, SiLU-and-multiply reading both and writing one, down.
    /// MoE layers: the router (a 16-bit GEMM), the routed experts as grouped GEMMs (each token's `top_k`
    /// experts' FLOPs; the weights of every expert some token was routed to, read once), the shared
    /// experts as a dense MLP, and the top-k, activation and weighted sum as element-wise kernels.
    /// Routing assumption: each token picks `top_k` distinct experts uniformly and independently of the
    /// other tokens (what load-balanced training aims at), so t tokens touch on average
    /// E (1 - (1 - k/E)^t) of the E experts; a skewed router touches fewer and reads fewer weights.
    fn mlp(&self, t: f64) -> (f64, f64, f64) {
        let m = &self.model;
        let d = m.dtype_bytes as f64;
        let h = m.hidden_size;
        let hd = h as f64;
        let dense = m.dense_layers() as f64;
        let i = m.intermediate_size;
        let (mut up, mut act, mut down) = (0.0, 0.0, 0.0);
        if dense > 0.0 {
            up += dense * self.linear(t, h, 2 * i);
            act += dense * self.elementwise(3.0 * t * i as f64 * d, 1.0);
            down += dense * self.linear(t, i, h);
        }
        if let Some(e) = &m.moe {
            let layers = e.moe_layers as f64;
            let (n, k) = (e.num_experts as f64, e.top_k as f64);
            let rows = t * k;
            let touched = n * (1.0 - (1.0 - k / n).powf(t));
            let ie = e.expert_intermediate_size as f64;
            let wb = m.linear_weight_bytes();
            let flops = self.layer_flops_per_s();
            let router = self.linear_dtype(t, h, e.num_experts);
            up += layers
                * (router
                    + self.op_at(
                        2.0 * rows * hd * 2.0 * ie,
                        touched * hd * 2.0 * ie * wb + rows * (hd + 2.0 * ie) * d,
                        flops,
                    ));
            down += layers
                * self.op_at(
                    2.0 * rows * ie * hd,
                    touched * ie * hd * wb + rows * (ie + hd) * d,
                    flops,
                );
            // Softmax and top-k over the router logits (float32), SiLU-and-multiply of every routed row,
            // and the weighted sum of the k expert outputs back into t rows.
            act += layers
                * (self.elementwise(t * n * 4.0 * 2.0, 1.0)
                    + self.elementwise(3.0 * rows * ie * d, 1.0)
                    + self.elementwise((rows + t) * hd * d, 1.0));
            if e.shared_intermediate_size > 0 {
                let s = e.shared_intermediate_size;
                up += layers * self.linear(t, h, 2 * s);
                act += layers * self.elementwise(3.0 * t * s as f64 * d, 1.0);
                down += layers * self.linear(t, s, h);
            }
        }
        (up, act, down)
    }
}

/// Causal (query, key) pairs of a chunk of `q` tokens ending at context `c` on a layer whose queries see
/// the last `w` tokens: query j (1-based position) sees min(j, w) keys, summed over j = c - q + 1 ..= c.
pub fn windowed_pairs(q: u64, c: u64, w: u64) -> u64 {
    let first = c - q + 1;
    // Positions up to w see all earlier keys (j each); the rest see w.
    let below_end = c.min(w);
    let below = if first <= below_end {
        (first + below_end) * (below_end - first + 1) / 2
    } else {
        0
    };
    let above = c - below_end.max(first - 1);
    below + above * w
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
            s = s.advanced(1, step_tokens);
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
        if b.prefill_tokens > 0 {
            push(op::ATTN_PREFILL, self.attn_prefill(shape));
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
                peak_fp8_tflops: None,
                peak_int8_tops: None,
                price_per_hour: None,
                host_link_gbps: None,
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

    fn h200(model: &str, tp: u32) -> Roofline {
        let m = ModelShape::load(model).unwrap();
        Roofline::new(
            m.per_rank(tp).unwrap(),
            HardwareSpec::load("h200").unwrap(),
            RooflineConfig::default(),
            tp,
            270.0,
            17e-6,
        )
        .with_async_scheduling(true)
    }

    fn op_time(r: &Roofline, shape: &StepShape, names: &[&str]) -> f64 {
        r.breakdown(shape)
            .iter()
            .filter(|o| names.contains(&o.op))
            .map(|o| o.seconds)
            .sum()
    }

    #[test]
    fn moe_decode_reads_only_the_experts_its_tokens_are_routed_to() {
        let r = h200("mixtral-8x7b", 1);
        let mut one = StepShape::default();
        one.add(1, 100, true, true);
        // One token routed to 2 of 8 experts: 32 layers x 2 x 3 x 4096 x 14336 x 2 B = 22,548,578,304 B
        // at 4800 GB/s x 0.83 = 3.984e12 B/s: 5.6598 ms, plus 32 x 3 kernels (router, w13, w2) x 5.2 us =
        // 0.4992 ms: 6.159 ms (activations and the router's 64 KiB add under 0.1%).
        let t = op_time(&r, &one, &[op::MLP_UP, op::MLP_DOWN]);
        assert!((t / 6.159e-3 - 1.0).abs() < 0.005, "{t}");
        // 2048 tokens touch all 8 experts (8 x (1 - 0.75^2048) = 8) and are compute-bound:
        // 2 x 2048 x 2 x 3 x 4096 x 14336 x 32 = 4.6179e13 FLOPs at 989.4e12 x 0.676 = 6.6883e14 FLOP/s
        // = 69.045 ms (+ 0.5 ms of latencies; the 11.3 GB of weights take 2.8 ms, hidden).
        let mut pre = StepShape::default();
        pre.add(2048, 2048, false, true);
        let t = op_time(&r, &pre, &[op::MLP_UP, op::MLP_DOWN]);
        assert!((t / 69.545e-3 - 1.0).abs() < 0.01, "{t}");
    }

    #[test]
    fn sliding_windows_cap_attention_per_layer() {
        // Positions 3..=6 in a window of 3 see 3 keys each: 12; positions 1..=4 in a window of 10 see
        // 1 + 2 + 3 + 4 = 10; positions 9 and 10 in a window of 4: 8.
        assert_eq!(windowed_pairs(4, 6, 3), 12);
        assert_eq!(windowed_pairs(4, 4, 10), 10);
        assert_eq!(windowed_pairs(2, 10, 4), 8);
        // Without a window the pairs are the chunk's causal pairs: 4 x 2 + 4 x 5 / 2 = 18.
        assert_eq!(windowed_pairs(4, 6, 6), 18);
        let r = h200("mistral-7b", 1);
        let dec = |ctx: u64| {
            r.attn_decode(&BatchShape {
                decode_seqs: 8,
                decode_context_tokens: 8 * ctx,
                sampled: 8,
                ..BatchShape::default()
            })
        };
        // Every layer of Mistral-7B-v0.1 reads at most 4096 tokens.
        assert_eq!(dec(8192), dec(16384));
        assert!(dec(2048) < dec(4096) && dec(4096) == dec(5000));
        let pre = |c: u32| {
            let mut s = StepShape::default();
            s.add(1024, c, false, true);
            op_time(&r, &s, &[op::ATTN_PREFILL])
        };
        assert_eq!(pre(20_000), pre(30_000));
        // Gemma-2: half the layers windowed, so a long context still costs more on the other half.
        let g = h200("gemma-2-9b", 1);
        let gdec = |ctx: u64| {
            g.attn_decode(&BatchShape {
                decode_seqs: 8,
                decode_context_tokens: 8 * ctx,
                sampled: 8,
                ..BatchShape::default()
            })
        };
        assert!(gdec(8000) > gdec(4096));
    }

    #[test]
    fn latent_attention_decodes_from_the_compressed_kv() {
        // DeepSeek-V3 on one rank of 8: 16 heads. Batch 64 at context 4096: 262,144 tokens x 576
        // elements x 2 B = 301,989,888 B per layer at 4800e9 x 0.788 = 3.7824e12 B/s: 79.84 us, FLOPs
        // 262,144 x (2 x 16 x 576 + 2 x 16 x 512) = 9.127e9 at 6.6883e14: 13.6 us (memory-bound); queries
        // 64 x 16 x 1088 x 2 B = 2.2 MB: 0.59 us; latency 7.3 us: 87.73 us. The absorbed up-projections,
        // 16-bit batched matmuls whatever the checkpoint (as vLLM runs them): 64 x (2 x 16 x 128 x 512 +
        // 2 x 16 x 512 x 128) = 2.684e8 FLOPs at 6.6883e14: 0.4 us; weights 16 x 512 x 256 x 2 B = 4.19 MB
        // at 3.984e12: 1.053 us; + 5.2 us: 6.253 us. 61 layers x 93.98 us = 5.733 ms.
        let r = h200("deepseek-v3", 8);
        let t = r.attn_decode(&BatchShape {
            decode_seqs: 64,
            decode_context_tokens: 64 * 4096,
            sampled: 64,
            ..BatchShape::default()
        });
        assert!((t / 5.733e-3 - 1.0).abs() < 0.005, "{t}");
    }

    #[test]
    fn quantized_weights_and_kv_change_the_bytes_and_the_arithmetic() {
        let base = h200("llama-3.1-8b", 1);
        let kv8 = Roofline::new(
            ModelShape::load("llama-3.1-8b")
                .unwrap()
                .with_dtypes("auto", "fp8")
                .unwrap(),
            HardwareSpec::load("h200").unwrap(),
            RooflineConfig::default(),
            1,
            270.0,
            17e-6,
        );
        // Batch 256 at 4096: the KV (2 x 1024 x 2 B per token per layer) dominates the bytes; one byte
        // per element halves it (the queries and the latency stay).
        let b = BatchShape {
            decode_seqs: 256,
            decode_context_tokens: 256 * 4096,
            sampled: 256,
            ..BatchShape::default()
        };
        let ratio = kv8.attn_decode(&b) / base.attn_decode(&b);
        assert!(ratio > 0.5 && ratio < 0.52, "{ratio}");
        // AWQ 4-bit weights at batch 1: the projections and MLP stream 0.5195 B per weight instead of 2
        // (ratio 0.26), plus the same kernel latencies.
        let awq = h200("llama-3.1-70b-awq", 1);
        let dense = h200("llama-3.1-70b", 1);
        let mut one = StepShape::default();
        one.add(1, 100, true, true);
        let gemms = [op::QKV_PROJ, op::O_PROJ, op::MLP_UP, op::MLP_DOWN];
        let ratio = op_time(&awq, &one, &gemms) / op_time(&dense, &one, &gemms);
        assert!(ratio > 0.26 && ratio < 0.30, "{ratio}");
        // W8A8 fp8 at 8192 tokens: compute-bound GEMMs at the fp8 peak, twice the bf16 one.
        let fp8 = Roofline::new(
            ModelShape::from_hf_json(
                "fp8",
                &crate::cost::catalog::tests_support::with_quant(
                    "llama-3.1-8b",
                    r#"{"quant_method": "fp8", "activation_scheme": "dynamic"}"#,
                ),
                "fp8",
            )
            .unwrap(),
            HardwareSpec::load("h200").unwrap(),
            RooflineConfig::default(),
            1,
            270.0,
            17e-6,
        );
        let mut pre = StepShape::default();
        pre.add(8192, 8192, false, true);
        let ratio = op_time(&fp8, &pre, &[op::MLP_UP, op::MLP_DOWN])
            / op_time(&base, &pre, &[op::MLP_UP, op::MLP_DOWN]);
        assert!(ratio > 0.49 && ratio < 0.52, "{ratio}");
    }

    proptest::proptest! {
        /// The leap's re-pricing contract (`CostModel::decode_context_time`), with or without prefill
        /// chunks in the step.
        #[test]
        fn decode_context_time_keeps_its_contract(
            seqs in 0u64..300, ctx in 0u64..5_000_000, grow in 0u64..100_000,
            prefill in 0u32..4096, tp in 1u32..3, model in 0usize..5,
        ) {
            let name = ["llama-3.1-8b", "mixtral-8x7b", "deepseek-v3", "mistral-7b", "gemma-2-9b"][model];
            let r = Roofline::new(
                ModelShape::load(name).unwrap().per_rank(tp).unwrap(),
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
