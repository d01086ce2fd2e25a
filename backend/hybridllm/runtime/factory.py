"""Builds the runtime for a policy: the model on its device, the KV tiers, and the executors.

Decided once at start-up. The policy table (policy/registry.py) says which tier each policy keeps
its KV on and which builder makes its executor; the factory makes the parts they share (one model,
one device tier, one host tier with its HostAttention) and asks each builder for its executor.
A runtime may hold two executors, one for prefill and one for decode (the planner's per-phase
choice); the scheduler then moves each request's KV to the decode executor's tier after prefill.
"""
from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..attention import DeviceAttention
from ..attention.host import HostAttention, HostAttentionSpec
from ..config import EngineConfig
from ..dtypes import kv_precision, torch_dtype
from ..kernels import DeviceOps, resolve_kernels
from ..kv import KVCacheManager, KVCacheTier, KVLayout, Tier
from ..models.config import ModelConfig
from ..models.llama import LlamaModel
from ..policy import HardwareProfile, ModelShape
from ..policy.neo import NeoCostTables
from ..policy.registry import POLICIES
from ..policy.step_planner import StepPlanner, useful_policies
from ..utils import cache_root
from .auto import auto_candidates, choose_policies, device_memory
from .executors.base import Executor, Parts
from .cpu.host_precision import HostPrecision, host_precision
from .memory import num_device_blocks
from .trace import NullTracer, Tracer

log = logging.getLogger("hybridllm")
HOST = torch.device("cpu")
_TIERS = {"device": (Tier.DEVICE,), "host": (Tier.HOST,), "both": (Tier.DEVICE, Tier.HOST)}


@dataclass
class Runtime:
    executors: dict[str, Executor]   # by policy name
    prefill_policy: str              # "auto": chosen per step by `planner`
    decode_policy: str
    kv: KVCacheManager
    model: LlamaModel
    device: torch.device
    reason: str = ""                 # why these policies (logged at start-up)
    neo_costs: NeoCostTables | None = None   # NEO's load-aware choice, when a hardware profile is given
    planner: StepPlanner | None = None       # auto with a profile: the per-step choice among `executors`

    def tier_of(self, policy: str) -> Tier:
        """The tier a policy's requests keep their KV on (NEO's first tier is where prefills start)."""
        return _TIERS[POLICIES[policy].kv_tier][0]

    @property
    def scheduler(self) -> str:
        """"plain" or "neo", as the policy table says."""
        return "plain" if self.planner is not None else POLICIES[self.prefill_policy].scheduler

    @property
    def policy(self) -> str:
        if self.prefill_policy == self.decode_policy:
            return self.prefill_policy
        return f"{self.prefill_policy}+{self.decode_policy}"


def compute_device(config: EngineConfig) -> torch.device:
    return torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def build_runtime(config: EngineConfig, model_path: Path, mc: ModelConfig, profile: HardwareProfile | None = None,
                  tracer: Tracer | None = None, precision: HostPrecision | None = None) -> Runtime:
    """profile: the hardware profile auto plans with and NEO places by (found by the caller), or None.
    precision: cpu_only's, resolved by the caller (None: resolved here)."""
    per_step = config.policy == "auto" and profile is not None
    shape = ModelShape.from_config(mc, config.dtype)
    kv_dtype = kv_precision(config.kv_cache_dtype, config.dtype)
    if per_step:
        cands, why = auto_candidates(config, mc)
        policies = useful_policies(StepPlanner(shape, profile, cands, kv_dtype, device_memory(config)),
                                   config.max_num_batched_tokens, config.max_num_seqs, max_model_len(config, mc))
        prefill = decode = "auto"
        reason = (f"per step on profile {profile.name} among {', '.join(policies)} (candidates {', '.join(cands)}: "
                  f"{why}; the others win no step of the engine's range)")
    elif config.policy == "auto":
        prefill, decode, reason = choose_policies(config, model_path, mc, None)
        policies = (prefill, decode)
    else:
        prefill = decode = config.policy
        policies = (prefill,)
        reason = "forced by the policy option"
    specs = [POLICIES[p] for p in dict.fromkeys(policies)]
    host_only = all(s.linear_on == "host" for s in specs)
    if host_only:
        if config.device not in (None, "cpu"):
            log.info("policy %s runs on the host; device=%s is not used", prefill, config.device)
        device = HOST
    else:
        device = compute_device(config)
    tracer = tracer or NullTracer()
    if isinstance(tracer, Tracer):
        tracer.attach(device)
    # Streamed decoder layers live in host memory; no other policy of the runtime may want them on the device.
    streamed = any(s.linear_on == "streamed" for s in specs)
    if streamed and any(s.linear_on == "device" for s in specs):
        raise ValueError(f"policies {', '.join(s.name for s in specs)}: gpu_offload keeps the decoder layers in "
                         "host memory, which a policy with device linear layers cannot run")
    model = LlamaModel.load(model_path, device, config.dtype, layer_device=HOST if streamed else None)
    # The device's small ops and decode attention: Triton kernels on CUDA (kernels/), torch elsewhere.
    model.ops = DeviceOps(resolve_kernels(config.device_kernels, device))
    reason += f"; device kernels {model.ops.impl}"
    tiers = {t for s in specs for t in _TIERS[s.kv_tier]}
    dev_tier = dev_attn = host_attn = None
    if Tier.DEVICE in tiers:
        dev_tier = _device_tier(config, mc, kv_dtype, model, device, streamed)
        dev_attn = DeviceAttention(dev_tier.key_cache, dev_tier.value_cache, mc.num_attention_heads,
                                   mc.num_key_value_heads, mc.head_dim, mc.sliding_window, model.ops)
    precision = precision or host_precision(config.weight_dtype, model_path, config.dynamic_quant_group_size)
    if Tier.HOST in tiers:
        host_attn = host_attention(config, mc, device, host_kv_precision(config, precision, host_only))
        reason += f"; host attention {host_attn.name} ({host_attn.reason})"
    kv = KVCacheManager({t: c for t, c in ((Tier.DEVICE, dev_tier), (Tier.HOST, host_attn and host_attn.tier))
                         if c is not None})
    parts = Parts(config, Path(model_path), mc, model, device, dev_tier, dev_attn, host_attn, tracer,
                  torch.get_num_threads(), precision, max_model_len(config, mc))
    executors = {s.name: _builder(s.executor)(parts) for s in specs}
    if host_only:
        # The OpenVINO graphs hold their own copy of the decoder layers: torch's would be a second one.
        model.release_layers()
    costs = planner = None
    if per_step:
        planner = StepPlanner(shape, profile, tuple(executors), kv_dtype, device_memory(config))
    elif specs[0].scheduler == "neo":
        costs = NeoCostTables(shape, profile, kv_dtype) if profile is not None else None
        reason += ("; load-aware host sub-batches from the profile" if costs else
                   "; no hardware profile, so every host decode joins each step")
    return Runtime(executors, prefill, decode, kv, model, device, reason, costs, planner)


