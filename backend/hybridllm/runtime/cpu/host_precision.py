"""The CPU data plane's precision: which weights the OpenVINO linear graphs hold and what they compute in.

`weight_dtype` (EngineConfig) asks; `resolve` answers from the model's source and the CPU's
capabilities, once, at start-up:
- auto: a GGUF's kept codes where OpenVINO can hold them (Q4_0/Q4_1 -> int4, Q8_0 -> int8), else
  bfloat16 on a CPU with native bf16 (AVX512_BF16 or AMX), else float32;
- float32: exact f32 weights and arithmetic;
- bfloat16 / float16: 16-bit weights, computed in that type where the CPU has it (the kernels
  accumulate in f32), else decompressed to f32 inside the FullyConnected kernel;
- int8 / int4: integer codes with per-channel (int8) or per-32-column (int4) scales. A GGUF's own
  codes are used where they have these bits (int4 also keeps a Q8_0 head: 4-bit heads lost most
  greedy agreement), so a Q4_1 file stays exactly its weights; other matrices are rounded here.

dynamic_quant_group_size: OpenVINO's DYNAMIC_QUANTIZATION_GROUP_SIZE, the group over which activations
in front of integer weights are quantized to int8 on the fly, so the GEMMs run in int8 (VNNI), as
OpenVINO GenAI and llama.cpp do. None: 32 for int8 (its weights are rounded anyway), 0 (off: f32
activations, exact) for int4, whose GGUF codes then reproduce the f32 model's greedy tokens
(8 of 8 prompts, against 4 of 8 with int8 activations; benchmarks/RESULTS.md has speed and perplexity).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from ...config import WEIGHT_DTYPES

DYNAMIC_QUANT_GROUP = 32


@dataclass(frozen=True)
class HostPrecision:
    weights: str            # float32 | bfloat16 | float16 | int8 | int4
    compute: str            # OpenVINO INFERENCE_PRECISION_HINT: f32 | bf16 | f16
    dynamic_quant: int      # DYNAMIC_QUANTIZATION_GROUP_SIZE; 0: activations stay float
    source: str | None      # the GGUF types whose codes are used ("Q4_1"), None: none
    reason: str

    def __post_init__(self):
        if self.weights not in WEIGHT_DTYPES[1:]:
            raise ValueError(f"weight_dtype: {self.weights!r} is not one of {', '.join(WEIGHT_DTYPES)}")
        if self.compute not in ("f32", "bf16", "f16"):
            raise ValueError(f"compute: {self.compute!r} is not one of f32, bf16, f16")

    @property
    def bits(self) -> int | None:
        return {"int8": 8, "int4": 4}.get(self.weights)

    @property
    def label(self) -> str:
        """What the profile fingerprint and logs name: weights[+source codes]/compute[, int8 activations]."""
        act = f", int8 activations per {self.dynamic_quant}" if self.dynamic_quant else ""
        return f"{self.weights}{'+' + self.source if self.source else ''}/{self.compute}{act}"


def resolve(requested: str, source_types: dict[str, str] | None, caps: frozenset[str],
            dynamic_quant: int | None = None) -> HostPrecision:
    """requested: a WEIGHT_DTYPES value; source_types: {tensor: GGUF type} of the kept codes (None:
    a float checkpoint); caps: the CPU plugin's OPTIMIZATION_CAPABILITIES; dynamic_quant: see above."""
    if requested not in WEIGHT_DTYPES:
        raise ValueError(f"weight_dtype: {requested!r} is not one of {', '.join(WEIGHT_DTYPES)}")
    kinds = sorted(set((source_types or {}).values()))
    why, auto = "", requested == "auto"
    if auto:
        if kinds:
            requested = "int4" if any(k.startswith("Q4") for k in kinds) else "int8"
            why = f"auto: the GGUF's {', '.join(kinds)} codes kept as OpenVINO {requested} weights"
        elif "BF16" in caps:
            requested, why = "bfloat16", "auto: this CPU computes bf16 natively (AVX512_BF16 or AMX)"
        else:
            requested, why = "float32", "auto: this CPU has no native bf16, so f32"
    else:
        why = f"weight_dtype={requested}"
    bits = {"int8": 8, "int4": 4}.get(requested)
    # int4 (and auto) keep every kept code at its own bits (a Q8_0 head stays 8-bit); int8 uses the
    # 8-bit codes and rounds the rest, so int8 means 8-bit weights throughout.
    used = [k for k in kinds if bits and (bits == 4 or not k.startswith("Q4"))]
    source = "+".join(used) or None
    if requested == "bfloat16":
        compute = "bf16" if "BF16" in caps else "f32"
    elif requested == "float16":
        compute = "f16" if "FP16" in caps else "f32"
    else:
        compute = "f32"
    if compute == "f32" and requested in ("bfloat16", "float16"):
        why += f" (this CPU has no native {requested}: weights decompressed to f32 in the kernel)"
    if dynamic_quant is None:
        dynamic = DYNAMIC_QUANT_GROUP if bits == 8 else 0
    elif not isinstance(dynamic_quant, int) or isinstance(dynamic_quant, bool) or dynamic_quant < 0:
        raise ValueError(f"dynamic_quant_group_size must be an integer >= 0, got {dynamic_quant!r}")
    else:
        dynamic = dynamic_quant if bits else 0
    if bits:
        why += (f"; GGUF codes used for {source}" if source else "") + \
               (f"; activations quantized to int8 per {dynamic} on the fly" if dynamic else "; f32 activations")
    return HostPrecision(requested, compute, dynamic, source, why)


EXACT = HostPrecision("float32", "f32", 0, None, "exact f32")


@functools.lru_cache(maxsize=1)
def cpu_capabilities() -> frozenset[str]:
    from ...ov_common import core
    return frozenset(core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def host_precision(weight_dtype: str, model_path, dynamic_quant: int | None = None) -> HostPrecision:
    """resolve() for a model folder (None: a float checkpoint) on this CPU."""
    from ...models.quantized import QuantizedCheckpoint
    ckpt = QuantizedCheckpoint.open(model_path) if model_path is not None else None
    return resolve(weight_dtype, ckpt.types if ckpt else None, cpu_capabilities(), dynamic_quant)
