"""Scheduler: continuous batching under a token budget.

Deterministic and free of clocks and I/O: it reads the queues and the KV pools
and returns a frozen SchedulerOutput, so tests can drive it step by step.

Each step, running requests go first (oldest first): a decode takes one token,
an unfinished prefill takes its next chunk. Waiting requests are then admitted
while the budget, max_num_seqs and the prefill tier allow. When a running
request cannot get a block, the newest running request is preempted: its
blocks are freed and it is recomputed from scratch later. Each request's KV
tiers are chosen when it is admitted: the same for all (the prefill and decode
policies' tiers), or per request by a StepPlanner (policy="auto"). When its
prefill and decode tiers differ, its blocks move to the decode tier once its
prefill is done (a BlockCopy the runtime performs before the step).

The scheduler owns placement: the step's sequences leave in SubBatches that name the tier and the
executor (the phase's policy, or under auto the StepPlanner's choice for the step's shape on each
tier). After the step, `update` advances its own requests from the step's result.
"""
from __future__ import annotations

from collections import deque
from typing import Mapping, Sequence

from ..kv import BlockTables, Tier
from ..policy import StepShape
from ..policy.registry import POLICIES
from ..policy.step_planner import StepPlanner
from .prefix import PrefixCaching
from .request import Request, RequestStatus
from .step import BlockCopy, SchedulerOutput, StepInput, SubBatch


