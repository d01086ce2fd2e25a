"""The native host attention path: our own paged decode kernel (host_native.cpp) over the host tier,
OpenVINO's PagedAttention for steps with a prefill.

The tier keeps the op's layout (attention/kv_cache.py: 32-token blocks, u8 with per-channel key and
per-token value parameters), so both kernels read and write the same blocks: a sequence prefilled by
the op decodes in ours and the other way round. Decode-only steps (every decode step of cpu_only's
per-layer plane, partition and NEO's sub-batch B) write their new K/V and attend in the kernel, over
(sequence, KV head) pairs on OpenMP threads, with the GIL released; any step with a prefill runs in
the op as a whole. The kernel is AVX-512, AVX2 or scalar, chosen from the CPU flags (spec.isa forces one).
"""
from __future__ import annotations

import torch

from .host_ov_paged import PagedOVAttention
from .kv_cache import KVCacheTier
from .native_build import FORMATS, ISA_NAMES, ISAS, library
from .spec import HostAttentionSpec, HostStep


class NativeAttention:
    name = "native"

    def __init__(self, spec: HostAttentionSpec):
        self.lib = library()                        # builds on first use (seconds); raises without g++
        self.spec = spec
        self.prefill = PagedOVAttention(spec)       # prefills and mixed steps; its layout is the tier's
        self.layout = self.prefill.layout
        self.fmt = FORMATS[self.layout.precision]
        self.isa = ISAS[spec.isa]
        self.threads = spec.num_threads or 0        # 0: OpenMP's default, all cores
        self.ran_isa: str | None = None             # the kernel the last decode ran (tests, logs)
        self.tier: KVCacheTier | None = None
        self._step: HostStep | None = None
        self._args: tuple | None = None

    def bind(self, tier: KVCacheTier) -> None:
        self.prefill.bind(tier)
        self.tier = tier
        self._step = None

    def _decode_args(self, step: HostStep) -> tuple:
        """The step's block tables, context lengths and slots as the kernel takes them (once per step)."""
        if step is not self._step:
            md = step.md
            tables = md.decode_block_tables.to(torch.int32).contiguous()      # [B, max_blocks]
            if tables.shape[1] == 0:
                tables = torch.zeros((tables.shape[0], 1), dtype=torch.int32)
            lens = torch.tensor(md.decode_seq_lens, dtype=torch.int32)       # [B]
            slots = md.slot_mapping.to(torch.int64).contiguous()              # [B]
            self._args, self._step = (tables, lens, slots), step
        return self._args

    def forward(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                step: HostStep) -> torch.Tensor:
        if step.md.prefills:
            return self.prefill.forward(layer, q, k, v, step)
        s, lay = self.spec, self.layout
        tables, lens, slots = self._decode_args(step)
        t = q.shape[0]
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()            # [B, H, D], [B, KVH, D] x2
        kc, vc = self.tier.key_cache[layer], self.tier.value_cache[layer]
        self.lib.hl_write(self.fmt, t, s.num_kv_heads, s.head_dim, lay.block_size, k.data_ptr(), v.data_ptr(),
                          slots.data_ptr(), kc.data_ptr(), vc.data_ptr())
        out = torch.empty((t, s.num_heads * s.head_dim), dtype=torch.float32)  # [B, H * D]
        ran = self.lib.hl_decode(self.isa, self.threads, self.fmt, t, s.num_heads, s.num_kv_heads, s.head_dim,
                                 lay.block_size, tables.shape[1], s.sliding_window or 0, s.scale, q.data_ptr(),
                                 kc.data_ptr(), vc.data_ptr(), tables.data_ptr(), lens.data_ptr(), out.data_ptr())
        if ran < 0:
            raise ValueError(f"native host attention cannot take heads {s.num_heads}/{s.num_kv_heads} of "
                             f"{s.head_dim} (at most 16 query heads per KV head, head_dim <= 256)")
        self.ran_isa = ISA_NAMES[ran]
        return out
