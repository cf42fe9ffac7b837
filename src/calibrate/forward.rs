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

    /// Median wall seconds of `repeats` executions of `step` (after one warm-up), each prefill chunk and
    /// decode a request of its own with a KV cache holding its context ([`Stack::execute`]).
    pub fn time_step(&self, step: &Step, repeats: usize) -> Result<f64, CErr> {
        let (rows, caches) = self.prepare(step)?;
        self.execute(&rows, &caches)?;
        let mut v = Vec::new();
        for _ in 0..repeats.max(1) {
            v.push(self.execute(&rows, &caches)?);
        }
        v.sort_by(f64::total_cmp);
        Ok(v[v.len() / 2])
    }

    /// `step`'s rows for [`Stack::execute`], each prefill chunk and decode a request of its own, and their
    /// KV caches holding their contexts.
    pub fn prepare(&self, step: &Step) -> Result<(Vec<ExecRow>, KvCaches), CErr> {
        let rows: Vec<ExecRow> = step
            .prefill
            .iter()
            .map(|&(tokens, context)| (tokens, context))
            .chain(step.decode.iter().map(|&c| (1, c)))
            .enumerate()
            .map(|(i, (tokens, context))| ExecRow {
                request: i as u64,
                tokens,
                context,
                samples: true,
            })
            .collect();
        let mut caches = KvCaches::default();
        for r in &rows {
            self.ensure_cache(&mut caches, r, r.context)?;
        }
        Ok((rows, caches))
    }
}

/// One request's part of a step to execute ([`Stack::execute`]).
#[derive(Clone, Copy, Debug)]
pub struct ExecRow {
    pub request: u64,
    /// Tokens computed for it (a chunk's length, or 1 for a decode).
    pub tokens: usize,
    /// Its context after the step, those tokens included.
    pub context: usize,
    /// The step samples a token for it (its last row goes through the LM head).
    pub samples: bool,
}

/// The KV caches of the requests a schedule holds: per request and layer, K and V of shape
/// (kv_heads, capacity, head_dim), written in place at the positions each step computes, read up to the
/// request's context. A request's cache is allocated when it is first scheduled (a prefix it found cached
/// is present, its values immaterial to the timing) and freed when it finishes or is preempted. Caches are
/// filled with ones, not zeros: a zeroed allocation maps one shared zero page, which every read finds in
/// cache.
#[derive(Default)]
pub struct KvCaches {
    caches: std::collections::HashMap<u64, Vec<(Tensor, Tensor)>>,
}

impl KvCaches {
    /// Frees `request`'s cache (finished or preempted).
    pub fn free(&mut self, request: u64) {
        self.caches.remove(&request);
    }

    /// Requests holding a cache.
    pub fn len(&self) -> usize {
        self.caches.len()
    }

    pub fn is_empty(&self) -> bool {
        self.caches.is_empty()
    }
}

/// The gated MLP's activation as a step computes it (and `calibrate` times it): SiLU of the first half of
/// the fused up projection's output (`up`: (tokens, 2 i)) times its second half; both halves are strided
/// views, which candle's element-wise kernels walk more slowly than contiguous tensors.
pub(crate) fn gated(up: &Tensor, i: usize) -> Result<Tensor, CErr> {
    up.narrow(1, 0, i)?.silu()? * up.narrow(1, i, i)?
}

