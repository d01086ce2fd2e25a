"""Attention backends over the paged KV cache. All share AttentionMetadata."""
from .metadata import AttentionMetadata, SeqSlice, build_metadata
from .device import DeviceAttention

__all__ = ["AttentionMetadata", "SeqSlice", "build_metadata", "DeviceAttention"]
