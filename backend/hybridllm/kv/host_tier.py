"""HostKVTier: the host KV tier, in the block layout and precision of the host attention backend.

The OpenVINO PagedAttention op decides its cache layout at compile time (on the
CPU plugin of openvino 2026.4: 32-token blocks, and u8 adds quantisation
parameters to each block). So the tier is allocated *after* the backend is
compiled, from the layout its ports report, and the backend then reads and
writes these very tensors (zero copy).

Per layer, key_cache[layer] is [num_blocks, *layout.key_block_shape] and
value_cache[layer] is [num_blocks, *layout.value_block_shape]:
- f32 / f16 / bf16: both are [kv_heads, block_size, head_dim].
- u8: key is [kv_heads, 8 + block_size, head_dim] bytes: rows 0-3 hold one f32
  scale per channel, rows 4-7 one f32 zero point per channel, then the tokens
  (quantised per channel over the block). Value is [kv_heads, block_size,
  8 + head_dim]: per token an f32 scale, an f32 zero point, then the bytes.
  Either way x = (q - zero_point) * scale.
One block of one layer is a contiguous slab, so tiers copy blocks slab by slab.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .block_pool import BlockPool
from .layout import KVLayout, Tier

HOST_PRECISIONS = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16, "u8": torch.uint8}
U8_PARAM_BYTES = 8          # f32 scale + f32 zero point


@dataclass(frozen=True)
class HostKVLayout:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    block_size: int
    precision: str                          # "f32" | "f16" | "bf16" | "u8"
    key_block_shape: tuple[int, int, int]   # one block of one layer, as the op's port reports
    value_block_shape: tuple[int, int, int]

    def __post_init__(self):
        for name in ("num_layers", "num_kv_heads", "head_dim", "block_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"HostKVLayout.{name} must be >= 1, got {getattr(self, name)}")
        if self.precision not in HOST_PRECISIONS:
            raise ValueError(f"HostKVLayout.precision: {self.precision!r} is not one of {', '.join(HOST_PRECISIONS)}")
        want_k, want_v = _block_shapes(self.num_kv_heads, self.head_dim, self.block_size, self.precision)
        if tuple(self.key_block_shape) != want_k or tuple(self.value_block_shape) != want_v:
            raise ValueError(
                f"HostKVLayout: {self.precision} blocks of {self.block_size} tokens must be key {want_k} / "
                f"value {want_v}, got {tuple(self.key_block_shape)} / {tuple(self.value_block_shape)}")

    @classmethod
    def make(cls, num_layers: int, num_kv_heads: int, head_dim: int, block_size: int,
             precision: str) -> "HostKVLayout":
        k, v = _block_shapes(num_kv_heads, head_dim, block_size, precision)
        return cls(num_layers, num_kv_heads, head_dim, block_size, precision, k, v)

    @property
    def dtype(self) -> torch.dtype:
        """Storage element type of the cache tensors."""
        return HOST_PRECISIONS[self.precision]

    @property
    def quantized(self) -> bool:
        return self.precision == "u8"

    @property
    def bytes_per_block(self) -> int:
        elem = torch.empty((), dtype=self.dtype).element_size()
        per_layer = int(np.prod(self.key_block_shape)) + int(np.prod(self.value_block_shape))
        return self.num_layers * per_layer * elem

    def num_blocks_for(self, num_bytes: int) -> int:
        return num_bytes // self.bytes_per_block

    def blocks_for_tokens(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def as_kv_layout(self) -> KVLayout:
        """The plain KVLayout of an unquantised tier (what a device tier with these blocks would use)."""
        if self.quantized:
            raise ValueError("a u8 host layout has no plain KVLayout; dequantise with HostKVTier.read_tokens")
        return KVLayout(self.num_layers, self.num_kv_heads, self.head_dim, self.block_size, self.dtype)


def _block_shapes(kvh: int, d: int, bs: int, precision: str):
    if precision == "u8":
        return (kvh, bs + U8_PARAM_BYTES, d), (kvh, bs, d + U8_PARAM_BYTES)
    return (kvh, bs, d), (kvh, bs, d)


class HostKVTier:
    """Preallocated host K/V for all layers, plus the BlockPool that hands out their blocks.

    Duck-types KVCacheTier (tier, layout, device, num_blocks, key_cache, value_cache, pool, num_bytes),
    so KVCacheManager takes it as its Tier.HOST entry.
    """

    def __init__(self, layout: HostKVLayout, num_blocks: int):
        if num_blocks < 1:
            raise ValueError(f"host KV tier: num_blocks must be >= 1, got {num_blocks} "
                             f"(one block takes {layout.bytes_per_block} bytes)")
        self.tier = Tier.HOST
        self.layout = layout
        self.device = torch.device("cpu")
        self.num_blocks = num_blocks
        L = layout.num_layers
        # zeros, not empty: unused slots of a block still enter the kernels' dot products.
        self._k = torch.zeros((L, num_blocks, *layout.key_block_shape), dtype=layout.dtype)
        self._v = torch.zeros((L, num_blocks, *layout.value_block_shape), dtype=layout.dtype)
        self.key_cache = list(self._k.unbind(0))    # per layer: [num_blocks, *key_block_shape]
        self.value_cache = list(self._v.unbind(0))  # per layer: [num_blocks, *value_block_shape]
        self.pool = BlockPool(num_blocks, name=Tier.HOST.value)

    @classmethod
    def for_bytes(cls, layout: HostKVLayout, num_bytes: int) -> "HostKVTier":
        return cls(layout, layout.num_blocks_for(num_bytes))

    @property
    def num_bytes(self) -> int:
        return self.num_blocks * self.layout.bytes_per_block

    def numpy_views(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        return numpy_views(self, layer)

    # -- block copies, for swapping and copy-on-write in later policies ---------

    def copy_blocks(self, src: list[int], dst: list[int]) -> None:
        """Within this tier, all layers: block dst[i] becomes a copy of block src[i]."""
        if len(src) != len(dst):
            raise ValueError(f"copy_blocks: {len(src)} sources for {len(dst)} destinations")
        self._check_blocks(src, "src")
        self._check_blocks(dst, "dst")
        s, d = torch.tensor(src, dtype=torch.int64), torch.tensor(dst, dtype=torch.int64)
        self._k[:, d] = self._k[:, s]
        self._v[:, d] = self._v[:, s]

    def read_blocks(self, blocks: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw slabs of all layers: K [L, n, *key_block_shape], V [L, n, *value_block_shape] (copies)."""
        self._check_blocks(blocks, "blocks")
        idx = torch.tensor(blocks, dtype=torch.int64)
        return self._k[:, idx].clone(), self._v[:, idx].clone()

    def write_blocks(self, blocks: list[int], k: torch.Tensor, v: torch.Tensor) -> None:
        """Inverse of read_blocks: the slabs must be in this tier's layout and precision."""
        self._check_blocks(blocks, "blocks")
        n = len(blocks)
        want_k = (self.layout.num_layers, n, *self.layout.key_block_shape)
        want_v = (self.layout.num_layers, n, *self.layout.value_block_shape)
        if tuple(k.shape) != want_k or tuple(v.shape) != want_v:
            raise ValueError(f"write_blocks: k/v must be {want_k}/{want_v}, got {tuple(k.shape)}/{tuple(v.shape)}")
        if k.dtype != self.layout.dtype or v.dtype != self.layout.dtype:
            raise ValueError(f"write_blocks: KV dtype {k.dtype}/{v.dtype} does not match the tier's "
                             f"{self.layout.dtype}")
        idx = torch.tensor(blocks, dtype=torch.int64)
        self._k[:, idx] = k
        self._v[:, idx] = v

    def read_tokens(self, layer: int, block_table: list[int], start: int, end: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions [start, end) of a sequence as float32 K, V: [end - start, kv_heads, head_dim] each.

        Dequantises u8 blocks, so a u8 tier can be copied to a plain tier token by token.
        """
        bs = self.layout.block_size
        if not 0 <= start <= end <= len(block_table) * bs:
            raise ValueError(f"read_tokens: positions [{start}, {end}) do not fit {len(block_table)} blocks of {bs}")
        first, last = start // bs, -(-end // bs)
        blocks = list(block_table[first:last])
        self._check_blocks(blocks, "block_table")
        idx = torch.tensor(blocks, dtype=torch.int64)
        kb, vb = self.key_cache[layer][idx], self.value_cache[layer][idx]
        if self.layout.quantized:
            k, v = _dequant_key(kb, bs), _dequant_value(vb)
        else:
            k, v = kb.float(), vb.float()
        # [n, KVH, bs, D] -> [n * bs, KVH, D]
        k = k.transpose(1, 2).reshape(-1, self.layout.num_kv_heads, self.layout.head_dim)
        v = v.transpose(1, 2).reshape(-1, self.layout.num_kv_heads, self.layout.head_dim)
        off = first * bs
        return k[start - off:end - off], v[start - off:end - off]

    def _check_blocks(self, blocks, name: str) -> None:
        bad = [b for b in blocks if not 0 <= int(b) < self.num_blocks]
        if bad:
            raise ValueError(f"{name}: block index {bad[0]} is out of range [0, {self.num_blocks})")


def numpy_views(tier, layer: int) -> tuple[np.ndarray, np.ndarray]:
    """Per layer K and V of a host tier (HostKVTier, or a plain KVCacheTier on the CPU) as numpy arrays
    over the same memory; bf16 shows as uint16."""
    return _as_numpy(tier.key_cache[layer]), _as_numpy(tier.value_cache[layer])


def precision_of(layout) -> str:
    """"f32" | "f16" | "bf16" | "u8" of a HostKVLayout or a plain KVLayout."""
    if isinstance(layout, HostKVLayout):
        return layout.precision
    return {v: k for k, v in HOST_PRECISIONS.items()}[layout.dtype]


def same_layout(host: HostKVLayout, other) -> bool:
    """Whether a tier with layout `other` (HostKVLayout or KVLayout) holds blocks in `host`'s layout."""
    if isinstance(other, HostKVLayout):
        return other == host
    return not host.quantized and other == host.as_kv_layout()


def _as_numpy(t: torch.Tensor) -> np.ndarray:
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def _f32_rows(raw: torch.Tensor) -> torch.Tensor:
    # raw: [..., 4, C] uint8 -> [..., C] float32 (little-endian f32 stored across 4 rows of C bytes)
    flat = raw.contiguous().flatten(-2)
    return flat.view(torch.float32)


def _dequant_key(kb: torch.Tensor, bs: int) -> torch.Tensor:
    # kb: [n, KVH, 8 + bs, D] uint8, per-channel scale / zero point in rows 0-3 / 4-7.
    scale = _f32_rows(kb[:, :, 0:4])[:, :, None, :]       # [n, KVH, 1, D]
    zp = _f32_rows(kb[:, :, 4:8])[:, :, None, :]
    return (kb[:, :, 8:].float() - zp) * scale           # [n, KVH, bs, D]


def _dequant_value(vb: torch.Tensor) -> torch.Tensor:
    # vb: [n, KVH, bs, 8 + D] uint8, per-token scale / zero point in bytes 0-3 / 4-7.
    params = vb[..., :8].contiguous().view(torch.float32)  # [n, KVH, bs, 2]
    return (vb[..., 8:].float() - params[..., 1:2]) * params[..., 0:1]
