"""KV bookkeeping, pure (no torch): the Tier type, BlockPool (free lists and reference counts) and
BlockTables (each request's block_table on its tier). The tensors the blocks index live in
attention/kv_cache.py; the copies between tiers in runtime/kv_copy.py."""
from .block_pool import BlockPool, KVLeakError
from .block_tables import BlockTables
from .tier import Tier

__all__ = ["BlockPool", "BlockTables", "KVLeakError", "Tier"]
