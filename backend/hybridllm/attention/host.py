"""HostAttention: attention over the host KV tier, with one of three backends.

- "ov_paged": a graph around OpenVINO's PagedAttention op (private API; fastest).
- "ov_sdpa":  a public-opset OpenVINO graph (gather blocks, matmul, softmax, matmul).
- "torch":    torch SDPA on the CPU, the last resort.

The backend is chosen once, at start-up: the first that compiles and passes a
tiny self-check, unless a path is forced with `path=` or the environment
variable HYBRIDLLM_HOST_ATTENTION (auto | ov_paged | ov_sdpa | torch). The
choice and its reason are logged. The host tier is then allocated in the layout
the chosen backend reports (see kv/host_tier.py) and bound to it.

forward() has DeviceAttention's signature: q [T, H, D], k/v [T, KVH, D] ->
[T, H * D]; it writes k/v into the cache at the step's slots first. The metadata
is checked against the tier before any backend sees it, so bad metadata raises
a ValueError naming the field and writes nothing.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import torch

from ..kv.host_tier import HOST_PRECISIONS, HostKVLayout, HostKVTier, same_layout
from .metadata import AttentionMetadata

log = logging.getLogger("hybridllm")

HOST_ATTENTION_ENV = "HYBRIDLLM_HOST_ATTENTION"
PATHS = ("ov_paged", "ov_sdpa", "torch")


@dataclass(frozen=True)
class HostAttentionSpec:
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    kv_precision: str = "f32"           # "f32" | "f16" | "bf16" | "u8"
    sliding_window: int | None = None
    block_size: int = 16                # for the fallbacks; ov_paged uses the op's own block size
    cache_dir: str | None = None        # OpenVINO CACHE_DIR; None: no model cache
    num_threads: int | None = None      # OpenVINO INFERENCE_NUM_THREADS; None: all cores

    def __post_init__(self):
        if self.kv_precision not in HOST_PRECISIONS:
            raise ValueError(f"kv_cache_dtype: {self.kv_precision!r} is not one of {', '.join(HOST_PRECISIONS)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")

    @property
    def scale(self) -> float:
        return self.head_dim ** -0.5


@dataclass(frozen=True)
class HostStep:
    """One step's metadata in the form the host backends take, built once per step (not per layer)."""
    md: AttentionMetadata
    query_lens: tuple[int, ...]
    block_tables: tuple[np.ndarray, ...]    # per sequence: int32 [ceil(seq_len / block_size)]
    past_lens: np.ndarray                   # int32 [B]
    subsequence_begins: np.ndarray          # int32 [B + 1]
    block_indices: np.ndarray               # int32 [sum of blocks]
    block_indices_begins: np.ndarray        # int32 [B + 1]
    max_context_len: np.ndarray             # int32 []


