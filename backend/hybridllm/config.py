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
WEIGHT_DTYPES = ("auto", "float32", "bfloat16", "float16", "int8", "int4")   # used by runtime/cpu/host_precision.py
HOST_ATTENTION_PATHS = ("auto", "native", "ov_paged", "ov_sdpa", "torch")
HOST_ISAS = ("auto", "avx512", "avx2", "scalar")     # the native kernel's (attention/host_native.cpp)
DEVICE_KERNELS = ("auto", "triton", "torch")     # kernels/ops.py checks against this tuple
DEVICE_BLOCK_SIZE = 16      # the device tier's; the host tier takes the block size its attention backend reports

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
    return read


def opt(default=None, help: str = "", choices: tuple | None = None, env: str | None = None, kind=str):
    """A config field with what the CLI shows for it (cli_args.py makes the flags from these)."""
    meta = {"help": help, "choices": choices, "env": env}
    if env is not None:
        return field(default_factory=_env(env, kind, default), metadata={**meta, "default": default})
    return field(default=default, metadata={**meta, "default": default})


@dataclass(frozen=True)
class EngineConfig:
    model: str = opt("default", '"default" (SmolLM2-135M), an HF folder or a .gguf file')
    policy: str = opt("auto", "which executors run prefill and decode (docs/architecture.md)", POLICIES)
    dtype: str = opt("float32", "the torch layers' dtype", DTYPES)
    kv_cache_dtype: str = opt("auto", "KV precision (u8: host tier only; auto: the device tier in the dtype's, the host "
                                      "tier in u8 where the host attention path reads it)",
                              KV_CACHE_DTYPES)
    device_kv_bytes: int | None = opt(None, "device KV tier bytes (default: what fits beside the weights)")
    host_kv_bytes: int = opt(2 * GiB, "host KV tier bytes")
    device_memory_bytes: int | None = opt(None, "cap on all device memory, to emulate a smaller GPU")
    max_num_seqs: int = opt(64, "most sequences in one step")
    max_num_batched_tokens: int = opt(2048, "most tokens in one step (prefill chunks are cut to fit)")
    max_model_len: int | None = opt(None, "longest context (default: the model's max_position_embeddings)")
    hardware_profile: str | None = opt(None, "profile JSON, reference name, or 'none' (auto: this machine's cached "
                                             "profile, measured on first use; neo: load-aware placement)")
    device: str | None = opt(None, "cpu or cuda[:N] (default: cuda if present, else cpu)")
    seed: int = opt(0, "seeds requests that give no seed of their own")
    enable_prefix_caching: bool = opt(True, "reuse the KV of cached prompt prefixes (full blocks, per tier; a request's "
                                            "cache_salt keeps tenants apart)")
    # Device data plane.
    enforce_eager: bool | None = opt(None, "no CUDA graphs for decode steps (default: graphs on CUDA, eager on the "
                                           "CPU; --no-enforce-eager runs the graphs' padded path on the CPU too)")
    device_kernels: str = opt("auto", "the decode path's attention and fused ops (auto: Triton on CUDA, else torch)",
                              DEVICE_KERNELS)
    # Host (CPU) data plane. The torch layers (GPU policies) follow `dtype`.
    weight_dtype: str = opt("auto", "the CPU data plane's weights (auto: a GGUF's own codes, else bf16 where the CPU "
                                    "has it, else f32)", WEIGHT_DTYPES, env="HYBRIDLLM_WEIGHT_DTYPE")
    dynamic_quant_group_size: int | None = opt(None, "int8 activations in front of integer weights per this many "
                                                     "columns (0: f32; default 32 for int8, 0 for int4)")
    cpu_fused: bool = opt(True, "cpu_only as one whole-model OpenVINO graph", env="HYBRIDLLM_CPU_FUSED", kind=bool)
    host_attention: str = opt("auto", "host attention path", HOST_ATTENTION_PATHS, env="HYBRIDLLM_HOST_ATTENTION")
    host_isa: str = opt("auto", "the native host attention kernel's instruction set (auto: the best this CPU has; "
                                "avx2 / scalar force a slower one)", HOST_ISAS)
    host_threads: int | None = opt(None, "OpenVINO threads for host attention (default: all cores; all but one "
                                         "beside a GPU)", env="HYBRIDLLM_HOST_THREADS", kind=int)
    cpu_torch_threads: int = opt(1, "torch threads under cpu_only", env="HYBRIDLLM_CPU_TORCH_THREADS", kind=int)
    ov_cache_dir: str | None = opt(None, "where compiled OpenVINO graphs are cached (default: attention graphs in "
                                         "$HYBRIDLLM_CACHE/ov)", env="HYBRIDLLM_OV_CACHE_DIR")

    def __post_init__(self):
        for f in fields(self):
            allowed = f.metadata.get("choices")
            if allowed and getattr(self, f.name) not in allowed:
                raise ValueError(f"{f.name}: {getattr(self, f.name)!r} is not one of {', '.join(allowed)}")
        for name in ("max_num_seqs", "max_num_batched_tokens", "cpu_torch_threads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
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
        if not isinstance(self.enable_prefix_caching, bool):
            raise ValueError(f"enable_prefix_caching must be True or False, got {self.enable_prefix_caching!r}")
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
