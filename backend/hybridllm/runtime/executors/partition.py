"""partition: linear layers on the compute device, attention on the host over the host KV tier.

Per layer, the new tokens' Q/K/V go down to the host and the attention output
comes back up. This executor runs the two halves back to back; the NEO
pipelined variant overlaps them over two sub-batches.
"""
from __future__ import annotations

import torch

from ...models.llama import LlamaModel
from ...scheduler import SubBatch
from ..kv_copy import KVCopier
from .base import Parts, StepResult, head, sampled_ids, seqs_of, set_torch_threads
from ..step_prep import cpu_threads, prepare_step

HOST = torch.device("cpu")


class PartitionRunner:
    def __init__(self, model: LlamaModel, host_attention, torch_threads: int | None = None,
                 copier: KVCopier | None = None):
        self.model = model                        # on the compute device
        self.attention = host_attention           # HostAttention over the host tier
        self.block_size = host_attention.layout.block_size   # the host tier's, which may differ from the device's
        self.device = model.device
        self.torch_threads = torch_threads
        self.copier = copier

    @torch.inference_mode()
    def execute(self, batches: list[SubBatch]) -> StepResult:
        seqs = seqs_of(batches)
        set_torch_threads(self.torch_threads)
        model = self.model
        st = prepare_step(seqs, self.block_size, model, HOST)
        if self.copier is not None:
            self.copier.wait()
        h = model.embed(st.input_ids)                                              # [T, hidden]
        for i in range(model.cfg.num_hidden_layers):
            q, k, v = model.attn_inputs(i, h, st.rope)
            o = self.attention.forward(i, *to_host(q, k, v), st.md)                # [T, H * D] on the host
            h = model.attn_finish(i, h, o.to(self.device, h.dtype, non_blocking=True))
        return head(model.logits, h, st, sampled_ids(seqs))     # [S, vocab]


def build(parts: Parts) -> PartitionRunner:
    return PartitionRunner(parts.model, parts.host_attention, cpu_threads(parts), parts.copier)


def to_host(*xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Host attention computes in float32, whatever the model's dtype."""
    return tuple(x.to(HOST, torch.float32) for x in xs)
