"""Our Triton kernels for the device's decode path: paged decode attention that reads the block table
inside the kernel, fused residual-add + RMSNorm, SiLU-and-mul, and RoPE fused with the KV store.

Imported only where they run: on CUDA (the `triton` compiler ships with CUDA torch), or on the CPU under
Triton's interpreter (TRITON_INTERPRET=1, read when this module is imported), which the tests use to
check the numerics in CI. Launch through kernels/ops.py, which also holds the torch references.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _paged_decode(out_ptr, q_ptr, k_cache, v_cache, block_tables, context_lens, scale, window,
                  stride_qt, stride_qh, stride_ot, stride_oh,
                  stride_kb, stride_kh, stride_kt, stride_vb, stride_vh, stride_vt, stride_bt,
                  GROUP: tl.constexpr, GROUP_P: tl.constexpr, HEAD_DIM: tl.constexpr, D_P: tl.constexpr,
                  BLOCK_SIZE: tl.constexpr, TOKENS: tl.constexpr, PRECISION: tl.constexpr):
    # One program: one sequence, one KV head and the GROUP query heads that share it (GQA).
    seq = tl.program_id(0)
    kvh = tl.program_id(1)
    ctx = tl.load(context_lens + seq)
    g = tl.arange(0, GROUP_P)
    d = tl.arange(0, D_P)
    gmask = g < GROUP
    dmask = d < HEAD_DIM
    heads = kvh * GROUP + g
    q = tl.load(q_ptr + seq * stride_qt + heads[:, None] * stride_qh + d[None, :],
                mask=gmask[:, None] & dmask[None, :], other=0.0).to(k_cache.dtype.element_ty)   # [GROUP_P, D_P]
    m = tl.full([GROUP_P], float("-inf"), tl.float32)
    l = tl.zeros([GROUP_P], tl.float32)
    acc = tl.zeros([GROUP_P, D_P], tl.float32)
    start = tl.maximum(ctx - window, 0)                      # window: 1 << 30 when there is none
    first = (start // TOKENS) * TOKENS
    for t0 in range(first, ctx, TOKENS):
        tok = t0 + tl.arange(0, TOKENS)                                          # [TOKENS]
        inside = tok < ctx
        valid = inside & (tok >= start)
        blk = tl.load(block_tables + seq * stride_bt + tok // BLOCK_SIZE, mask=inside, other=0)
        off = tok % BLOCK_SIZE
        kmask = valid[:, None] & dmask[None, :]
        k = tl.load(k_cache + blk[:, None] * stride_kb + kvh * stride_kh + off[:, None] * stride_kt + d[None, :],
                    mask=kmask, other=0.0)                                       # [TOKENS, D_P]
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale            # [GROUP_P, TOKENS] f32
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        alpha = tl.exp(m - m_new)
        p = tl.exp(s - m_new[:, None])
        l = l * alpha + tl.sum(p, 1)
        v = tl.load(v_cache + blk[:, None] * stride_vb + kvh * stride_vh + off[:, None] * stride_vt + d[None, :],
                    mask=kmask, other=0.0)                                       # [TOKENS, D_P]
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m = m_new
    out = acc / l[:, None]
    tl.store(out_ptr + seq * stride_ot + heads[:, None] * stride_oh + d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=gmask[:, None] & dmask[None, :])


@triton.jit
def _add_rms_norm(x_ptr, res_ptr, w_ptr, out_ptr, sum_ptr, n, eps, stride_x, stride_r, stride_o, stride_s,
                  HAS_RES: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RES:
        # Rounded to the activation dtype first, as the eager `h + delta` is.
        x = (x.to(tl.float32) + tl.load(res_ptr + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32)
             ).to(x_ptr.dtype.element_ty)
        tl.store(sum_ptr + row * stride_s + cols, x, mask=mask)
    xf = x.to(tl.float32)
    inv = 1.0 / tl.sqrt(tl.sum(xf * xf, 0) / n + eps)
    y = (xf * inv).to(x_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, (w * y).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _silu_mul(x_ptr, out_ptr, n, stride_x, stride_o, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + n + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, (gate / (1.0 + tl.exp(-gate)) * up).to(out_ptr.dtype.element_ty),
             mask=mask)


@triton.jit
def _rope_store(qkv_ptr, positions, slots, cos_ptr, sin_ptr, q_out, k_cache, v_cache,
                stride_t, stride_qt, stride_qh, stride_cos, stride_kb, stride_kh, stride_kt,
                stride_vb, stride_vh, stride_vt,
                NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
                HALF_P: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    # One program: one token and one head (query heads first, then KV heads). q and k get RoPE
    # (rotate-half form); k and v go straight into their cache slot.
    t = tl.program_id(0)
    h = tl.program_id(1)
    half = HEAD_DIM // 2
    i = tl.arange(0, HALF_P)
    mask = i < half
    pos = tl.load(positions + t)
    cos = tl.load(cos_ptr + pos * stride_cos + i, mask=mask, other=0.0).to(tl.float32)
    sin = tl.load(sin_ptr + pos * stride_cos + i, mask=mask, other=0.0).to(tl.float32)
    row = qkv_ptr + t * stride_t
    src = row + h * HEAD_DIM           # qkv's row is [q heads | k heads | v heads], each HEAD_DIM wide
    x1 = tl.load(src + i, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + half + i, mask=mask, other=0.0).to(tl.float32)
    r1 = x1 * cos - x2 * sin
    r2 = x2 * cos + x1 * sin
    if h < NUM_HEADS:
        dst = q_out + t * stride_qt + h * stride_qh
        tl.store(dst + i, r1.to(q_out.dtype.element_ty), mask=mask)
        tl.store(dst + half + i, r2.to(q_out.dtype.element_ty), mask=mask)
    else:
        kvh = h - NUM_HEADS
        slot = tl.load(slots + t)
        blk = slot // BLOCK_SIZE
        off = slot % BLOCK_SIZE
        kdst = k_cache + blk * stride_kb + kvh * stride_kh + off * stride_kt
        tl.store(kdst + i, r1.to(k_cache.dtype.element_ty), mask=mask)
        tl.store(kdst + half + i, r2.to(k_cache.dtype.element_ty), mask=mask)
        vsrc = row + (NUM_HEADS + NUM_KV_HEADS + kvh) * HEAD_DIM
        vdst = v_cache + blk * stride_vb + kvh * stride_vh + off * stride_vt
        tl.store(vdst + i, tl.load(vsrc + i, mask=mask, other=0.0).to(v_cache.dtype.element_ty), mask=mask)
        tl.store(vdst + half + i, tl.load(vsrc + half + i, mask=mask, other=0.0).to(v_cache.dtype.element_ty),
                 mask=mask)


def _pow2(n: int, floor: int = 1) -> int:
    return max(floor, triton.next_power_of_2(n))


def paged_decode(q, k_cache, v_cache, block_tables, context_lens, scale: float, window: int | None) -> torch.Tensor:
    """q: [B, H, D]; caches: [num_blocks, KVH, block_size, D]; block_tables: [B, max_blocks];
    context_lens: [B] -> [B, H * D]."""
    b, h, d = q.shape
    kvh, bs = k_cache.shape[1], k_cache.shape[2]
    out = torch.empty(b, h, d, dtype=q.dtype, device=q.device)
    group = h // kvh
    precision = "ieee" if k_cache.dtype == torch.float32 else "tf32"
    _paged_decode[(b, kvh)](
        out, q, k_cache, v_cache, block_tables, context_lens, scale, window if window else 1 << 30,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_tables.stride(0),
        GROUP=group, GROUP_P=_pow2(group, 16), HEAD_DIM=d, D_P=_pow2(d, 16), BLOCK_SIZE=bs,
        TOKENS=max(64, bs), PRECISION=precision)
    return out.view(b, h * d)


def add_rms_norm(x, residual, weight, eps: float):
    """x, residual: [T, N] -> (norm(x + residual) * weight, x + residual); residual None: (norm(x) * weight, x)."""
    t, n = x.shape
    out = torch.empty_like(x)
    total = torch.empty_like(x) if residual is not None else x
    res = residual if residual is not None else x
    _add_rms_norm[(t,)](x, res, weight, out, total, n, eps, x.stride(0), res.stride(0), out.stride(0),
                        total.stride(0), HAS_RES=residual is not None, BLOCK=_pow2(n))
    return out, total


def silu_mul(x):
    """x: [T, 2 * I] (gate, up) -> [T, I]."""
    t, n2 = x.shape
    n = n2 // 2
    out = torch.empty(t, n, dtype=x.dtype, device=x.device)
    block = min(1024, _pow2(n))
    _silu_mul[(t, triton.cdiv(n, block))](x, out, n, x.stride(0), out.stride(0), BLOCK=block)
    return out


def rope_store(qkv, positions, slots, cos, sin, k_cache, v_cache, num_heads: int, num_kv_heads: int,
               head_dim: int):
    """qkv: [T, (H + 2 * KVH) * D] -> q [T, H, D] with RoPE; k (with RoPE) and v go to the caches at slots."""
    t = qkv.shape[0]
    q = torch.empty(t, num_heads, head_dim, dtype=qkv.dtype, device=qkv.device)
    _rope_store[(t, num_heads + num_kv_heads)](
        qkv, positions, slots, cos, sin, q, k_cache, v_cache,
        qkv.stride(0), q.stride(0), q.stride(1), cos.stride(0),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        NUM_HEADS=num_heads, NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim, HALF_P=_pow2(head_dim // 2),
        BLOCK_SIZE=k_cache.shape[2])
    return q
