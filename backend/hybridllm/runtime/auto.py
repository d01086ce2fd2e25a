"""policy="auto": which executors to build, and the fixed rule when there is no hardware profile."""
from __future__ import annotations

import torch

from ..config import EngineConfig
from ..models.config import ModelConfig
from ..policy import ModelShape
from .memory import CPU_DEFAULT_DEVICE_KV_BYTES


def device_memory(config: EngineConfig) -> int:
    if config.device_memory_bytes is not None:
        return config.device_memory_bytes
    if torch.cuda.is_available() and (config.device or "cuda").startswith("cuda"):
        return torch.cuda.mem_get_info()[1]
    return CPU_DEFAULT_DEVICE_KV_BYTES * 64   # a CPU "device" is host memory: no real cap


def weights_fit(config: EngineConfig, mc: ModelConfig) -> bool:
    """Whether the weights fit in device memory with a tenth to spare (else gpu_offload streams them)."""
    return ModelShape.from_config(mc, config.dtype).weight_bytes < 0.9 * device_memory(config)


def fixed_rule(config: EngineConfig, mc: ModelConfig) -> tuple[str, str]:
    """(policy, why) for auto without a hardware profile: gpu_only, or gpu_offload when the weights do not fit."""
    fits = weights_fit(config, mc)
    p = "gpu_only" if fits else "gpu_offload"
    return p, ("no hardware profile (run `hybridllm profile`, then pass hardware_profile=...): "
               f"{p}, since the weights {'fit' if fits else 'do not fit'} in device memory")


def auto_candidates(config: EngineConfig, mc: ModelConfig) -> tuple[tuple[str, ...], str]:
    """The policies auto builds executors for, to choose among per step: one per KV tier's way of running
    linear layers. gpu_only when the weights fit in device memory, else gpu_offload (they cannot share
    the model's placement, and offload only pays when gpu_only cannot run); cpu_only and partition
    over the host tier (partition only where the weights fit)."""
    if weights_fit(config, mc):
        return ("gpu_only", "cpu_only", "partition"), ("gpu_only, since the weights fit in device memory; "
                                                        "cpu_only and partition over the host tier")
    # partition needs every layer on the device too.
    return ("gpu_offload", "cpu_only"), ("gpu_offload, since the weights do not fit in device memory; "
                                         "cpu_only over the host tier")
