"""Per-request changes to a logits row before a token is picked: penalties and min_tokens.

Rows without any (SamplingParams.penalized false) skip all of this. Each function takes one row
[vocab] float32 on the host and returns a new one.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..sampling_params import SamplingParams


def process(row: torch.Tensor, p: SamplingParams, prompt_ids: Sequence[int], output_ids: Sequence[int],
            eos_ids: Sequence[int]) -> torch.Tensor:
    """row: [vocab] logits -> [vocab] logits with p's penalties and min_tokens applied."""
    row = row.clone()
    vocab = row.numel()
    if p.repetition_penalty != 1.0:
        seen = torch.tensor(sorted(set(prompt_ids) | set(output_ids)), dtype=torch.int64)
        vals = row[seen]
        row[seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
    if (p.frequency_penalty or p.presence_penalty) and output_ids:
        counts = torch.bincount(torch.tensor(output_ids, dtype=torch.int64), minlength=vocab)[:vocab].float()
        row -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).float()
    if len(output_ids) < p.min_tokens:
        banned = [t for t in (*(() if p.ignore_eos else eos_ids), *p.stop_token_ids) if t < vocab]
        if banned:
            row[torch.tensor(banned, dtype=torch.int64)] = float("-inf")
    return row
