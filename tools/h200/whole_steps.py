"""Whole engine steps of a Llama-shaped model on one GPU, timed under CUDA graphs.

Writes steps.csv: one row per step, with the step in `servesim step-cost` flags (`--decode B@L`,
`--prefill T@C`), the number of sampled rows, and the step's GPU time in ms (median and min of the timed
replays). The forward is the one the operator tables in data/profiles/h200/llama-3.1-8b were taken
from (same kernels), run whole: embedding gather; per layer add, RMSNorm, QKV GEMM, neox rotary, KV
write, attention (one FA2 call per prefill chunk, one split-KV Triton call over all decode sequences,
each at its own context), O GEMM, add, RMSNorm, gate+up GEMM, SiLU x mul, down GEMM; then add, final
RMSNorm, gather of the sampled rows (the last token of every decode and every prefill chunk), LM head
with float32 logits and argmax. Weights and KV are random bf16. No host time: the whole step is one
CUDA graph, replayed.

For a tensor-parallel shard (--tp N) it runs one rank's share of the model (heads, MLP and vocab split
N ways) and skips the all-reduces; their time is priced from a measured collective table instead.

Usage: python whole_steps.py --model 8b|70b [--tp N] --out steps.csv
"""

import argparse
import csv
import math
import sys

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

MODELS = {
    # hidden, q heads, kv heads, head dim, intermediate, vocab, layers
    "llama-3.1-8b": (4096, 32, 8, 128, 14336, 128256, 32),
    "llama-3.1-70b": (8192, 64, 8, 128, 28672, 128256, 80),
}


@triton.jit
def rmsnorm_kernel(X, W, Y, stride, N: tl.constexpr, eps):
    row = tl.program_id(0)
    offs = tl.arange(0, N)
    x = tl.load(X + row * stride + offs).to(tl.float32)
    var = tl.sum(x * x, axis=0) / N
    w = tl.load(W + offs).to(tl.float32)
    y = x * tl.rsqrt(var + eps) * w
    tl.store(Y + row * stride + offs, y.to(tl.bfloat16))


