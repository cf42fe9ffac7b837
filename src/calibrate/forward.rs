//! A real forward pass of a decoder layer stack with candle (f32, random weights), for checking the
//! calibrated cost model against an end-to-end measurement: RMSNorm, fused QKV, causal GQA attention over a
//! KV cache, output projection, residual adds, gated MLP, and the LM head on the sampled rows. (Rotary
//! embeddings and the embedding gather are left out: both are a few element-wise passes.)

use super::{causal_mask, rmsnorm, softmax_last};
use crate::cost::catalog::ModelShape;
use crate::cost::StepShape;
use candle_core::{DType, Device, Tensor};
use std::time::Instant;

type CErr = candle_core::Error;

struct Layer {
    wqkv: Tensor,
    wo: Tensor,
    wup: Tensor,
    wdown: Tensor,
    n1: Tensor,
    n2: Tensor,
}

/// A layer stack with random weights in the candle_nn::Linear layout ([out, in]).
pub struct Stack {
    m: ModelShape,
    layers: Vec<Layer>,
    lm_head: Tensor,
    dev: Device,
}

/// One step: prefill chunks (query tokens, context after the chunk) and decode sequences (context).
#[derive(Clone, Debug)]
pub struct Step {
    pub prefill: Vec<(usize, usize)>,
    pub decode: Vec<usize>,
}

impl Step {
    /// The same step as the simulator describes it to a cost model (every chunk here ends its prefill).
    pub fn shape(&self) -> StepShape {
        let mut b = StepShape::default();
        for &(q, c) in &self.prefill {
            b.add(q as u32, c as u32, false, true);
        }
        for &c in &self.decode {
            b.add(1, c as u32, true, true);
        }
        b
    }
}

impl Stack {
    pub fn new(m: &ModelShape) -> Result<Stack, CErr> {
        let dev = Device::Cpu;
        let (h, q, kv, i) = (
            m.hidden_size as usize,
            m.q_dim() as usize,
            m.kv_dim() as usize,
            m.intermediate_size as usize,
        );
        let r = |s: &[usize]| Tensor::randn(0f32, 0.02, s, &dev);
        let layers = (0..m.num_layers)
            .map(|_| {
                Ok(Layer {
                    wqkv: r(&[q + 2 * kv, h])?,
                    wo: r(&[h, q])?,
                    wup: r(&[2 * i, h])?,
                    wdown: r(&[h, i])?,
                    n1: Tensor::ones(h, DType::F32, &dev)?,
                    n2: Tensor::ones(h, DType::F32, &dev)?,
                })
            })
            .collect::<Result<_, CErr>>()?;
        Ok(Stack {
            lm_head: r(&[m.vocab_size as usize, h])?,
            layers,
            m: m.clone(),
            dev,
        })
    }

    fn attention(
        &self,
        qkv: &Tensor,
        step: &Step,
        caches: &[(Tensor, Tensor)],
    ) -> Result<Tensor, CErr> {
        let m = &self.m;
        let (q, hd) = (m.q_dim() as usize, m.head_dim as usize);
        let (kvh, g) = (
            m.num_kv_heads as usize,
            (m.num_heads / m.num_kv_heads) as usize,
        );
        let scale = 1.0 / (hd as f64).sqrt();
        let mut outs = Vec::new();
        let mut row = 0;
        let mut ci = 0;
        for &(qn, c) in &step.prefill {
            let part = qkv.narrow(0, row, qn)?;
            let qs = part
                .narrow(1, 0, q)?
                .reshape((qn, kvh, g, hd))?
                .permute((1, 2, 0, 3))?
                .reshape((kvh, g * qn, hd))?
                .contiguous()?;
            let (k, v) = &caches[ci];
            let s = (qs.matmul(&k.t()?)? * scale)?;
            let mask = causal_mask(qn, c, g, &self.dev)?;
            let o = softmax_last(&s.broadcast_add(&mask)?)?.matmul(v)?;
            outs.push(
                o.reshape((kvh, g, qn, hd))?
                    .permute((2, 0, 1, 3))?
                    .reshape((qn, q))?,
            );
            row += qn;
            ci += 1;
        }
        if !step.decode.is_empty() {
            // Decode sequences share one context length in these checks, so they batch.
            let b = step.decode.len();
            let part = qkv.narrow(0, row, b)?;
            let qs = part
                .narrow(1, 0, q)?
                .reshape((b, kvh, g, hd))?
                .contiguous()?;
            let (k, v) = &caches[ci];
            let s = (qs.matmul(&k.t()?)? * scale)?;
            outs.push(softmax_last(&s)?.matmul(v)?.reshape((b, q))?);
        }
        Tensor::cat(&outs, 0)
    }

    fn forward(&self, step: &Step, caches: &[(Tensor, Tensor)]) -> Result<(), CErr> {
        let m = &self.m;
        let t: usize = step.prefill.iter().map(|p| p.0).sum::<usize>() + step.decode.len();
        let i = m.intermediate_size as usize;
        let mut x = Tensor::randn(0f32, 1.0, (t, m.hidden_size as usize), &self.dev)?;
        for l in &self.layers {
            let qkv = rmsnorm(&x, &l.n1)?.matmul(&l.wqkv.t()?)?;
            let a = self.attention(&qkv, step, caches)?;
            x = (x + a.matmul(&l.wo.t()?)?)?;
            let up = rmsnorm(&x, &l.n2)?.matmul(&l.wup.t()?)?;
            let act = (up.narrow(1, 0, i)?.silu()? * up.narrow(1, i, i)?)?;
            x = (x + act.matmul(&l.wdown.t()?)?)?;
        }
        let sampled = step.prefill.len() + step.decode.len();
        x.narrow(0, 0, sampled)?.matmul(&self.lm_head.t()?)?;
        Ok(())
    }

    /// Median wall seconds of `repeats` forward passes of `step` (after one warm-up).
    pub fn time_step(&self, step: &Step, repeats: usize) -> Result<f64, CErr> {
        let m = &self.m;
        let (kvh, hd) = (m.num_kv_heads as usize, m.head_dim as usize);
        let mut caches = Vec::new();
        for &(_, c) in &step.prefill {
            caches.push((
                Tensor::randn(0f32, 1.0, (kvh, c, hd), &self.dev)?,
                Tensor::randn(0f32, 1.0, (kvh, c, hd), &self.dev)?,
            ));
        }
        if let Some(&c) = step.decode.first() {
            let b = step.decode.len();
            caches.push((
                Tensor::randn(0f32, 1.0, (b, kvh, c, hd), &self.dev)?,
                Tensor::randn(0f32, 1.0, (b, kvh, c, hd), &self.dev)?,
            ));
        }
        self.forward(step, &caches)?;
        let mut v = Vec::new();
        for _ in 0..repeats.max(1) {
            let t = Instant::now();
            self.forward(step, &caches)?;
            v.push(t.elapsed().as_secs_f64());
        }
        v.sort_by(f64::total_cmp);
        Ok(v[v.len() / 2])
    }
}
