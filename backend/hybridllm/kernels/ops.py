"""DeviceOps: the device decode path's small ops, as Triton kernels or as torch, chosen once at start-up.

Both implementations take the same arguments (the same static buffers and attention metadata), so
the decode path is one piece of code on the CPU and the GPU; the torch forms are also the references
the kernels are tested against.
"""
from __future__ import annotations

import importlib
import importlib.util
import os

import torch
import torch.nn.functional as F

from ..config import DEVICE_KERNELS as KERNEL_CHOICES     # the option's choices, defined once
from .linear import GemvTable, linear, measure_table


def triton_usable(device: torch.device) -> bool:
    """Triton runs on CUDA, and on the CPU only under its interpreter (the tests' numerics checks)."""
    if importlib.util.find_spec("triton") is None:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def resolve_kernels(choice: str, device: torch.device) -> str:
    """config.device_kernels -> "triton" | "torch". auto: Triton on CUDA where the compiler is installed."""
    if choice not in KERNEL_CHOICES:
        raise ValueError(f"device_kernels: {choice!r} is not one of {', '.join(KERNEL_CHOICES)}")
    if choice == "auto":
        return "triton" if device.type == "cuda" and triton_usable(device) else "torch"
    if choice == "triton" and not triton_usable(device):
        raise ValueError(f"device_kernels: 'triton' needs a CUDA device and the triton package; the compute "
                         f"device is {device}")
    return choice


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # In float32 like HF, then back to the activation dtype.
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class DeviceOps:
    def __init__(self, impl: str):
        if impl not in ("triton", "torch"):
            raise ValueError(f"DeviceOps: impl must be 'triton' or 'torch', got {impl!r}")
        self.impl = impl
        self._k = importlib.import_module(f"{__package__}.triton_kernels") if impl == "triton" else None
        self.gemv: GemvTable | None = None      # small-M shapes that take the split-K GEMV (tune_gemv)

    def tune_gemv(self, shapes: dict[str, tuple[int, int]], dtype: torch.dtype, device: torch.device) -> str:
        """Measures, once at start-up, which of `shapes` (name -> (N, K)) run faster as a split-K GEMV at
        the small decode row counts (kernels/linear.py); Triton on CUDA only. -> a line for the log."""
        if self.impl != "triton" or device.type != "cuda":
            return "split-K GEMV: off (Triton kernels on CUDA only)"
        self.gemv = measure_table(shapes, dtype, device)
        return self.gemv.summary()

    def linear(self, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x: [T, K] @ w[N, K].T (+ bias) -> [T, N]: the split-K GEMV where tune_gemv chose it, else F.linear."""
        if self.gemv is None:
            return F.linear(x, w, bias)
        return linear(x, w, bias, self.gemv)

    def paged_decode(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                     context_lens: torch.Tensor, scale: float, window: int | None,
                     max_context: int | None = None) -> torch.Tensor:
        """q: [B, H, D]; caches: [num_blocks, KVH, block_size, D]; block_tables: [B, max_blocks] (entries past
        a row's context are never read); context_lens: [B] -> [B, H * D].
        max_context (torch only): bounds the gathered width, where the caller knows it without a sync."""
        if self._k is not None:
            return self._k.paged_decode(q, k_cache, v_cache, block_tables, context_lens, scale, window)
        b, h, d = q.shape
        kvh, bs = k_cache.shape[1], k_cache.shape[2]
        cols = block_tables.shape[1] if max_context is None else -(-max_context // bs)
        tables = block_tables[:, :cols].long()
        # The reference gathers each row's blocks into a padded [B, KVH, cols * bs, D].
        keys = k_cache[tables].permute(0, 2, 1, 3, 4).reshape(b, kvh, cols * bs, d).to(q.dtype)
        vals = v_cache[tables].permute(0, 2, 1, 3, 4).reshape(b, kvh, cols * bs, d).to(q.dtype)
        key_pos = torch.arange(cols * bs, device=q.device)[None, :]           # [1, cols * bs]
        lens = context_lens.to(q.device).long()[:, None]                      # [B, 1]
        mask = key_pos < lens
        if window:
            mask &= key_pos >= lens - window
        o = F.scaled_dot_product_attention(q.unsqueeze(2), keys, vals, attn_mask=mask[:, None, None, :],
                                           scale=scale, enable_gqa=True)
        return o.reshape(b, h * d)

    def add_rms_norm(self, x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                     eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """x, residual: [T, N] -> (rms_norm(x + residual) * weight, x + residual)."""
        if self._k is not None:
            return self._k.add_rms_norm(x, residual, weight, eps)
        total = x if residual is None else x + residual
        return rms_norm(total, weight, eps), total

    def silu_mul(self, x: torch.Tensor) -> torch.Tensor:
        """x: [T, 2 * I] (gate | up) -> silu(gate) * up [T, I]."""
        if self._k is not None:
            return self._k.silu_mul(x)
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up

    def rope_store(self, qkv: torch.Tensor, positions: torch.Tensor, slot_mapping: torch.Tensor, cos: torch.Tensor,
                   sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, num_heads: int,
                   num_kv_heads: int, head_dim: int) -> torch.Tensor:
        """qkv: [T, (H + 2 * KVH) * D]; cos/sin: [max_pos, D] tables -> q [T, H, D] with RoPE; k (with RoPE)
        and v are written to their slots in the caches."""
        if self._k is not None:
            return self._k.rope_store(qkv, positions, slot_mapping, cos, sin, k_cache, v_cache, num_heads,
                                      num_kv_heads, head_dim)
        qs, ks = num_heads * head_dim, num_kv_heads * head_dim
        q, k, v = qkv.split([qs, ks, ks], dim=-1)
        q = q.reshape(-1, num_heads, head_dim)
        k = k.reshape(-1, num_kv_heads, head_dim)
        c, s = cos[positions].unsqueeze(1), sin[positions].unsqueeze(1)      # [T, 1, D]
        q = q * c + rotate_half(q) * s
        k = k * c + rotate_half(k) * s
        bs = k_cache.shape[2]
        blk, off = slot_mapping // bs, slot_mapping % bs
        k_cache[blk, :, off] = k.to(k_cache.dtype)
        v_cache[blk, :, off] = v.reshape(-1, num_kv_heads, head_dim).to(v_cache.dtype)
        return q
