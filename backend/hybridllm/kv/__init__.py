"""Paged KV cache: block pools on two tiers (device, host), block tables and slot mapping."""
from .block_pool import BlockPool, KVLeakError
from .layout import KVLayout, Tier
from .cache import KVCacheTier
from .manager import KVCacheManager

__all__ = ["BlockPool", "KVLeakError", "KVLayout", "Tier", "KVCacheTier", "KVCacheManager"]
