"""Scheduler: continuous batching under a token budget.

Deterministic and free of clocks and I/O: it reads the queues and the KV pools
and returns a frozen SchedulerOutput, so tests can drive it step by step.

Each step, running requests go first (oldest first): a decode takes one token,
an unfinished prefill takes its next chunk. Waiting requests are then admitted
while the budget, max_num_seqs and the device pool allow. When a running
request cannot get a block, the newest running request is preempted: its
blocks are freed and it is recomputed from scratch later.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from ..kv import KVCacheManager, Tier
from ..runtime import StepInput
from .request import Request, RequestStatus


@dataclass(frozen=True)
class BlockCopy:
    """K/V to copy between tiers before the step runs (a request changing tier)."""
    request_id: str
    src_tier: Tier
    src_blocks: tuple[int, ...]
    dst_tier: Tier
    dst_blocks: tuple[int, ...]


@dataclass(frozen=True)
class SchedulerOutput:
    scheduled: tuple[StepInput, ...]
    preempted: tuple[str, ...]
    copies: tuple[BlockCopy, ...] = ()

    @property
    def num_batched_tokens(self) -> int:
        return sum(len(s.token_ids) for s in self.scheduled)

    @property
    def empty(self) -> bool:
        return not self.scheduled


class Scheduler:
    def __init__(self, kv: KVCacheManager, max_num_seqs: int, max_num_batched_tokens: int,
                 tier: Tier = Tier.DEVICE, decode_tier: Tier | None = None):
        self.kv = kv
        self.tier = tier                            # where prefills' KV goes
        self.decode_tier = decode_tier or tier      # where decodes' KV must be (moved there after prefill)
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}

    def add(self, req: Request) -> None:
        if req.request_id in self.requests:
            raise ValueError(f"request_id {req.request_id!r} is already in use")
        self.requests[req.request_id] = req
        self.waiting.append(req)

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    def schedule(self) -> SchedulerOutput:
        budget = self.max_num_batched_tokens
        scheduled: list[StepInput] = []
        preempted: list[str] = []
        copies: list[BlockCopy] = []
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = min(req.num_tokens - req.num_computed_tokens, budget)
            while not self._reserve(req, n, copies):
                victim = self.running.pop()
                self._preempt(victim)
                preempted.append(victim.request_id)
                if victim is req:
                    break
            else:
                scheduled.append(self._step_input(req, n))
                budget -= n
                i += 1
                continue
            break
        # Admitting new work in a step that had to preempt would only thrash.
        while not preempted and self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            req = self.waiting[0]
            n = min(req.num_tokens - req.num_computed_tokens, budget)
            if not self.kv.allocate_slots(req.request_id, req.num_computed_tokens + n, self.tier):
                break
            self.waiting.popleft()
            req.status = RequestStatus.RUNNING
            self.running.append(req)
            scheduled.append(self._step_input(req, n))
            budget -= n
        return SchedulerOutput(tuple(scheduled), tuple(preempted), tuple(copies))

    def _reserve(self, req: Request, n: int, copies: list[BlockCopy]) -> bool:
        """Blocks for req's next n tokens, on the tier its phase runs on (moving it there if needed)."""
        total = req.num_computed_tokens + n
        decoding = n == 1 and total == req.num_tokens and req.num_computed_tokens > 0
        tier = self.decode_tier if decoding else self.tier
        if self.kv.has(req.request_id) and self.kv.tier_of(req.request_id) != tier:
            moved = self.kv.migrate(req.request_id, tier, total)
            if moved is None:
                return False
            src_tier, src, dst = moved
            copies.append(BlockCopy(req.request_id, src_tier, tuple(src), tier, tuple(dst)))
            return True
        return self.kv.allocate_slots(req.request_id, total, tier)

    def _step_input(self, req: Request, n: int) -> StepInput:
        start = req.num_computed_tokens
        tokens = req.all_token_ids[start:start + n]
        return StepInput(req.request_id, tuple(tokens), start,
                         tuple(self.kv.block_table(req.request_id)),
                         sample=start + n == req.num_tokens)

    def _preempt(self, req: Request) -> None:
        self.kv.free(req.request_id)
        req.num_computed_tokens = 0
        req.num_preemptions += 1
        req.status = RequestStatus.WAITING
        self.waiting.appendleft(req)

    def finish(self, req: Request, status: RequestStatus) -> None:
        """Ends req (stopped, length, or aborted) and returns its blocks."""
        assert status.finished
        req.status = status
        self.kv.free(req.request_id)
        self.requests.pop(req.request_id, None)
        if req in self.running:
            self.running.remove(req)
        elif req in self.waiting:
            self.waiting.remove(req)

    def abort(self, request_id: str) -> Request | None:
        req = self.requests.get(request_id)
        if req is not None:
            self.finish(req, RequestStatus.FINISHED_ABORTED)
        return req
