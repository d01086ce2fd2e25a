"""Integer-coded linear weights for the CPU data plane: a GGUF's kept codes, or weights we quantize.

One form for all of them, the one OpenVINO's compressed FullyConnected reads, plus Q4_1's minimum:
    w[r, g*G + j] = (code[r, g*G + j] - zero[r, g]) * scale[r, g] + min[r, g]      (G = group_size)
- 4-bit codes: u8 [rows, cols / 2], two per byte, the even column in the low nibble (OpenVINO u4);
- 8-bit codes: u8 (asymmetric) or i8 (symmetric) [rows, cols];
- scale: f16 [rows, groups]; zero: None (symmetric) or an integer array (u8) [rows, groups];
- min: None, or f32 [rows, groups] for the types with a minimum (Q4_1, Q5_1, Q4_K, Q5_K). Their w = d*q + m has no integer zero point, so it becomes
  the nearest one, z = round(-m/d), plus the remainder r = m + z*d (|r| <= d/2): w = d*(q - z) + r,
  exact in f32, and x @ w^T = x @ (d*(q - z))^T + groupsum(x) @ r^T (runtime/cpu/ov_weights.py folds r
  back into f32 zero points when activations stay f32). Centred codes matter: with z = 0 the two
  terms are large and cancel, and int8 activations lost 7 of 8 greedy continuations.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..converters.gguf_quant import QUANT_FILE, QUANT_INDEX, pack_u4


@dataclass(frozen=True)
class QuantWeight:
    bits: int                       # 4 | 8
    codes: np.ndarray               # u8 [rows, cols/2] (4-bit) or u8/i8 [rows, cols] (8-bit)
    scale: np.ndarray               # f16 [rows, groups]
    zero: np.ndarray | None         # u8 [rows, groups] integer zero points, or None (symmetric)
    group_size: int
    source: str                     # the GGUF type of the codes ("Q4_1", "Q6_K", ...) | "rtn" (quantized here)
    min: np.ndarray | None = None   # f32 [rows, groups]: the remainder of a type with a minimum, added after scaling

    def __post_init__(self):
        rows, groups = self.scale.shape
        cols = self.codes.shape[1] * (2 if self.bits == 4 else 1)
        if self.bits not in (4, 8) or cols != groups * self.group_size or self.codes.shape[0] != rows:
            raise ValueError(f"QuantWeight: codes {self.codes.shape} ({self.bits}-bit), scale {self.scale.shape} "
                             f"and group_size {self.group_size} disagree")

    @property
    def shape(self) -> tuple[int, int]:
        return self.scale.shape[0], self.scale.shape[1] * self.group_size

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.codes, self.scale, self.zero, self.min) if a is not None)

    def unpacked(self) -> np.ndarray:
        """codes as one value per element [rows, cols]."""
        if self.bits == 8:
            return self.codes
        out = np.empty((self.codes.shape[0], self.codes.shape[1] * 2), np.uint8)
        out[:, 0::2], out[:, 1::2] = self.codes & 0xF, self.codes >> 4
        return out

    def dequantize(self) -> np.ndarray:
        """-> f32 [rows, cols], the same arithmetic OpenVINO's decompression does."""
        rows, cols = self.shape
        q = self.unpacked().astype(np.float32).reshape(rows, -1, self.group_size)
        if self.zero is not None:
            q = q - self.zero.astype(np.float32)[..., None]
        w = q * self.scale.astype(np.float32)[..., None]
        if self.min is not None:
            w = w + self.min.astype(np.float32)[..., None]
        return w.reshape(rows, cols)


def concat_rows(parts: list[QuantWeight]) -> QuantWeight | None:
    """Stack weights along rows (the fused qkv / gate_up); None when their forms differ."""
    first = parts[0]
    def key(p):
        return p.bits, p.group_size, p.codes.dtype, p.zero is None, p.min is None

    if any(key(p) != key(first) for p in parts):
        return None

    def cat(field):
        return None if getattr(first, field) is None else np.concatenate([getattr(p, field) for p in parts])
    return QuantWeight(first.bits, cat("codes"), cat("scale"), cat("zero"), first.group_size, first.source, cat("min"))


