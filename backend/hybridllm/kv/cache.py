"""KVCacheTier: the storage behind one BlockPool, on the device or the host."""
from __future__ import annotations

import torch

from .block_pool import BlockPool
from .layout import KVLayout, Tier


class KVCacheTier:
    """Preallocated K and V tensors for all layers, plus the pool that hands out their blocks.

    key_cache[layer] is [num_blocks, *layout.key_block_shape] and value_cache[layer]
    [num_blocks, *layout.value_block_shape], each contiguous (see kv/layout.py). A host tier
    is bound to its attention backend, which reads and writes these very tensors. With pad_block the
    tensors hold one more block than the pool.
    """

    def __init__(self, tier: Tier, layout: KVLayout, num_blocks: int, device: torch.device | str,
                 pin_memory: bool = False, pad_block: bool = False):
        if num_blocks < 1:
            raise ValueError(f"{tier.value} KV tier: num_blocks must be >= 1, got {num_blocks} "
                             f"(one block takes {layout.bytes_per_block} bytes)")
        self.tier = tier
        self.layout = layout
        self.device = torch.device(device)
        self.num_blocks = num_blocks
        L = layout.num_layers
        # pad_block: one block past the pool's, never handed out, where the padded rows of a bucketed
        # decode step write their K/V (runtime/decode_graphs.py).
        self.pad_block = num_blocks if pad_block else None
        stored = num_blocks + int(pad_block)
        # zeros, not empty: masked-out slots still enter the matmuls, and 0 * NaN garbage is NaN.
        self._k = torch.zeros((L, stored, *layout.key_block_shape), dtype=layout.dtype, device=self.device,
                              pin_memory=pin_memory)
        self._v = torch.zeros((L, stored, *layout.value_block_shape), dtype=layout.dtype, device=self.device,
                              pin_memory=pin_memory)
        self.key_cache = list(self._k.unbind(0))    # per layer: [num_blocks, *key_block_shape]
        self.value_cache = list(self._v.unbind(0))  # per layer: [num_blocks, *value_block_shape]
        self.pool = BlockPool(num_blocks, name=tier.value)

    @property
    def num_bytes(self) -> int:
        return self.num_blocks * self.layout.bytes_per_block
