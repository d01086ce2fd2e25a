"""HostAttention: attention over the host KV tier, with one of three backends.

- "native":   our paged decode kernel (host_native.cpp) for decode-only steps, the op below for the rest.
- "ov_paged": a graph around OpenVINO's PagedAttention op (private API).
- "ov_sdpa":  a public-opset OpenVINO graph (gather blocks, matmul, softmax, matmul).
- "torch":    torch SDPA on the CPU, the last resort.

The backend is chosen once, at start-up: the first that compiles and passes a
tiny self-check, unless spec.path (EngineConfig.host_attention) forces one. The
choice and its reason are logged. The host tier is then allocated in the layout
the chosen backend reports (the op picks its own block size and u8 format; see
attention/kv_cache.py) and bound to it: HostAttention.create does both.

forward() has DeviceAttention's signature: q [T, H, D], k/v [T, KVH, D] ->
[T, H * D]; it writes k/v into the cache at the step's slots first. The metadata
is checked against the tier before any backend sees it, so bad metadata raises
a ValueError naming the field and writes nothing.
"""
from __future__ import annotations

import logging

import torch

from ..kv import Tier

from .kv_cache import KVCacheTier, KVLayout
from ..utils import check_host_kv_bytes
from .host_native import NativeAttention
from .host_ov_paged import PagedOVAttention
from .host_ov_sdpa import SdpaOVAttention
from .host_torch import TorchHostAttention
from .metadata import AttentionMetadata, build_metadata
from .spec import HostAttentionSpec, HostStep, make_step

__all__ = ["HostAttention", "HostAttentionSpec", "HostStep", "make_step", "select_backend", "self_check"]

log = logging.getLogger("hybridllm")

# In the order "auto" tries them.
BACKENDS = {"native": NativeAttention, "ov_paged": PagedOVAttention, "ov_sdpa": SdpaOVAttention, "torch": TorchHostAttention}


class HostAttention:
    """A chosen backend bound to its host tier. Build with HostAttention.create().

    `tier` is any CPU KVCacheTier whose layout equals the backend's.
    """

    def __init__(self, backend, tier: KVCacheTier, reason: str = ""):
        if tier.layout != backend.layout:
            raise ValueError(f"host tier layout {tier.layout} differs from the {backend.name} backend's "
                             f"{backend.layout}")
        self.backend = backend
        self.tier = tier
        self.layout: KVLayout = backend.layout
        self.reason = reason
        self.spec: HostAttentionSpec = backend.spec
        backend.bind(tier)
        self._md: AttentionMetadata | None = None
        self._step: HostStep | None = None

    @classmethod
    def create(cls, spec: HostAttentionSpec, *, num_blocks: int | None = None, num_bytes: int | None = None,
               pin_memory: bool = False) -> "HostAttention":
        """Picks a backend, allocates the host tier in its layout (num_blocks, or as many as num_bytes holds).

        pin_memory: page-locked, so copies to and from a GPU run at full speed.
        """
        if (num_blocks is None) == (num_bytes is None):
            raise ValueError("HostAttention.create needs exactly one of num_blocks, num_bytes")
        if num_bytes is not None:
            check_host_kv_bytes(num_bytes)      # before compiling anything: more than free memory fails at once
        backend, reason = select_backend(spec)
        if num_bytes is not None:
            num_blocks = backend.layout.num_blocks_for(num_bytes)
            if num_blocks < 1:
                raise ValueError(f"host_kv_bytes ({num_bytes}) holds no KV block: one block takes "
                                 f"{backend.layout.bytes_per_block} bytes")
        tier = KVCacheTier(Tier.HOST, backend.layout, num_blocks, "cpu", pin_memory=pin_memory)
        return cls(backend, tier, reason)

    @property
    def name(self) -> str:
        return self.backend.name

    def prepare(self, md: AttentionMetadata) -> HostStep:
        """The step's HostStep, built (and checked) on the first layer of each step only."""
        if md is not self._md:
            if md.block_size != self.layout.block_size:
                raise ValueError(f"block_size: metadata has {md.block_size}-token blocks, the host tier "
                                 f"{self.layout.block_size}")
            self._step = make_step(md, self.tier.num_blocks)
            self._md = md
        return self._step

    def forward(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                md: AttentionMetadata) -> torch.Tensor:
        """q: [T, H, D], k/v: [T, KVH, D] -> [T, H * D]. Writes k/v into the cache first."""
        step = self.prepare(md)
        s = self.spec
        t = md.num_tokens
        for name, x, heads in (("q", q, s.num_heads), ("k", k, s.num_kv_heads), ("v", v, s.num_kv_heads)):
            if tuple(x.shape) != (t, heads, s.head_dim):
                raise ValueError(f"{name}: expected shape {(t, heads, s.head_dim)}, got {tuple(x.shape)}")
            if x.dtype != torch.float32:
                raise ValueError(f"{name}: host attention computes in float32, got {x.dtype}")
        kc, vc = self.tier.key_cache[layer], self.tier.value_cache[layer]
        if kc.dtype != self.layout.dtype or vc.dtype != self.layout.dtype:
            raise ValueError(f"KV dtype: layer {layer} cache is {kc.dtype}/{vc.dtype}, the backend expects "
                             f"{self.layout.dtype}")
        return self.backend.forward(layer, q, k, v, step)


