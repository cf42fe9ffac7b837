"""Fits the roofline's per-class efficiencies and kernel latencies to measured operator tables.

Each class is fitted on its own, on every row of both GPUs' tables at once, minimising the squared log of
predicted / measured (relative error):
- GEMMs (QKV, O, gate+up, down; and the LM head on the H200): compute_efficiency, memory_efficiency,
  kernel_latency_s, on Vidur's H100 table for Llama-2-7B (TP 1) and the H200 table for Llama-3.1-8B;
- element-wise kernels (RMSNorm, rotary, SiLU x mul, add): elementwise_efficiency, elementwise_latency_s,
  on the H200 table, whose kernels are fused single kernels under CUDA graphs as vLLM's custom ops are;
  Vidur's H100 element-wise rows (up to 2x slower for the bytes moved: the add streams at half the
  H200's fraction of bandwidth) are reported against the fit, not fitted;
- attention (H200 only: no other GPU has attention rows here): decode_attention_efficiency,
  prefill_attention_efficiency, attention_latency_s, on the split-KV decode rows and the FA2 prefill rows.

The formulas are `src/cost/roofline.rs`'s, per layer. Prints the fitted values and, per class and GPU,
the median and worst relative error. Needs numpy and scipy.

Usage: python tools/fit_roofline.py   (from the repository root)
"""

import csv
import math

import numpy as np
from scipy.optimize import least_squares

GPUS = {"h100": (989.4e12, 3350e9), "h200": (989.4e12, 4800e9)}
# hidden, q dim, kv dim, intermediate, vocab
SHAPES = {"h100": (4096, 4096, 4096, 11008, 32000), "h200": (4096, 4096, 1024, 14336, 128256)}
TABLES = {
    "h100": "data/profiles/vidur/compute/h100/meta-llama/Llama-2-7b-hf/mlp.csv",
    "h200": "data/profiles/h200/llama-3.1-8b/mlp.csv",
}
D = 2.0  # bytes per bf16 element
# The H200's measured device-to-device copy bandwidth over its datasheet bandwidth (4.23 / 4.8 TB/s): no
# kernel streaming from HBM does better. The table's small element-wise calls read inputs from L2 and
# would otherwise pull the fitted efficiency above it.
COPY_CEILING = 4.23 / 4.8


def mlp_rows(gpu):
    h, q, kv, inter, _ = SHAPES[gpu]
    gemm, elem = [], []
    for r in csv.DictReader(open(TABLES[gpu])):
        if int(float(r["num_tensor_parallel_workers"])) != 1:
            continue
        t = float(r["num_tokens"])
        ms = lambda op: float(r[f"time_stats.{op}.median"]) / 1e3
        for op, i, o in (("attn_pre_proj", h, q + 2 * kv), ("attn_post_proj", q, h),
                         ("mlp_up_proj", h, 2 * inter), ("mlp_down_proj", inter, h)):
            gemm.append((gpu, op, 2 * t * i * o, (i * o + t * (i + o)) * D, ms(op)))
        for op, b in (("input_layernorm", 2 * t * h * D), ("post_attention_layernorm", 2 * t * h * D),
                      ("attn_rope", 2 * t * (q + kv) * D), ("mlp_act", 3 * t * inter * D),
                      ("add", 3 * t * h * D)):
            elem.append((gpu, op, b, ms(op)))
    return gemm, elem


def lm_head_rows():
    h, _, _, _, v = SHAPES["h200"]
    out = []
    for r in csv.DictReader(open("data/profiles/h200/llama-3.1-8b/lm_head.csv")):
        rows = float(r["rows"])
        out.append(("h200", "lm_head", 2 * rows * h * v, h * v * D + rows * v * 4, float(r["ms_median"]) / 1e3))
    return out


def attention_rows():
    h, q, kv, _, _ = SHAPES["h200"]
    dec, pre = [], []
    for r in csv.DictReader(open("data/profiles/h200/llama-3.1-8b/attention.csv")):
        s = float(r["ms_per_layer_median"]) / 1e3
        b, qt, c = float(r["batch"]), float(r["q_tokens"]), float(r["context"])
        if r["case"].startswith("decode") and r["backend"] == "triton_splitkv":
            dec.append((4 * q * b * c, b * c * 2 * kv * D + b * 2 * q * D, s))
        elif not r["case"].startswith("decode") and r["backend"] == "flash":
            pairs = qt * (c - qt) + qt * (qt + 1) / 2
            pre.append((4 * q * pairs, c * 2 * kv * D + qt * 2 * q * D, s))
    return dec, pre


