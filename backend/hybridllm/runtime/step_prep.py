"""Step preparation: the tensors one step's executor builds once (never per layer) from its StepInputs."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..attention import AttentionMetadata, build_metadata
from ..models.llama import LlamaModel
from ..scheduler import StepInput


@dataclass(frozen=True)
class StepTensors:
    """Built once per step (never per layer)."""
    input_ids: torch.Tensor         # [T] on the compute device
    positions: torch.Tensor         # [T] on the compute device
    rope: tuple[torch.Tensor, torch.Tensor] | None   # cos, sin [T, 1, D] for every layer
    md: AttentionMetadata           # on the device where attention runs (slot mapping, masks)
    sample_index: torch.Tensor      # [S] rows of the step whose logits are sampled
    prompt_index: torch.Tensor | None = None    # [R] rows whose logits score prompt tokens; None: none asked
    prompt_spans: tuple[tuple[str, int, int], ...] = ()   # (request_id, first position, rows) in row order


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
    index, spans = prompt_rows(seqs, [md.query_start_loc[j] for j in range(len(seqs))], device)
    return StepTensors(torch.tensor(ids, dtype=torch.int64, device=device), pos, model.rope_tables(pos) if with_rope else None, md,
                       torch.tensor(last, dtype=torch.int64, device=device), index, spans)


def prompt_rows(seqs: list[StepInput], starts: list[int], device: torch.device):
    """The rows (of a step whose sequence j starts at row starts[j]) that score prompt tokens:
    ([R] index or None, (request_id, first position, rows) per sequence that asks)."""
    rows: list[int] = []
    spans = []
    for s, start in zip(seqs, starts):
        if s.num_prompt_logits:
            rows += range(int(start), int(start) + s.num_prompt_logits)
            spans.append((s.request_id, s.num_computed_tokens, s.num_prompt_logits))
    if not rows:
        return None, ()
    return torch.tensor(rows, dtype=torch.int64, device=device), tuple(spans)


def cpu_threads(parts: "Parts") -> int | None:
    """The torch threads an executor whose linear layers run in torch keeps: all of them on the CPU."""
    return parts.spec.torch_threads if parts.device.type == "cpu" else None