def select_backend(spec: HostAttentionSpec):
    """Returns (backend, reason). A forced spec.path raises if it cannot run; "auto" falls through with
    a warning."""
    if spec.path != "auto":
        backend = _build(spec.path, spec)
        reason = f"forced by host_attention={spec.path}"
        log.info("host attention: %s (%s)", spec.path, reason)
        return backend, reason
    skipped = []
    for name in BACKENDS:
        try:
            backend = _build(name, spec)
        except Exception as e:  # noqa: BLE001 - any failure here means "try the next path"
            skipped.append(f"{name}: {type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}")
            log.warning("host attention: %s unavailable, falling back (%s)", name, skipped[-1])
            continue
        reason = "first path that compiled and passed its self-check" + (
            f" after {'; '.join(skipped)}" if skipped else "")
        log.info("host attention: %s (%s)", name, reason)
        return backend, reason
    raise RuntimeError("no host attention path works: " + "; ".join(skipped))


def _build(name: str, spec: HostAttentionSpec):
    backend = BACKENDS[name](spec)
    self_check(backend)
    return backend


# Largest error a self-check accepts per KV precision, on unit-variance data.
SELF_CHECK_TOL = {"f32": 1e-4, "f16": 1e-2, "bf16": 5e-2, "u8": 0.2}


def self_check(backend) -> None:
    """A tiny mixed step on a scratch tier against a float64 reference; raises if the path is broken.

    Catches a private op that compiles but computes something else in this openvino version.
    """
    s, lay = backend.spec, backend.layout
    bs = lay.block_size
    backend.bind(KVCacheTier(Tier.HOST, lay, 4, "cpu"))
    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=gen)

    n0 = bs + 3                                            # crosses a block boundary
    keys = [rand(n0 + 2, s.num_kv_heads, s.head_dim), rand(2, s.num_kv_heads, s.head_dim)]
    vals = [rand(n0 + 2, s.num_kv_heads, s.head_dim), rand(2, s.num_kv_heads, s.head_dim)]
    tables = [[2, 0], [3]]
    steps = [  # (query_lens, seq_lens, tables, rows of each sequence's K/V)
        ([n0], [n0], [tables[0]], [(0, 0, n0)]),
        ([1, 2], [n0 + 1, 2], tables, [(0, n0, n0 + 1), (1, 0, 2)]),
        ([1], [n0 + 2], [tables[0]], [(0, n0 + 1, n0 + 2)]),     # decode only (the native kernel's step)
    ]
    for qlens, slens, tbls, rows in steps:
        md = build_metadata(qlens, slens, tbls, bs, torch.device("cpu"), s.sliding_window)
        q = rand(sum(qlens), s.num_heads, s.head_dim)
        k = torch.cat([keys[i][a:b] for i, a, b in rows])
        v = torch.cat([vals[i][a:b] for i, a, b in rows])
        out = backend.forward(0, q, k, v, make_step(md, 4))
        ref = _reference(q, [keys[i][:b] for i, _, b in rows], [vals[i][:b] for i, _, b in rows], qlens,
                         s.sliding_window)
        err = (out - ref).abs().max().item()
        if not err <= SELF_CHECK_TOL[lay.precision]:
            raise RuntimeError(f"{backend.name} self-check: max error {err:.3g} over "
                               f"{SELF_CHECK_TOL[lay.precision]} ({lay.precision} KV)")


def _reference(q, keys, vals, qlens, window):
    # Float64 attention of each sequence's queries (the last qlen positions) over its keys.
    outs, start = [], 0
    for kk, vv, n in zip(keys, vals, qlens):
        g = q.shape[1] // kk.shape[1]
        qq = q[start:start + n].double().transpose(0, 1)                       # [H, n, D]
        kk = kk.double().repeat_interleave(g, 1).transpose(0, 1)               # [H, S, D]
        vv = vv.double().repeat_interleave(g, 1).transpose(0, 1)
        S = kk.shape[1]
        qp, kp = torch.arange(S - n, S)[:, None], torch.arange(S)[None, :]
        mask = (kp <= qp) & ((qp - kp < window) if window else True)
        o = torch.nn.functional.scaled_dot_product_attention(qq, kk, vv, attn_mask=mask)
        outs.append(o.transpose(0, 1).reshape(n, -1))
        start += n
    return torch.cat(outs).float()
