"""NeoScheduler: NEO's online scheduling over two KV tiers.

Each running request's KV lives wholly on the device tier or wholly on the host
tier. Queues: waiting, device-resident running, host-resident running.
- New prefills run on the device; their KV goes to the device tier when it has
  room, else to the host tier (the device writes it there layer by layer).
- Device requests that outgrow the device tier are swapped out to the host
  (newest first) instead of being preempted; when the device tier has a lot of
  room again, the oldest host requests are swapped back in at the start of a
  step (hysteresis: only while `swap_in_free_fraction` of the tier stays free).
- Host decodes join the step's host sub-batch by `choose_host_batch`.
The step leaves as NEO's sub-batches: A on the device tier, A's fresh prefills bound for the host tier
(device attention, K/V written to the host), and B (host attention).
Deterministic, no clocks or I/O; tier moves are returned as BlockCopy records.
"""
from __future__ import annotations

from ..kv import BlockTables, Tier
from ..policy import StepShape
from ..policy.neo import HostBatchChoice, HostCandidate, NeoCostTables, choose_host_batch, decodes, promotion_pays
from ..utils import ceil_div
from .request import Request
from .scheduler import Scheduler, decode_shape, prefill_shape
from .step import BlockCopy, SchedulerOutput, StepInput, SubBatch

D, H = Tier.DEVICE, Tier.HOST


