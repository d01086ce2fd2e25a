"""BlockTables: per-request block tables over the tiers' pools. Pure bookkeeping, no tensors."""
from __future__ import annotations

import math
from typing import Hashable, Sequence

from ..utils import ceil_div
from .block_pool import BlockPool, KVLeakError
from .prefix_cache import block_keys
from .tier import Tier


class BlockTables:
    """Maps each request to its tier and its block_table (a list of block ids).

    A request's KV lives wholly on one tier. Token at position p sits in
    block_table[p // block_size] at offset p % block_size, i.e. at slot
    block_table[p // block_size] * block_size + p % block_size, where block_size
    is that tier's. Tiers may differ in block size: OpenVINO's PagedAttention on
    the CPU insists on 32-token blocks, the device tier uses 16.
    """

    def __init__(self, pools: dict[Tier, BlockPool]):
        if not pools:
            raise ValueError("BlockTables needs at least one tier")
        for t, p in pools.items():
            if not isinstance(t, Tier) or not isinstance(p, BlockPool):
                raise TypeError(f"BlockTables: pools must map Tier -> BlockPool, got {t!r}: {type(p).__name__}")
        self.pools = pools
        # The prefix hash chain's chunk: every tier's block is a whole number of chunks.
        self.chunk = math.gcd(*(p.block_size for p in pools.values()))
        self._tables: dict[Hashable, list[int]] = {}
        self._tier_of: dict[Hashable, Tier] = {}

    @property
    def tiers(self) -> tuple[Tier, ...]:
        return tuple(self.pools)

    @property
    def block_size(self) -> int:
        """The device tier's block size (the only tier's, when there is one)."""
        return self.block_size_of(Tier.DEVICE if Tier.DEVICE in self.pools else next(iter(self.pools)))

    def block_size_of(self, tier: Tier) -> int:
        return self.pools[tier].block_size

    def capacity_tokens(self, tier: Tier) -> int:
        """Tokens one request could hold if it had the whole tier."""
        return self.pools[tier].num_blocks * self.block_size_of(tier)

    def pool(self, tier: Tier = Tier.DEVICE) -> BlockPool:
        return self.pools[tier]

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
        blocks = self.pools[tier].allocate(need, request_id)
        if blocks is None:
            return False
        self._tables.setdefault(request_id, []).extend(blocks)
        self._tier_of[request_id] = tier
        return True

    def share(self, request_id: Hashable, blocks: list[int], tier: Tier = Tier.DEVICE) -> None:
        """A new request starts its table with blocks others hold or the cache keeps (a shared prefix):
        one more reference to each. The request must have no table yet."""
        if request_id in self._tables:
            raise KVLeakError(f"request {request_id!r} already has a block table")
        self.pools[tier].share(blocks, request_id)
        self._tables[request_id] = list(blocks)
        self._tier_of[request_id] = tier

    def prefix_hit(self, chain: Sequence[bytes], tier: Tier, max_tokens: int) -> list[int]:
        """The blocks of `tier` that hold the longest cached prefix named by chain (prefix_cache's
        chunk hashes), covering at most max_tokens tokens."""
        bs = self.block_size_of(tier)
        return self.pools[tier].lookup(block_keys(chain, bs, self.chunk)[:max_tokens // bs])

    def cache_blocks(self, request_id: Hashable, chain: Sequence[bytes], num_tokens: int, start: int = 0) -> int:
        """Names request_id's full blocks among its first num_tokens tokens by the prefix hashes of
        chain, from block `start` on (those before it are named already); returns the next start."""
        tier = self._tier_of[request_id]
        table = self._tables[request_id]
        keys = block_keys(chain, self.block_size_of(tier), self.chunk)
        end = min(num_tokens // self.block_size_of(tier), len(table), len(keys))
        pool = self.pools[tier]
        for i in range(start, end):
            pool.register(table[i], keys[i], keys[i - 1] if i else None, i)
        return max(start, end)

    def num_cached(self, tier: Tier = Tier.DEVICE) -> int:
        return self.pools[tier].num_cached

    def free(self, request_id: Hashable) -> int:
        """Let go of every block of request_id; returns how many. Unknown ids free nothing.
        A block another holder shares stays in use."""
        table = self._tables.pop(request_id, None)
        tier = self._tier_of.pop(request_id, None)
        if not table:
            return 0
        self.pools[tier].free(table, request_id)
        return len(table)

    def migrate(self, request_id: Hashable, to: Tier, num_tokens: int) -> tuple[Tier, list[int], list[int]] | None:
        """Moves request_id's table to tier `to`, sized for num_tokens; returns (from, src, dst) blocks.

        Bookkeeping only: the runtime copies src -> dst before the step that reads them, and before
        anything writes to the freed src blocks. None, with nothing changed, when `to` is short.
        """
        src_tier = self._tier_of[request_id]
        src = self._tables[request_id]
        # Room for every slot src has (the copy takes them all) and for num_tokens.
        held = len(src) * self.block_size_of(src_tier)
        need = ceil_div(max(held, num_tokens), self.block_size_of(to))
        dst = self.pools[to].allocate(need, request_id)
        if dst is None:
            return None
        self.pools[src_tier].free(src, request_id)
        self._tables[request_id] = list(dst)
        self._tier_of[request_id] = to
        return src_tier, list(src), list(dst)

    def num_used(self, tier: Tier = Tier.DEVICE) -> int:
        return self.pools[tier].num_used

    def num_free(self, tier: Tier = Tier.DEVICE) -> int:
        return self.pools[tier].num_free

    def check(self) -> None:
        """Raise unless every pool is consistent, no table holds a block twice, and each block's
        holders are exactly the tables that list it (reference count == holders)."""
        for tier, pool in self.pools.items():
            pool.check()
            listed: dict[int, set] = {}
            for rid, table in self._tables.items():
                if self._tier_of[rid] != tier:
                    continue
                if len(set(table)) != len(table):
                    raise KVLeakError(f"{tier.value}: the table of {rid!r} holds a block twice")
                for b in table:
                    listed.setdefault(b, set()).add(rid)
            held = {b: set(pool.holders(b)) for b in range(pool.num_blocks) if pool.refcount(b)}
            if listed != held:
                raise KVLeakError(f"{tier.value} pool holders differ from the block tables")
