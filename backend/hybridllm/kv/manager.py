"""KVCacheManager: per-request block tables over the tiers."""
from __future__ import annotations

from typing import Hashable

import torch

from ..utils import ceil_div
from .block_pool import KVLeakError
from .cache import KVCacheTier
from .layout import Tier


class KVCacheManager:
    """Maps each request to its tier and its block_table (a list of block ids).

    A request's KV lives wholly on one tier. Token at position p sits in
    block_table[p // block_size] at offset p % block_size, i.e. at slot
    block_table[p // block_size] * block_size + p % block_size, where block_size
    is that tier's. Tiers may differ in block size: OpenVINO's PagedAttention on
    the CPU insists on 32-token blocks, the device tier uses 16.
    """

    def __init__(self, tiers: dict[Tier, KVCacheTier], block_size: int | None = None):
        if not tiers:
            raise ValueError("KVCacheManager needs at least one tier")
        if block_size is not None:
            for t, c in tiers.items():
                if c.layout.block_size != block_size:
                    raise ValueError(f"block_size: the {t.value} tier has {c.layout.block_size}-token blocks, "
                                     f"not {block_size}")
        self.tiers = tiers
        self._tables: dict[Hashable, list[int]] = {}
        self._tier_of: dict[Hashable, Tier] = {}

    @property
    def block_size(self) -> int:
        """The device tier's block size (the only tier's, when there is one)."""
        return self.block_size_of(Tier.DEVICE if Tier.DEVICE in self.tiers else next(iter(self.tiers)))

    def block_size_of(self, tier: Tier) -> int:
        return self.tiers[tier].layout.block_size

    def capacity_tokens(self, tier: Tier) -> int:
        """Tokens one request could hold if it had the whole tier."""
        return self.tiers[tier].pool.num_blocks * self.block_size_of(tier)

    def pool(self, tier: Tier = Tier.DEVICE):
        return self.tiers[tier].pool

    def has(self, request_id: Hashable) -> bool:
        return request_id in self._tables

    def tier_of(self, request_id: Hashable) -> Tier:
        return self._tier_of[request_id]

    def block_table(self, request_id: Hashable) -> list[int]:
        return self._tables.get(request_id, [])

    def blocks_needed(self, request_id: Hashable, num_tokens: int, tier: Tier | None = None) -> int:
        """Extra blocks request_id needs to hold num_tokens tokens in total, on its tier (or `tier`
        for a request that has none yet)."""
        tier = self._tier_of.get(request_id, tier if tier is not None else Tier.DEVICE)
        have = len(self._tables.get(request_id, ()))
        return max(0, ceil_div(num_tokens, self.block_size_of(tier)) - have)

    def allocate_slots(self, request_id: Hashable, num_tokens: int, tier: Tier = Tier.DEVICE) -> bool:
        """Grow request_id's table to hold num_tokens tokens. False, with nothing taken, if short."""
        if request_id in self._tier_of and self._tier_of[request_id] != tier:
            raise KVLeakError(f"request {request_id!r} lives on {self._tier_of[request_id].value}, not {tier.value}")
        need = self.blocks_needed(request_id, num_tokens, tier)
        if need == 0:
            self._tables.setdefault(request_id, [])
            self._tier_of.setdefault(request_id, tier)
            return True
        blocks = self.tiers[tier].pool.allocate(need, request_id)
        if blocks is None:
            return False
        self._tables.setdefault(request_id, []).extend(blocks)
        self._tier_of[request_id] = tier
        return True

    def free(self, request_id: Hashable) -> int:
        """Release every block of request_id; returns how many. Unknown ids free nothing."""
        table = self._tables.pop(request_id, None)
        tier = self._tier_of.pop(request_id, None)
        if not table:
            return 0
        self.tiers[tier].pool.free(table, request_id)
        return len(table)

    def migrate(self, request_id: Hashable, to: Tier, num_tokens: int) -> tuple[Tier, list[int], list[int]] | None:
        """Moves request_id's table to tier `to`, sized for num_tokens; returns (from, src, dst) blocks.

        Bookkeeping only: the caller copies src -> dst before anything writes to
        the freed src blocks. None, with nothing changed, when `to` is short.
        """
        src_tier = self._tier_of[request_id]
        src = self._tables[request_id]
        # Room for every slot src has (copy_blocks copies them all) and for num_tokens.
        held = len(src) * self.block_size_of(src_tier)
        need = ceil_div(max(held, num_tokens), self.block_size_of(to))
        dst = self.tiers[to].pool.allocate(need, request_id)
        if dst is None:
            return None
        self.tiers[src_tier].pool.free(src, request_id)
        self._tables[request_id] = list(dst)
        self._tier_of[request_id] = to
        return src_tier, list(src), list(dst)

    def copy_blocks(self, src_tier: Tier, src: list[int], dst_tier: Tier, dst: list[int]) -> None:
        """Copies a request's K/V from its blocks src (on src_tier) to blocks dst (on dst_tier), every layer.

        Same block size: whole blocks. Different block sizes: token by token, position p going
        from src[p // src_bs] to dst[p // dst_bs], for every position both tables hold.
        """
        a, b = self.tiers[src_tier], self.tiers[dst_tier]
        for t in (a, b):
            if t.layout.quantized:
                raise ValueError(f"copy_blocks: the {t.tier.value} tier is u8-quantised; only plain tiers copy")
        sbs, dbs = a.layout.block_size, b.layout.block_size
        if sbs == dbs:
            n = min(len(src), len(dst))
            si = torch.tensor(src[:n], dtype=torch.int64, device=a.device)
            di = torch.tensor(dst[:n], dtype=torch.int64, device=b.device)
            for layer in range(a.layout.num_layers):
                b.key_cache[layer][di] = a.key_cache[layer][si].to(b.device, b.layout.dtype)
                b.value_cache[layer][di] = a.value_cache[layer][si].to(b.device, b.layout.dtype)
            return
        pos = torch.arange(min(len(src) * sbs, len(dst) * dbs))
        s_blk = torch.tensor(src, dtype=torch.int64)[pos // sbs].to(a.device)
        s_off = (pos % sbs).to(a.device)
        d_blk = torch.tensor(dst, dtype=torch.int64)[pos // dbs].to(b.device)
        d_off = (pos % dbs).to(b.device)
        for layer in range(a.layout.num_layers):
            # x[blk, :, off] is [num_tokens, kv_heads, head_dim]
            b.key_cache[layer][d_blk, :, d_off] = a.key_cache[layer][s_blk, :, s_off].to(b.device, b.layout.dtype)
            b.value_cache[layer][d_blk, :, d_off] = a.value_cache[layer][s_blk, :, s_off].to(b.device,
                                                                                             b.layout.dtype)

    def slot_mapping(self, request_id: Hashable, start: int, end: int) -> list[int]:
        """Slots of positions [start, end) of request_id."""
        table = self._tables[request_id]
        bs = self.block_size_of(self._tier_of[request_id])
        if end > len(table) * bs:
            raise KVLeakError(f"request {request_id!r}: position {end - 1} has no block")
        return [table[p // bs] * bs + p % bs for p in range(start, end)]

    def num_used(self, tier: Tier = Tier.DEVICE) -> int:
        return self.tiers[tier].pool.num_used

    def num_free(self, tier: Tier = Tier.DEVICE) -> int:
        return self.tiers[tier].pool.num_free

    def check(self) -> None:
        """Raise unless every pool is consistent and tables match pool ownership exactly."""
        for tier, cache in self.tiers.items():
            cache.pool.check()
            owned: dict[int, Hashable] = {}
            for rid, table in self._tables.items():
                if self._tier_of[rid] != tier:
                    continue
                for b in table:
                    if b in owned:
                        raise KVLeakError(f"{tier.value} block {b} in the tables of {owned[b]!r} and {rid!r}")
                    owned[b] = rid
            if owned != cache.pool._owner:
                raise KVLeakError(f"{tier.value} pool ownership differs from the block tables")
