"""Batch-1 linear layers on the GPU: a plain Triton GEMV in a few tile shapes against torch's F.linear
(cuBLAS), for a model shape's weights, as read bandwidth. (Measured on the H200 on 2026-12-04: no tile
beat cuBLAS overall, so the engine keeps F.linear; see benchmarks/RESULTS.md.)

    python benchmarks/gemv.py [--shape llama-3-8b]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402
from random_model import SHAPES  # noqa: E402


@triton.jit
def _gemv(x_ptr, w_ptr, out_ptr, n, k, stride_wn, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # One row of activations against BLOCK_N rows of the weight: a batch-1 decode's linear layers are
    # weight reads, and narrow tiles give every SM work even where N is only 4096.
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < n
    acc = tl.zeros([BLOCK_N], tl.float32)
    for k0 in range(0, k, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        cmask = cols < k
        x = tl.load(x_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + rows[:, None] * stride_wn + cols[None, :], mask=rmask[:, None] & cmask[None, :],
                    other=0.0)
        acc += tl.sum(w.to(tl.float32) * x[None, :], 1)
    tl.store(out_ptr + rows, acc.to(out_ptr.dtype.element_ty), mask=rmask)


def gemv(x, w, config):
    """x: [1, K], w: [N, K] -> x @ w.T [1, N]."""
    n, k = w.shape
    bn, bk, warps = config
    out = torch.empty(1, n, dtype=x.dtype, device=x.device)
    _gemv[(triton.cdiv(n, bn),)](x, w, out, n, k, w.stride(0), BLOCK_N=bn, BLOCK_K=bk, num_warps=warps)
    return out



CONFIGS = [(8, 512, 4), (16, 256, 4), (16, 512, 4), (4, 1024, 4), (32, 256, 8), (8, 1024, 8)]


def bench(fn, reps=50):
    for _ in range(5):
        fn()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps):
        fn()
    b.record()
    b.synchronize()
    return a.elapsed_time(b) / 1e3 / reps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="llama-3-8b", choices=sorted(SHAPES))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    hidden, _, heads, kvh, inter, vocab, *_ = SHAPES[args.shape]
    d = hidden // heads
    shapes = {"qkv": ((heads + 2 * kvh) * d, hidden), "o_proj": (hidden, heads * d), "gate_up": (2 * inter, hidden),
              "down": (hidden, inter), "lm_head": (vocab, hidden)}
    rows = ["| weight | N x K | F.linear | " + " | ".join(f"gemv {c}" for c in CONFIGS) + " |",
            "|---|---|---|" + "---|" * len(CONFIGS)]
    for name, (n, k) in shapes.items():
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        ref = F.linear(x, w)
        gb = n * k * 2 / 1e9
        cells = [f"{gb / bench(lambda: F.linear(x, w)):.0f} GB/s"]
        for c in CONFIGS:
            try:
                got = gemv(x, w, c)
                torch.testing.assert_close(got.float(), ref.float(), atol=3e-2, rtol=2e-2)
                cells.append(f"{gb / bench(lambda: gemv(x, w, c)):.0f} GB/s")
            except Exception as e:
                cells.append(f"failed: {type(e).__name__}")
        rows.append(f"| {name} | {n} x {k} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
        del w
    print(f"# {machine()}\n" + "\n".join(rows))
    if args.out:
        Path(args.out).write_text(machine() + "\n\n" + "\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
