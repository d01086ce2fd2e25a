"""Prefix caching, pure: the hash chain that names full blocks of token ids, and per-tier hit counts.

Tokens are hashed in chunks of `chunk` tokens (the gcd of the tiers' block sizes, so 16 with a 16-token
device tier and a 32-token host tier); chunk i's hash covers chunk i-1's hash and its own token ids, and
the chain starts from a root over the model and the request's cache_salt, so the same tokens under
another model or salt never match. A block of b tokens is named by the hash of its last chunk: one
chain names a request's blocks on both tiers, so a block can move between tiers and keep its name.
"""
from __future__ import annotations

import hashlib
from array import array
from dataclasses import dataclass, field
from typing import Callable, Sequence


def root_hash(model_id: str, cache_salt: str | None) -> bytes:
    """Where a request's chain starts: its model and its tenant (cache_salt)."""
    text = f"hybridllm-prefix\0{model_id}\0{'' if cache_salt is None else 'salt:' + cache_salt}"
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def chunk_hash(parent: bytes, token_ids: Sequence[int]) -> bytes:
    return hashlib.blake2b(parent + array("q", token_ids).tobytes(), digest_size=16).digest()


def extend_chain(chain: list[bytes], root: bytes, token_ids: Callable[[int, int], Sequence[int]],
                 num_tokens: int, chunk: int) -> list[bytes]:
    """Appends to `chain` (in place) the hashes of every full chunk of the first num_tokens tokens it
    lacks; token_ids(start, end) gives tokens [start, end). Returns chain."""
    for i in range(len(chain), num_tokens // chunk):
        chain.append(chunk_hash(chain[-1] if chain else root, token_ids(i * chunk, (i + 1) * chunk)))
    return chain


def block_keys(chain: Sequence[bytes], block_size: int, chunk: int) -> list[bytes]:
    """The names of the full blocks of block_size tokens that `chain` covers (block i: its last chunk's hash)."""
    per = block_size // chunk
    return [chain[(i + 1) * per - 1] for i in range(len(chain) // per)]


@dataclass
class PrefixCacheStats:
    """Counts of one tier's cache (cumulative; vLLM's query/hit tokens)."""
    queries: int = 0            # prompt tokens looked up at admission
    hits: int = 0               # of those, tokens found cached (not prefilled)
    evictions: int = 0          # cached blocks dropped to make room

    def as_dict(self) -> dict[str, int]:
        return dict(queries=self.queries, hits=self.hits, evictions=self.evictions)


@dataclass
class CacheCounters:
    """Per-tier stats plus the choices on a host hit (both cumulative)."""
    tiers: dict[str, PrefixCacheStats] = field(default_factory=dict)
    promotions: int = 0         # host hits copied to the device tier
    host_placements: int = 0    # host hits left where they are, the request placed on the host tier
    demotions: int = 0          # device blocks copied to the host tier on eviction

    def tier(self, name: str) -> PrefixCacheStats:
        return self.tiers.setdefault(name, PrefixCacheStats())
