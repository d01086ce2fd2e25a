"""A host KV tier's tensors as OpenVINO tensors over the same memory (zero copy), for the OV backends."""
from __future__ import annotations

import numpy as np
import openvino as ov
import torch

from .kv_cache import KVCacheTier

OV_TYPES = {"f32": ov.Type.f32, "f16": ov.Type.f16, "bf16": ov.Type.bf16, "u8": ov.Type.u8}


def numpy_views(tier: KVCacheTier, layer: int) -> tuple[np.ndarray, np.ndarray]:
    """Per layer K and V of a CPU tier as numpy arrays over the same memory; bf16 shows as uint16
    (numpy has no bf16; the ov.Tensor built over it gets the real element type)."""
    return _as_numpy(tier.key_cache[layer]), _as_numpy(tier.value_cache[layer])


def cache_tensors(tier: KVCacheTier, layer: int, keep: list) -> tuple[ov.Tensor, ov.Tensor]:
    """ov.Tensors over the tier's K/V of one layer. `keep` holds what keeps the memory alive:
    ov.Tensor(shared) does not."""
    kn, vn = numpy_views(tier, layer)
    etype = OV_TYPES[tier.layout.precision]
    keep.append((tier, kn, vn))
    return ov.Tensor(kn, list(kn.shape), etype), ov.Tensor(vn, list(vn.shape), etype)


def _as_numpy(t: torch.Tensor) -> np.ndarray:
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()
