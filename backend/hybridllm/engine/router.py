"""Router: which executor runs each sequence of a step.

Forced policies (and auto without a profile) route by phase: prefill chunks to the prefill policy's
executor, decodes to the decode policy's. Auto with a profile asks the StepPlanner, per step and per
KV tier, which of the tier's policies runs that tier's prefill chunks and which its decodes, from
the step's real shape (tokens, sequences, contexts); the decision is memoised by bucketed shape,
logged at debug and put in the trace.
"""
from __future__ import annotations

import logging

from ..kv import KVCacheManager
from ..policy import StepShape
from ..runtime import Runtime, Tracer
from ..scheduler import StepInput

log = logging.getLogger("hybridllm")


class Router:
    def __init__(self, runtime: Runtime, kv: KVCacheManager, tracer: Tracer | None = None):
        self.rt, self.kv, self.tracer = runtime, kv, tracer
        self.kv_dtype = runtime.planner.kv_dtype if runtime.planner is not None else "f32"

    def route(self, seqs: tuple[StepInput, ...], step: int = 0) -> dict[str, list[StepInput]]:
        rt = self.rt
        groups: dict[str, list[StepInput]] = {}
        if rt.planner is None:
            for s in seqs:
                groups.setdefault(rt.decode_policy if s.is_decode else rt.prefill_policy, []).append(s)
            return groups
        by_tier: dict[str, tuple[list[StepInput], list[StepInput]]] = {}
        for s in seqs:
            pre, dec = by_tier.setdefault(self.kv.tier_of(s.request_id).value, ([], []))
            (dec if s.is_decode else pre).append(s)
        for tier, (pre, dec) in by_tier.items():
            choice = rt.planner.choose(tier, _prefill_shape(pre, self.kv_dtype), _decode_shape(dec, self.kv_dtype))
            if pre:
                groups.setdefault(choice.prefill, []).extend(pre)
            if dec:
                groups.setdefault(choice.decode, []).extend(dec)
            log.debug("step %d: %s", step, choice.reason)
            if self.tracer is not None:
                self.tracer.instant("planner", choice.reason, step=step)
        return groups

    def describe(self, max_len: int) -> list[str]:
        """What the planner picks for a few typical steps and requests: the start-up log's 'why'."""
        p, lines = self.rt.planner, []
        for tier in p.tiers:
            for n in (1, 8, 32):
                lines.append(p.choose(tier, StepShape(kv_dtype=self.kv_dtype),
                                      StepShape(decode_seqs=n, decode_context=n * 512, kv_dtype=self.kv_dtype)).reason)
            for n in (16, 512, 2048):
                lines.append(p.choose(tier, StepShape(n, 1, float(n), kv_dtype=self.kv_dtype),
                                      StepShape(kv_dtype=self.kv_dtype)).reason)
        for prompt in (16, 512, min(4096, max_len // 2)):
            lines.append("a request with " + p.place(prompt, 128, 8).reason)
        return lines


def _prefill_shape(seqs: list[StepInput], kv_dtype: str) -> StepShape:
    tokens = sum(len(s.token_ids) for s in seqs)
    if not tokens:
        return StepShape(kv_dtype=kv_dtype)
    ctx = sum((s.num_computed_tokens + len(s.token_ids)) * len(s.token_ids) for s in seqs) / tokens
    return StepShape(tokens, len(seqs), ctx, kv_dtype=kv_dtype)


def _decode_shape(seqs: list[StepInput], kv_dtype: str) -> StepShape:
    return StepShape(decode_seqs=len(seqs), decode_context=sum(s.num_computed_tokens + 1 for s in seqs),
                     kv_dtype=kv_dtype)
