"""GGUF block-quantized linear weights kept as integer codes (`quantized.safetensors`).

The HF folder's `model.safetensors` holds every tensor dequantized to float32, for torch and HF.
Beside it, this module writes the codes of each Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 and K-quant (Q4_K,
Q5_K, Q6_K) matrix, so the CPU data plane builds OpenVINO compressed weights from them, never floats:

    <name>.qweight  U8 [rows, cols / 2]  4-bit codes (Q4_0, Q4_1, Q4_K), two per byte, even column low
                    U8 [rows, cols]      5-bit codes (Q5_0, Q5_1, Q5_K), one per byte
                    I8 [rows, cols]      Q8_0 codes, and Q6_K's 6-bit codes centred (q - 32)
    <name>.scales   F16 [rows, cols / G]  the scale of each group of G columns (G = 32; Q6_K 16)
    <name>.mins     F16 [rows, cols / G]  the group minimum, for the types that have one

Per group: Q4_0 w = d * (q - 8); Q5_0 w = d * (q - 16); Q8_0 and Q6_K w = d * q; Q4_1, Q5_1 w = d * q + m.
K-quants keep 6-bit (Q6_K: 8-bit) sub-block scales under one f16 super-scale; those products are
multiplied out here and rounded to f16: Q4_K/Q5_K w = (d * sc) * q - (dmin * m) per 32 columns, Q6_K
w = (d * sc) * q per 16 (exact to f16 rounding of the scales; tests/unit/test_quantized_weights.py).
`quantization.json` lists each tensor's GGUF type and group size. Rows are in HF order (llama's Q/K
unpermuted), like model.safetensors. Other types (Q2_K, Q3_K, IQ*, F16) are not kept: the CPU data
plane builds those from the float tensors at the weight_dtype the engine asks for.

Safetensors rather than OpenVINO IR: the codes are independent of the OpenVINO version and of the
graph we build around them (split or fused, any batch), they live in the same cached, atomically
written folder as the float weights, and OpenVINO's own CACHE_DIR already caches compiled graphs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as Q

from .safetensors_io import TensorEntry, write_safetensors

BLOCK = 32


@dataclass(frozen=True)
class _Kind:
    bytes: int          # per GGUF block
    elems: int          # columns per GGUF block (32, or 256 for the K-quants)
    group: int          # columns per scale in the kept form
    bits: int           # 4: packed u4 codes; 8: one byte per code (Q5's 5-bit and Q6_K's 6-bit codes too)
    signed: bool        # i8 codes (Q8_0, Q6_K centred) rather than u8
    has_min: bool       # w = d * q + m (Q4_1, Q5_1, Q4_K, Q5_K)


# GGUF type -> how its blocks map onto the kept form. K-quants' 6-bit sub-block scales are multiplied
# out into one f16 scale (and minimum) per 32 (Q6_K: 16) columns, so every type is "codes, scale, min".
_KINDS = {
    Q.Q4_0: _Kind(18, 32, 32, 4, False, False), Q.Q4_1: _Kind(20, 32, 32, 4, False, True),
    Q.Q5_0: _Kind(22, 32, 32, 8, False, False), Q.Q5_1: _Kind(24, 32, 32, 8, False, True),
    Q.Q8_0: _Kind(34, 32, 32, 8, True, False),
    Q.Q4_K: _Kind(144, 256, 32, 4, False, True), Q.Q5_K: _Kind(176, 256, 32, 8, False, True),
    Q.Q6_K: _Kind(210, 256, 16, 8, True, False),
}
KEPT_TYPES = tuple(t.name for t in _KINDS)
QUANT_FILE, QUANT_INDEX = "quantized.safetensors", "quantization.json"


def kept(t) -> bool:
    """Is this GGUF tensor a matrix whose codes we keep?"""
    return t.tensor_type in _KINDS and len(t.shape) == 2


def group_size(kind: str) -> int:
    return _KINDS[Q[kind]].group


def _f16(b: np.ndarray) -> np.ndarray:
    """[..., 2] bytes -> [...] f32 (the block's f16 scale)."""
    return np.ascontiguousarray(b).view(np.float16)[..., 0].astype(np.float32)


def _k_scales(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K's 12 packed bytes [..., 12] -> 6-bit (scale, min) [..., 8] for the 8 sub-blocks."""
    s = s.astype(np.uint8)
    lo, hi, top = s[..., 0:4], s[..., 4:8], s[..., 8:12]
    sc = np.concatenate([lo & 63, (top & 0xF) | ((lo >> 6) << 4)], axis=-1)
    mn = np.concatenate([hi & 63, (top >> 4) | ((hi >> 6) << 4)], axis=-1)
    return sc.astype(np.float32), mn.astype(np.float32)


def _bits(qh: np.ndarray, n: int) -> np.ndarray:
    """Little-endian bit planes: qh [..., n/8] bytes -> [..., n] values 0/1 (bit i of the block)."""
    return np.unpackbits(qh.astype(np.uint8), axis=-1, bitorder="little")[..., :n]


def _decode(kind: _Kind, t, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """b: blocks [rows, nb, bytes] -> codes [rows, nb, elems], scales [rows, nb, elems/group],
    mins (or None) like scales; w = (codes) * scale + min, codes already centred where signed."""
    qt = t.tensor_type
    if qt == Q.Q8_0:
        return b[..., 2:].view(np.int8), _f16(b[..., :2])[..., None], None
    if qt in (Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1):
        head = 4 if kind.has_min else 2                                     # d[, m]
        five = qt in (Q.Q5_0, Q.Q5_1)
        qs = b[..., head + 4 * five:]                                        # [rows, nb, 16]
        codes = np.concatenate([qs & 0xF, qs >> 4], axis=-1)                 # [rows, nb, 32]: element j, j + 16
        if five:
            codes = codes | (_bits(b[..., head:head + 4], 32) << 4)
        mins = _f16(b[..., 2:4])[..., None] if kind.has_min else None
        return codes, _f16(b[..., :2])[..., None], mins
    if qt in (Q.Q4_K, Q.Q5_K):
        d, dmin = _f16(b[..., 0:2]), _f16(b[..., 2:4])                       # [rows, nb]
        sc, mn = _k_scales(b[..., 4:16])                                     # [rows, nb, 8]
        five = qt == Q.Q5_K
        qs = b[..., 16 + 32 * five:].reshape(*b.shape[:2], 4, 32)             # [rows, nb, 4 chunks, 32]
        codes = np.stack([qs & 0xF, qs >> 4], axis=-2).reshape(*b.shape[:2], 256)   # sub-block 2c, 2c + 1
        if five:                                                              # bit s of qh[l]: sub-block s, row l
            hb = _bits(b[..., 16:48, None], 8)                                # [rows, nb, 32, 8]
            codes = codes | (np.swapaxes(hb, -1, -2).reshape(*b.shape[:2], 256) << 4)
        return codes, d[..., None] * sc, -(dmin[..., None] * mn)
    if qt == Q.Q6_K:
        ql, qh = b[..., 0:128].reshape(*b.shape[:2], 2, 64), b[..., 128:192].reshape(*b.shape[:2], 2, 32)
        sc, d = b[..., 192:208].view(np.int8).astype(np.float32), _f16(b[..., 208:210])
        lo = np.concatenate([ql & 0xF, ql >> 4], axis=-1)                     # [rows, nb, 2 halves, 128]
        hi = np.concatenate([(qh >> sh) & 3 for sh in (0, 2, 4, 6)], axis=-1)  # element 32k + l: bits 2k of qh[l]
        codes = ((lo | (hi << 4)).astype(np.int16) - 32).astype(np.int8).reshape(*b.shape[:2], 256)
        return codes, d[..., None] * sc, None
    raise ValueError(f"GGUF type {qt.name} has no kept codes")


def block_codes(t) -> dict[str, np.ndarray]:
    """A kept-type ReaderTensor -> {"qweight", "scales"[, "mins"]} in GGUF row order, in the kept form:
    qweight u4-packed (4-bit) or u8/i8 [rows, cols]; scales and mins f16 [rows, cols / group]."""
    kind = _KINDS[t.tensor_type]
    rows = int(t.shape[1])
    blocks = np.asarray(t.data, dtype=np.uint8).reshape(rows, -1, kind.bytes)   # [rows, nb, bytes]
    codes, scales, mins = _decode(kind, t, blocks)
    scales = scales.reshape(rows, -1).astype(np.float16)                          # [rows, groups]
    codes = codes.reshape(rows, scales.shape[1], kind.group).copy()
    codes[scales == 0] = 0          # codes under a zero scale mean nothing; 0 lets the min stand alone
    codes = codes.reshape(rows, -1)
    out = {"qweight": pack_u4(codes) if kind.bits == 4 else np.ascontiguousarray(codes, np.int8 if kind.signed
                                                                                   else np.uint8),
           "scales": scales}
    if mins is not None:
        out["mins"] = mins.reshape(rows, -1).astype(np.float16)
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
        kind = _KINDS[t.tensor_type]
        shapes = {"qweight": ("I8" if kind.signed else "U8", (rows, cols if kind.bits == 8 else cols // 2)),
                  "scales": ("F16", (rows, cols // kind.group))}
        if kind.has_min:
            shapes["mins"] = ("F16", (rows, cols // kind.group))

        def write(f, key, t=t, row_fix=row_fix):
            a = block_codes(t)[key]         # computed per array when written: one tensor in memory at a time
            f.write(np.ascontiguousarray(row_fix(a) if row_fix is not None else a).data)
        base = hf.removesuffix(".weight")
        for key, (dtype, shape) in shapes.items():
            entries.append(TensorEntry(f"{base}.{key}", dtype, shape, lambda f, key=key, write=write: write(f, key)))
        index[hf] = {"type": t.tensor_type.name, "shape": [rows, cols], "group_size": kind.group}
    if not entries:
        return 0
    write_safetensors(out / QUANT_FILE, entries, progress=progress, desc="keep quantized codes")
    (out / QUANT_INDEX).write_text(json.dumps({"source": source, "tensors": index}, indent=1) + "\n")
    return len(index)
