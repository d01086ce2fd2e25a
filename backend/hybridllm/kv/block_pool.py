"""BlockPool: bookkeeping for one tier's fixed set of KV blocks, with reference counts.

Every block is free or held by one or more holders (its reference count is the number of holders);
a block returns to the free list when its last holder lets go. The pool checks this on every call,
so a leak or a double free fails loudly at its source. Pure: no torch, no tensors.
"""
from __future__ import annotations

from collections import deque
from typing import Hashable, Iterable


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

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return len(self._holders)

    def refcount(self, block: int) -> int:
        return len(self._holders.get(block, ()))

    def holders(self, block: int) -> frozenset:
        return frozenset(self._holders.get(block, ()))

    def allocate(self, n: int, owner: Hashable) -> list[int] | None:
        """n free blocks for owner (reference count 1), or None (nothing taken) when the pool is short."""
        if n < 0:
            raise ValueError(f"cannot allocate {n} blocks")
        if n > len(self._free):
            return None
        blocks = [self._free.popleft() for _ in range(n)]
        for b in blocks:
            self._holders[b] = {owner}
        return blocks

    def share(self, blocks: Iterable[int], owner: Hashable) -> None:
        """owner becomes one more holder of blocks that are already in use."""
        blocks = list(blocks)
        for b in blocks:
            held = self._holders.get(b)
            if held is None:
                raise KVLeakError(f"{self.name} pool: block {b} is free; only a used block can be shared")
            if owner in held:
                raise KVLeakError(f"{self.name} pool: {owner!r} already holds block {b}")
        for b in blocks:
            self._holders[b].add(owner)

    def free(self, blocks: Iterable[int], owner: Hashable) -> list[int]:
        """owner lets go of blocks; returns those that became free (their last holder left)."""
        blocks = list(blocks)
        for b in blocks:
            held = self._holders.get(b)
            if held is None:
                raise KVLeakError(f"{self.name} pool: block {b} freed twice or never allocated")
            if owner not in held:
                raise KVLeakError(f"{self.name} pool: block {b} is held by {', '.join(sorted(map(repr, held)))}, not {owner!r}")
        released = []
        for b in blocks:
            held = self._holders[b]
            held.discard(owner)
            if not held:
                del self._holders[b]
                # Most recently freed blocks are reused last, which keeps reuse bugs visible.
                self._free.append(b)
                released.append(b)
        return released

    def check(self) -> None:
        """Raise if the free list and the holders disagree."""
        free = set(self._free)
        if len(free) != len(self._free):
            raise KVLeakError(f"{self.name} pool: a block is on the free list twice")
        if free & self._holders.keys():
            raise KVLeakError(f"{self.name} pool: blocks both free and held: {sorted(free & self._holders.keys())}")
        if any(not h for h in self._holders.values()):
            raise KVLeakError(f"{self.name} pool: a used block has no holder")
        if len(free) + len(self._holders) != self.num_blocks:
            raise KVLeakError(
                f"{self.name} pool: free ({len(free)}) + used ({len(self._holders)}) != total ({self.num_blocks})")
