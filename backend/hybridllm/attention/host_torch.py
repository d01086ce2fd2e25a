"""The last-resort host attention path: torch SDPA on the CPU over the host tier.

It is DeviceAttention run on host tensors: the same paged gather and masks, in
float32 with the cache upcast per call. No u8 (that format is the op's own).
"""
from __future__ import annotations

import torch

from .kv_cache import KVCacheTier
from .device import DeviceAttention
from .spec import HostAttentionSpec, HostStep, plain_layout


class TorchHostAttention:
    name = "torch"

    def __init__(self, spec: HostAttentionSpec):
        self.spec = spec
        self.layout = plain_layout(spec, self.name)
        self._impl: DeviceAttention | None = None

    def bind(self, tier: KVCacheTier) -> None:
        if tier.layout != self.layout:
            raise ValueError(f"host tier layout {tier.layout} differs from the torch path's {self.layout}")
        s = self.spec
        self._impl = DeviceAttention(tier.key_cache, tier.value_cache, s.num_heads, s.num_kv_heads,
                                     s.head_dim, s.sliding_window)

    def forward(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                step: HostStep) -> torch.Tensor:
        return self._impl.forward(layer, q, k, v, step.md)             # [T, H * D]
