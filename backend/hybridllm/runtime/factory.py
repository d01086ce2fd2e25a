"""Builds the runtime for a policy: the model on its device, the KV tiers, and the executors.

Decided once at start-up. Every executor has `execute(seqs: list[StepInput]) -> logits`.
A runtime may hold two executors, one for prefill and one for decode (the
planner's per-phase choice); the scheduler then moves each request's KV to the
decode executor's tier once its prefill is done.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from ..attention import DeviceAttention
from ..config import EngineConfig
from ..kv import KVCacheManager, KVCacheTier, KVLayout, Tier
from ..kv.layout import KV_DTYPES
from ..models.config import ModelConfig
from ..models.llama import LlamaModel
from .memory import num_device_blocks
from .model_runner import ModelRunner, StepInput

log = logging.getLogger("hybridllm")
HOST = torch.device("cpu")
KV_TIER = {"gpu_only": Tier.DEVICE, "gpu_offload": Tier.DEVICE, "partition": Tier.HOST, "cpu_only": Tier.HOST}


class Executor(Protocol):
    def execute(self, seqs: list[StepInput]) -> torch.Tensor: ...


@dataclass
class Runtime:
    executors: dict[str, Executor]   # by policy name
    prefill_policy: str
    decode_policy: str
    kv: KVCacheManager
    model: LlamaModel
    device: torch.device
    reason: str = ""                 # why these policies (logged at start-up)
    neo: bool = False                # NEO online serving: both tiers, NeoScheduler, pipelined steps
    neo_costs: object = None         # policy.neo.NeoCostTables when a hardware profile is given

    @property
    def tier(self) -> Tier:
        return KV_TIER[self.prefill_policy]

    @property
    def decode_tier(self) -> Tier:
        return KV_TIER[self.decode_policy]

    @property
    def policy(self) -> str:
        if self.prefill_policy == self.decode_policy:
            return self.prefill_policy
        return f"{self.prefill_policy}+{self.decode_policy}"


def compute_device(config: EngineConfig) -> torch.device:
    return torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def kv_layout(config: EngineConfig, mc: ModelConfig, model_dtype: torch.dtype) -> KVLayout:
    if config.kv_cache_dtype == "u8":
        raise ValueError("kv_cache_dtype 'u8' needs the OpenVINO host KV tier (policy cpu_only)")
    dtype = model_dtype if config.kv_cache_dtype == "auto" else KV_DTYPES[config.kv_cache_dtype]
    return KVLayout(mc.num_hidden_layers, mc.num_key_value_heads, mc.head_dim, config.block_size, dtype)


def build_runtime(config: EngineConfig, model_path: Path, mc: ModelConfig) -> Runtime:
    policy = config.policy
    if policy == "cpu_only":
        from .cpu_only import build_cpu_only
        return build_cpu_only(config, model_path, mc)
    if policy == "partition":
        return build_neo(config, model_path, mc)
    if policy == "auto":
        from .auto import choose_policies
        prefill, decode, reason = choose_policies(config, model_path, mc)
    else:
        prefill = decode = policy
        reason = "forced by the policy option"
    return build_policies(config, model_path, mc, prefill, decode, reason)


def build_policies(config: EngineConfig, model_path: Path, mc: ModelConfig, prefill: str, decode: str,
                   reason: str) -> Runtime:
    device = compute_device(config)
    wanted = {prefill, decode}
    if "cpu_only" in wanted:
        raise ValueError("cpu_only cannot share a runtime with another policy; force policy='cpu_only' instead")
    layer_device = HOST if wanted == {"gpu_offload"} else None
    model = LlamaModel.load(model_path, device, config.dtype, layer_device=layer_device)
    layout = kv_layout(config, mc, model.dtype)
    tiers: dict[Tier, KVCacheTier] = {}
    if Tier.DEVICE in {KV_TIER[p] for p in wanted}:
        on_device = model.resident_bytes if layer_device is not None else model.weight_bytes
        if "gpu_offload" in wanted:
            on_device += 2 * (model.weight_bytes - model.resident_bytes) // mc.num_hidden_layers  # staging slots
        tiers[Tier.DEVICE] = KVCacheTier(Tier.DEVICE, layout, num_device_blocks(config, layout, device, on_device),
                                         device)
    if Tier.HOST in {KV_TIER[p] for p in wanted}:
        n = layout.num_blocks_for(config.host_kv_bytes)
        if n < 1:
            raise ValueError(f"host_kv_bytes ({config.host_kv_bytes}) holds no KV block; "
                             f"one block takes {layout.bytes_per_block} bytes")
        tiers[Tier.HOST] = KVCacheTier(Tier.HOST, layout, n, HOST, pin_memory=device.type == "cuda")
    kv = KVCacheManager(tiers, config.block_size)
    executors: dict[str, Executor] = {}
    for p in wanted:
        executors[p] = _executor(p, model, tiers, mc, config.block_size)
    return Runtime(executors, prefill, decode, kv, model, device, reason)


def check_host_kv_bytes(config: EngineConfig) -> None:
    avail = _mem_available()
    if avail is not None and config.host_kv_bytes > avail:
        raise ValueError(f"host_kv_bytes ({config.host_kv_bytes}) is larger than the free host memory ({avail})")


def _mem_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def build_neo(config: EngineConfig, model_path: Path, mc: ModelConfig) -> Runtime:
    """policy="partition" for online serving: NEO's split KV, swapping and pipelined steps."""
    from .neo_runner import NeoRunner
    check_host_kv_bytes(config)
    device = compute_device(config)
    model = LlamaModel.load(model_path, device, config.dtype)
    layout = kv_layout(config, mc, model.dtype)
    dev = KVCacheTier(Tier.DEVICE, layout, num_device_blocks(config, layout, device, model.weight_bytes), device)
    n_host = layout.num_blocks_for(config.host_kv_bytes)
    if n_host < 1:
        raise ValueError(f"host_kv_bytes ({config.host_kv_bytes}) holds no KV block; "
                         f"one block takes {layout.bytes_per_block} bytes")
    host = KVCacheTier(Tier.HOST, layout, n_host, HOST, pin_memory=device.type == "cuda")
    kv = KVCacheManager({Tier.DEVICE: dev, Tier.HOST: host}, config.block_size)
    runner = NeoRunner(model, _attention(dev, mc), host_attention(host, mc), host, config.block_size)
    costs = None
    reason = "NEO: no hardware profile, so every host decode joins each step"
    if config.hardware_profile is not None:
        from ..policy import ModelShape
        from ..policy.neo import NeoCostTables
        from .auto import load_profile
        prof = load_profile(config.hardware_profile)
        kv_name = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}[layout.dtype]
        costs = NeoCostTables(ModelShape.from_config(mc, config.dtype), prof, kv_name,
                              torch.empty((), dtype=layout.dtype).element_size())
        reason = f"NEO: load-aware host sub-batches from profile {prof.name}"
    return Runtime({"partition": runner}, "partition", "partition", kv, model, device, reason,
                   neo=True, neo_costs=costs)


