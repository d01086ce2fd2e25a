"""HardwareProfile: measured tables of one machine, saved as JSON.

Axes (all per decoder layer unless said otherwise):
  *_gemm:              x = tokens in the step, y = weight params of the matrix (out * in) -> seconds
  *_attention_decode:  x = sequences, y = KV bytes read (all sequences) -> seconds
  *_attention_prefill: x = new tokens, y = attention FLOPs per new token (4 * mean context * heads * head_dim)
Host attention tables are per KV dtype. Bandwidths are bytes/s.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .tables import Table2D

_BANDWIDTHS = ("host_memory_bandwidth", "h2d_pinned", "h2d_pageable", "d2h_pinned", "d2h_pageable")
_TABLES = ("device_gemm", "device_attention_decode", "device_attention_prefill", "host_gemm")
_HOST_ATTN = ("host_attention_decode", "host_attention_prefill")


@dataclass(frozen=True)
class HardwareProfile:
    name: str
    source: str                          # "measured" or "spec" (built from published specs, not measured)
    device_name: str
    host_name: str
    dtype: str                           # weights/activations dtype the GEMM tables were taken in
    device_memory_bytes: int
    host_memory_bytes: int
    host_memory_bandwidth: float
    h2d_pinned: float
    h2d_pageable: float
    d2h_pinned: float
    d2h_pageable: float
    launch_overhead_s: float             # per step, whatever the batch
    layer_overhead_s: float              # per layer per step: norms, RoPE, residuals, Python
    device_gemm: Table2D
    device_attention_decode: Table2D
    device_attention_prefill: Table2D
    host_gemm: Table2D
    host_attention_decode: dict[str, Table2D]
    host_attention_prefill: dict[str, Table2D]
    device_is_host: bool = False         # True on a CPU-only machine: "device" work runs on the same cores
    notes: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.source not in ("measured", "spec"):
            raise ValueError(f"profile {self.name}: source must be 'measured' or 'spec', got {self.source!r}")
        for f in _BANDWIDTHS:
            v = getattr(self, f)
            if not isinstance(v, (int, float)) or not v > 0 or not math.isfinite(v):
                raise ValueError(f"profile {self.name}: {f} must be a bandwidth > 0 (bytes/s), got {v!r}")
        for f in ("device_memory_bytes", "host_memory_bytes"):
            v = getattr(self, f)
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"profile {self.name}: {f} must be an integer > 0, got {v!r}")
        for f in ("launch_overhead_s", "layer_overhead_s"):
            v = getattr(self, f)
            if not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"profile {self.name}: {f} must be a time >= 0, got {v!r}")
        for f in _HOST_ATTN:
            if not getattr(self, f):
                raise ValueError(f"profile {self.name}: {f} needs a table for at least one KV dtype")

    def host_attention(self, phase: str, kv_dtype: str) -> Table2D:
        tables = self.host_attention_decode if phase == "decode" else self.host_attention_prefill
        if kv_dtype in tables:
            return tables[kv_dtype]
        # The nearest measured precision: f16/bf16 share a width, u8 is closest to f16.
        for alt in {"bf16": ("f16",), "f16": ("bf16",), "u8": ("f16", "bf16")}.get(kv_dtype, ()) + ("f32",):
            if alt in tables:
                return tables[alt]
        return next(iter(tables.values()))

    # -- JSON ------------------------------------------------------------------

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("name", "source", "device_name", "host_name", "dtype",
                                           "device_memory_bytes", "host_memory_bytes", *_BANDWIDTHS,
                                           "launch_overhead_s", "layer_overhead_s", "device_is_host",
                                           "notes", "extra")}
        for t in _TABLES:
            d[t] = getattr(self, t).to_dict()
        for t in _HOST_ATTN:
            d[t] = {k: v.to_dict() for k, v in getattr(self, t).items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "HardwareProfile":
        if not isinstance(d, dict):
            raise ValueError("hardware profile: must be a JSON object")
        name = d.get("name", "<unnamed>")
        required = ("name", "source", "device_name", "host_name", "dtype", "device_memory_bytes",
                    "host_memory_bytes", *_BANDWIDTHS, "launch_overhead_s", "layer_overhead_s", *_TABLES, *_HOST_ATTN)
        missing = [k for k in required if k not in d]
        if missing:
            raise ValueError(f"profile {name}: missing field(s): {', '.join(missing)}")
        kw = {k: d[k] for k in required if k not in _TABLES + _HOST_ATTN}
        for t in _TABLES:
            kw[t] = Table2D.from_dict(d[t], f"profile {name}: {t}")
        for t in _HOST_ATTN:
            if not isinstance(d[t], dict):
                raise ValueError(f"profile {name}: {t} must map KV dtype -> table")
            kw[t] = {k: Table2D.from_dict(v, f"profile {name}: {t}.{k}") for k, v in d[t].items()}
        return cls(**kw, device_is_host=bool(d.get("device_is_host", False)), notes=d.get("notes", ""),
                   extra=d.get("extra", {}))
