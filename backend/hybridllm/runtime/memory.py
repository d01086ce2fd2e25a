"""How many KV blocks each tier gets. Decided once, at start-up."""
from __future__ import annotations

import gc

import torch

from ..config import EngineConfig, GiB
from ..attention.kv_cache import KVLayout

CPU_DEFAULT_DEVICE_KV_BYTES = 1 * GiB   # with no GPU, the "device" tier is host memory too
ACTIVATION_RESERVE = 0.10               # share of the device kept for activations and the allocator


def device_kv_bytes(cfg: EngineConfig, device: torch.device, weight_bytes: int) -> int:
    """Bytes for the device KV tier: the explicit cap, else what fits beside the weights."""
    free = None
    if device.type == "cuda":
        # Engines dropped by the caller may still hold their KV until collected; hand it back first.
        gc.collect()
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(device)
        limit = min(total, cfg.device_memory_bytes or total)
        fits = int(limit * (1 - ACTIVATION_RESERVE)) - weight_bytes
        fits = min(fits, free - int(total * ACTIVATION_RESERVE))
    else:
        fits = CPU_DEFAULT_DEVICE_KV_BYTES
        if cfg.device_memory_bytes is not None:
            fits = int(cfg.device_memory_bytes * (1 - ACTIVATION_RESERVE)) - weight_bytes
    want = cfg.device_kv_bytes if cfg.device_kv_bytes is not None else fits
    if cfg.device_memory_bytes is not None and want > fits:
        raise ValueError(
            f"device_kv_bytes ({want}) does not fit in device_memory_bytes ({cfg.device_memory_bytes}) "
            f"beside {weight_bytes} bytes of weights; at most {max(fits, 0)} fits")
    if free is not None and cfg.device_kv_bytes is not None and want > fits:
        raise ValueError(
            f"device_kv_bytes ({want}) is more than {device} has free for it: {max(fits, 0)} bytes "
            f"({free} free, {int(total * ACTIVATION_RESERVE)} kept for activations)")
    if want <= 0:
        where = (f"{free} bytes free on {device} of {total}, {int(total * ACTIVATION_RESERVE)} kept for activations"
                 if free is not None else f"device_memory_bytes={cfg.device_memory_bytes}")
        raise ValueError(f"no device memory left for the KV cache: the weights take {weight_bytes} bytes; {where}; "
                         f"free the device or set device_kv_bytes / device_memory_bytes")
    return want


def num_device_blocks(cfg: EngineConfig, layout: KVLayout, device: torch.device, weight_bytes: int) -> int:
    n = layout.num_blocks_for(device_kv_bytes(cfg, device, weight_bytes))
    if n < 1:
        raise ValueError(
            f"device_kv_bytes holds no KV block: one block takes {layout.bytes_per_block} bytes")
    return n
