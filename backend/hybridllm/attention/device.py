"""DeviceAttention: paged attention on the compute device (cuda or cpu).

Decodes are batched into one paged-attention call (kernels/ops.py): on CUDA a Triton kernel that reads
each sequence's block table itself, elsewhere torch SDPA over the blocks gathered into a padded tensor.
Prefills run one SDPA call per sequence with a causal mask aligned to the end of its context (so
chunked prefill and recompute work the same way).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..kernels import DeviceOps
from .metadata import AttentionMetadata


class DeviceAttention:
    def __init__(self, key_cache: list[torch.Tensor], value_cache: list[torch.Tensor],
                 num_heads: int, num_kv_heads: int, head_dim: int, sliding_window: int | None = None,
                 ops: DeviceOps | None = None):
        self.key_cache = key_cache        # per layer: [num_blocks, KVH, block_size, D]
        self.value_cache = value_cache
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.sliding_window = sliding_window
        self.ops = ops or DeviceOps("torch")
        self.scale = head_dim ** -0.5

    def forward(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                md: AttentionMetadata) -> torch.Tensor:
        """q: [T, H, D], k/v: [T, KVH, D] -> [T, H * D]. Writes k/v into the cache first."""
        kc, vc = self.key_cache[layer], self.value_cache[layer]
        kc[md.slot_block, :, md.slot_offset] = k.to(kc.dtype)
        vc[md.slot_block, :, md.slot_offset] = v.to(vc.dtype)
        out = torch.empty_like(q)                                    # [T, H, D]
        if md.num_decodes:
            out[md.decode_token_index] = self._decode(q[md.decode_token_index], kc, vc, md)
        for s in md.prefills:
            out[s.q_start:s.q_end] = self._prefill(q[s.q_start:s.q_end], k[s.q_start:s.q_end],
                                                    v[s.q_start:s.q_end], kc, vc, s.seq_len, s.block_table)
        return out.view(q.shape[0], -1)

    def _decode(self, q, kc, vc, md: AttentionMetadata) -> torch.Tensor:
        # q: [B, H, D] -> [B, H, D]
        o = self.ops.paged_decode(q, kc, vc, md.decode_block_tables, md.decode_context_lens, self.scale,
                                  self.sliding_window, max_context=max(md.decode_seq_lens))
        return o.view(q.shape)

    def _prefill(self, q, k, v, kc, vc, seq_len: int, block_table: torch.Tensor) -> torch.Tensor:
        # q: [L, H, D] are the last L positions of a context of seq_len tokens.
        qlen = q.shape[0]
        qh = q.transpose(0, 1).unsqueeze(0)                          # [1, H, L, D]
        if qlen == seq_len and self.sliding_window is None and kc.dtype == q.dtype:
            keys, vals, mask, causal = k, v, None, True              # nothing cached before: skip the gather
            keys = keys.transpose(0, 1).unsqueeze(0)                 # [1, KVH, L, D]
            vals = vals.transpose(0, 1).unsqueeze(0)
        else:
            keys = kc[block_table].transpose(0, 1).reshape(self.num_kv_heads, -1, self.head_dim)[:, :seq_len]
            vals = vc[block_table].transpose(0, 1).reshape(self.num_kv_heads, -1, self.head_dim)[:, :seq_len]
            keys, vals = keys.unsqueeze(0).to(q.dtype), vals.unsqueeze(0).to(q.dtype)
            q_pos = torch.arange(seq_len - qlen, seq_len, device=q.device)[:, None]
            k_pos = torch.arange(seq_len, device=q.device)[None, :]
            mask = k_pos <= q_pos                                    # [L, seq_len]
            if self.sliding_window is not None:
                mask &= q_pos - k_pos < self.sliding_window
            causal = False
        o = F.scaled_dot_product_attention(qh, keys, vals, attn_mask=mask, is_causal=causal, enable_gqa=True)
        return o.squeeze(0).transpose(0, 1)                          # [L, H, D]