class NeoScheduler(Scheduler):
    def __init__(self, kv: BlockTables, max_num_seqs: int, max_num_batched_tokens: int,
                 costs: NeoCostTables | None = None, swap_in_free_fraction: float = 0.25,
                 prefix_caching: bool = False, model_id: str = "", tier_copies: bool = True):
        super().__init__(kv, max_num_seqs, max_num_batched_tokens, "neo", "neo", prefix_caching=prefix_caching,
                         model_id=model_id, tier_copies=tier_copies)
        self.costs = costs
        self.swap_in_free_fraction = swap_in_free_fraction
        self.skipped: dict[str, int] = {}
        self.last_choice: HostBatchChoice | None = None
        self.num_swap_out = 0
        self.num_swap_in = 0

    def _on(self, tier: Tier) -> list[Request]:
        return [r for r in self.running.values() if self.kv.has(r.request_id) and self.kv.tier_of(r.request_id) == tier]

    def schedule(self) -> SchedulerOutput:
        budget = self.max_num_batched_tokens
        a: list[StepInput] = []
        b: list[StepInput] = []
        to_host: set[str] = set()            # A's fresh prefills whose KV goes to the host tier
        copies: list[BlockCopy] = []
        preempted: list[str] = []
        # 0. Swap in, oldest host request first, while the device tier has plenty of room
        #    (hysteresis: a request only comes back when a quarter of the tier would still be free).
        pool = self.kv.pool(D)
        for req in self._on(H):
            need = ceil_div(req.num_tokens + 1, self.kv.block_size_of(D))
            if pool.num_free - need < self.swap_in_free_fraction * pool.num_blocks:
                break
            moved = self.kv.migrate(req.request_id, D, req.num_tokens + 1)
            if moved:
                copies.append(BlockCopy(req.request_id, moved[0], tuple(moved[1]), D, tuple(moved[2])))
                self.num_swap_in += 1
        # 1. Device-resident requests, oldest first; swap the newest out when the device tier is short.
        for req in self._on(D):
            if budget <= 0:
                break
            if req.request_id not in self.running or self.kv.tier_of(req.request_id) != D:
                continue                     # swapped out or preempted while making room for an older one
            n = min(req.num_tokens - req.num_computed_tokens, budget)
            while not self.kv.allocate_slots(req.request_id, req.num_computed_tokens + n, D):
                victim = self._on(D)[-1]
                self._evict(victim, copies, preempted)
                if victim is req:
                    break
            else:
                a.append(self._input(req, n))
                budget -= n
        # 2. Host-resident requests: unfinished prefill chunks must run; decodes are candidates.
        cands: list[HostCandidate] = []
        for req in self._on(H):
            left = req.num_tokens - req.num_computed_tokens
            if not req.decoding:
                if budget > 0:
                    n = min(left, budget)
                    if self._grow_on_host(req, n, preempted, b):
                        b.append(self._input(req, n))
                        budget -= n
            else:
                cands.append(HostCandidate(req.request_id, req.num_tokens, self.skipped.get(req.request_id, 0)))
        # 3. Admit new requests: device tier if the whole request fits with room to grow, else the host tier.
        reserve = len(self._on(D))           # a block of growth room for each device request
        host_room = None                     # waiting requests the load-aware choice would run on the host
        while not preempted and self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            req = self.waiting[0]
            hit = self._hit(req, D)          # the device tier's cached prefix of req, and the host's continuation
            promote = bool(hit.promote) and self._promotion_pays(req, hit)
            shared = hit.blocks[:hit.keep] if promote else hit.blocks
            need = self.kv.blocks_needed(req.request_id, req.num_tokens + 1, D) - len(shared)
            room = self.kv.num_free(D) - self.kv.pool(D).cached_among(shared) - reserve
            n = self._admit(req, D, budget, hit=hit, promote=promote) if room >= need else None
            if n is not None:
                part = a
                reserve += 1
            else:
                if host_room is None:
                    queue = list(self.waiting)[:max(0, self.max_num_seqs - len(self.running))]
                    host_room = self._host_room(cands, queue)
                # On the host tier a cached prefix is attended where it is (sub-batch B's host attention).
                n = self._admit(req, H, budget) if host_room > 0 else None
                if n is None:
                    break
                host_room -= 1
                part = a if req.num_computed_tokens == 0 else b     # a fresh prefill attends on the device
                if part is a:
                    to_host.add(req.request_id)
            self.waiting.popleft()
            self._run(req)
            part.append(self._input(req, n))
            budget -= n
        # 4. Load-aware host sub-batch.
        chosen = self._choose(a, cands)
        for c in cands:
            req = self.requests[c.request_id]
            if (c.request_id in chosen and budget > 0 and c.request_id in self.running
                    and self._grow_on_host(req, 1, preempted, a + b)):
                b.append(self._input(req, 1))
                budget -= 1
                self.skipped.pop(c.request_id, None)
            elif c.request_id in self.running:
                self.skipped[c.request_id] = self.skipped.get(c.request_id, 0) + 1
        a_dev = tuple(s for s in a if s.request_id not in to_host)
        a_host = tuple(s for s in a if s.request_id in to_host)
        batches = tuple(SubBatch("neo", t, seqs, part) for t, seqs, part in ((D, a_dev, "A"), (H, a_host, "A"),
                                                                               (H, tuple(b), "B")) if seqs)
        copies, notes = self._with_cache_copies(copies)
        return SchedulerOutput(tuple(a + b), tuple(preempted), copies, batches, self.last_choice, notes)

    def _promotion_pays(self, req: Request, hit) -> bool:
        """A device admission with host-cached blocks continuing its device hit: copy them down, or
        recompute them? The cost tables' answer (promotion_pays), noted for the log and the trace."""
        pays, why = promotion_pays(self.costs, hit.promoted_tokens - hit.tokens, hit.promoted_tokens)
        self._cache_notes.append(f"prefix cache: {req.request_id}: {'promote' if pays else 'recompute'} "
                                 f"{hit.promoted_tokens - hit.tokens} host-cached tokens if admitted to the device "
                                 f"({why})")
        return pays

    def _choose(self, a: list[StepInput], cands: list[HostCandidate]) -> set[str]:
        if not cands:
            self.last_choice = None
            return set()
        if self.costs is None:               # no profile: every host decode runs
            self.last_choice = HostBatchChoice(tuple(c.request_id for c in cands), 0.0, 0.0, "no profile")
            return set(self.last_choice.chosen)
        self.last_choice = choose_host_batch(_work(a, self.costs.kv_dtype), cands, self.costs, self.max_num_seqs)
        return set(self.last_choice.chosen)

    def _host_room(self, cands: list[HostCandidate], reqs: list[Request], exclude: Request | None = None) -> int:
        """How many of reqs to place on the host tier: those the load-aware choice would run as host
        decodes beside the device's steady decode work and the host decodes already there (cands),
        were they all on the host. Admission asks this for the whole queue, not one request at a
        time: a host sub-batch pays for its own device calls only once it has enough members, so a
        lone candidate never would. The rest wait for device room, as under gpu_only (a host request
        that never runs only costs its prefill)."""
        if self.costs is None:
            return len(reqs)
        new = [HostCandidate(r.request_id, r.num_tokens + 1) for r in reqs]
        chosen = set(choose_host_batch(self._steady_work(exclude), cands + new, self.costs, self.max_num_seqs).chosen)
        return sum(c.request_id in chosen for c in new)

    def _steady_work(self, exclude: Request | None = None) -> StepShape:
        """A decode step of the device-resident requests: what a host request runs beside for most of its
        life. Not this step's A, whose prefill chunks pass: against them, host decodes look free."""
        dev = [r for r in self._on(D) if r is not exclude]
        return decodes(len(dev), sum(r.num_tokens + 1 for r in dev), self.costs.kv_dtype)

    def _grow_on_host(self, req: Request, n: int, preempted: list[str], scheduled: list[StepInput]) -> bool:
        """Host blocks for req's next n tokens, preempting the newest unscheduled host request if short."""
        busy = {s.request_id for s in scheduled}
        while not self.kv.allocate_slots(req.request_id, req.num_computed_tokens + n, H):
            victims = [r for r in self._on(H) if r.request_id not in busy]
            if not victims:
                return False
            victim = victims[-1]
            self._remove_and_preempt(victim, preempted)
            if victim is req:
                return False
        return True

    def _evict(self, victim: Request, copies: list[BlockCopy], preempted: list[str]) -> None:
        """Swap a device request out to the host tier, if it would run there (see _host_room);
        else, or when the host is full too, preempt it (recompute later on the device)."""
        waiting_on_host = [HostCandidate(r.request_id, r.num_tokens, self.skipped.get(r.request_id, 0))
                           for r in self._on(H) if r.decoding]
        moved = None
        if self._host_room(waiting_on_host, [victim], exclude=victim):
            moved = self.kv.migrate(victim.request_id, H, victim.num_computed_tokens + 1)
        if moved is None:
            self._remove_and_preempt(victim, preempted)
            return
        copies.append(BlockCopy(victim.request_id, moved[0], tuple(moved[1]), H, tuple(moved[2])))
        self.num_swap_out += 1

    def _remove_and_preempt(self, victim: Request, preempted: list[str]) -> None:
        self._preempt(victim)
        preempted.append(victim.request_id)

    def finish(self, req: Request, status) -> None:
        self.skipped.pop(req.request_id, None)
        super().finish(req, status)


def _work(a: list[StepInput], kv_dtype: str) -> StepShape:
    """Sub-batch A as the cost tables see it."""
    pre = prefill_shape([s for s in a if not s.is_decode], kv_dtype)
    dec = decode_shape([s for s in a if s.is_decode], kv_dtype)
    return StepShape(pre.prefill_tokens, pre.prefill_seqs, pre.prefill_context, dec.decode_seqs, dec.decode_context,
                     kv_dtype)
