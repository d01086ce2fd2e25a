"""The KV tensors: KVLayout (the shape of one tier's blocks, shared by every backend that reads them)
and KVCacheTier (the preallocated K and V of every layer). Block ids come from kv.BlockTables.

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

import math
from dataclasses import dataclass

import torch

from .. import dtypes
from ..kv import BlockPool, Tier

U8_PARAM_BYTES = 8          # f32 scale + f32 zero point, per channel (K) or per token (V)


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


class KVCacheTier:
    """Preallocated K and V tensors for all layers of one tier.

    key_cache[layer] is [num_blocks, *layout.key_block_shape] and value_cache[layer]
    [num_blocks, *layout.value_block_shape], each contiguous. A host tier is bound to its
    attention backend, which reads and writes these very tensors. With pad_block the tensors
    hold one more block than the tier hands out.
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

    @property
    def block_size(self) -> int:
        return self.layout.block_size

    @property
    def num_bytes(self) -> int:
        return self.num_blocks * self.layout.bytes_per_block

    def read_tokens(self, layer: int, blocks: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions [0, n) of a block table (int64 [nb], nb * block_size >= n) as float32 K, V
        [n, kv_heads, head_dim] on the host; u8 blocks are dequantized with their own parameters."""
        kb, vb = self.key_cache[layer][blocks], self.value_cache[layer][blocks]     # [nb, KVH, *, *]
        if self.layout.quantized:
            f32 = torch.float32
            k_scale = kb[:, :, 0:4].contiguous().flatten(-2).view(f32)[:, :, None]   # [nb, KVH, 1, D]
            k_zp = kb[:, :, 4:8].contiguous().flatten(-2).view(f32)[:, :, None]
            kb = (kb[:, :, U8_PARAM_BYTES:].float() - k_zp) * k_scale                 # [nb, KVH, bs, D]
            v_par = vb[..., :U8_PARAM_BYTES].contiguous().view(f32)                  # [nb, KVH, bs, 2]
            vb = (vb[..., U8_PARAM_BYTES:].float() - v_par[..., 1:2]) * v_par[..., 0:1]
        shape = (-1, self.layout.num_kv_heads, self.layout.head_dim)
        k = kb.transpose(1, 2).reshape(shape)[:n].to("cpu", torch.float32)             # [n, KVH, D]
        v = vb.transpose(1, 2).reshape(shape)[:n].to("cpu", torch.float32)
        return k, v

    def write_tokens(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v [n, kv_heads, head_dim] into slots (int64 [n], block * block_size + row), in order; u8
        quantizes on the way (per-channel keys over each block, per-token values: host_native.cpp)."""
        bs = self.layout.block_size
        if self.layout.quantized:
            from .native_build import FORMATS, library     # the writer the native decode kernel uses
            k32 = k.to("cpu", torch.float32).contiguous()
            v32 = v.to("cpu", torch.float32).contiguous()
            sl = slots.to("cpu", torch.int64).contiguous()
            kc, vc = self.key_cache[layer], self.value_cache[layer]
            library().hl_write(FORMATS["u8"], k32.shape[0], self.layout.num_kv_heads, self.layout.head_dim, bs,
                               k32.data_ptr(), v32.data_ptr(), sl.data_ptr(), kc.data_ptr(), vc.data_ptr())
            return
        blk, off = (slots // bs).to(self.device), (slots % bs).to(self.device)
        nb = self.device.type == "cuda"
        self.key_cache[layer][blk, :, off] = k.to(self.device, self.layout.dtype, non_blocking=nb)
        self.value_cache[layer][blk, :, off] = v.to(self.device, self.layout.dtype, non_blocking=nb)

    def new_pool(self) -> BlockPool:
        """The bookkeeping for this tier's blocks (kv.BlockPool; the pad block is never in it)."""
        return BlockPool(self.num_blocks, self.layout.block_size, self.tier.value)