def _builder(ref: str):
    """The executor builder a registry entry names ("module:function")."""
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def _device_tier(config: EngineConfig, mc: ModelConfig, precision: str, model: LlamaModel, device: torch.device,
                 offload: bool) -> KVCacheTier:
    if precision == "u8":
        raise ValueError("kv_cache_dtype 'u8' needs a host KV tier only (policy cpu_only or partition); "
                         "the device tier holds f32/f16/bf16")
    layout = KVLayout(mc.num_hidden_layers, mc.num_key_value_heads, mc.head_dim, config.block_size,
                      torch_dtype(precision))
    on_device = model.weight_bytes
    if offload:     # resident weights plus two staging slots of layer weights
        on_device = model.resident_bytes + 2 * (model.weight_bytes - model.resident_bytes) // mc.num_hidden_layers
    return KVCacheTier(Tier.DEVICE, layout, num_device_blocks(config, layout, device, on_device), device,
                       pad_block=True)


def max_model_len(config: EngineConfig, mc: ModelConfig) -> int:
    return int(min(mc.max_position_embeddings, config.max_model_len or mc.max_position_embeddings))


def host_threads(requested: int | None, device: torch.device) -> int | None:
    """OpenVINO threads for host attention: `requested` (config.host_threads) if set; beside a GPU, all
    cores but one, which stays free for the thread that launches the GPU's kernels; on a CPU-only machine all."""
    if requested is not None:
        return requested
    if device.type == "cuda":
        return max(1, (os.cpu_count() or 2) - 1)
    return None


def host_kv_precision(config: EngineConfig, precision: HostPrecision, host_only: bool) -> str:
    """The host tier's KV precision. kv_cache_dtype=auto follows the model's dtype, except on a host-only
    runtime computing in bf16, where f32 KV would cost a conversion in every attention call (a batch-1
    step took 1.7x longer than with bf16 KV)."""
    if config.kv_cache_dtype == "auto" and host_only and precision.compute == "bf16":
        return "bf16"
    return kv_precision(config.kv_cache_dtype, config.dtype)


def host_attention(config: EngineConfig, mc: ModelConfig, device: torch.device,
                   precision: str | None = None) -> HostAttention:
    """HostAttention over a fresh host tier of config.host_kv_bytes, in the chosen backend's layout
    (precision: the KV's; None: what kv_cache_dtype asks for).

    The backend (OpenVINO PagedAttention, else the public-opset graph, else torch; see
    attention/host.py) decides the block size: 32 tokens for the op on the CPU, so host
    blocks may be larger than device blocks; KVCacheManager copies between them token-wise.
    Pinned on CUDA, so device<->host copies of K/V and swaps run at full PCIe speed.
    """
    spec = HostAttentionSpec(
        num_layers=mc.num_hidden_layers, num_heads=mc.num_attention_heads, num_kv_heads=mc.num_key_value_heads,
        head_dim=mc.head_dim, kv_precision=precision or kv_precision(config.kv_cache_dtype, config.dtype),
        sliding_window=mc.sliding_window, block_size=config.block_size, cache_dir=ov_cache_dir(config),
        num_threads=host_threads(config.host_threads, device), path=config.host_attention)
    return HostAttention.create(spec, num_bytes=config.host_kv_bytes, pin_memory=device.type == "cuda")


def ov_cache_dir(config: EngineConfig) -> str:
    """Where compiled host attention graphs are cached: config.ov_cache_dir, else $HYBRIDLLM_CACHE/ov."""
    return config.ov_cache_dir or str(cache_root() / "ov")

