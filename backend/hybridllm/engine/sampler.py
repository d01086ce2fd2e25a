"""Sampling: penalties, greedy, temperature, top-k, top-p, min-p, each row with its own generator; logprobs."""
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
    rank: int = 1                           # 1 + how many tokens are more likely (vLLM's rank)


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
    return prompt_logprobs(raw[None], [token], k)[0]


def prompt_logprobs(logits: torch.Tensor, targets: Sequence[int], k: int) -> list[TokenLogprob]:
    """logits: [R, vocab] (any device), row r predicting targets[r] -> one TokenLogprob per row, each
    with its rank and top k; one host transfer for the lot."""
    lp = torch.log_softmax(logits.float(), dim=-1)                                  # [R, vocab]
    tgt = torch.as_tensor(list(targets), dtype=torch.int64, device=lp.device)[:, None]
    chosen = lp.gather(1, tgt)                                                      # [R, 1]
    ranks = (lp > chosen).sum(dim=1) + 1                                            # [R]
    chosen, ranks = chosen[:, 0].tolist(), ranks.tolist()
    top_v = top_i = None
    if k:
        top_v, top_i = torch.topk(lp, k, dim=-1)                                    # [R, k] each
        top_v, top_i = top_v.tolist(), top_i.tolist()
    return [TokenLogprob(int(t), chosen[r], tuple(zip(top_i[r], top_v[r])) if k else (), int(ranks[r]))
            for r, t in enumerate(targets)]


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
    probs = row.softmax(-1)
    if p.min_p > 0:
        # vLLM's min_p: keep tokens at least min_p times as likely as the top one (the top always stays).
        probs = probs.masked_fill(probs < p.min_p * probs.max(), 0.0)
    return probs
