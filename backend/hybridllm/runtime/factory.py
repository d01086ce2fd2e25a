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
        if prefill == decode == "cpu_only":
            from .cpu_only import build_cpu_only
            return build_cpu_only(config, model_path, mc, reason)
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
    host_attn = None
    if Tier.HOST in {KV_TIER[p] for p in wanted}:
        host_attn = host_attention(config, mc, layout, device)
        tiers[Tier.HOST] = host_attn.tier
        reason += f"; host attention {host_attn.name} ({host_attn.reason})"
    kv = KVCacheManager(tiers)
    executors: dict[str, Executor] = {}
    for p in wanted:
        executors[p] = _executor(p, model, tiers, mc, config.block_size, host_attn)
    return Runtime(executors, prefill, decode, kv, model, device, reason)


def check_host_kv_bytes(config: EngineConfig) -> None:
    avail = mem_available()
    if avail is not None and config.host_kv_bytes > avail:
        raise ValueError(f"host_kv_bytes ({config.host_kv_bytes}) is larger than the free host memory ({avail})")


def mem_available() -> int | None:
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
    host_attn = host_attention(config, mc, layout, device)
    kv = KVCacheManager({Tier.DEVICE: dev, Tier.HOST: host_attn.tier})
    runner = NeoRunner(model, _attention(dev, mc), host_attn, host_attn.tier, config.block_size,
                       max_host_tokens=config.max_num_seqs,   # B holds host decodes: one token each
                       max_prefill_tokens=config.max_num_batched_tokens)
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
    reason += f"; host attention {host_attn.name} ({host_attn.reason})"
    return Runtime({"partition": runner}, "partition", "partition", kv, model, device, reason,
                   neo=True, neo_costs=costs)


def _attention(tier: KVCacheTier, mc: ModelConfig):
    return DeviceAttention(tier.key_cache, tier.value_cache, mc.num_attention_heads, mc.num_key_value_heads,
                           mc.head_dim, mc.sliding_window)


def _executor(policy: str, model: LlamaModel, tiers, mc: ModelConfig, block_size: int, host_attn=None) -> Executor:
    if policy == "gpu_only":
        return ModelRunner(model, _attention(tiers[Tier.DEVICE], mc), block_size)
    if policy == "gpu_offload":
        from .offload import OffloadRunner
        return OffloadRunner(model, _attention(tiers[Tier.DEVICE], mc), block_size)
    if policy == "partition":
        from .partition import PartitionRunner
        return PartitionRunner(model, host_attn)
    raise ValueError(f"policy: {policy!r} has no executor here")


HOST_THREADS_ENV = "HYBRIDLLM_HOST_THREADS"


def host_threads(device: torch.device) -> int | None:
    """OpenVINO threads for host attention: HYBRIDLLM_HOST_THREADS if set; beside a GPU, all cores but
    one, which stays free for the thread that launches the GPU's kernels; on a CPU-only machine all."""
    env = os.environ.get(HOST_THREADS_ENV)
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ValueError(f"{HOST_THREADS_ENV}: {env!r} must be an integer >= 1")
        return int(env)
    if device.type == "cuda":
        return max(1, (os.cpu_count() or 2) - 1)
    return None


def host_attention(config: EngineConfig, mc: ModelConfig, device_layout: KVLayout, device: torch.device):
    """HostAttention over a fresh host tier of config.host_kv_bytes, in the chosen backend's layout.

    The backend (OpenVINO PagedAttention, else the public-opset graph, else torch; see
    attention/host.py) decides the block size: 32 tokens for the op on the CPU, so host
    blocks may be larger than device blocks; KVCacheManager copies between them token-wise.
    Pinned on CUDA, so device<->host copies of K/V and swaps run at full PCIe speed.
    """
    from ..attention.host import HostAttention, HostAttentionSpec, select_backend
    from ..kv.host_tier import precision_of
    from .ov_common import default_cache_dir
    spec = HostAttentionSpec(
        num_layers=mc.num_hidden_layers, num_heads=mc.num_attention_heads, num_kv_heads=mc.num_key_value_heads,
        head_dim=mc.head_dim, kv_precision=precision_of(device_layout), sliding_window=mc.sliding_window,
        block_size=config.block_size, cache_dir=default_cache_dir(), num_threads=host_threads(device))
    backend, why = select_backend(spec)
    layout = backend.layout.as_kv_layout()
    n = layout.num_blocks_for(config.host_kv_bytes)
    if n < 1:
        raise ValueError(f"host_kv_bytes ({config.host_kv_bytes}) holds no KV block; "
                         f"one block takes {layout.bytes_per_block} bytes")
    tier = KVCacheTier(Tier.HOST, layout, n, HOST, pin_memory=device.type == "cuda")
    return HostAttention(backend, tier, why)
