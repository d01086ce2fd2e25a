"""KVCacheTier: the storage behind one BlockPool."""
from __future__ import annotations

import torch

from .block_pool import BlockPool
from .layout import KVLayout, Tier


class KVCacheTier:
    """Preallocated K and V tensors for all layers, plus the pool that hands out their blocks.

    key_cache[layer] and value_cache[layer] are contiguous views of shape
    [num_blocks, num_kv_heads, block_size, head_dim].
    """

    def __init__(self, tier: Tier, layout: KVLayout, num_blocks: int, device: torch.device,
                 pin_memory: bool = False):
        self.tier = tier
        self.layout = layout
        self.device = torch.device(device)
        self.num_blocks = num_blocks
        shape = (layout.num_layers, num_blocks, layout.num_kv_heads, layout.block_size, layout.head_dim)
        # zeros, not empty: masked-out slots still enter the matmul, and 0 * NaN garbage is NaN.
        self._k = torch.zeros(shape, dtype=layout.dtype, device=self.device, pin_memory=pin_memory)
        self._v = torch.zeros(shape, dtype=layout.dtype, device=self.device, pin_memory=pin_memory)
        self.key_cache = list(self._k.unbind(0))    # per layer: [num_blocks, kv_heads, block_size, head_dim]
        self.value_cache = list(self._v.unbind(0))
        self.pool = BlockPool(num_blocks, name=tier.value)

    @property
    def num_bytes(self) -> int:
        return self.num_blocks * self.layout.bytes_per_block
