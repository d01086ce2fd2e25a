"""The public-opset host attention path: gather blocks, matmul, softmax, matmul in OpenVINO.

For when the private PagedAttention op is missing or fails. One graph, compiled
once with dynamic shapes, serves decodes and prefills:

    q [B, Lq, H*D], block_tables [B, NB], bias [B, Lq, NB*bs], key/value_cache [blocks, KVH, bs, D]
    -> out [B, Lq, H*D]

The caches are the host tier's tensors (zero copy), bound per layer to one
infer request. New K/V are written into them in torch before the call. GQA
folds the query heads that share a KV head into rows ([B, KVH, G, Lq, D]) rather
than repeating K/V; q is scaled before the matmul. Decodes go in one batch,
prefills one sequence at a time, both cut into chunks so the gathered K/V and
the scores stay under CHUNK_BYTES.
"""
from __future__ import annotations

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import torch

from .kv_cache import KVCacheTier
from ..ov_common import compile_config, core as ov_core, param as _param, stable_names
from .ov_cache import OV_TYPES, cache_tensors
from .spec import HostAttentionSpec, HostStep, plain_layout

CHUNK_BYTES = 64 << 20


def build_model(spec: HostAttentionSpec, cache_type: ov.Type) -> ov.Model:
    h, kvh, d = spec.num_heads, spec.num_kv_heads, spec.head_dim
    g = h // kvh
    q = _param([-1, -1, h * d], ov.Type.f32, "query")
    kc = _param([-1, kvh, -1, d], cache_type, "key_cache")
    vc = _param([-1, kvh, -1, d], cache_type, "value_cache")
    tables = _param([-1, -1], ov.Type.i32, "block_tables")
    bias = _param([-1, -1, -1], ov.Type.f32, "bias")

    def i64(values):
        return ops.constant(np.array(values, dtype=np.int64))

    def gathered(cache):
        x = ops.gather(cache, tables, i64(0))                          # [B, NB, KVH, bs, D]
        if cache_type != ov.Type.f32:
            x = ops.convert(x, ov.Type.f32)                            # only the gathered blocks
        x = ops.transpose(x, i64([0, 2, 1, 3, 4]))                     # [B, KVH, NB, bs, D]
        return ops.reshape(x, i64([0, kvh, 1, -1, d]), special_zero=True)   # [B, KVH, 1, Lk, D]

    qh = ops.reshape(q, i64([0, 0, kvh, g, d]), special_zero=True)     # [B, Lq, KVH, G, D]
    qh = ops.transpose(qh, i64([0, 2, 3, 1, 4]))                       # [B, KVH, G, Lq, D]
    qh = ops.multiply(qh, ops.constant(np.array(spec.scale, dtype=np.float32)))
    scores = ops.matmul(qh, gathered(kc), False, True)                 # [B, KVH, G, Lq, Lk]
    scores = ops.add(scores, ops.unsqueeze(bias, i64([1, 2])))         # bias [B, 1, 1, Lq, Lk]
    probs = ops.softmax(scores, -1)
    o = ops.matmul(probs, gathered(vc), False, False)                  # [B, KVH, G, Lq, D]
    o = ops.transpose(o, i64([0, 3, 1, 2, 4]))                         # [B, Lq, KVH, G, D]
    o = ops.reshape(o, i64([0, 0, h * d]), special_zero=True)          # [B, Lq, H*D]
    return stable_names(ov.Model([o], [q, kc, vc, tables, bias], "hybridllm_sdpa_attention"), "sdpa")


def _bias(q_pos: np.ndarray, k_len: int, seq_len: int, window: int | None) -> np.ndarray:
    # q_pos: [Lq] positions of the queries -> [Lq, k_len] 0 where visible, -inf elsewhere
    k_pos = np.arange(k_len)[None, :]
    ok = (k_pos <= q_pos[:, None]) & (k_pos < seq_len)
    if window:
        ok &= q_pos[:, None] - k_pos < window
    return np.where(ok, np.float32(0), np.float32(-np.inf)).astype(np.float32)


