"""GGUF block-quantized linear weights kept as integer codes (`quantized.safetensors`).

The HF folder's `model.safetensors` holds every tensor dequantized to float32, for torch and HF.
Beside it, this module writes the codes of each Q4_0 / Q4_1 / Q8_0 matrix as they are in the GGUF,
so the CPU data plane can build OpenVINO compressed weights from them without a lossy round trip:

    <name>.qweight  U8 [rows, cols / 2]  4-bit codes, two per byte, the even column in the low nibble
                    I8 [rows, cols]      Q8_0 codes
    <name>.scales   F16 [rows, cols / 32]  the block scale d
    <name>.mins     F16 [rows, cols / 32]  Q4_1's block minimum m only

Dequantization (per 32-column block): Q4_0 w = d * (q - 8); Q4_1 w = d * q + m; Q8_0 w = d * q.
`quantization.json` lists each tensor's GGUF type. Rows are in HF order (llama's Q/K unpermuted),
like model.safetensors. Other GGUF types (K-quants, F16) are not listed: the CPU data plane builds
those from the float tensors at the weight_dtype the engine asks for.

Safetensors rather than OpenVINO IR: the codes are independent of the OpenVINO version and of the
graph we build around them (split or fused, any batch), they live in the same cached, atomically
written folder as the float weights, and OpenVINO's own CACHE_DIR already caches compiled graphs.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as Q

from .safetensors_io import TensorEntry, write_safetensors

BLOCK = 32
# GGUF type -> (bytes per 32-column block, has a min)
_LAYOUT = {Q.Q4_0: (18, False), Q.Q4_1: (20, True), Q.Q8_0: (34, False)}
KEPT_TYPES = tuple(t.name for t in _LAYOUT)
QUANT_FILE, QUANT_INDEX = "quantized.safetensors", "quantization.json"


def kept(t) -> bool:
    """Is this GGUF tensor a matrix whose codes we keep?"""
    return t.tensor_type in _LAYOUT and len(t.shape) == 2


def block_codes(t) -> dict[str, np.ndarray]:
    """A Q4_0/Q4_1/Q8_0 ReaderTensor -> {"qweight", "scales"[, "mins"]} in GGUF row order."""
    size, has_min = _LAYOUT[t.tensor_type]
    rows = int(t.shape[1])
    blocks = np.asarray(t.data, dtype=np.uint8).reshape(rows, -1, size)        # [rows, nb, size]
    out = {"scales": np.ascontiguousarray(blocks[..., :2]).view(np.float16)[..., 0]}   # [rows, nb]
    if t.tensor_type == Q.Q8_0:
        out["qweight"] = np.ascontiguousarray(blocks[..., 2:]).view(np.int8).reshape(rows, -1)
        return out
    if has_min:
        out["mins"] = np.ascontiguousarray(blocks[..., 2:4]).view(np.float16)[..., 0]
    qs = blocks[..., 4:] if has_min else blocks[..., 2:]                        # [rows, nb, 16]
    codes = np.concatenate([qs & 0xF, qs >> 4], axis=-1)                        # [rows, nb, 32]: GGUF's order
    out["qweight"] = pack_u4(codes.reshape(rows, -1))
    return out


def pack_u4(codes: np.ndarray) -> np.ndarray:
    """[rows, cols] values 0..15 -> [rows, cols / 2] bytes, column 2j in the low nibble (OpenVINO's u4)."""
    c = codes.astype(np.uint8)
    return (c[:, 0::2] | (c[:, 1::2] << 4)).astype(np.uint8)


def write_quantized(out: Path, planned: list[tuple[str, object, object]], source: str, progress: bool) -> int:
    """planned: (hf_name, ReaderTensor, row_fix or None) for each kept matrix -> number written.
    row_fix reorders rows (llama's Q/K unpermute) and applies to every array alike."""
    entries, index = [], {}
    for hf, t, row_fix in planned:
        rows, cols = int(t.shape[1]), int(t.shape[0])
        q8 = t.tensor_type == Q.Q8_0
        shapes = {"qweight": ("I8" if q8 else "U8", (rows, cols if q8 else cols // 2)),
                  "scales": ("F16", (rows, cols // BLOCK))}
        if _LAYOUT[t.tensor_type][1]:
            shapes["mins"] = ("F16", (rows, cols // BLOCK))

        def write(f, key, t=t, row_fix=row_fix):
            a = block_codes(t)[key]         # computed per array when written: one tensor in memory at a time
            f.write(np.ascontiguousarray(row_fix(a) if row_fix is not None else a).data)
        base = hf.removesuffix(".weight")
        for key, (dtype, shape) in shapes.items():
            entries.append(TensorEntry(f"{base}.{key}", dtype, shape, lambda f, key=key, write=write: write(f, key)))
        index[hf] = {"type": t.tensor_type.name, "shape": [rows, cols], "group_size": BLOCK}
    if not entries:
        return 0
    write_safetensors(out / QUANT_FILE, entries, progress=progress, desc="keep quantized codes")
    (out / QUANT_INDEX).write_text(json.dumps({"source": source, "tensors": index}, indent=1) + "\n")
    return len(index)
