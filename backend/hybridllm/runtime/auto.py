"""policy="auto": ask the planner, at start-up, which policy each phase should use."""
from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from ..config import EngineConfig
from ..dtypes import kv_precision
from ..models.config import ModelConfig
from ..policy import PLANNABLE, BatchShape, HardwareProfile, ModelShape, Planner
from .memory import CPU_DEFAULT_DEVICE_KV_BYTES

log = logging.getLogger("hybridllm")


def representative_batch(config: EngineConfig, mc: ModelConfig) -> BatchShape:
    """The workload auto plans for: a full batch of mid-length requests."""
    max_len = min(mc.max_position_embeddings, config.max_model_len or math.inf)
    input_len = int(max(1, min(512, max_len // 2, config.max_num_batched_tokens)))
    output_len = int(max(1, min(128, max_len - input_len)))
    batch = max(1, min(config.max_num_seqs, config.max_num_batched_tokens // input_len))
    return BatchShape(batch, input_len, output_len, kv_precision(config.kv_cache_dtype, config.dtype))


def device_memory(config: EngineConfig) -> int:
    if config.device_memory_bytes is not None:
        return config.device_memory_bytes
    if torch.cuda.is_available() and (config.device or "cuda").startswith("cuda"):
        return torch.cuda.mem_get_info()[1]
    return CPU_DEFAULT_DEVICE_KV_BYTES * 64   # a CPU "device" is host memory: no real cap


def weights_fit(config: EngineConfig, mc: ModelConfig) -> bool:
    """Whether the weights fit in device memory with a tenth to spare (else gpu_offload streams them)."""
    return ModelShape.from_config(mc, config.dtype).weight_bytes < 0.9 * device_memory(config)


def choose_policies(config: EngineConfig, model_path: Path, mc: ModelConfig,
                    profile: HardwareProfile | None) -> tuple[str, str, str]:
    """(prefill policy, decode policy, why) for policy="auto"."""
    shape = ModelShape.from_config(mc, config.dtype, name=Path(model_path).name)
    if profile is None:
        fits = weights_fit(config, mc)
        p = "gpu_only" if fits else "gpu_offload"
        return p, p, ("no hardware profile (run `hybridllm profile`, then pass hardware_profile=...): "
                      f"{p}, since the weights {'fit' if fits else 'do not fit'} in device memory")
    batch = representative_batch(config, mc)
    plan = Planner(shape, profile, PLANNABLE, device_memory_bytes=device_memory(config)).plan(batch)
    reason = (f"planner on profile {profile.name} for batch={batch.batch} input={batch.input_len} "
              f"output={batch.output_len}: prefill {plan.prefill.policy} ({plan.prefill.seconds:.3f} s), "
              f"decode {plan.decode.policy} ({plan.decode.seconds:.3f} s)")
    log.info(reason)
    return plan.prefill.policy, plan.decode.policy, reason


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
