"""gpu_offload (FlexGen-style): decoder layers live in host memory and stream to the device.

Two staging slots on the device hold layer i (computing) and layer i+1 (copying).
On CUDA the copy runs on its own stream from pinned memory, so it overlaps the
compute of the current layer; on the CPU the same code runs with plain copies.
"""
from __future__ import annotations

import copy

import torch

from ...models.llama import LayerWeights, LlamaModel
from ...scheduler import SubBatch
from ..kv_copy import KVCopier
from .base import Parts, StepResult, head, sampled_ids, seqs_of, set_torch_threads
from ..step_prep import cpu_threads, prepare_step


class OffloadRunner:
    def __init__(self, model: LlamaModel, attention, block_size: int, torch_threads: int | None = None,
                 copier: KVCopier | None = None):
        self.model = model                        # layers on the host, the rest on the device
        self.attention = attention                # over the device KV tier
        self.block_size = block_size
        self.device = model.device
        self.torch_threads = torch_threads
        self.copier = copier
        self.cuda = self.device.type == "cuda"
        # Staging slots, allocated once at start-up.
        self.slots = [self._empty_like(model.layers[0]) for _ in range(2)]
        self.copy_stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.ready = [torch.cuda.Event() for _ in range(2)] if self.cuda else None
        self.free = [torch.cuda.Event() for _ in range(2)] if self.cuda else None

    def _empty_like(self, w: LayerWeights) -> LayerWeights:
        slot = copy.copy(w)
        for f, t in vars(w).items():
            if t is not None:
                setattr(slot, f, torch.empty(t.shape, dtype=t.dtype, device=self.device))
        return slot

    def _load(self, i: int, slot: int) -> None:
        src, dst = self.model.layers[i], self.slots[slot]
        if not self.cuda:
            for f, t in vars(src).items():
                if t is not None:
                    getattr(dst, f).copy_(t)
            return
        with torch.cuda.stream(self.copy_stream):
            self.copy_stream.wait_event(self.free[slot])    # the compute stream is done with this slot
            for f, t in vars(src).items():
                if t is not None:
                    getattr(dst, f).copy_(t, non_blocking=True)
            self.ready[slot].record(self.copy_stream)

    @torch.inference_mode()
    def execute(self, batches: list[SubBatch]) -> StepResult:
        seqs = seqs_of(batches)
        set_torch_threads(self.torch_threads)
        model = self.model
        st = prepare_step(seqs, self.block_size, model, self.device)
        if self.copier is not None:
            self.copier.wait()
        n = model.cfg.num_hidden_layers
        if self.cuda:
            for e in self.free:
                e.record()
        self._load(0, 0)
        h = model.embed(st.input_ids)                                              # [T, hidden]
        for i in range(n):
            slot = i % 2
            if i + 1 < n:
                self._load(i + 1, 1 - slot)                                        # prefetch the next layer
            if self.cuda:
                torch.cuda.current_stream().wait_event(self.ready[slot])
            w = self.slots[slot]
            q, k, v = model.attn_inputs(i, h, st.rope, w)
            o = self.attention.forward(i, q, k, v, st.md)                          # [T, H * D]
            h = model.attn_finish(i, h, o, w)
            if self.cuda:
                self.free[slot].record()
        return head(model.logits, h, st, sampled_ids(seqs))     # [S, vocab]


def build(parts: Parts) -> OffloadRunner:
    return OffloadRunner(parts.model, parts.device_attention, parts.device_tier.layout.block_size, cpu_threads(parts),
                         parts.copier)
