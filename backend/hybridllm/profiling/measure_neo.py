"""The per-layer cost of NEO's pipelining that the tables do not see, timed on the real NeoRunner.

A pipelined step runs more than its parts: thread hand-offs, event waits, host<->device
copies of a few KB each, and, where the GPU is fed by one Python thread, the launches of
B's calls beside A's. None of that shows in the GEMM or attention tables, so this probe
runs NeoRunner itself over a few layers of the model's shape (random weights) and keeps
what the cost model's composition of those tables misses:

    pipeline_s = ((t(A + B) - t(A)) - (pred(A + B) - pred(A))) / layers

taken against the device-only step, so the tables' own error in A cancels.
"""
from __future__ import annotations

import dataclasses
import logging

import torch

from ..attention import DeviceAttention
from ..kv import Tier
from ..attention.kv_cache import KVCacheTier, KVLayout
from ..models.config import ModelConfig
from ..attention.host import HostAttention, HostAttentionSpec
from ..dtypes import torch_dtype
from ..kernels import DeviceOps, resolve_kernels
from ..models.llama import LlamaModel
from ..policy import HardwareProfile, ModelShape
from ..policy.neo import NeoCostTables, decodes
from ..runtime.spec import host_threads
from ..runtime.executors.neo import NeoRunner
from ..scheduler import StepInput, SubBatch
from ..utils import ceil_div, mem_available
from .timing import timeit

log = logging.getLogger("hybridllm")

PROBE_LAYERS = 4
PROBE_DECODES = ((8, 8), (8, 16))    # (device decodes, host decodes) per probe step
PROBE_CONTEXT = 256


def _probe_layers(mc: ModelConfig, device: torch.device, itemsize: int) -> int:
    """PROBE_LAYERS, or fewer where their weights would take over a quarter of the free memory
    (a 70B model's layers in f32 on a CPU-only box); 0 if not even one layer fits."""
    H, KVH, D, hid, inter = (mc.num_attention_heads, mc.num_key_value_heads, mc.head_dim, mc.hidden_size,
                             mc.intermediate_size)
    per_layer = itemsize * hid * ((H + 2 * KVH) * D + H * D + 3 * inter)
    fixed = itemsize * mc.vocab_size * hid
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else (mem_available() or 8 << 30)
    for n in range(PROBE_LAYERS, 0, -1):
        if fixed + n * per_layer <= free // 4:
            return n
    return 0


def pipeline_overhead(mc: ModelConfig, profile: HardwareProfile, dtype: str, device: torch.device,
                      host_kv: str) -> float:
    """Seconds per layer that a step with host decodes costs beyond NeoCostTables' prediction."""
    tdtype = torch_dtype(dtype)
    layers = _probe_layers(mc, device, tdtype.itemsize)
    if layers == 0:
        log.warning("profile: no memory for NEO's pipelining probe; its overhead is left at 0")
        return 0.0
    cfg = dataclasses.replace(mc, num_hidden_layers=layers, sliding_window=None)
    model = LlamaModel.random(cfg, device, tdtype)
    n_dev = max(a for a, _ in PROBE_DECODES)
    n_host = max(b for _, b in PROBE_DECODES)
    dev_bs = 16
    per_seq = ceil_div(PROBE_CONTEXT + 1, dev_bs)
    dev_tier = KVCacheTier(Tier.DEVICE, KVLayout(layers, cfg.num_key_value_heads, cfg.head_dim, dev_bs, tdtype),
                           n_dev * per_seq, device)
    model.ops = DeviceOps(resolve_kernels("auto", device))     # the engine's default kernels on this device
    dev_attn = DeviceAttention(dev_tier.key_cache, dev_tier.value_cache, cfg.num_attention_heads,
                               cfg.num_key_value_heads, cfg.head_dim, ops=model.ops)
    spec = HostAttentionSpec(layers, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, host_kv,
                             block_size=dev_bs, num_threads=host_threads(None, device))
    # Enough blocks of the fallbacks' size; the op's larger blocks need fewer.
    host_attn = HostAttention.create(spec, num_blocks=n_host * per_seq, pin_memory=device.type == "cuda")
    host_per_seq = ceil_div(PROBE_CONTEXT + 1, host_attn.layout.block_size)
    runner = NeoRunner(model, dev_attn, host_attn, host_attn.tier, dev_bs, max_host_tokens=n_host,
                       max_prefill_tokens=0)
    try:
        def seqs(n, per, tier, part, prefix):
            return [SubBatch("neo", tier, tuple(StepInput(f"{prefix}{i}", (1,), PROBE_CONTEXT,
                                                          list(range(i * per, (i + 1) * per)), True)
                                                for i in range(n)), part)]

        def best(step):
            return timeit(lambda: runner.execute(step), device, reps=5)

        shape = ModelShape.from_config(cfg, dtype)
        costs = NeoCostTables(shape, dataclasses.replace(profile, extra={**profile.extra, "host_handoff_s": 0.0}),
                              host_kv)
        residuals = []
        for a, b in PROBE_DECODES:
            work = decodes(a, a * (PROBE_CONTEXT + 1), host_kv)
            dev_only = seqs(a, per_seq, Tier.DEVICE, "A", "d")
            t_a = best(dev_only)
            t_ab = best(dev_only + seqs(b, host_per_seq, Tier.HOST, "B", "h"))
            pred_a, pred_ab = costs.step(work, 0, 0), costs.step(work, b, b * (PROBE_CONTEXT + 1))
            residuals.append(((t_ab - t_a) - (pred_ab - pred_a)) / layers)
        return max(0.0, sum(residuals) / len(residuals))
    finally:
        runner.pool.shutdown()