/// One sequence's attention in a step, as [`Stack::execute`] runs it (and `calibrate` times it): its `n`
/// new keys and values, from `part` (its (n, q + 2 kv) rows of the fused QKV output), written into its
/// cache (`kc`, `vc`: (kv_heads, capacity, head_dim)) at [context - n, context); its queries over the
/// cache's first `context` keys, with `mask` (the causal mask of a chunk, None for one token); the output
/// as (n, q_dim).
pub(crate) fn attend(
    m: &ModelShape,
    part: &Tensor,
    kc: &Tensor,
    vc: &Tensor,
    context: usize,
    mask: Option<&Tensor>,
) -> Result<Tensor, CErr> {
    let (q, kv) = (m.q_dim() as usize, m.kv_dim() as usize);
    let (kvh, hd, g) = (
        m.num_kv_heads as usize,
        m.head_dim as usize,
        (m.num_heads / m.num_kv_heads) as usize,
    );
    let n = part.dim(0)?;
    let new = |at: usize| -> Result<Tensor, CErr> {
        part.narrow(1, at, kv)?
            .reshape((n, kvh, hd))?
            .transpose(0, 1)?
            .contiguous()
    };
    kc.slice_set(&new(q)?, 1, context - n)?;
    vc.slice_set(&new(q + kv)?, 1, context - n)?;
    let (k, v) = (kc.narrow(1, 0, context)?, vc.narrow(1, 0, context)?);
    let qs = part
        .narrow(1, 0, q)?
        .reshape((n, kvh, g, hd))?
        .permute((1, 2, 0, 3))?
        .reshape((kvh, g * n, hd))?
        .contiguous()?;
    let mut s = (qs.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?;
    if let Some(mask) = mask {
        s = s.broadcast_add(mask)?;
    }
    softmax_last(&s)?
        .matmul(&v)?
        .reshape((kvh, g, n, hd))?
        .permute((2, 0, 1, 3))?
        .reshape((n, q))
}

impl Stack {
    /// Bytes of KV cache one token takes across the stack (f32 K and V).
    pub fn kv_bytes_per_token(&self) -> u64 {
        2 * 4 * self.m.num_layers * self.m.kv_dim()
    }

    /// Allocates `row`'s cache for `capacity` tokens if it has none (outside any timing).
    pub fn ensure_cache(
        &self,
        caches: &mut KvCaches,
        row: &ExecRow,
        capacity: usize,
    ) -> Result<(), CErr> {
        if caches.caches.contains_key(&row.request) {
            return Ok(());
        }
        let (kvh, hd) = (self.m.num_kv_heads as usize, self.m.head_dim as usize);
        let cap = capacity.max(row.context);
        let layers = (0..self.m.num_layers)
            .map(|_| {
                Ok((
                    Tensor::ones((kvh, cap, hd), DType::F32, &self.dev)?,
                    Tensor::ones((kvh, cap, hd), DType::F32, &self.dev)?,
                ))
            })
            .collect::<Result<_, CErr>>()?;
        caches.caches.insert(row.request, layers);
        Ok(())
    }

    /// Executes one step of `rows` over their caches (each must hold a cache: [`Stack::ensure_cache`]) and
    /// returns its wall seconds. Per layer: RMSNorm, fused QKV, each request's new K and V written into its
    /// cache, causal GQA attention of each request's queries over its context, output projection, residual
    /// adds, gated MLP; then the LM head on the sampled rows. Inputs, masks and row indices are made before
    /// the clock starts (an engine's FlashAttention builds no mask).
    pub fn execute(&self, rows: &[ExecRow], caches: &KvCaches) -> Result<f64, CErr> {
        let m = &self.m;
        let (h, i) = (m.hidden_size as usize, m.intermediate_size as usize);
        let g = (m.num_heads / m.num_kv_heads) as usize;
        let t: usize = rows.iter().map(|r| r.tokens).sum();
        let mut x = Tensor::randn(0f32, 1.0, (t, h), &self.dev)?;
        let masks = rows
            .iter()
            .map(|r| {
                (r.tokens > 1)
                    .then(|| causal_mask(r.tokens, r.context, g, &self.dev))
                    .transpose()
            })
            .collect::<Result<Vec<_>, CErr>>()?;
        let mut sampled = Vec::new();
        let mut off = 0u32;
        for r in rows {
            off += r.tokens as u32;
            if r.samples {
                sampled.push(off - 1);
            }
        }
        let sampled = Tensor::from_vec(sampled.clone(), sampled.len(), &self.dev)?;
        let cache: Vec<&Vec<(Tensor, Tensor)>> = rows
            .iter()
            .map(|r| {
                caches
                    .caches
                    .get(&r.request)
                    .ok_or_else(|| CErr::Msg(format!("request {} has no KV cache", r.request)))
            })
            .collect::<Result<_, CErr>>()?;
        let start = Instant::now();
        for (li, l) in self.layers.iter().enumerate() {
            let qkv = rmsnorm(&x, &l.n1)?.matmul(&l.wqkv.t()?)?;
            let mut outs = Vec::with_capacity(rows.len());
            let mut row = 0;
            for ((r, mask), c) in rows.iter().zip(&masks).zip(&cache) {
                let part = qkv.narrow(0, row, r.tokens)?;
                let (kc, vc) = &c[li];
                outs.push(attend(m, &part, kc, vc, r.context, mask.as_ref())?);
                row += r.tokens;
            }
            let a = Tensor::cat(&outs, 0)?;
            x = (x + a.matmul(&l.wo.t()?)?)?;
            let up = rmsnorm(&x, &l.n2)?.matmul(&l.wup.t()?)?;
            let act = gated(&up, i)?;
            x = (x + act.matmul(&l.wdown.t()?)?)?;
        }
        // candle computes on the CPU eagerly: the logits exist when the call returns.
        x.index_select(&sampled, 0)?.matmul(&self.lm_head.t()?)?;
        Ok(start.elapsed().as_secs_f64())
    }
}