def make_step(md: AttentionMetadata, num_blocks: int) -> HostStep:
    """Checks md against a tier of num_blocks blocks; raises ValueError naming the bad field."""
    bs = md.block_size
    qsl = md.query_start_loc
    n = len(md.seq_lens)
    if len(qsl) != n + 1 or qsl[0] != 0 or qsl[-1] != md.num_tokens:
        raise ValueError(f"query_start_loc {qsl} does not match {n} sequences and num_tokens={md.num_tokens}")
    prefills = iter(md.prefills)
    dec_tables = md.decode_block_tables.cpu().numpy()
    tables, qlens = [], []
    d = 0
    for i in range(n):
        qlen, slen = qsl[i + 1] - qsl[i], md.seq_lens[i]
        if qlen < 1 or slen < qlen:
            raise ValueError(f"seq_lens[{i}]={slen} with query_len={qlen}: need 1 <= query_len <= seq_len")
        nb = -(-slen // bs)
        if qlen == 1:
            if d >= dec_tables.shape[0] or int(md.decode_token_index[d]) != qsl[i]:
                raise ValueError(f"decode_token_index does not list sequence {i} (token {qsl[i]})")
            table = dec_tables[d, :nb]
            d += 1
        else:
            s = next(prefills, None)
            if s is None or (s.q_start, s.q_end, s.seq_len) != (qsl[i], qsl[i + 1], slen):
                raise ValueError(f"prefills do not match sequence {i} (tokens {qsl[i]}:{qsl[i + 1]}, seq_len {slen})")
            table = s.block_table.cpu().numpy()[:nb]
        if table.shape[0] < nb:
            raise ValueError(f"block_table of sequence {i} has {table.shape[0]} blocks; seq_len={slen} "
                             f"needs {nb} blocks of {bs}")
        tables.append(table.astype(np.int32))
        qlens.append(qlen)
    if d != dec_tables.shape[0] or next(prefills, None) is not None:
        raise ValueError("decode_block_tables / prefills list more sequences than seq_lens")
    block_indices = np.concatenate(tables) if tables else np.zeros(0, np.int32)
    if block_indices.size and (block_indices.min() < 0 or block_indices.max() >= num_blocks):
        bad = block_indices[(block_indices < 0) | (block_indices >= num_blocks)][0]
        raise ValueError(f"block_table: block index {int(bad)} is out of range [0, {num_blocks})")
    past = np.array([s - q for s, q in zip(md.seq_lens, qlens)], dtype=np.int32)
    # The slots the fallbacks write must be the ones the tables imply (the op derives its own).
    want = np.concatenate([t[np.arange(p, p + q) // bs].astype(np.int64) * bs + np.arange(p, p + q) % bs
                           for t, p, q in zip(tables, past, qlens)]) if tables else np.zeros(0, np.int64)
    if not np.array_equal(want, md.slot_mapping.cpu().numpy()):
        raise ValueError("slot_mapping does not match the block tables and seq_lens")
    return HostStep(
        md=md,
        query_lens=tuple(qlens),
        block_tables=tuple(tables),
        past_lens=past,
        subsequence_begins=np.asarray(qsl, dtype=np.int32),
        block_indices=block_indices.astype(np.int32),
        block_indices_begins=np.cumsum([0] + [t.shape[0] for t in tables]).astype(np.int32),
        max_context_len=np.array(max(md.seq_lens, default=0), dtype=np.int32),
    )


class HostAttention:
    """A chosen backend bound to its host tier. Build with HostAttention.create().

    `tier` is a HostKVTier, or a plain KVCacheTier on the CPU whose blocks have the
    backend's layout (the fallbacks' unquantised blocks of `spec.block_size`).
    """

    def __init__(self, backend, tier: HostKVTier, reason: str = ""):
        if not same_layout(backend.layout, tier.layout):
            raise ValueError(f"host tier layout {tier.layout} differs from the {backend.name} backend's "
                             f"{backend.layout}")
        self.backend = backend
        self.tier = tier
        self.layout: HostKVLayout = backend.layout
        self.reason = reason
        self.spec: HostAttentionSpec = backend.spec
        backend.bind(tier)
        self._md: AttentionMetadata | None = None
        self._step: HostStep | None = None

    @classmethod
    def create(cls, spec: HostAttentionSpec, *, num_blocks: int | None = None, num_bytes: int | None = None,
               path: str | None = None) -> "HostAttention":
        """Picks a backend, allocates the host tier in its layout (num_blocks, or as many as num_bytes holds)."""
        backend, reason = select_backend(spec, path)
        if num_blocks is None:
            if num_bytes is None:
                raise ValueError("HostAttention.create needs num_blocks or num_bytes")
            num_blocks = backend.layout.num_blocks_for(num_bytes)
            if num_blocks < 1:
                raise ValueError(f"host_kv_bytes={num_bytes} holds no KV block: one block takes "
                                 f"{backend.layout.bytes_per_block} bytes")
        return cls(backend, HostKVTier(backend.layout, num_blocks), reason)

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


def select_backend(spec: HostAttentionSpec, path: str | None = None):
    """Returns (backend, reason). A forced path raises if it cannot run; "auto" falls through with a warning."""
    source = "path=" if path else HOST_ATTENTION_ENV
    path = path or os.environ.get(HOST_ATTENTION_ENV) or "auto"
    if path not in PATHS + ("auto",):
        raise ValueError(f"{source}: {path!r} is not one of auto, {', '.join(PATHS)}")
    if path != "auto":
        backend = _build(path, spec)
        reason = f"forced by {source}"
        log.info("host attention: %s (%s)", path, reason)
        return backend, reason
    skipped = []
    for name in PATHS:
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
    if name == "ov_paged":
        from .host_ov_paged import PagedOVAttention as cls
    elif name == "ov_sdpa":
        from .host_ov_sdpa import SdpaOVAttention as cls
    else:
        from .host_torch import TorchHostAttention as cls
    backend = cls(spec)
    self_check(backend)
    return backend


# Largest error a self-check accepts per KV precision, on unit-variance data.
SELF_CHECK_TOL = {"f32": 1e-4, "f16": 1e-2, "bf16": 5e-2, "u8": 0.2}


def self_check(backend) -> None:
    """A tiny mixed step on a scratch tier against a float64 reference; raises if the path is broken.

    Catches a private op that compiles but computes something else in this openvino version.
    """
    from .metadata import build_metadata
    s, lay = backend.spec, backend.layout
    bs = lay.block_size
    backend.bind(HostKVTier(lay, 4))
    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=gen)

    n0 = bs + 3                                            # crosses a block boundary
    keys = [rand(n0 + 1, s.num_kv_heads, s.head_dim), rand(2, s.num_kv_heads, s.head_dim)]
    vals = [rand(n0 + 1, s.num_kv_heads, s.head_dim), rand(2, s.num_kv_heads, s.head_dim)]
    tables = [[2, 0], [3]]
    steps = [  # (query_lens, seq_lens, tables, rows of each sequence's K/V)
        ([n0], [n0], [tables[0]], [(0, 0, n0)]),
        ([1, 2], [n0 + 1, 2], tables, [(0, n0, n0 + 1), (1, 0, 2)]),
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


def plain_layout(spec: HostAttentionSpec, path: str) -> HostKVLayout:
    """The unquantised layout the fallbacks use; they cannot read the op's u8 blocks."""
    if spec.kv_precision == "u8":
        raise ValueError(f"kv_cache_dtype 'u8' needs the ov_paged host attention; {path} has no u8 kernel")
    return HostKVLayout.make(spec.num_layers, spec.num_kv_heads, spec.head_dim, spec.block_size, spec.kv_precision)