class Scheduler(PrefixCaching):
    def __init__(self, kv: BlockTables, max_num_seqs: int, max_num_batched_tokens: int,
                 prefill_policy: str = "gpu_only", decode_policy: str | None = None,
                 planner: StepPlanner | None = None, prefix_caching: bool = False, model_id: str = "",
                 tier_copies: bool = True):
        for name, p in (("prefill_policy", prefill_policy), ("decode_policy", decode_policy)):
            if p is not None and p not in POLICIES:
                raise ValueError(f"{name}: {p!r} is not a policy")
        self.kv = kv
        self.prefill_policy = prefill_policy        # runs prefill chunks (unless the planner chooses)
        self.decode_policy = decode_policy or prefill_policy
        self.tier = POLICIES[self.prefill_policy].kv_tier          # where prefills' KV goes
        self.decode_tier = POLICIES[self.decode_policy].kv_tier    # where decodes' KV must be (moved after prefill)
        self.planner = planner                      # places each request and picks each step's executors, when given
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Request] = deque()
        self.running: dict[str, Request] = {}       # oldest first (insertion order)
        self.requests: dict[str, Request] = {}
        self._init_cache(prefix_caching, model_id, tier_copies)

    def add(self, req: Request) -> None:
        if req.request_id in self.requests:
            raise ValueError(f"request_id {req.request_id!r} is already in use")
        self.requests[req.request_id] = req
        self.waiting.append(req)

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    def has(self, request_id: str) -> bool:
        return request_id in self.requests

    def get(self, request_id: str) -> Request | None:
        return self.requests.get(request_id)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    def update(self, out: SchedulerOutput, failed: Mapping[str, str],
               sampled: Sequence[str]) -> tuple[list[Request], list[tuple[Request, str]]]:
        """After the step ran: the scheduled chunks that did not fail are in the cache now. Returns the
        requests of the step's logits rows (in row order) and the failed requests with their errors."""
        for s in out.scheduled:
            req = self.requests.get(s.request_id)
            if req is not None and s.request_id not in failed:
                req.num_computed_tokens += len(s.token_ids)
                if self.prefix_caching and req.request_id in self.running:
                    self._name_blocks(req)
        return ([self.requests[rid] for rid in sampled],
                [(self.requests[rid], err) for rid, err in failed.items() if rid in self.requests])

    def schedule(self) -> SchedulerOutput:
        budget = self.max_num_batched_tokens
        scheduled: list[StepInput] = []
        preempted: list[str] = []
        copies: list[BlockCopy] = []
        for req in list(self.running.values()):
            if budget <= 0 or req.request_id not in self.running:
                break
            n = min(req.num_tokens - req.num_computed_tokens, budget)
            while not self._reserve(req, n, copies):
                victim = self._newest_running()
                self._preempt(victim)
                preempted.append(victim.request_id)
                if victim is req:
                    break
            else:
                scheduled.append(self._input(req, n))
                budget -= n
                continue
            break
        # Admitting new work in a step that had to preempt would only thrash.
        while not preempted and self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            req = self.waiting[0]
            if req.kv_tiers is None:
                req.kv_tiers, req.promote_hit = self._place(req)
            n = self._admit(req, req.kv_tiers[0], budget, promote=req.promote_hit)
            if n is None:
                break
            self.waiting.popleft()
            self._run(req)
            scheduled.append(self._input(req, n))
            budget -= n
        batches, notes = self._batches(scheduled)
        copies, cache_notes = self._with_cache_copies(copies)
        return SchedulerOutput(tuple(scheduled), tuple(preempted), copies, batches, notes=notes + cache_notes)

    def _batches(self, seqs: list[StepInput]) -> tuple[tuple[SubBatch, ...], tuple[str, ...]]:
        """Places the step's sequences: by phase for fixed policies; under auto, per KV tier, by the
        StepPlanner's choice for that tier's prefill chunks and decodes (memoised by bucketed shape)."""
        groups: dict[tuple[str, Tier], list[StepInput]] = {}
        notes = []
        if self.planner is None:
            for s in seqs:
                policy = self.decode_policy if s.is_decode else self.prefill_policy
                groups.setdefault((policy, self.kv.tier_of(s.request_id)), []).append(s)
        else:
            by_tier: dict[Tier, tuple[list[StepInput], list[StepInput]]] = {}
            for s in seqs:
                pre, dec = by_tier.setdefault(self.kv.tier_of(s.request_id), ([], []))
                (dec if s.is_decode else pre).append(s)
            kv = self.planner.kv_dtype
            for tier, (pre, dec) in by_tier.items():
                choice = self.planner.choose(tier, prefill_shape(pre, kv), decode_shape(dec, kv))
                notes.append(choice.reason)
                if pre:
                    groups.setdefault((choice.prefill, tier), []).extend(pre)
                if dec:
                    groups.setdefault((choice.decode, tier), []).extend(dec)
        return tuple(SubBatch(p, t, tuple(g)) for (p, t), g in groups.items()), tuple(notes)

    def _reserve(self, req: Request, n: int, copies: list[BlockCopy]) -> bool:
        """Blocks for req's next n tokens, on the tier its phase runs on (moving it there if needed)."""
        total = req.num_computed_tokens + n
        tier = req.kv_tiers[1] if n == 1 and req.decoding else req.kv_tiers[0]
        if self.kv.has(req.request_id) and self.kv.tier_of(req.request_id) != tier:
            moved = self.kv.migrate(req.request_id, tier, total)
            if moved is None:
                return False
            src_tier, src, dst = moved
            copies.append(BlockCopy(req.request_id, src_tier, tuple(src), tier, tuple(dst)))
            return True
        return self.kv.allocate_slots(req.request_id, total, tier)

    def _input(self, req: Request, n: int) -> StepInput:
        start = req.num_computed_tokens
        return StepInput(req.request_id, req.token_ids(start, start + n), start, self.kv.block_table(req.request_id),
                         sample=start + n == req.num_tokens, num_prompt_logits=_prompt_rows(req, start, n))

    def _place(self, req: Request) -> tuple[tuple[Tier, Tier], bool]:
        """(prefill tier, decode tier), and whether to promote its host-cached prefix to the device."""
        if self.planner is None:
            return (self.tier, self.decode_tier), True
        tiers = self.kv.tiers
        dev = self._hit(req, Tier.DEVICE) if Tier.DEVICE in tiers else None
        host = self._hit(req, Tier.HOST) if Tier.HOST in tiers else None
        p = self.planner.place(req.num_tokens, req.params.max_tokens - len(req.output_token_ids),
                               len(self.running) + 1, device_hit=dev.tokens if dev else 0,
                               host_hit=host.tokens if host else 0,
                               promotable=dev.promoted_tokens - dev.tokens if dev and dev.promote else 0)
        if dev and dev.promote or host and host.tokens:
            self._cache_notes.append(f"prefix cache: {req.request_id}: {p.reason}")
        return (p.prefill_tier, p.decode_tier), p.promote

    def _run(self, req: Request) -> None:
        req.status = RequestStatus.RUNNING
        self.running[req.request_id] = req

    def _newest_running(self) -> Request:
        return next(reversed(self.running.values()))

    def _preempt(self, req: Request) -> None:
        """Frees req's blocks and puts it first in the queue, to be recomputed from scratch."""
        self.running.pop(req.request_id, None)
        self.kv.free(req.request_id)
        req.kv_tiers = None                         # placed afresh when readmitted
        req.promote_hit = False
        req.named_tier = None
        req.num_computed_tokens = 0
        req.num_preemptions += 1
        req.status = RequestStatus.WAITING
        self.waiting.appendleft(req)

    def finish(self, req: Request, status: RequestStatus) -> None:
        """Ends req (stopped, length, aborted or failed) and returns its blocks."""
        assert status.finished
        was_waiting = req.status == RequestStatus.WAITING
        req.status = status
        self.kv.free(req.request_id)
        self.requests.pop(req.request_id, None)
        if self.running.pop(req.request_id, None) is None and was_waiting:
            self.waiting.remove(req)        # only an abort or a failure ends a waiting request

    def abort(self, request_id: str) -> Request | None:
        req = self.requests.get(request_id)
        if req is not None:
            self.finish(req, RequestStatus.FINISHED_ABORTED)
        return req


def _prompt_rows(req: Request, start: int, n: int) -> int:
    """Rows of positions [start, start + n) that predict a prompt token not scored yet (positions
    0 .. P-2 predict tokens 1 .. P-1); a recomputed prefill after preemption scores nothing twice."""
    last = req.num_prompt_tokens - 1
    if req.params.prompt_logprobs is None or len(req.prompt_logprobs) >= last:
        return 0
    return max(0, min(start + n, last) - start)


def prefill_shape(seqs: Sequence[StepInput], kv_dtype: str) -> StepShape:
    """Prefill chunks as the cost tables see them: tokens, sequences, token-weighted mean context."""
    tokens = sum(len(s.token_ids) for s in seqs)
    if not tokens:
        return StepShape(kv_dtype=kv_dtype)
    ctx = sum((s.num_computed_tokens + len(s.token_ids)) * len(s.token_ids) for s in seqs) / tokens
    return StepShape(tokens, len(seqs), ctx, kv_dtype=kv_dtype)


def decode_shape(seqs: Sequence[StepInput], kv_dtype: str) -> StepShape:
    return StepShape(decode_seqs=len(seqs), decode_context=sum(s.num_computed_tokens + 1 for s in seqs),
                     kv_dtype=kv_dtype)
