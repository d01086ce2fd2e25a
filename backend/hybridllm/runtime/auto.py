"""policy="auto": ask the planner, at start-up, which policy each phase should use."""
from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from ..config import EngineConfig
from ..models.config import ModelConfig
from ..policy import BatchShape, HardwareProfile, ModelShape, Planner
from ..policy.reference import PROFILE_DIR, reference_profile
from .memory import CPU_DEFAULT_DEVICE_KV_BYTES

log = logging.getLogger("hybridllm")
# Runnable together on one loaded model: cpu_only has its own runtime (OpenVINO linear layers).
AUTO_CANDIDATES = ("gpu_only", "gpu_offload", "partition")


def load_profile(spec: str | None) -> HardwareProfile | None:
    """A profile JSON path, a reference profile name, or None."""
    if spec is None:
        return None
    if Path(spec).is_file():
        return HardwareProfile.load(spec)
    if (PROFILE_DIR / f"{spec}.json").is_file():
        return reference_profile(spec)
    raise FileNotFoundError(f"hardware_profile: {spec!r} is neither a profile JSON file nor a reference profile name")


def representative_batch(config: EngineConfig, mc: ModelConfig) -> BatchShape:
    """The workload auto plans for: a full batch of mid-length requests."""
    max_len = min(mc.max_position_embeddings, config.max_model_len or math.inf)
    input_len = int(max(1, min(512, max_len // 2, config.max_num_batched_tokens)))
    output_len = int(max(1, min(128, max_len - input_len)))
    batch = max(1, min(config.max_num_seqs, config.max_num_batched_tokens // input_len))
    kv = config.kv_cache_dtype if config.kv_cache_dtype != "auto" else {"float32": "f32", "bfloat16": "bf16",
                                                                        "float16": "f16"}[config.dtype]
    return BatchShape(batch, input_len, output_len, kv)


def device_memory(config: EngineConfig) -> int:
    if config.device_memory_bytes is not None:
        return config.device_memory_bytes
    if torch.cuda.is_available() and (config.device or "cuda").startswith("cuda"):
        return torch.cuda.mem_get_info()[1]
    return CPU_DEFAULT_DEVICE_KV_BYTES * 64   # a CPU "device" is host memory: no real cap


def choose_policies(config: EngineConfig, model_path: Path, mc: ModelConfig) -> tuple[str, str, str]:
    shape = ModelShape.from_config(mc, config.dtype, name=Path(model_path).name)
    profile = load_profile(config.hardware_profile)
    if profile is None:
        fits = shape.weight_bytes < 0.9 * device_memory(config)
        p = "gpu_only" if fits else "gpu_offload"
        return p, p, ("no hardware profile (run `hybridllm profile`, then pass hardware_profile=...): "
                      f"{p}, since the weights {'fit' if fits else 'do not fit'} in device memory")
    batch = representative_batch(config, mc)
    plan = Planner(shape, profile, AUTO_CANDIDATES + ("cpu_only",), device_memory_bytes=device_memory(config)).plan(batch)
    note = ""
    if (plan.prefill.policy == "cpu_only") != (plan.decode.policy == "cpu_only"):
        # cpu_only runs the whole model in OpenVINO graphs on the host: it cannot hand a phase over.
        note = " (cpu_only was best for one phase only, and it cannot share a runtime; re-planned without it)"
        plan = Planner(shape, profile, AUTO_CANDIDATES, device_memory_bytes=device_memory(config)).plan(batch)
    reason = (f"planner on profile {profile.name} for batch={batch.batch} input={batch.input_len} "
              f"output={batch.output_len}: prefill {plan.prefill.policy} ({plan.prefill.seconds:.3f} s), "
              f"decode {plan.decode.policy} ({plan.decode.seconds:.3f} s){note}")
    log.info(reason)
    return plan.prefill.policy, plan.decode.policy, reason
