"""DecodeGraphs: gpu_only's decode steps over static buffers, bucketed by batch size, replayed as CUDA graphs.

A decode step of n sequences runs as the smallest bucket b >= n (1, 2, 4, 8, then every 16 up to
max_num_seqs). Rows n..b are padding: token 0 at position 0, context 1, writing their K/V to the device
tier's pad block (never handed out, attention/kv_cache.py) and never sampled. The buffers, the bucketing, the
padding and the forward are one code path on every device: on CUDA each bucket's forward is captured
once at start-up and replayed; on the CPU (enforce_eager=False, for tests) the same forward runs eagerly.
Prefill and mixed steps stay eager (ModelRunner).
"""
from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F

from ..attention import DeviceAttention
from ..kernels import DeviceOps
from ..attention.kv_cache import KVCacheTier
from ..models.llama import LlamaModel
from ..scheduler import StepInput
from ..utils import ceil_div

log = logging.getLogger("hybridllm")


def batch_buckets(max_num_seqs: int) -> tuple[int, ...]:
    """1, 2, 4, 8, then every 16, ending at max_num_seqs."""
    sizes = [b for b in (1, 2, 4, 8) if b < max_num_seqs]
    sizes += range(16, max_num_seqs, 16)
    return tuple(sizes) + (max_num_seqs,)


