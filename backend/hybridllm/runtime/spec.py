"""RuntimeSpec: the engine's configuration resolved once, at start-up, into what the runtime builds.

EngineConfig says what the user asked for; RuntimeSpec says what runs: the compute device, the
policies that get executors (auto's candidates pruned by the planner, or the fixed rule), the KV
precision of each tier, one model-length limit, the block size, threads and cache folders.
Executors read what they need from it and never look at EngineConfig.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import DEVICE_BLOCK_SIZE, EngineConfig
from ..dtypes import kv_precision
from ..models.config import ModelConfig
from ..policy import HardwareProfile, ModelShape
from ..policy.registry import POLICIES
from ..policy.step_planner import StepPlanner, useful_policies
from ..utils import cache_root
from .auto import auto_candidates, device_memory, fixed_rule
from .cpu.host_precision import HostPrecision

HOST = torch.device("cpu")


@dataclass(frozen=True)
class RuntimeSpec:
    model_path: Path
    model: ModelConfig
    dtype: str                          # the torch layers' dtype
    device: torch.device                # the compute device (the host when every policy runs there)
    policies: tuple[str, ...]           # the policies that get an executor
    prefill_policy: str                 # "auto": chosen per step by the StepPlanner among `policies`
    decode_policy: str
    reason: str                         # why these policies (logged at start-up)
    per_step: bool                      # auto with a profile: the StepPlanner chooses each step
    device_kv: str                      # the device tier's KV precision (f32 | f16 | bf16)
    host_kv: str                        # the host tier's (f32 | f16 | bf16 | u8)
    host_kv_reason: str                 # why (logged at start-up)
    host_precision: HostPrecision       # the OpenVINO linear graphs' weights and arithmetic (cpu_only)
    max_model_len: int                  # the model's and the config's limit; KV capacity may lower it further
    block_size: int                     # the device tier's; the host tier takes its backend's
    device_kv_bytes: int | None
    host_kv_bytes: int
    device_memory_bytes: int | None
    planner_memory_bytes: int           # the device memory the planner prices against
    max_num_seqs: int
    max_num_batched_tokens: int
    host_threads: int | None            # OpenVINO's threads for host attention (None: all cores)
    torch_threads: int                  # torch's threads at start-up (torch linear layers on the CPU)
    cpu_torch_threads: int              # torch's threads under cpu_only
    host_attention: str                 # auto | native | ov_paged | ov_sdpa | torch
    host_isa: str                       # the native kernel's: auto | avx512 | avx2 | scalar
    device_kernels: str
    enforce_eager: bool | None
    cpu_fused: bool
    ov_cache_dir: str | None            # cpu_only's compiled graphs (they hold a copy of the weights); None: off
    attention_cache_dir: str            # compiled host attention graphs (ov_cache_dir, else $HYBRIDLLM_CACHE/ov)
    streamed: bool                      # gpu_offload: decoder layers live in host memory
    host_only: bool                     # every policy's linear layers run on the host

    @property
    def kv_dtype(self) -> str:
        """The precision the planner prices KV reads at."""
        return self.device_kv


def resolve(config: EngineConfig, model_path: Path, mc: ModelConfig, profile: HardwareProfile | None,
            precision: HostPrecision) -> RuntimeSpec:
    per_step = config.policy == "auto" and profile is not None
    # u8 is a host tier format: the device tier keeps the model's dtype beside it.
    kv = kv_precision("auto" if config.kv_cache_dtype == "u8" else config.kv_cache_dtype, config.dtype)
    limit = int(min(mc.max_position_embeddings, config.max_model_len or math.inf))
    if per_step:
        cands, why = auto_candidates(config, mc)
        planner = StepPlanner(ModelShape.from_config(mc, config.dtype), profile, cands, kv, device_memory(config),
                              host_kv_precision(config, precision, False))
        policies = useful_policies(planner, config.max_num_batched_tokens, config.max_num_seqs, limit)
        prefill = decode = "auto"
        reason = (f"per step on profile {profile.name} among {', '.join(policies)} (candidates {', '.join(cands)}: "
                  f"{why}; the others win no step of the engine's range)")
    elif config.policy == "auto":
        prefill, reason = fixed_rule(config, mc)
        decode, policies = prefill, (prefill,)
    else:
        prefill = decode = config.policy
        policies = (prefill,)
        reason = "forced by the policy option"
    specs = [POLICIES[p] for p in policies]
    host_only = all(s.linear_on == "host" for s in specs)
    streamed = any(s.linear_on == "streamed" for s in specs)
    if streamed and any(s.linear_on == "device" for s in specs):
        raise ValueError(f"policies {', '.join(policies)}: gpu_offload keeps the decoder layers in "
                         "host memory, which a policy with device linear layers cannot run")
    device = HOST if host_only else compute_device(config)
    host_kv = host_kv_precision(config, precision, host_only)
    return RuntimeSpec(
        model_path=Path(model_path), model=mc, dtype=config.dtype, device=device, policies=tuple(policies),
        prefill_policy=prefill, decode_policy=decode, reason=reason, per_step=per_step, device_kv=kv,
        host_kv=host_kv, host_kv_reason=host_kv_reason(config, host_kv), host_precision=precision, max_model_len=limit,
        block_size=DEVICE_BLOCK_SIZE, device_kv_bytes=config.device_kv_bytes, host_kv_bytes=config.host_kv_bytes,
        device_memory_bytes=config.device_memory_bytes, planner_memory_bytes=device_memory(config),
        max_num_seqs=config.max_num_seqs, max_num_batched_tokens=config.max_num_batched_tokens,
        host_threads=host_threads(config.host_threads, device), torch_threads=torch.get_num_threads(),
        cpu_torch_threads=config.cpu_torch_threads, host_attention=config.host_attention, host_isa=config.host_isa,
        device_kernels=config.device_kernels, enforce_eager=config.enforce_eager, cpu_fused=config.cpu_fused,
        ov_cache_dir=config.ov_cache_dir, attention_cache_dir=config.ov_cache_dir or str(cache_root() / "ov"),
        streamed=streamed, host_only=host_only)


def compute_device(config: EngineConfig) -> torch.device:
    return torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def host_threads(requested: int | None, device: torch.device) -> int | None:
    """OpenVINO threads for host attention: `requested` (config.host_threads) if set; beside a GPU, all
    cores but one, which stays free for the thread that launches the GPU's kernels; on a CPU-only machine all."""
    if requested is not None:
        return requested
    if device.type == "cuda":
        return max(1, (os.cpu_count() or 2) - 1)
    return None


