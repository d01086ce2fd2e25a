"""KVLayout: the shape of one tier's KV blocks, shared by every backend that reads them."""
from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

KV_DTYPES = {
    "f32": torch.float32,
    "f16": torch.float16,
    "bf16": torch.bfloat16,
}


class Tier(str, enum.Enum):
    DEVICE = "device"
    HOST = "host"


@dataclass(frozen=True)
class KVLayout:
    """Per layer, K and V are each [num_blocks, num_kv_heads, block_size, head_dim].

    This is the layout OpenVINO's PagedAttention op expects for its caches, so a
    block copies between tiers as one contiguous slab per layer.
    """
    num_layers: int
    num_kv_heads: int
    head_dim: int
    block_size: int
    dtype: torch.dtype

    def __post_init__(self):
        for name in ("num_layers", "num_kv_heads", "head_dim", "block_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"KVLayout.{name} must be >= 1, got {getattr(self, name)}")

    @property
    def bytes_per_block(self) -> int:
        elem = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.num_kv_heads * self.block_size * self.head_dim * elem

    def num_blocks_for(self, num_bytes: int) -> int:
        return num_bytes // self.bytes_per_block

    def blocks_for_tokens(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)
