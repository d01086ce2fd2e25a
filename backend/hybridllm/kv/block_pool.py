"""BlockPool: bookkeeping for one tier's fixed set of KV blocks, with reference counts and a prefix cache.

Every block is in exactly one of three states:
- empty: on the free list, its contents meaningless;
- used: held by one or more holders (its reference count is the number of holders);
- cached: no holder, but it still holds the K/V of a full block named by its prefix hash, kept in LRU
  order until the pool needs room (then the least recently freed is evicted, empty again).
A used block may carry a hash too (a shared prefix in use). `num_free` counts what `allocate` can take:
empty plus cached blocks. The pool checks its books on every call, so a leak or a double free fails
loudly at its source. Pure: no torch, no tensors.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from typing import Hashable, Iterable, Sequence

from .prefix_cache import PrefixCacheStats


class KVLeakError(RuntimeError):
    pass


class BlockPool:
    def __init__(self, num_blocks: int, block_size: int, name: str = "device"):
        if not isinstance(num_blocks, int) or num_blocks < 0:
            raise ValueError(f"BlockPool.num_blocks must be an integer >= 0, got {num_blocks!r}")
        if not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"BlockPool.block_size must be an integer >= 1, got {block_size!r}")
        self.name = name
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: deque[int] = deque(range(num_blocks))
        self._holders: dict[int, set[Hashable]] = {}
        self._by_hash: dict[bytes, int] = {}          # prefix hash -> the block holding it
        self._hash_of: dict[int, bytes] = {}
        self._lru: OrderedDict[int, None] = OrderedDict()   # cached blocks, least recently freed first
        self._meta: dict[int, tuple[bytes | None, int]] = {}  # named block -> (its parent block's name, index)
        self.stats = PrefixCacheStats()
        # (name, block, parent name, index) of blocks evicted since the caller last cleared it: their
        # contents are intact until the step that reuses them runs (what demotion copies out).
        self.evicted: list[tuple[bytes, int, bytes | None, int]] = []

    @property
    def num_free(self) -> int:
        """Blocks allocate can take: empty ones and cached ones (evicted on demand)."""
        return len(self._free) + len(self._lru)

    @property
    def num_empty(self) -> int:
        return len(self._free)

    @property
    def num_cached(self) -> int:
        """Blocks nobody holds that still hold a cached prefix."""
        return len(self._lru)

    @property
    def num_used(self) -> int:
        return len(self._holders)

    def refcount(self, block: int) -> int:
        return len(self._holders.get(block, ()))

    def holders(self, block: int) -> frozenset:
        return frozenset(self._holders.get(block, ()))

    def allocate(self, n: int, owner: Hashable) -> list[int] | None:
        """n blocks for owner (reference count 1), empty ones first, then the least recently used
        cached ones; None (nothing taken) when the pool is short."""
        if n < 0:
            raise ValueError(f"cannot allocate {n} blocks")
        if n > self.num_free:
            return None
        blocks = [self._free.popleft() if self._free else self._evict() for _ in range(n)]
        for b in blocks:
            self._holders[b] = {owner}
        return blocks

    def _evict(self) -> int:
        b, _ = self._lru.popitem(last=False)
        h = self._hash_of.pop(b)
        del self._by_hash[h]
        self.stats.evictions += 1
        self.evicted.append((h, b, *self._meta.pop(b)))
        return b

    # -- the prefix cache ------------------------------------------------------

    def lookup(self, keys: Sequence[bytes]) -> list[int]:
        """The blocks of the longest cached prefix of keys (block names, in order), used or cached."""
        out = []
        for k in keys:
            b = self._by_hash.get(k)
            if b is None:
                break
            out.append(b)
        return out

    def cached_among(self, blocks: Iterable[int]) -> int:
        """How many of blocks nobody holds (taking them lowers num_free)."""
        return sum(b in self._lru for b in blocks)

    def register(self, block: int, key: bytes, parent: bytes | None = None, index: int = 0) -> bool:
        """Names a used, full block by its prefix hash, so later requests can share it (parent: the name
        of the block before it in its request's table, index: its place there). False (nothing changed)
        when the block already has a name or another block already holds that prefix."""
        if block not in self._holders:
            raise KVLeakError(f"{self.name} pool: block {block} is not in use; only a used block can be cached")
        if block in self._hash_of or key in self._by_hash:
            return False
        self._hash_of[block] = key
        self._by_hash[key] = block
        self._meta[block] = (parent, index)
        return True

    def key_of(self, block: int) -> bytes | None:
        return self._hash_of.get(block)

    def meta_of(self, block: int) -> tuple[bytes | None, int]:
        """(parent name, index) of a named block."""
        return self._meta[block]

    # -- holders ---------------------------------------------------------------

    def share(self, blocks: Iterable[int], owner: Hashable) -> None:
        """owner becomes one more holder of blocks that are in use or cached (a cached one leaves the LRU)."""
        blocks = list(blocks)
        for b in blocks:
            held = self._holders.get(b)
            if held is None and b not in self._lru:
                raise KVLeakError(f"{self.name} pool: block {b} is free; only a used block can be shared")
            if held is not None and owner in held:
                raise KVLeakError(f"{self.name} pool: {owner!r} already holds block {b}")
        if len(set(blocks)) != len(blocks):
            raise KVLeakError(f"{self.name} pool: {owner!r} would hold a block twice")
        for b in blocks:
            if b in self._lru:
                del self._lru[b]
                self._holders[b] = set()
            self._holders[b].add(owner)

    def free(self, blocks: Iterable[int], owner: Hashable) -> list[int]:
        """owner lets go of blocks; returns those nobody holds any more (cached if named, else empty)."""
        blocks = list(blocks)
        for b in blocks:
            held = self._holders.get(b)
            if held is None:
                raise KVLeakError(f"{self.name} pool: block {b} freed twice or never allocated")
            if owner not in held:
                raise KVLeakError(f"{self.name} pool: block {b} is held by {', '.join(sorted(map(repr, held)))}, not {owner!r}")
        released = []
        # A request's table is freed tail first: its last blocks are the least likely to be shared
        # again, so they are evicted first.
        for b in reversed(blocks):
            held = self._holders[b]
            held.discard(owner)
            if not held:
                del self._holders[b]
                if b in self._hash_of:
                    self._lru[b] = None
                else:
                    # Most recently freed blocks are reused last, which keeps reuse bugs visible.
                    self._free.append(b)
                released.append(b)
        return released[::-1]

    def check(self) -> None:
        """Raise if the free list, the holders and the cache disagree: every block is empty, used or
        cached, exactly once (free + used + cached == total), and the prefix names are one to one."""
        free = set(self._free)
        lru = set(self._lru)
        if len(free) != len(self._free):
            raise KVLeakError(f"{self.name} pool: a block is on the free list twice")
        if free & self._holders.keys():
            raise KVLeakError(f"{self.name} pool: blocks both free and held: {sorted(free & self._holders.keys())}")
        if lru & (free | self._holders.keys()):
            raise KVLeakError(f"{self.name} pool: cached blocks also free or held: "
                              f"{sorted(lru & (free | self._holders.keys()))}")
        if any(not h for h in self._holders.values()):
            raise KVLeakError(f"{self.name} pool: a used block has no holder")
        if len(free) + len(self._holders) + len(lru) != self.num_blocks:
            raise KVLeakError(f"{self.name} pool: free ({len(free)}) + used ({len(self._holders)}) + cached "
                              f"({len(lru)}) != total ({self.num_blocks})")
        if any(self._by_hash.get(h) != b for b, h in self._hash_of.items()) or len(self._by_hash) != len(self._hash_of):
            raise KVLeakError(f"{self.name} pool: the prefix names are not one to one")
        if self._meta.keys() != self._hash_of.keys():
            raise KVLeakError(f"{self.name} pool: named blocks and their parents disagree")
        if free & self._hash_of.keys() or not lru <= self._hash_of.keys():
            raise KVLeakError(f"{self.name} pool: an empty block is named, or a cached one is not")