class SdpaOVAttention:
    name = "ov_sdpa"

    def __init__(self, spec: HostAttentionSpec, core: ov.Core | None = None):
        self.spec = spec
        self.layout = plain_layout(spec, self.name)
        # Snippets tokenizes this pattern into a slower kernel than the plain matmuls here.
        cfg = compile_config("f32", spec.cache_dir, spec.num_threads, SNIPPETS_MODE="DISABLE")
        model = build_model(spec, OV_TYPES[self.layout.precision])
        self.compiled = (core or ov_core()).compile_model(model, "CPU", cfg)
        self.request = self.compiled.create_infer_request()
        self._tier: KVCacheTier | None = None
        self._caches: list[tuple[ov.Tensor, ov.Tensor]] = []
        self._keep: list = []
        self._plan_for: HostStep | None = None
        self._plan: list = []

    def bind(self, tier: KVCacheTier) -> None:
        if tier.layout != self.layout:
            raise ValueError(f"host tier layout {tier.layout} differs from the ov_sdpa path's {self.layout}")
        self._tier = tier
        self._keep = []
        self._caches = [cache_tensors(tier, layer, self._keep) for layer in range(self.layout.num_layers)]
        self._plan_for = None

    def _make_plan(self, step: HostStep) -> list:
        """Per step: (token rows, block_tables [B, NB], bias [B, Lq, Lk]) for each call; same for all layers."""
        s, bs = self.spec, self.layout.block_size
        per_kv_token = 2 * s.num_kv_heads * s.head_dim * 4             # gathered K + V bytes per key
        plan = []
        starts = step.subsequence_begins
        decodes = [i for i, n in enumerate(step.query_lens) if n == 1]
        if decodes:
            nb = max(step.block_tables[i].shape[0] for i in decodes)
            per_seq = nb * bs * (per_kv_token + 4 * s.num_heads)
            chunk = max(1, CHUNK_BYTES // per_seq)
            for c in range(0, len(decodes), chunk):
                part = decodes[c:c + chunk]
                tables = np.zeros((len(part), nb), np.int32)           # padding reads block 0, masked out
                bias = np.empty((len(part), 1, nb * bs), np.float32)
                for r, i in enumerate(part):
                    t = step.block_tables[i]
                    tables[r, :t.shape[0]] = t
                    seq_len = int(step.past_lens[i]) + 1
                    bias[r] = _bias(np.array([seq_len - 1]), nb * bs, seq_len, s.sliding_window)
                rows = torch.tensor([int(starts[i]) for i in part], dtype=torch.int64)
                plan.append((rows, tables, bias))
        for i, n in enumerate(step.query_lens):
            if n == 1:
                continue
            t = step.block_tables[i][None, :]
            k_len = t.shape[1] * bs
            past = int(step.past_lens[i])
            rows_per_call = max(1, (CHUNK_BYTES - k_len * per_kv_token) // (4 * s.num_heads * k_len))
            for a in range(0, n, rows_per_call):
                b = min(n, a + rows_per_call)
                bias = _bias(np.arange(past + a, past + b), k_len, past + n, s.sliding_window)[None]
                plan.append((slice(int(starts[i]) + a, int(starts[i]) + b), t, bias))
        return plan

    def forward(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                step: HostStep) -> torch.Tensor:
        md = step.md
        kc, vc = self._tier.key_cache[layer], self._tier.value_cache[layer]
        kc[md.slot_block, :, md.slot_offset] = k.to(kc.dtype)
        vc[md.slot_block, :, md.slot_offset] = v.to(vc.dtype)
        if step is not self._plan_for:
            self._plan, self._plan_for = self._make_plan(step), step
        t = q.shape[0]
        qf = q.reshape(t, -1)                                           # [T, H * D]
        out = torch.empty_like(qf)
        r = self.request
        ck, cv = self._caches[layer]
        r.set_tensor("key_cache", ck)
        r.set_tensor("value_cache", cv)
        for rows, tables, bias in self._plan:
            if isinstance(rows, slice):
                qb = qf[rows].unsqueeze(0).contiguous()                 # [1, Lq, H * D]
            else:
                qb = qf[rows].unsqueeze(1).contiguous()                 # [B, 1, H * D]
            ob = torch.empty_like(qb)
            r.set_tensor("query", ov.Tensor(qb.numpy(), shared_memory=True))
            r.set_tensor("block_tables", ov.Tensor(tables, shared_memory=True))
            r.set_tensor("bias", ov.Tensor(bias, shared_memory=True))
            r.set_output_tensor(0, ov.Tensor(ob.numpy(), shared_memory=True))
            r.infer()
            if isinstance(rows, slice):
                out[rows] = ob[0]
            else:
                out[rows] = ob[:, 0]
        return out
