"""KV bookkeeping, pure (no torch): the Tier type, BlockPool (free lists, reference counts and the LRU
of cached prefix blocks), BlockTables (each request's block_table on its tier) and prefix_cache (the
hash chain naming full blocks). The tensors the blocks index live in attention/kv_cache.py; the
copies between tiers in runtime/kv_copy.py."""
from .block_pool import BlockPool, KVLeakError
from .block_tables import BlockTables
from .prefix_cache import CacheCounters, PrefixCacheStats, block_keys, extend_chain, root_hash
from .tier import Tier

__all__ = ["BlockPool", "BlockTables", "CacheCounters", "KVLeakError", "PrefixCacheStats", "Tier", "block_keys",
           "extend_chain", "root_hash"]