# GGUF type -> (bits of the kept codes, their top value, the implied zero point of types without a min)
_FORMS = {"Q8_0": (8, 127, None), "Q6_K": (8, 31, None), "Q4_0": (4, 15, 8), "Q5_0": (8, 31, 16),
          "Q4_1": (4, 15, None), "Q4_K": (4, 15, None), "Q5_1": (8, 31, None), "Q5_K": (8, 31, None)}


def from_gguf_codes(kind: str, qweight: np.ndarray, scales: np.ndarray, mins: np.ndarray | None,
                    group_size: int = 32) -> QuantWeight:
    """converters/gguf_quant.py's arrays -> the common form."""
    if kind not in _FORMS:
        raise ValueError(f"GGUF type {kind} has no kept codes; kept: {', '.join(_FORMS)}")
    bits, top, zero = _FORMS[kind]
    if mins is None:
        z = None if zero is None else np.full(scales.shape, zero, np.uint8)
        return QuantWeight(bits, qweight, scales, z, group_size, kind)
    # w = d*q + m: the nearest integer zero point, and the remainder (module docstring).
    d, m = scales.astype(np.float32), mins.astype(np.float32)
    zero = np.where(d > 0, np.clip(np.round(-m / np.where(d > 0, d, 1)), 0, top), 0).astype(np.uint8)
    rest = (m + zero * d).astype(np.float32)       # f32: exact for these f16 products
    return QuantWeight(bits, qweight, scales, zero, group_size, kind, min=rest)


def quantize(w: np.ndarray, bits: int, group_size: int | None) -> QuantWeight:
    """Round-to-nearest asymmetric quantization of f32 [rows, cols]; group_size None: per row."""
    rows, cols = w.shape
    g = group_size or cols
    if cols % g:
        raise ValueError(f"quantize: {cols} columns do not split into groups of {g}")
    top = (1 << bits) - 1
    x = w.astype(np.float32).reshape(rows, cols // g, g)
    lo, hi = np.minimum(x.min(-1), 0), np.maximum(x.max(-1), 0)             # [rows, groups]; 0 exactly representable
    scale = np.maximum((hi - lo) / top, 1e-8).astype(np.float16).astype(np.float32)
    zero = np.clip(np.round(-lo / scale), 0, top)
    codes = np.clip(np.round(x / scale[..., None] + zero[..., None]), 0, top).astype(np.uint8).reshape(rows, cols)
    packed = pack_u4(codes) if bits == 4 else codes
    return QuantWeight(bits, packed, scale.astype(np.float16), zero.astype(np.uint8), g, "rtn")


class QuantizedCheckpoint:
    """A converted folder's kept GGUF codes (quantization.json + quantized.safetensors), read lazily."""

    def __init__(self, folder: Path):
        index = json.loads((folder / QUANT_INDEX).read_text())
        self.source = index.get("source", "")
        self.types: dict[str, str] = {name: v["type"] for name, v in index["tensors"].items()}
        self.groups: dict[str, int] = {name: v.get("group_size", 32) for name, v in index["tensors"].items()}
        from safetensors import safe_open
        self._file = safe_open(str(folder / QUANT_FILE), framework="numpy")
        self._keys = set(self._file.keys())

    @classmethod
    def open(cls, folder: str | Path) -> "QuantizedCheckpoint | None":
        folder = Path(folder)
        return cls(folder) if (folder / QUANT_INDEX).is_file() and (folder / QUANT_FILE).is_file() else None

    def describe(self) -> str:
        counts: dict[str, int] = {}
        for t in self.types.values():
            counts[t] = counts.get(t, 0) + 1
        return ", ".join(f"{n} {t}" for t, n in sorted(counts.items()))

    def get(self, name: str) -> QuantWeight | None:
        kind = self.types.get(name)
        if kind is None:
            return None
        base = name.removesuffix(".weight")
        mins = self._file.get_tensor(base + ".mins") if base + ".mins" in self._keys else None
        return from_gguf_codes(kind, self._file.get_tensor(base + ".qweight"), self._file.get_tensor(base + ".scales"),
                               mins, self.groups[name])
