"""Sampling: greedy, temperature, top-k, top-p, each row with its own generator."""
from __future__ import annotations

import torch

from ..sampling_params import SamplingParams


def sample(logits: torch.Tensor, params: list[SamplingParams],
           generators: list[torch.Generator | None], greedy: torch.Tensor | None = None) -> list[int]:
    """logits: [S, vocab] float32 (any device) -> one token id per row, with one transfer to the host.
    greedy: each row's argmax [S] when the executor computed it already."""
    if greedy is None:
        greedy = logits.argmax(dim=-1)
    out = greedy.tolist()
    if all(p.greedy for p in params):
        return out
    rows = logits.float().cpu()                                     # [S, vocab] on the host, once
    for i, p in enumerate(params):
        if p.greedy:
            continue
        # Per-row draws with the row's own generator keep seeded output
        # independent of what else shares the batch.
        probs = _probs(rows[i], p)                                  # [vocab]
        out[i] = int(torch.multinomial(probs, 1, generator=generators[i]).item())
    return out


def _probs(row: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    row = row / p.temperature
    if p.top_k > 0 and p.top_k < row.numel():
        kth = torch.topk(row, p.top_k).values[-1]
        row = row.masked_fill(row < kth, float("-inf"))
    if p.top_p < 1.0:
        sorted_logits, order = row.sort(descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token once the mass before it already reaches top_p; the first always stays.
        drop = (cum - sorted_logits.softmax(-1)) >= p.top_p
        drop[0] = False
        row = row.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return row.softmax(-1)
