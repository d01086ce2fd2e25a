"""KVLayout: the shape of one tier's KV blocks, shared by every backend that reads them.

Per layer, a tier holds K as [num_blocks, *key_block_shape] and V as
[num_blocks, *value_block_shape]. One block of one layer is a contiguous slab:
- f32 / f16 / bf16: both are [kv_heads, block_size, head_dim], the layout
  OpenVINO's PagedAttention op and the torch paths read.
- u8 (dtype=torch.uint8, the op's quantized cache): key is [kv_heads, 8 +
  block_size, head_dim] bytes: rows 0-3 hold one f32 scale per channel, rows
  4-7 one f32 zero point per channel, then the tokens (quantized per channel
  over the block). Value is [kv_heads, block_size, 8 + head_dim]: per token an
  f32 scale, an f32 zero point, then the bytes. Either way x = (q - zero_point) * scale.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import torch

from .. import dtypes

U8_PARAM_BYTES = 8          # f32 scale + f32 zero point, per channel (K) or per token (V)


class Tier(str, enum.Enum):
    DEVICE = "device"
    HOST = "host"


@dataclass(frozen=True)
class KVLayout:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    block_size: int
    dtype: torch.dtype          # storage element type; torch.uint8 is the op's u8 quantized layout

    def __post_init__(self):
        for name in ("num_layers", "num_kv_heads", "head_dim", "block_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"KVLayout.{name} must be >= 1, got {getattr(self, name)}")
        dtypes.name_of(self.dtype)      # raises, naming the known precisions, for any other dtype

    @property
    def precision(self) -> str:
        """"f32" | "f16" | "bf16" | "u8"."""
        return dtypes.name_of(self.dtype)

    @property
    def quantized(self) -> bool:
        return self.dtype == torch.uint8

    @property
    def key_block_shape(self) -> tuple[int, int, int]:
        extra = U8_PARAM_BYTES if self.quantized else 0
        return self.num_kv_heads, self.block_size + extra, self.head_dim

    @property
    def value_block_shape(self) -> tuple[int, int, int]:
        extra = U8_PARAM_BYTES if self.quantized else 0
        return self.num_kv_heads, self.block_size, self.head_dim + extra

    @property
    def bytes_per_block(self) -> int:
        """All layers' K and V of one block, u8 parameter rows included."""
        per_layer = math.prod(self.key_block_shape) + math.prod(self.value_block_shape)
        return self.num_layers * per_layer * dtypes.BYTES[self.precision]

    def num_blocks_for(self, num_bytes: int) -> int:
        return num_bytes // self.bytes_per_block