def _attention(tier: KVCacheTier, mc: ModelConfig):
    return DeviceAttention(tier.key_cache, tier.value_cache, mc.num_attention_heads, mc.num_key_value_heads,
                           mc.head_dim, mc.sliding_window)


def _executor(policy: str, model: LlamaModel, tiers, mc: ModelConfig, block_size: int) -> Executor:
    if policy == "gpu_only":
        return ModelRunner(model, _attention(tiers[Tier.DEVICE], mc), block_size)
    if policy == "gpu_offload":
        from .offload import OffloadRunner
        return OffloadRunner(model, _attention(tiers[Tier.DEVICE], mc), block_size)
    if policy == "partition":
        from .partition import PartitionRunner
        return PartitionRunner(model, host_attention(tiers[Tier.HOST], mc), block_size)
    raise ValueError(f"policy: {policy!r} has no executor here")


def host_attention(tier: KVCacheTier, mc: ModelConfig):
    """Attention over the host tier. Torch on the CPU, behind DeviceAttention's interface."""
    if os.environ.get("HYBRIDLLM_HOST_ATTENTION", "") not in ("", "torch"):
        log.warning("HYBRIDLLM_HOST_ATTENTION=%s is not available to partition yet; using torch",
                    os.environ["HYBRIDLLM_HOST_ATTENTION"])
    return _attention(tier, mc)