class DecodeGraphs:
    def __init__(self, model: LlamaModel, attention: DeviceAttention, tier: KVCacheTier, max_num_seqs: int,
                 max_model_len: int, capture: bool):
        if tier.pad_block is None:
            raise ValueError("DecodeGraphs needs a device tier with a pad block")
        self.model = model
        self.attention = attention
        self.ops: DeviceOps = attention.ops
        self.tier = tier
        self.block_size = bs = tier.layout.block_size
        self.pad_block = tier.pad_block
        self.max_blocks = ceil_div(max_model_len, bs)
        self.buckets = batch_buckets(max_num_seqs)
        cap = self.buckets[-1]
        device = model.device
        # One flat int64 buffer, [ids | positions | slots | context lens] of `cap` each, then the block
        # tables [cap, max_blocks]: a step fills the pinned host copy and moves it in one transfer.
        self.cap = cap
        size = 4 * cap + cap * self.max_blocks
        self.host = torch.zeros(size, dtype=torch.int64, pin_memory=device.type == "cuda")
        self.host_np = self.host.numpy()
        self.flat = torch.zeros(size, dtype=torch.int64, device=device)
        self.copied = torch.cuda.Event() if device.type == "cuda" else None
        self.max_context: int | None = None       # the torch ops' gather width when eager; None under capture
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.replay = capture
        self.steps: Counter[int] = Counter()      # steps run per bucket
        if capture:
            self._capture()

    # -- the static buffers ---------------------------------------------------------------------

    def _views(self, b: int):
        c, f = self.cap, self.flat
        tables = f[4 * c:].view(c, self.max_blocks)
        return f[:b], f[c:c + b], f[2 * c:2 * c + b], f[3 * c:3 * c + b], tables[:b]

    def _fill(self, seqs: list[StepInput], b: int) -> None:
        """Rows 0..n-1 from the step's sequences, n..b-1 padding; one host-to-device copy."""
        if self.copied is not None:
            self.copied.synchronize()           # the last step's copy has left the pinned buffer
        c, bs, n = self.cap, self.block_size, len(seqs)
        h = self.host_np
        ids, pos, slots, lens = h[:c], h[c:2 * c], h[2 * c:3 * c], h[3 * c:4 * c]
        tables = h[4 * c:].reshape(c, self.max_blocks)
        for r, s in enumerate(seqs):
            p = s.num_computed_tokens                       # the decode token's position
            ids[r] = s.token_ids[0]
            pos[r] = p
            slots[r] = s.block_table[p // bs] * bs + p % bs
            lens[r] = p + 1
            nb = ceil_div(p + 1, bs)                        # the blocks the kernel reads
            tables[r, :nb] = s.block_table[:nb]
        ids[n:b], pos[n:b], slots[n:b], lens[n:b] = 0, 0, self.pad_block * bs, 1
        tables[n:b, 0] = self.pad_block
        used = 4 * c + b * self.max_blocks
        self.flat[:used].copy_(self.host[:used], non_blocking=True)
        if self.copied is not None:
            self.copied.record()
        # A captured forward must not depend on this step's lengths; the eager one gathers no wider than needed.
        self.max_context = None if self.replay else int(lens[:b].max())

    # -- the forward (captured on CUDA) -----------------------------------------------------------

    def _forward(self, b: int) -> torch.Tensor:
        """One decode step of the first b rows -> logits [b, vocab] float32."""
        m, ops, attn = self.model, self.ops, self.attention
        cfg = m.cfg
        ids, pos, slots, lens, tables = self._views(b)
        h = m.embed(ids)                                                          # [b, hidden]
        delta = None                                                              # the MLP output not yet added
        for i, w in enumerate(m.layers):
            x, h = ops.add_rms_norm(h, delta, w.input_norm, cfg.rms_norm_eps)
            qkv = ops.linear(x, w.qkv, w.qkv_bias)                                # [b, (H + 2 * KVH) * D]
            q = ops.rope_store(qkv, pos, slots, m.rope.cos, m.rope.sin, attn.key_cache[i], attn.value_cache[i],
                               cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim)   # [b, H, D]
            o = ops.paged_decode(q, attn.key_cache[i], attn.value_cache[i], tables, lens, attn.scale,
                                 attn.sliding_window, self.max_context)            # [b, H * D]
            x, h = ops.add_rms_norm(h, ops.linear(o, w.o_proj), w.post_norm, cfg.rms_norm_eps)
            delta = F.linear(ops.silu_mul(F.linear(x, w.gate_up)), w.down)       # [b, hidden]
        x, _ = ops.add_rms_norm(h, delta, m.norm, cfg.rms_norm_eps)
        return F.linear(x, m.lm_head).float()                                     # [b, vocab]

    def _capture(self) -> None:
        pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream()
        for b in reversed(self.buckets):          # largest first: the smaller ones reuse its memory
            self._fill([], b)
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._forward(b)                  # warm-up: Triton compiles, cuBLAS picks its kernels
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                out = self._forward(b)
            self.graphs[b] = (graph, out)
        torch.cuda.synchronize()
        log.info("decode CUDA graphs captured for batch sizes %s", ", ".join(map(str, self.buckets)))

    # -- a step -----------------------------------------------------------------------------------

    def accepts(self, seqs: list[StepInput]) -> bool:
        """Pure decode steps that sample every row and fit the largest bucket."""
        return 0 < len(seqs) <= self.cap and all(s.is_decode for s in seqs)

    def bucket(self, n: int) -> int:
        return next(b for b in self.buckets if b >= n)

    def run(self, seqs: list[StepInput]) -> torch.Tensor:
        """-> logits [len(seqs), vocab] float32, rows in seqs' order."""
        n = len(seqs)
        b = self.bucket(n)
        self.steps[b] += 1
        self._fill(seqs, b)
        if b in self.graphs:
            graph, out = self.graphs[b]
            graph.replay()
            return out[:n].clone()               # the next replay overwrites `out`
        return self._forward(b)[:n]


def build(parts, max_model_len: int) -> DecodeGraphs | None:
    """gpu_only's graphs, or None: enforce_eager=True, or None on the CPU (nothing to capture there)."""
    eager = parts.spec.enforce_eager
    if eager or (eager is None and parts.device.type != "cuda"):
        return None
    return DecodeGraphs(parts.model, parts.device_attention, parts.device_tier, parts.spec.max_num_seqs,
                        max_model_len, capture=parts.device.type == "cuda")
