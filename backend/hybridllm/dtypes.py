"""The dtype names the project uses, and their sizes: written once, torch-free so config and policy stay light.

Model dtypes are torch's names ("float32"); KV precisions are OpenVINO's ("f32", "u8").
"""
from __future__ import annotations

MODEL_DTYPES = ("float32", "bfloat16", "float16")
KV_PRECISIONS = ("f32", "f16", "bf16", "u8")
# kv_cache_dtype="auto" keeps the KV in the model's dtype.
KV_OF_MODEL = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "f32": 4, "f16": 2, "bf16": 2, "u8": 1}
_TORCH_NAMES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16",
                "f32": "float32", "f16": "float16", "bf16": "bfloat16", "u8": "uint8"}


def kv_precision(kv_cache_dtype: str, model_dtype: str) -> str:
    """The KV precision an engine option asks for: "auto" follows the model's dtype."""
    return KV_OF_MODEL[model_dtype] if kv_cache_dtype == "auto" else kv_cache_dtype


def torch_dtype(name: str):
    """A model dtype or KV precision name -> torch.dtype."""
    import torch    # here, not at the top: `import hybridllm` and the planner do not load torch
    try:
        return getattr(torch, _TORCH_NAMES[name])
    except KeyError:
        raise ValueError(f"dtype: {name!r} is not one of {', '.join(_TORCH_NAMES)}") from None


def name_of(dtype) -> str:
    """torch.dtype -> KV precision name ("f32", "f16", "bf16", "u8")."""
    for kv in KV_PRECISIONS:
        if torch_dtype(kv) == dtype:
            return kv
    raise ValueError(f"dtype: {dtype} has no KV precision name; known: {', '.join(KV_PRECISIONS)}")
