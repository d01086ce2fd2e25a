"""gpu_only: weights, attention and KV all on the compute device; and the step tensors every executor builds."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..attention import AttentionMetadata, build_metadata
from ..models.llama import LlamaModel
from ..scheduler import StepInput
from . import decode_graphs
from .executor import Parts, StepResult, sampled_ids, set_torch_threads


@dataclass(frozen=True)
class StepTensors:
    """Built once per step (never per layer)."""
    input_ids: torch.Tensor         # [T] on the compute device
    positions: torch.Tensor         # [T] on the compute device
    rope: tuple[torch.Tensor, torch.Tensor] | None   # cos, sin [T, 1, D] for every layer
    md: AttentionMetadata           # on the device where attention runs (slot mapping, masks)
    sample_index: torch.Tensor      # [S] rows of the step whose logits are sampled


def prepare_step(seqs: list[StepInput], block_size: int, model: LlamaModel, attn_device: torch.device,
                 with_rope: bool = True) -> StepTensors:
    device = model.device
    query_lens = [len(s.token_ids) for s in seqs]
    seq_lens = [s.num_computed_tokens + n for s, n in zip(seqs, query_lens)]
    ids = [t for s in seqs for t in s.token_ids]
    positions = [p for s, n in zip(seqs, seq_lens) for p in range(s.num_computed_tokens, n)]
    md = build_metadata(query_lens, seq_lens, [s.block_table for s in seqs], block_size, attn_device,
                        model.cfg.sliding_window)
    last = [md.query_start_loc[j + 1] - 1 for j, s in enumerate(seqs) if s.sample]
    pos = torch.tensor(positions, dtype=torch.int64, device=device)
    return StepTensors(torch.tensor(ids, dtype=torch.int64, device=device), pos, model.rope_tables(pos) if with_rope else None, md,
                       torch.tensor(last, dtype=torch.int64, device=device))


class ModelRunner:
    """Weights, attention and KV all on the compute device."""

    def __init__(self, model: LlamaModel, attention, block_size: int, torch_threads: int | None = None,
                 graphs: decode_graphs.DecodeGraphs | None = None):
        self.model = model
        self.graphs = graphs                        # pure decode steps: bucketed static buffers (CUDA graphs)
        self.attention = attention
        self.block_size = block_size
        self.device = model.device
        self.torch_threads = torch_threads          # on the CPU: the threads torch's linear layers get

    @torch.inference_mode()
    def execute(self, seqs: list[StepInput]) -> StepResult:
        set_torch_threads(self.torch_threads)
        if self.graphs is not None and self.graphs.accepts(seqs):
            return StepResult(self.graphs.run(seqs), sampled_ids(seqs))                # [n, vocab]
        model = self.model
        st = prepare_step(seqs, self.block_size, model, self.device)
        h = model.embed(st.input_ids)                                              # [T, hidden]
        for i in range(model.cfg.num_hidden_layers):
            q, k, v = model.attn_inputs(i, h, st.rope)
            o = self.attention.forward(i, q, k, v, st.md)                           # [T, H * D]
            h = model.attn_finish(i, h, o)
        return StepResult(model.logits(h[st.sample_index]), sampled_ids(seqs))     # [S, vocab]


def build(parts: Parts) -> ModelRunner:
    with torch.inference_mode():       # the captured graphs' tensors are inference tensors
        graphs = decode_graphs.build(parts, parts.max_model_len)
    return ModelRunner(parts.model, parts.device_attention, parts.device_tier.layout.block_size, cpu_threads(parts),
                       graphs)


def cpu_threads(parts: Parts) -> int | None:
    """The torch threads an executor whose linear layers run in torch keeps: all of them on the CPU."""
    return parts.torch_threads if parts.device.type == "cpu" else None
