"""Rotary position embeddings, with the rope_scaling variants HF configs use.

The cos/sin tables are built once for every position up to max_position_embeddings,
so the forward pass only gathers rows.
"""
from __future__ import annotations

import math

import torch

from ..kernels import rotate_half
from .config import ModelConfig


def _inv_freq(cfg: ModelConfig) -> tuple[torch.Tensor, float]:
    """Returns (inv_freq [head_dim // 2], attention scaling of cos/sin)."""
    d = cfg.head_dim
    base = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    s = cfg.rope_scaling or {}
    kind = cfg.rope_type
    if kind == "default":
        return base, 1.0
    factor = float(s["factor"])
    if kind == "linear":
        return base / factor, 1.0
    if kind == "llama3":
        low, high = float(s["low_freq_factor"]), float(s["high_freq_factor"])
        orig = float(s["original_max_position_embeddings"])
        wavelen = 2 * math.pi / base
        scaled = torch.where(wavelen > orig / low, base / factor, base)
        # Between the two cut-offs, blend scaled and unscaled frequencies.
        smooth = (orig / wavelen - low) / (high - low)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        mid = (wavelen >= orig / high) & (wavelen <= orig / low)
        return torch.where(mid, blended, scaled), 1.0
    if kind == "yarn":
        orig = s.get("original_max_position_embeddings") or cfg.max_position_embeddings
        beta_fast, beta_slow = float(s.get("beta_fast", 32)), float(s.get("beta_slow", 1))
        mscale = s.get("attention_factor")
        if mscale is None:
            mscale = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0

        def dim_for(rotations: float) -> float:
            return d * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(cfg.rope_theta))

        lo = max(math.floor(dim_for(beta_fast)), 0)
        hi = min(math.ceil(dim_for(beta_slow)), d - 1)
        if lo == hi:
            hi += 0.001
        ramp = ((torch.arange(d // 2, dtype=torch.float32) - lo) / (hi - lo)).clamp(0, 1)
        keep = 1 - ramp  # 1: keep the original frequency (high-frequency dims)
        inv = (base / factor) * (1 - keep) + base * keep
        return inv, float(mscale)
    raise ValueError(f"rope_scaling type {kind!r} is not supported")


class RotaryEmbedding:
    def __init__(self, cfg: ModelConfig, device: torch.device, dtype: torch.dtype):
        inv_freq, scale = _inv_freq(cfg)
        pos = torch.arange(cfg.max_position_embeddings, dtype=torch.float32)
        freqs = pos[:, None] * inv_freq[None, :]          # [max_pos, head_dim // 2]
        emb = torch.cat((freqs, freqs), dim=-1)           # [max_pos, head_dim]
        self.cos = (emb.cos() * scale).to(device=device, dtype=dtype)
        self.sin = (emb.sin() * scale).to(device=device, dtype=dtype)

    def tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin: [T, 1, D] for the step's positions [T]; gathered once per step, used by every layer."""
        return self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)

    @staticmethod
    def apply(q: torch.Tensor, k: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor]):
        # q: [T, H, D], k: [T, KVH, D]
        cos, sin = cos_sin
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin

    def __call__(self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor):
        return self.apply(q, k, self.tables(positions))
