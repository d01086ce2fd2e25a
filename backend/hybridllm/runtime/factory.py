"""Builds the runtime for a policy: the model on its device, the KV tiers, and the executor.

Decided once at start-up. Every executor has `execute(seqs: list[StepInput]) -> logits`.
"""
from __future__ import annotations

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


class Executor(Protocol):
    def execute(self, seqs: list[StepInput]) -> torch.Tensor: ...


@dataclass
class Runtime:
    executor: Executor
    kv: KVCacheManager
    tier: Tier                 # where new requests' KV lives
    policy: str                # the policy that runs, as reported in stats and metrics
    model: LlamaModel
    device: torch.device


def compute_device(config: EngineConfig) -> torch.device:
    return torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def build_runtime(config: EngineConfig, model_path: Path, mc: ModelConfig) -> Runtime:
    policy = config.policy
    if policy in ("auto", "gpu_only"):
        # "auto" runs everything on the compute device until the planner lands.
        return _build_gpu_only(config, model_path, mc)
    if policy == "cpu_only":
        from .cpu_only import build_cpu_only
        return build_cpu_only(config, model_path, mc)
    raise NotImplementedError(f"policy {policy!r} is not available yet")


def kv_layout(config: EngineConfig, mc: ModelConfig, model_dtype: torch.dtype) -> KVLayout:
    if config.kv_cache_dtype == "u8":
        raise ValueError("kv_cache_dtype 'u8' needs the OpenVINO host KV tier (policy cpu_only or partition)")
    dtype = model_dtype if config.kv_cache_dtype == "auto" else KV_DTYPES[config.kv_cache_dtype]
    return KVLayout(mc.num_hidden_layers, mc.num_key_value_heads, mc.head_dim, config.block_size, dtype)


def _build_gpu_only(config: EngineConfig, model_path: Path, mc: ModelConfig) -> Runtime:
    device = compute_device(config)
    model = LlamaModel.load(model_path, device, config.dtype)
    layout = kv_layout(config, mc, model.dtype)
    tier = KVCacheTier(Tier.DEVICE, layout, num_device_blocks(config, layout, device, model.weight_bytes), device)
    kv = KVCacheManager({Tier.DEVICE: tier}, config.block_size)
    attn = DeviceAttention(tier.key_cache, tier.value_cache, mc.num_attention_heads, mc.num_key_value_heads,
                           mc.head_dim, mc.sliding_window)
    return Runtime(ModelRunner(model, attn, config.block_size), kv, Tier.DEVICE, "gpu_only", model, device)
