"""EngineConfig: every engine option, checked once.

A few options may take their default from an environment variable (HYBRIDLLM_WEIGHT_DTYPE,
HYBRIDLLM_CPU_FUSED, HYBRIDLLM_HOST_ATTENTION, HYBRIDLLM_HOST_THREADS, HYBRIDLLM_CPU_TORCH_THREADS,
HYBRIDLLM_OV_CACHE_DIR), read when the config is made; the field is what counts.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

from .dtypes import KV_PRECISIONS, MODEL_DTYPES
from .policy.registry import POLICY_NAMES

POLICIES = ("auto",) + POLICY_NAMES
DTYPES = MODEL_DTYPES
KV_CACHE_DTYPES = ("auto",) + KV_PRECISIONS
WEIGHT_DTYPES = ("auto", "float32", "bfloat16", "float16", "int8", "int4")   # see runtime/host_precision.py
HOST_ATTENTION_PATHS = ("auto", "ov_paged", "ov_sdpa", "torch")
DEVICE_KERNELS = ("auto", "triton", "torch")     # see kernels/ops.py
DEVICE_BLOCK_SIZE = 16      # the device tier's; host tiers take the block size their attention backend reports

GiB = 1 << 30


def _env(name: str, kind=str, default=None):
    """A default_factory reading an environment variable; a malformed value names the variable."""
    def read():
        text = os.environ.get(name)
        if text is None or text == "":
            return default
        if kind is bool:
            if text.lower() not in ("0", "1", "true", "false"):
                raise ValueError(f"{name}: {text!r} must be 0 or 1")
            return text.lower() in ("1", "true")
        if kind is int:
            try:
                return int(text)
            except ValueError:
                raise ValueError(f"{name}: {text!r} is not an integer") from None
        return text
    return field(default_factory=read)


@dataclass(frozen=True)
class EngineConfig:
    model: str = "default"
    policy: str = "auto"
    dtype: str = "float32"
    kv_cache_dtype: str = "auto"
    device_kv_bytes: int | None = None      # None: whatever fits (see runtime.memory)
    host_kv_bytes: int = 2 * GiB
    device_memory_bytes: int | None = None  # cap on all device memory, to emulate a smaller GPU
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    block_size: int = DEVICE_BLOCK_SIZE     # the device tier's block size (host tiers: see DEVICE_BLOCK_SIZE)
    max_model_len: int | None = None        # None: the model's max_position_embeddings
    hardware_profile: str | None = None     # JSON path, reference name, or "none"; auto: None = cached/measured
    device: str | None = None               # None: cuda if present, else cpu
    seed: int = 0                           # seeds requests that give no seed of their own
    # Device data plane. enforce_eager None: decode steps replay CUDA graphs on CUDA and run eagerly on the CPU;
    # False: the graphs' bucketed, padded static-buffer path on any device (eager on the CPU); True: no graphs.
    enforce_eager: bool | None = None
    device_kernels: str = "auto"            # auto | triton | torch: the decode path's attention and fused ops
    # Host (CPU) data plane.
    # The CPU data plane's weights (cpu_only's OpenVINO graphs): auto keeps a GGUF's codes, else bf16 where the
    # CPU has it, else f32. The torch layers (GPU policies) follow `dtype`.
    weight_dtype: str = _env("HYBRIDLLM_WEIGHT_DTYPE", default="auto")
    # int8 activations in front of integer weights, per this many columns; 0: f32; None: 32 for int8, 0 for int4
    dynamic_quant_group_size: int | None = None
    cpu_fused: bool = _env("HYBRIDLLM_CPU_FUSED", bool, True)   # cpu_only: the whole model as one OpenVINO graph
    host_attention: str = _env("HYBRIDLLM_HOST_ATTENTION", default="auto")  # auto | ov_paged | ov_sdpa | torch
    host_threads: int | None = _env("HYBRIDLLM_HOST_THREADS", int)  # None: all cores; all but one beside a GPU
    cpu_torch_threads: int = _env("HYBRIDLLM_CPU_TORCH_THREADS", int, 1)  # torch threads under cpu_only
    ov_cache_dir: str | None = _env("HYBRIDLLM_OV_CACHE_DIR")  # None: attention graphs in $HYBRIDLLM_CACHE/ov

    def __post_init__(self):
        for name, allowed in (("policy", POLICIES), ("dtype", DTYPES), ("kv_cache_dtype", KV_CACHE_DTYPES),
                              ("weight_dtype", WEIGHT_DTYPES), ("host_attention", HOST_ATTENTION_PATHS),
                              ("device_kernels", DEVICE_KERNELS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: {getattr(self, name)!r} is not one of {', '.join(allowed)}")
        for name in ("max_num_seqs", "max_num_batched_tokens", "block_size", "cpu_torch_threads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.block_size != DEVICE_BLOCK_SIZE:
            raise ValueError(f"block_size must be {DEVICE_BLOCK_SIZE}, got {self.block_size}")
        for name in ("device_kv_bytes", "device_memory_bytes", "max_model_len", "host_threads"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be None or an integer >= 1, got {value!r}")
        dq = self.dynamic_quant_group_size
        if dq is not None and (not isinstance(dq, int) or isinstance(dq, bool) or dq < 0):
            raise ValueError(f"dynamic_quant_group_size must be None or an integer >= 0, got {dq!r}")
        if not isinstance(self.host_kv_bytes, int) or isinstance(self.host_kv_bytes, bool) or self.host_kv_bytes < 0:
            raise ValueError(f"host_kv_bytes must be an integer >= 0, got {self.host_kv_bytes!r}")
        if self.enforce_eager is not None and not isinstance(self.enforce_eager, bool):
            raise ValueError(f"enforce_eager must be None, True or False, got {self.enforce_eager!r}")
        if not isinstance(self.cpu_fused, bool):
            raise ValueError(f"cpu_fused must be True or False, got {self.cpu_fused!r}")
        if self.device is not None and self.device.split(":")[0] not in ("cpu", "cuda"):
            raise ValueError(f"device: {self.device!r} must be 'cpu' or 'cuda[:N]'")
        if self.ov_cache_dir is not None and not isinstance(self.ov_cache_dir, str):
            raise ValueError(f"ov_cache_dir must be None or a path, got {self.ov_cache_dir!r}")

    @classmethod
    def from_kwargs(cls, model: str, policy: str, options: dict) -> "EngineConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown engine option(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(model=model, policy=policy, **options)
