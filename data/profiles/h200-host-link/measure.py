#!/usr/bin/env python3
"""Measure host<->GPU copy cost (PCIe host link) with PyTorch + CUDA events.

Writes $OUT/host_link.csv (or ./host_link.csv if OUT is unset) with columns:
kind, direction, bytes_per_copy, copies, total_bytes, median_s, gbps
"""
import csv
import io
import os
import statistics
import subprocess

import torch

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

SINGLE_SIZES = [64 * KiB, 256 * KiB, 1 * MiB, 4 * MiB, 16 * MiB, 64 * MiB, 256 * MiB, 1 * GiB]
SINGLE_WARMUP, SINGLE_ITERS = 5, 30
BLOCK_SIZES = [131072, 4 * MiB]
BLOCK_COUNTS = [1, 16, 256, 1024]
BLOCK_TOTAL_CAP = 2 * GiB
BLOCK_WARMUP, BLOCK_ITERS = 2, 10


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=60).stdout
    except Exception as e:  # pragma: no cover
        return f"<failed: {e}>"


def time_batch(stream, fn):
    """Time fn() (which enqueues copies on `stream`) with CUDA events; seconds."""
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    with torch.cuda.stream(stream):
        start.record(stream)
        fn()
        end.record(stream)
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def single(host, dev, direction, stream, nbytes):
    h = host[:nbytes]
    d = dev[:nbytes]
    if direction == "h2d":
        fn = lambda: d.copy_(h, non_blocking=True)
    else:
        fn = lambda: h.copy_(d, non_blocking=True)
    for _ in range(SINGLE_WARMUP):
        time_batch(stream, fn)
    return statistics.median(time_batch(stream, fn) for _ in range(SINGLE_ITERS))


def blockwise(host, dev, direction, stream, block, n):
    hs = [host[i * block:(i + 1) * block] for i in range(n)]
    ds = [dev[i * block:(i + 1) * block] for i in range(n)]
    if direction == "h2d":
        def fn():
            for h, d in zip(hs, ds):
                d.copy_(h, non_blocking=True)
    else:
        def fn():
            for h, d in zip(hs, ds):
                h.copy_(d, non_blocking=True)
    for _ in range(BLOCK_WARMUP):
        time_batch(stream, fn)
    return statistics.median(time_batch(stream, fn) for _ in range(BLOCK_ITERS))


def main():
    assert torch.cuda.is_available()
    torch.cuda.init()
    print("device:", torch.cuda.get_device_name(0))
    print("torch:", torch.__version__, "CUDA (torch build):", torch.version.cuda)
    print("driver/CUDA per nvidia-smi:")
    print(sh("nvidia-smi | head -4"))
    print("=== nvidia-smi -q | grep -i -A3 'PCI\\|Link' ===")
    print(sh("nvidia-smi -q | grep -i -A3 'PCI\\|Link'"))
    print("=== nvidia-smi topo -m ===")
    print(sh("nvidia-smi topo -m"))

    stream = torch.cuda.Stream()
    rows = []

    def add(kind, direction, per, copies, med):
        total = per * copies
        rows.append([kind, direction, per, copies, total, f"{med:.9g}", f"{total / med / 1e9:.4f}"])
        print(f"{kind:17s} {direction} per={per:>11d} n={copies:>5d} median={med*1e3:10.4f} ms  {total/med/1e9:8.3f} GB/s", flush=True)

    maxbytes = max(max(SINGLE_SIZES), BLOCK_TOTAL_CAP)
    host_pinned = torch.empty(maxbytes, dtype=torch.uint8, pin_memory=True)
    host_pinned.fill_(1)
    dev = torch.empty(maxbytes, dtype=torch.uint8, device="cuda")
    dev.fill_(2)
    torch.cuda.synchronize()

    # (a) single pinned copies
    for direction in ("h2d", "d2h"):
        for s in SINGLE_SIZES:
            add("single_pinned", direction, s, 1, single(host_pinned, dev, direction, stream, s))

    # (b) block-wise copies, one copy per block, back to back on one stream
    for direction in ("h2d", "d2h"):
        for b in BLOCK_SIZES:
            for n in BLOCK_COUNTS:
                n_eff = min(n, BLOCK_TOTAL_CAP // b)
                if n_eff != n:
                    print(f"note: block {b} n={n} capped to n={n_eff} (total <= 2 GiB)")
                add("blockwise_pinned", direction, b, n_eff,
                    blockwise(host_pinned, dev, direction, stream, b, n_eff))

    # (c) pageable host memory, H2D only
    host_pageable = torch.empty(max(SINGLE_SIZES), dtype=torch.uint8)
    host_pageable.fill_(3)
    assert not host_pageable.is_pinned()
    for s in SINGLE_SIZES:
        add("single_pageable", "h2d", s, 1, single(host_pageable, dev, "h2d", stream, s))

    header = ["kind", "direction", "bytes_per_copy", "copies", "total_bytes", "median_s", "gbps"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    out_dir = os.environ.get("OUT", ".")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "host_link.csv"), "w") as f:
        f.write(buf.getvalue())
    print("=== host_link.csv ===")
    print(buf.getvalue(), end="")


if __name__ == "__main__":
    main()