@triton.jit
def silu_mul_kernel(GU, OUT, I: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    col = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    g = tl.load(GU + row * 2 * I + col).to(tl.float32)
    u = tl.load(GU + row * 2 * I + I + col).to(tl.float32)
    y = g / (1.0 + tl.exp(-g)) * u
    tl.store(OUT + row * I + col, y.to(tl.bfloat16))


@triton.jit
def rope_kernel(QKV, POS, COS, SIN, stride, NH: tl.constexpr, NHP: tl.constexpr, HALF: tl.constexpr):
    # In place on the first NH heads (query then key) of one token's QKV row; NHP = NH rounded up to a
    # power of two.
    tok = tl.program_id(0)
    pos = tl.load(POS + tok)
    heads = tl.arange(0, NHP)
    hmask = (heads < NH)[:, None]
    offs = tl.arange(0, HALF)
    c = tl.load(COS + pos * HALF + offs)[None, :]
    s = tl.load(SIN + pos * HALF + offs)[None, :]
    base = QKV + tok * stride + heads[:, None] * (2 * HALF) + offs[None, :]
    x1 = tl.load(base, mask=hmask, other=0.0).to(tl.float32)
    x2 = tl.load(base + HALF, mask=hmask, other=0.0).to(tl.float32)
    tl.store(base, (x1 * c - x2 * s).to(tl.bfloat16), mask=hmask)
    tl.store(base + HALF, (x2 * c + x1 * s).to(tl.bfloat16), mask=hmask)


@triton.jit
def splitkv_kernel(Q, K, V, STARTS, LENS, O, LSE, split_len, stride_q, stride_kt, sm_scale,
                   NSPLIT: tl.constexpr, KVH: tl.constexpr, GROUP: tl.constexpr,
                   D: tl.constexpr, BLOCK_N: tl.constexpr):
    b = tl.program_id(0)
    h = tl.program_id(1)
    s = tl.program_id(2)
    start = tl.load(STARTS + b)
    length = tl.load(LENS + b)
    lo = s * split_len
    hi = tl.minimum(lo + split_len, length)
    rows = tl.arange(0, 16)
    rmask = rows < GROUP
    d = tl.arange(0, D)
    q = tl.load(Q + b * stride_q + (h * GROUP + rows)[:, None] * D + d[None, :], mask=rmask[:, None], other=0.0)
    m_i = tl.full([16], float("-inf"), tl.float32)
    l_i = tl.zeros([16], tl.float32)
    acc = tl.zeros([16, D], tl.float32)
    for n0 in range(lo, hi, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        nmask = n < hi
        kv_off = (start + n)[:, None] * stride_kt + h * D + d[None, :]
        k = tl.load(K + kv_off, mask=nmask[:, None], other=0.0)
        qk = tl.dot(q, tl.trans(k)) * sm_scale
        qk = tl.where(nmask[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.exp(qk - m_new[:, None])
        alpha = tl.exp(m_i - m_new)
        v = tl.load(V + kv_off, mask=nmask[:, None], other=0.0)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(tl.bfloat16), v)
        m_i = m_new
    ok = l_i > 0
    out = acc / tl.where(ok, l_i, 1.0)[:, None]
    lse = tl.where(ok, m_i + tl.log(tl.where(ok, l_i, 1.0)), float("-inf"))
    head = h * GROUP + rows
    o_base = ((b * KVH * GROUP + head) * NSPLIT + s)
    tl.store(O + o_base[:, None] * D + d[None, :], out, mask=rmask[:, None])
    tl.store(LSE + o_base, lse, mask=rmask)


@triton.jit
def merge_kernel(O, LSE, OUT, NSPLIT: tl.constexpr, SP: tl.constexpr, D: tl.constexpr):
    bh = tl.program_id(0)
    sp = tl.arange(0, SP)
    smask = sp < NSPLIT
    lse = tl.load(LSE + bh * NSPLIT + sp, mask=smask, other=float("-inf"))
    m = tl.max(lse, 0)
    w = tl.exp(lse - m)
    w = tl.where(smask, w, 0.0)
    d = tl.arange(0, D)
    o = tl.load(O + (bh * NSPLIT + sp)[:, None] * D + d[None, :], mask=smask[:, None], other=0.0)
    y = tl.sum(o * w[:, None], 0) / tl.sum(w, 0)
    tl.store(OUT + bh * D + d, y.to(tl.bfloat16))


class Model:
    def __init__(self, name, tp):
        h, nq, nkv, hd, inter, vocab, layers = MODELS[name]
        self.h, self.nq, self.nkv, self.hd = h, nq // tp, max(1, nkv // tp), hd
        self.inter, self.vocab, self.layers = inter // tp, vocab // tp, layers
        dev, bf = "cuda", torch.bfloat16
        qkv = (self.nq + 2 * self.nkv) * hd
        self.qkv_w = qkv
        g = torch.Generator(device=dev).manual_seed(0)

        def w(*shape):
            return (torch.randn(*shape, device=dev, dtype=bf, generator=g) * 0.02)

        self.emb = w(vocab, h)  # the embedding is replicated (vocab-parallel gathers are small)
        self.lm = w(self.vocab, h)
        self.norm_f = torch.ones(h, device=dev, dtype=bf)
        self.L = []
        for _ in range(layers):
            self.L.append(dict(
                n1=torch.ones(h, device=dev, dtype=bf), n2=torch.ones(h, device=dev, dtype=bf),
                qkv=w(qkv, h), o=w(h, self.nq * hd), up=w(2 * self.inter, h), down=w(h, self.inter)))
        inv = 1.0 / (500000.0 ** (torch.arange(0, hd, 2, device=dev, dtype=torch.float32) / hd))
        t = torch.arange(131072, device=dev, dtype=torch.float32)
        f = torch.outer(t, inv)
        self.cos, self.sin = f.cos().contiguous(), f.sin().contiguous()

    def rmsnorm(self, x, w):
        y = torch.empty_like(x)
        rmsnorm_kernel[(x.shape[0],)](x, w, y, x.stride(0), self.h, 1e-5)
        return y


def build_step(m, decodes, chunks, kcache, vcache, skip_attention=False):
    """Static inputs of one step and a function running it (captured into a CUDA graph by the caller).

    decodes: list of contexts L (the new token included); chunks: list of (T, C)."""
    dev = "cuda"
    seqs = [(T, C) for T, C in chunks] + [(1, L) for L in decodes]
    starts, pos, slots, cursor = [], [], [], 0
    for T, C in seqs:
        starts.append(cursor)
        pos.extend(range(C - T, C))
        slots.extend(range(cursor + C - T, cursor + C))
        cursor += C
    ntok = len(pos)
    tokens = torch.randint(0, m.emb.shape[0], (ntok,), device=dev)
    pos_t = torch.tensor(pos, device=dev, dtype=torch.int32)
    slots_t = torch.tensor(slots, device=dev, dtype=torch.int64)
    last, off = [], 0
    for T, _ in seqs:
        off += T
        last.append(off - 1)
    last_t = torch.tensor(last, device=dev, dtype=torch.int64)
    nd = len(decodes)
    d_first = sum(T for T, _ in chunks)
    if nd:
        d_starts = torch.tensor(starts[len(chunks):], device=dev, dtype=torch.int32)
        d_lens = torch.tensor(decodes, device=dev, dtype=torch.int32)
        maxl = max(decodes)
        splits = max(1, min(math.ceil(528 / (m.nkv * nd)), math.ceil(maxl / 256)))
        block_n = 64
        split_len = math.ceil(math.ceil(maxl / splits) / block_n) * block_n
        splits = math.ceil(maxl / split_len)
        o_part = torch.empty(nd * m.nq * splits * m.hd, device=dev, dtype=torch.float32)
        lse_part = torch.empty(nd * m.nq * splits, device=dev, dtype=torch.float32)
        d_out = torch.empty(nd, m.nq * m.hd, device=dev, dtype=torch.bfloat16)
    qd, kvd = m.nq * m.hd, m.nkv * m.hd
    scale = 1.0 / math.sqrt(m.hd)

    def attention(qkv, l):
        k_c, v_c = kcache[l], vcache[l]
        outs = []
        row = 0
        for (T, C), st in zip(chunks, starts):
            q = qkv[row:row + T, :qd].view(T, m.nq, m.hd).transpose(0, 1).unsqueeze(0)
            k = k_c[st:st + C].transpose(0, 1).unsqueeze(0)
            v = v_c[st:st + C].transpose(0, 1).unsqueeze(0)
            if T == C:
                mask = None
                causal = True
            else:
                from torch.nn.attention.bias import causal_lower_right
                mask = causal_lower_right(T, C)
                causal = False
            with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=True)
            outs.append(o.squeeze(0).transpose(0, 1).reshape(T, qd))
            row += T
        if nd:
            q = qkv[d_first:]
            group = m.nq // m.nkv
            splitkv_kernel[(nd, m.nkv, splits)](
                q, k_c, v_c, d_starts, d_lens, o_part, lse_part, split_len, q.stride(0), k_c.stride(0), scale,
                NSPLIT=splits, KVH=m.nkv, GROUP=group, D=m.hd, BLOCK_N=block_n, num_warps=4)
            merge_kernel[(nd * m.nq,)](o_part, lse_part, d_out, NSPLIT=splits,
                                       SP=max(2, triton.next_power_of_2(splits)), D=m.hd)
            outs.append(d_out)
        return outs[0] if len(outs) == 1 else torch.cat(outs, 0)

    def forward():
        x = m.emb[tokens]
        mlp_out = None
        for l, w in enumerate(m.L):
            if mlp_out is not None:
                x += mlp_out
            h1 = m.rmsnorm(x, w["n1"])
            qkv = F.linear(h1, w["qkv"])
            rope_kernel[(ntok,)](qkv, pos_t, m.cos, m.sin, qkv.stride(0), NH=m.nq + m.nkv,
                                                   NHP=triton.next_power_of_2(m.nq + m.nkv), HALF=m.hd // 2)
            kcache[l].view(-1, kvd).index_copy_(0, slots_t, qkv[:, qd:qd + kvd])
            vcache[l].view(-1, kvd).index_copy_(0, slots_t, qkv[:, qd + kvd:])
            a = qkv[:, :qd].contiguous() if skip_attention else attention(qkv, l)
            x += F.linear(a, w["o"])
            h2 = m.rmsnorm(x, w["n2"])
            gu = F.linear(h2, w["up"])
            act = torch.empty(ntok, m.inter, device=dev, dtype=torch.bfloat16)
            silu_mul_kernel[(ntok, m.inter // 1024)](gu, act, I=m.inter, BLOCK=1024)
            mlp_out = F.linear(act, w["down"])
        x += mlp_out
        x = m.rmsnorm(x, m.norm_f)
        rows = x[last_t]
        logits = F.linear(rows, m.lm).float()
        return logits.argmax(-1)

    return forward, ntok, cursor


def check_splitkv(m):
    """The split-KV kernel against SDPA in float32, at mixed contexts."""
    lens = [300, 1, 4100, 77]
    total = sum(lens)
    k = torch.randn(total, m.nkv, m.hd, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    q = torch.randn(len(lens), m.nq * m.hd, device="cuda", dtype=torch.bfloat16)
    starts = torch.tensor([0, 300, 301, 4401], device="cuda", dtype=torch.int32)
    d_lens = torch.tensor(lens, device="cuda", dtype=torch.int32)
    splits, split_len = 6, 704
    o_part = torch.empty(len(lens) * m.nq * splits * m.hd, device="cuda", dtype=torch.float32)
    lse = torch.empty(len(lens) * m.nq * splits, device="cuda", dtype=torch.float32)
    out = torch.empty(len(lens), m.nq * m.hd, device="cuda", dtype=torch.bfloat16)
    splitkv_kernel[(len(lens), m.nkv, splits)](q, k, v, starts, d_lens, o_part, lse, split_len, q.stride(0),
                                               k.stride(0), 1 / math.sqrt(m.hd), NSPLIT=splits, KVH=m.nkv,
                                               GROUP=m.nq // m.nkv, D=m.hd, BLOCK_N=64)
    merge_kernel[(len(lens) * m.nq,)](o_part, lse, out, NSPLIT=splits, SP=8, D=m.hd)
    worst = 0.0
    for i, (s, L) in enumerate(zip([0, 300, 301, 4401], lens)):
        qq = q[i].view(m.nq, 1, m.hd).float()
        kk = k[s:s + L].transpose(0, 1).float().repeat_interleave(m.nq // m.nkv, 0)
        vv = v[s:s + L].transpose(0, 1).float().repeat_interleave(m.nq // m.nkv, 0)
        ref = F.scaled_dot_product_attention(qq, kk, vv).reshape(-1)
        err = ((out[i].float() - ref).norm() / ref.norm()).item()
        worst = max(worst, err)
    return worst


def time_step(m, decodes, chunks, replays, skip_attention=False):
    tokens_needed = sum(C for _, C in chunks) + sum(decodes)
    kc = [torch.empty(tokens_needed, m.nkv, m.hd, device="cuda", dtype=torch.bfloat16) for _ in range(m.layers)]
    vc = [torch.empty(tokens_needed, m.nkv, m.hd, device="cuda", dtype=torch.bfloat16) for _ in range(m.layers)]
    for c in kc + vc:
        c.normal_()
    fwd, ntok, _ = build_step(m, decodes, chunks, kc, vc, skip_attention)
    times = replay_times(fwd, replays)
    del kc, vc, fwd
    torch.cuda.empty_cache()
    n = len(times)
    med = times[n // 2] if n % 2 else 0.5 * (times[n // 2 - 1] + times[n // 2])
    return med, times[0], ntok


def spread(n, lo, hi):
    """n contexts spread geometrically from lo to hi (deterministic)."""
    if n == 1:
        return [hi]
    return [int(round(lo * (hi / lo) ** (i / (n - 1)))) for i in range(n)]


def steps_for(name):
    if name == "llama-3.1-8b":
        uni = [(1, 512), (1, 8192), (4, 4096), (8, 2048), (16, 16384), (32, 1024), (32, 8192), (64, 512),
               (64, 2048), (96, 3000), (128, 1024), (128, 4096), (192, 1500), (256, 512), (256, 2048)]
        mixed = [spread(64, 128, 8192), spread(128, 256, 4096), [16384] + [256] * 15, spread(32, 1000, 12000),
                 spread(256, 100, 3000)]
        pre = [[(128, 128)], [(512, 512)], [(2048, 2048)], [(5000, 5000)], [(8192, 8192)],
               [(1024, 1024)] * 4, [(300, 300), (700, 700), (1500, 1500)]]
        chunk = [[(512, 4096)], [(2048, 8192)], [(1024, 3000)], [(4096, 16384)], [(256, 12000)],
                 [(2048, 6000), (1000, 1000)]]
        mix = [([1024] * 64, [(512, 2048)]), ([2048] * 128, [(2048, 4096)]), (spread(32, 200, 6000), [(1500, 9000)]),
               ([512] * 255, [(256, 256)]), (spread(96, 300, 3000), [(4000, 4000)])]
    else:
        uni = [(1, 1024), (8, 4096), (32, 2048), (64, 1024), (128, 2048), (256, 1024)]
        mixed = [spread(64, 128, 8192), spread(128, 256, 4096)]
        pre = [[(512, 512)], [(2048, 2048)], [(8192, 8192)]]
        chunk = [[(2048, 8192)]]
        mix = [([1024] * 64, [(512, 2048)]), (spread(96, 300, 3000), [(2048, 4000)])]
    out = []
    for b, l in uni:
        out.append(("decode", [l] * b, []))
    for d in mixed:
        out.append(("decode_mixed", d, []))
    for c in pre:
        out.append(("prefill", [], c))
    for c in chunk:
        out.append(("chunked_prefill", [], c))
    for d, c in mix:
        out.append(("mixed", d, c))
    return out


def flags(decodes, chunks):
    from collections import Counter
    parts = []
    for T, C in chunks:
        parts.append(f"--prefill {T}" if T == C else f"--prefill {T}@{C}")
    for L, n in sorted(Counter(decodes).items()):
        parts.append(f"--decode {n}@{L}")
    return " ".join(parts)


def ceilings():
    """This card's copy bandwidth and bf16 GEMM rate, measured before the steps (clocks are not locked)."""
    a = torch.empty(2 * 1024**3, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    y = torch.randn_like(x)
    for what, fn, work in (("copy TB/s (read + write)", lambda: b.copy_(a), 2 * a.numel() / 1e12),
                           ("8192^3 bf16 GEMM TFLOP/s", lambda: x @ y, 2 * 8192**3 / 1e12)):
        for _ in range(5):
            fn()
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        for _ in range(20):
            fn()
        e1.record()
        e1.synchronize()
        print(f"{what}: {work * 20 / (e0.elapsed_time(e1) / 1e3):.3f}", file=sys.stderr)
    del a, b, x, y
    torch.cuda.empty_cache()


def replay_times(fn, replays):
    """`fn` run twice eagerly on a side stream, captured into a CUDA graph, replayed 3 times as warm-up, then
    `replays` times, each timed with CUDA events: the times in ms, sorted."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    for _ in range(3):
        g.replay()
    times = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    del g
    return sorted(times)


def probe(m, args):
    with open(args.out, "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["what", "batch", "context", "ms"])
        for B in (1, 4, 16, 64, 256):
            for L in (512, 2048, 8192):
                if B * L > 600_000:
                    continue
                kc = [torch.randn(B * L, m.nkv, m.hd, device="cuda", dtype=torch.bfloat16) for _ in range(m.layers)]
                vc = [torch.randn_like(k) for k in kc]
                q = torch.randn(B, (m.nq + 2 * m.nkv) * m.hd, device="cuda", dtype=torch.bfloat16)
                starts = torch.arange(0, B * L, L, device="cuda", dtype=torch.int32)
                lens = torch.full((B,), L, device="cuda", dtype=torch.int32)
                splits = max(1, min(math.ceil(528 / (m.nkv * B)), math.ceil(L / 256)))
                split_len = math.ceil(math.ceil(L / splits) / 64) * 64
                splits = math.ceil(L / split_len)
                o_part = torch.empty(B * m.nq * splits * m.hd, device="cuda", dtype=torch.float32)
                lse = torch.empty(B * m.nq * splits, device="cuda", dtype=torch.float32)
                out = torch.empty(B, m.nq * m.hd, device="cuda", dtype=torch.bfloat16)

                def fn():
                    for l in range(m.layers):
                        splitkv_kernel[(B, m.nkv, splits)](
                            q, kc[l], vc[l], starts, lens, o_part, lse, split_len, q.stride(0), kc[l].stride(0),
                            0.088, NSPLIT=splits, KVH=m.nkv, GROUP=m.nq // m.nkv, D=m.hd, BLOCK_N=64)
                        merge_kernel[(B * m.nq,)](o_part, lse, out, NSPLIT=splits,
                                                  SP=max(2, triton.next_power_of_2(splits)), D=m.hd)
                ms = replay_times(fn, 15)[7] / m.layers
                wr.writerow(["splitkv_per_layer", B, L, f"{ms:.5f}"])
                del kc, vc
                torch.cuda.empty_cache()
                for skip in (False, True):
                    med, _, _ = time_step(m, [L] * B, [], 15, skip_attention=skip)
                    wr.writerow(["step_no_attention" if skip else "step", B, L, f"{med:.4f}"])
                f.flush()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--replays", type=int, default=15)
    ap.add_argument("--out", required=True)
    ap.add_argument("--append", action="store_true")
    ap.add_argument("--probe", action="store_true",
                    help="instead of steps: the split-KV kernel timed as the operator table times it (a graph "
                         "of one call per layer), and decode steps with attention left out")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    print(f"torch {torch.__version__}, triton {triton.__version__}, {torch.cuda.get_device_name()}", file=sys.stderr)
    ceilings()
    m = Model(args.model, args.tp)
    err = check_splitkv(m)
    print(f"split-KV kernel vs float32 SDPA: worst relative error {err:.2e}", file=sys.stderr)
    assert err < 1e-2, err
    if args.probe:
        probe(m, args)
        return
    with open(args.out, "a" if args.append else "w", newline="") as f:
        wr = csv.writer(f)
        if not args.append:
            wr.writerow(["model", "tensor_parallel", "kind", "step", "tokens", "sampled", "ms_median", "ms_min"])
        for kind, decodes, chunks in steps_for(args.model):
            med, mn, ntok = time_step(m, decodes, chunks, args.replays)
            row = [args.model, args.tp, kind, flags(decodes, chunks), ntok, len(decodes) + len(chunks),
                   f"{med:.4f}", f"{mn:.4f}"]
            wr.writerow(row)
            f.flush()
            print(",".join(map(str, row)), file=sys.stderr)


if __name__ == "__main__":
    main()
