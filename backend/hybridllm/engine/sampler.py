"""Sampling: penalties, greedy, temperature, top-k, top-p, each row with its own generator; logprobs."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..sampling_params import SamplingParams
from .logits_processors import process


@dataclass(frozen=True)
class TokenLogprob:
    """The picked token's log-probability and the top-k alternatives (the model's distribution,
    before penalties and temperature)."""
    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...]      # (token id, logprob), most likely first; k = params.logprobs


@dataclass(frozen=True)
class RowHistory:
    """What a penalized row needs: the request's prompt and output token ids."""
    prompt_ids: Sequence[int]
    output_ids: Sequence[int]


def sample(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None],
           greedy: torch.Tensor | None = None, history: list[RowHistory | None] | None = None,
           eos_ids: Sequence[int] = ()) -> tuple[list[int], list[TokenLogprob | None]]:
    """logits: [S, vocab] float32 (any device) -> (one token id per row, its logprobs where asked),
    with one transfer to the host. greedy: each row's argmax [S] when the executor computed it already.
    history: per row, needed where params[i].penalized."""
    if greedy is None:
        greedy = logits.argmax(dim=-1)
    out = greedy.tolist()
    special = [i for i, p in enumerate(params) if not p.greedy or p.penalized or p.logprobs is not None]
    if not special:
        return out, [None] * len(params)
    rows = logits.float().cpu()                                     # [S, vocab] on the host, once
    logprobs: list[TokenLogprob | None] = [None] * len(params)
    for i in special:
        p, raw = params[i], rows[i]
        row = process(raw, p, history[i].prompt_ids, history[i].output_ids, eos_ids) if p.penalized else raw
        if not p.greedy:
            # Per-row draws with the row's own generator keep seeded output
            # independent of what else shares the batch.
            probs = _probs(row, p)                                  # [vocab]
            out[i] = int(torch.multinomial(probs, 1, generator=generators[i]).item())
        elif p.penalized:
            out[i] = int(row.argmax())
        if p.logprobs is not None:
            logprobs[i] = _logprobs(raw, out[i], p.logprobs)
    return out, logprobs


def _logprobs(raw: torch.Tensor, token: int, k: int) -> TokenLogprob:
    lp = torch.log_softmax(raw, dim=-1)                             # [vocab]
    top = ()
    if k:
        vals, ids = torch.topk(lp, k)
        top = tuple(zip(ids.tolist(), vals.tolist()))
    return TokenLogprob(token, float(lp[token]), top)


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
