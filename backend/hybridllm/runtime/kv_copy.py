"""KV copies between tiers: a request changing tier has its blocks copied before the step reads them.

The scheduler only records the move (scheduler.BlockCopy); KVCopier performs it off the engine
thread's critical path. On CUDA the copies are queued on a copy stream (pinned host memory, async
transfers); on the CPU they run on one worker thread. Either way they proceed while the engine thread
prepares the step, and the executor waits for them (`wait`) just before its first layer: every tier
move involves the host tier, which host attention and NEO's filing read and write from CPU threads
outside any stream order, so the wait is a host-side one. A step's copies finish before it reads the KV.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Mapping, Sequence

import torch

from ..attention.kv_cache import KVCacheTier
from ..kv import Tier
from ..scheduler import BlockCopy


def copy_blocks(a: KVCacheTier, src: Sequence[int], b: KVCacheTier, dst: Sequence[int]) -> None:
    """Copies a request's K/V from blocks src (of tier a) to blocks dst (of tier b), every layer.

    Same block size: whole blocks. Different block sizes: token by token, position p going
    from src[p // src_bs] to dst[p // dst_bs], for every position both tables hold. A u8 tier on
    either side: token by token through float32, dequantized from a u8 source and quantized into a u8
    destination on the way (the host tier's format is its own; the device tier keeps its dtype).
    """
    sbs, dbs = a.layout.block_size, b.layout.block_size
    if a.layout.quantized or b.layout.quantized:
        n = min(len(src) * sbs, len(dst) * dbs)
        s_idx = torch.tensor(list(src), dtype=torch.int64).to(a.device)
        pos = torch.arange(n)
        slots = torch.tensor(list(dst), dtype=torch.int64)[pos // dbs] * dbs + pos % dbs
        for layer in range(a.layout.num_layers):
            k, v = a.read_tokens(layer, s_idx, n)                  # [n, KVH, D] float32 on the host
            b.write_tokens(layer, slots, k, v)
        return
    nb = b.device.type == "cuda" or a.device.type == "cuda"     # pinned host memory: async transfers
    if sbs == dbs:
        n = min(len(src), len(dst))
        si = torch.tensor(list(src[:n]), dtype=torch.int64).to(a.device)
        di = torch.tensor(list(dst[:n]), dtype=torch.int64).to(b.device)
        for layer in range(a.layout.num_layers):
            b.key_cache[layer][di] = a.key_cache[layer][si].to(b.device, b.layout.dtype, non_blocking=nb)
            b.value_cache[layer][di] = a.value_cache[layer][si].to(b.device, b.layout.dtype, non_blocking=nb)
        return
    pos = torch.arange(min(len(src) * sbs, len(dst) * dbs))
    s_blk = torch.tensor(list(src), dtype=torch.int64)[pos // sbs].to(a.device)
    s_off = (pos % sbs).to(a.device)
    d_blk = torch.tensor(list(dst), dtype=torch.int64)[pos // dbs].to(b.device)
    d_off = (pos % dbs).to(b.device)
    for layer in range(a.layout.num_layers):
        # x[blk, :, off] is [num_tokens, kv_heads, head_dim]
        b.key_cache[layer][d_blk, :, d_off] = a.key_cache[layer][s_blk, :, s_off].to(b.device, b.layout.dtype,
                                                                                     non_blocking=nb)
        b.value_cache[layer][d_blk, :, d_off] = a.value_cache[layer][s_blk, :, s_off].to(b.device, b.layout.dtype,
                                                                                         non_blocking=nb)


class KVCopier:
    """Runs a step's BlockCopys asynchronously; `wait` orders them before the step's first KV read."""

    def __init__(self, tiers: Mapping[Tier, KVCacheTier], device: torch.device):
        self.tiers = tiers
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self.done = torch.cuda.Event() if self.cuda else None
        self.worker = None if self.cuda else ThreadPoolExecutor(1, thread_name_prefix="hybridllm-kv-copy")
        self._pending: Future | None = None
        self._queued = False
        self.num_copies = 0                     # BlockCopys performed, for tests and stats

    def submit(self, copies: Sequence[BlockCopy]) -> None:
        if not copies:
            return
        self.wait()                             # one step's copies in flight at a time
        self.num_copies += len(copies)
        if self.cuda:
            self.stream.wait_stream(torch.cuda.current_stream())     # the last step's writes are queued first
            with torch.cuda.stream(self.stream):
                self._run(copies)
            self.done.record(self.stream)
            self._queued = True
        else:
            self._pending = self.worker.submit(self._run, copies)

    def wait(self) -> None:
        """The submitted copies are complete; re-raises a copy's error."""
        if self._queued:
            self.done.synchronize()
            self._queued = False
        job, self._pending = self._pending, None
        if job is not None:
            job.result()

    def _run(self, copies: Sequence[BlockCopy]) -> None:
        with torch.inference_mode():
            for c in copies:
                copy_blocks(self.tiers[c.src_tier], c.src_blocks, self.tiers[c.dst_tier], c.dst_blocks)

    def close(self) -> None:
        if self.worker is not None:
            self.worker.shutdown(wait=True)
