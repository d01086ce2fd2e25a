"""EngineConfig: every engine option, checked once."""
from __future__ import annotations

from dataclasses import dataclass, fields

POLICIES = ("auto", "gpu_only", "cpu_only", "gpu_offload", "partition")
DTYPES = ("float32", "bfloat16", "float16")
KV_CACHE_DTYPES = ("auto", "f32", "f16", "bf16", "u8")

GiB = 1 << 30


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
    block_size: int = 16
    max_model_len: int | None = None        # None: the model's max_position_embeddings
    hardware_profile: str | None = None
    device: str | None = None               # None: cuda if present, else cpu
    seed: int = 0                           # seeds requests that give no seed of their own

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ValueError(f"policy: {self.policy!r} is not one of {', '.join(POLICIES)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype: {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype: {self.kv_cache_dtype!r} is not one of {', '.join(KV_CACHE_DTYPES)}")
        for name in ("max_num_seqs", "max_num_batched_tokens", "block_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.block_size != 16:
            # Device and torch/ov_sdpa host tiers use 16-token blocks (cpu_only's OpenVINO tier uses the op's 32).
            raise ValueError(f"block_size must be 16, got {self.block_size}")
        for name in ("device_kv_bytes", "device_memory_bytes", "max_model_len"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be None or an integer >= 1, got {value!r}")
        if not isinstance(self.host_kv_bytes, int) or self.host_kv_bytes < 0:
            raise ValueError(f"host_kv_bytes must be an integer >= 0, got {self.host_kv_bytes!r}")
        if self.device is not None and self.device.split(":")[0] not in ("cpu", "cuda"):
            raise ValueError(f"device: {self.device!r} must be 'cpu' or 'cuda[:N]'")

    @classmethod
    def from_kwargs(cls, model: str, policy: str, options: dict) -> "EngineConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown engine option(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(model=model, policy=policy, **options)