def weights(rows):
    """Each GPU's rows weigh as much in total as the other's (the H100 table has 9x more token counts)."""
    n = {}
    for r in rows:
        n[r[0]] = n.get(r[0], 0) + 1
    return np.array([1.0 / math.sqrt(n[r[0]]) for r in rows])


def report(name, groups):
    for key, errs in groups.items():
        e = np.array(errs)
        print(f"  {name:10} {key:6} rows {len(e):3}  median |err| {np.median(np.abs(e)) * 100:5.1f}%  "
              f"worst {e[np.argmax(np.abs(e))] * 100:+6.1f}%")


def main():
    gemm, elem = [], []
    for gpu in GPUS:
        g, e = mlp_rows(gpu)
        gemm += g
        elem += e
    gemm += lm_head_rows()

    def gemm_pred(x, rows):
        ce, me, lat = x
        return np.array([max(f / (GPUS[g][0] * ce), b / (GPUS[g][1] * me)) + lat for g, _, f, b, _ in rows])

    meas = np.array([r[-1] for r in gemm])
    w = weights(gemm)
    fit = least_squares(lambda x: w * np.log(gemm_pred(x, gemm) / meas), [0.7, 0.8, 4e-6],
                        bounds=([0.1, 0.1, 0.0], [1.0, 1.0, 1e-4]), x_scale=[0.1, 0.1, 1e-6])
    ce, me, kl = fit.x
    print(f"compute_efficiency = {ce:.3f}\nmemory_efficiency = {me:.3f}\nkernel_latency_s = {kl:.3e}")
    err = gemm_pred(fit.x, gemm) / meas - 1
    groups = {}
    for r, e in zip(gemm, err):
        groups.setdefault(r[0], []).append(e)
    report("GEMM", groups)

    def elem_pred(x, rows):
        ee, lat = x
        return np.array([b / (GPUS[g][1] * ee) + lat for g, _, b, _ in rows])

    own = [r for r in elem if r[0] == "h200"]
    own_meas = np.array([r[-1] for r in own])
    fit = least_squares(lambda x: np.log(elem_pred(x, own) / own_meas), [0.8, 2e-6],
                        bounds=([0.1, 0.0], [COPY_CEILING, 1e-4]), x_scale=[0.1, 1e-6])
    ee, el = fit.x
    meas = np.array([r[-1] for r in elem])
    print(f"elementwise_efficiency = {ee:.3f}\nelementwise_latency_s = {el:.3e}")
    err = elem_pred(fit.x, elem) / meas - 1
    groups = {}
    for r, e in zip(elem, err):
        groups.setdefault(r[0], []).append(e)
        groups.setdefault(f"{r[0]}:{r[1]}", []).append(e)
    report("elementwise", groups)

    dec, pre = attention_rows()
    peak, bw = GPUS["h200"]

    def attn_pred(x):
        de, pe, lat = x
        d = [max(f / (peak * ce), b / (bw * de)) + lat for f, b, _ in dec]
        p = [max(f / (peak * pe), b / (bw * me)) + lat for f, b, _ in pre]
        return np.array(d + p)

    meas = np.array([r[-1] for r in dec + pre])
    fit = least_squares(lambda x: np.log(attn_pred(x) / meas), [0.8, 0.5, 5e-6],
                        bounds=([0.1, 0.1, 0.0], [1.0, 1.0, 1e-4]), x_scale=[0.1, 0.1, 1e-6])
    de, pe, al = fit.x
    print(f"decode_attention_efficiency = {de:.3f}\nprefill_attention_efficiency = {pe:.3f}\n"
          f"attention_latency_s = {al:.3e}")
    err = attn_pred(fit.x) / meas - 1
    report("attention", {"decode": err[:len(dec)], "prefill": err[len(dec):]})


if __name__ == "__main__":
    main()
