"""BlockPool: bookkeeping for one tier's fixed set of KV blocks.

Every block is either free or owned by exactly one request; the pool checks
this on every call, so a leak or a double free fails loudly at its source.
"""
from __future__ import annotations

from collections import deque
from typing import Hashable, Iterable


class KVLeakError(RuntimeError):
    pass


class BlockPool:
    def __init__(self, num_blocks: int, name: str = "device"):
        if num_blocks < 0:
            raise ValueError(f"BlockPool.num_blocks must be >= 0, got {num_blocks}")
        self.name = name
        self.num_blocks = num_blocks
        self._free: deque[int] = deque(range(num_blocks))
        self._owner: dict[int, Hashable] = {}

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return len(self._owner)

    def allocate(self, n: int, owner: Hashable) -> list[int] | None:
        """n blocks for owner, or None (nothing taken) when the pool is short."""
        if n < 0:
            raise ValueError(f"cannot allocate {n} blocks")
        if n > len(self._free):
            return None
        blocks = [self._free.popleft() for _ in range(n)]
        for b in blocks:
            self._owner[b] = owner
        return blocks

    def free(self, blocks: Iterable[int], owner: Hashable) -> None:
        blocks = list(blocks)
        for b in blocks:
            got = self._owner.get(b)
            if got is None:
                raise KVLeakError(f"{self.name} pool: block {b} freed twice or never allocated")
            if got != owner:
                raise KVLeakError(f"{self.name} pool: block {b} is owned by {got!r}, not {owner!r}")
        for b in blocks:
            del self._owner[b]
            # Most recently freed blocks are reused last, which keeps reuse bugs visible.
            self._free.append(b)

    def check(self) -> None:
        """Raise if the free list and owner map disagree."""
        free = set(self._free)
        if len(free) != len(self._free):
            raise KVLeakError(f"{self.name} pool: a block is on the free list twice")
        if free & self._owner.keys():
            raise KVLeakError(f"{self.name} pool: blocks both free and owned: {sorted(free & self._owner.keys())}")
        if len(free) + len(self._owner) != self.num_blocks:
            raise KVLeakError(
                f"{self.name} pool: free ({len(free)}) + used ({len(self._owner)}) != total ({self.num_blocks})")
