"""gpu_only: weights, attention and KV all on the compute device."""
from __future__ import annotations

import torch

from ...models.llama import LlamaModel
from ...scheduler import SubBatch
from .. import decode_graphs
from ..step_prep import cpu_threads, prepare_step
from ..kv_copy import KVCopier
from .base import Parts, StepResult, head, sampled_ids, seqs_of, set_torch_threads


class ModelRunner:
    """Weights, attention and KV all on the compute device."""

    def __init__(self, model: LlamaModel, attention, block_size: int, torch_threads: int | None = None,
                 graphs: decode_graphs.DecodeGraphs | None = None, copier: KVCopier | None = None):
        self.model = model
        self.graphs = graphs                        # pure decode steps: bucketed static buffers (CUDA graphs)
        self.attention = attention
        self.block_size = block_size
        self.device = model.device
        self.torch_threads = torch_threads          # on the CPU: the threads torch's linear layers get
        self.copier = copier                        # the step's tier moves land before the first KV read

    @torch.inference_mode()
    def execute(self, batches: list[SubBatch]) -> StepResult:
        seqs = seqs_of(batches)
        set_torch_threads(self.torch_threads)
        if self.graphs is not None and self.graphs.accepts(seqs):
            _wait(self.copier)
            return StepResult(self.graphs.run(seqs), sampled_ids(seqs))                # [n, vocab]
        model = self.model
        st = prepare_step(seqs, self.block_size, model, self.device)
        _wait(self.copier)
        h = model.embed(st.input_ids)                                              # [T, hidden]
        for i in range(model.cfg.num_hidden_layers):
            q, k, v = model.attn_inputs(i, h, st.rope)
            o = self.attention.forward(i, q, k, v, st.md)                           # [T, H * D]
            h = model.attn_finish(i, h, o)
        return head(model.logits, h, st, sampled_ids(seqs))     # [S, vocab]


def build(parts: Parts) -> ModelRunner:
    with torch.inference_mode():       # the captured graphs' tensors are inference tensors
        graphs = decode_graphs.build(parts, parts.max_model_len)
    return ModelRunner(parts.model, parts.device_attention, parts.device_tier.layout.block_size, cpu_threads(parts),
                       graphs, parts.copier)


def _wait(copier: KVCopier | None) -> None:
    if copier is not None:
        copier.wait()
