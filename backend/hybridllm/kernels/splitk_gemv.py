"""A split-K GEMV in Triton for decode steps with few rows: out[M, N] = x[M, K] @ w[N, K].T (+ bias).

At batch 1 the linear layers are weight reads. cuBLAS reads the large matrices near the HBM limit, but
the small ones (qkv 48 MB, o_proj 32 MB of Llama-3-8B) at 1.2-2.3 of 4.2 TB/s on an H200 (RESULTS.md):
N / tile programs are too few to keep every SM's loads in flight. Splitting K as well gives
(N / BLOCK_N) x SPLIT programs, each reading a [BLOCK_N, K / SPLIT] slab of w once; a second kernel sums
the SPLIT partials in f32 and casts (fixed order, so the result is deterministic, unlike atomics).

Imported only where Triton runs (CUDA, or the CPU interpreter in the tests), like triton_kernels.py.
Which shapes take it, and with which tiles, is measured at start-up (kernels/linear.py).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

M_PAD = 16      # tl.dot's smallest M: the rows past M are masked loads, so they cost no memory traffic


@triton.jit
def _splitk_partial(x_ptr, w_ptr, part_ptr, M, N, K, k_per_split, stride_xm, stride_wn,
                    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, M_P: tl.constexpr, IEEE: tl.constexpr):
    # One program: BLOCK_N rows of w over one K slice, for all M rows of x -> part[split, :M, tile].
    tile = tl.program_id(0)
    split = tl.program_id(1)
    rows = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    m = tl.arange(0, M_P)
    rmask = rows < N
    mmask = m < M
    acc = tl.zeros([M_P, BLOCK_N], tl.float32)
    k_lo = split * k_per_split
    for k0 in range(0, k_per_split, BLOCK_K):
        cols = k_lo + k0 + tl.arange(0, BLOCK_K)
        cmask = (cols < K) & (cols < k_lo + k_per_split)
        x = tl.load(x_ptr + m[:, None] * stride_xm + cols[None, :], mask=mmask[:, None] & cmask[None, :],
                    other=0.0)                                                   # [M_P, BLOCK_K]
        w = tl.load(w_ptr + rows[:, None] * stride_wn + cols[None, :], mask=rmask[:, None] & cmask[None, :],
                    other=0.0)                                                   # [BLOCK_N, BLOCK_K]
        # In f32: bf16 and f16 values are exact in TF32, so only f32 weights need the IEEE path.
        if IEEE:
            acc += tl.dot(x.to(tl.float32), tl.trans(w.to(tl.float32)), input_precision="ieee")
        else:
            acc += tl.dot(x.to(tl.float32), tl.trans(w.to(tl.float32)))
    out = part_ptr + split * M * N + m[:, None] * N + rows[None, :]
    tl.store(out, acc, mask=mmask[:, None] & rmask[None, :])


@triton.jit
def _splitk_reduce(part_ptr, bias_ptr, out_ptr, MN, N, stride_om, SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr,
                   BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = i < MN
    acc = tl.zeros([BLOCK], tl.float32)
    for s in tl.static_range(SPLIT):
        acc += tl.load(part_ptr + s * MN + i, mask=mask, other=0.0)
    col = i % N
    if HAS_BIAS:
        acc += tl.load(bias_ptr + col, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + (i // N) * stride_om + col, acc.to(out_ptr.dtype.element_ty), mask=mask)


def splitk_gemv(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, block_n: int, block_k: int,
                split: int, warps: int = 4) -> torch.Tensor:
    """x: [M, K] (M <= 16, last dim contiguous), w: [N, K] contiguous, bias: [N] or None -> [M, N] in x's dtype."""
    m, k = x.shape
    n = w.shape[0]
    if m > M_PAD or w.shape[1] != k:
        raise ValueError(f"splitk_gemv: x {tuple(x.shape)} and w {tuple(w.shape)} need M <= {M_PAD} and equal K")
    if x.stride(1) != 1:
        x = x.contiguous()
    # Each split's slice is a whole number of BLOCK_K tiles, so no tile straddles two splits.
    k_per_split = triton.cdiv(triton.cdiv(k, split), block_k) * block_k
    splits = triton.cdiv(k, k_per_split)
    part = torch.empty(splits, m, n, dtype=torch.float32, device=x.device)          # [SPLIT, M, N]
    _splitk_partial[(triton.cdiv(n, block_n), splits)](
        x, w, part, m, n, k, k_per_split, x.stride(0), w.stride(0), BLOCK_N=block_n, BLOCK_K=block_k,
        M_P=M_PAD, IEEE=w.dtype == torch.float32, num_warps=warps)
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    block = 1024
    _splitk_reduce[(triton.cdiv(m * n, block),)](
        part, bias if bias is not None else part, out, m * n, n, out.stride(0), SPLIT=splits,
        HAS_BIAS=bias is not None, BLOCK=block)
    return out