# The host tier's format under kv_cache_dtype=auto, where a path that reads it serves (native, ov_paged):
# the fastest format that meets issue 22's accuracy bar on the default model (tests/system/test_host_kv.py;
# benchmarks/RESULTS.md, "issue 22"). f16 keeps f32 KV's perplexity within 1% and its first 16 greedy
# tokens on 8 of 8 prompts at half the bytes; u8 is faster still (2x f32 for SmolLM2's heads) but keeps
# them on only 6 of 8 (OpenVINO's own u8 too), so it stays an option.
HOST_KV_AUTO = "f16"


def host_kv_precision(config: EngineConfig, precision: HostPrecision, host_only: bool) -> str:
    """The host tier's KV precision. kv_cache_dtype=auto: HOST_KV_AUTO (f16), except on a host-only runtime
    computing in bf16, which gets bf16 (any other format costs a conversion in every attention call: a
    batch-1 step took 1.7x longer with f32 KV). Otherwise the option's; u8 is a host-tier format."""
    if config.kv_cache_dtype == "auto":
        return "bf16" if host_only and precision.compute == "bf16" else HOST_KV_AUTO
    return config.kv_cache_dtype if config.kv_cache_dtype == "u8" else kv_precision(config.kv_cache_dtype, config.dtype)


def host_kv_reason(config: EngineConfig, host_kv: str) -> str:
    """Why the host tier has this format (the start-up log)."""
    if config.kv_cache_dtype != "auto":
        return f"kv_cache_dtype={config.kv_cache_dtype}"
    if host_kv == HOST_KV_AUTO:
        return (f"kv_cache_dtype=auto: {host_kv}, the fastest host format within issue 22's accuracy bar "
                "(perplexity within 1% of f32 KV, greedy tokens on 7 of 8 prompts; u8 keeps 6 of 8)")
    return f"kv_cache_dtype=auto: {host_kv}, the CPU plane computes in {host_kv}"
