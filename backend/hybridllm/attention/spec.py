"""What every host attention backend shares: the spec it is built from and the per-step metadata
it takes (HostStep, checked once per step by make_step)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import HOST_ATTENTION_PATHS, HOST_ISAS
from ..dtypes import KV_PRECISIONS, torch_dtype
from .kv_cache import KVLayout
from ..utils import ceil_div
from .metadata import AttentionMetadata


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
    path: str = "auto"                  # EngineConfig.host_attention: auto | native | ov_paged | ov_sdpa | torch
    isa: str = "auto"                   # the native kernel's: auto (the best this CPU has) | avx512 | avx2 | scalar

    def __post_init__(self):
        if self.kv_precision not in KV_PRECISIONS:
            raise ValueError(f"kv_cache_dtype: {self.kv_precision!r} is not one of {', '.join(KV_PRECISIONS)}")
        if self.path not in HOST_ATTENTION_PATHS:
            raise ValueError(f"host_attention: {self.path!r} is not one of {', '.join(HOST_ATTENTION_PATHS)}")
        if self.isa not in HOST_ISAS:
            raise ValueError(f"host_isa: {self.isa!r} is not one of {', '.join(HOST_ISAS)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")

    @property
    def scale(self) -> float:
        return self.head_dim ** -0.5


def plain_layout(spec: HostAttentionSpec, path: str) -> KVLayout:
    """The unquantized layout the fallbacks use; they cannot read the op's u8 blocks."""
    if spec.kv_precision == "u8":
        raise ValueError(f"kv_cache_dtype 'u8' needs the ov_paged host attention; {path} has no u8 kernel")
    return KVLayout(spec.num_layers, spec.num_kv_heads, spec.head_dim, spec.block_size,
                    torch_dtype(spec.kv_precision))


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
        nb = ceil_div(slen, bs)
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
    begins = np.cumsum([0] + [t.shape[0] for t in tables]).astype(np.int32)
    # The slots the fallbacks write must be the ones the tables imply (the op derives its own);
    # vectorised over the step's tokens: token j of sequence i sits at position past[i] + j.
    q = np.asarray(qlens, dtype=np.int64)
    pos = np.arange(int(q.sum())) - np.repeat(np.asarray(qsl[:-1], dtype=np.int64), q) + np.repeat(past, q)
    want = block_indices[np.repeat(begins[:-1], q) + pos // bs].astype(np.int64) * bs + pos % bs
    if not np.array_equal(want, md.slot_mapping.cpu().numpy()):
        raise ValueError("slot_mapping does not match the block tables and seq_lens")
    return HostStep(
        md=md,
        query_lens=tuple(qlens),
        block_tables=tuple(tables),
        past_lens=past,
        subsequence_begins=np.asarray(qsl, dtype=np.int32),
        block_indices=block_indices.astype(np.int32),
        block_indices_begins=begins,
        max_context_len=np.array(max(md.seq_lens, default=0), dtype=np.int32),
    )
