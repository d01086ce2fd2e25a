"""Per-step policy choice (FlexInfer, online): which executor runs a step's prefill chunks and which
its decodes, among the policies whose KV tier holds the requests' KV; and, once per request, where
its KV should live for prefill and for decode (the move between tiers is priced here, never per step).

Pure: a function of the step's real shape and the profile's tables. Shapes are bucketed (powers of
two) and every decision is memoised, so a step pays a dict lookup once the buckets are warm.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..dtypes import BYTES
from ..kv.tier import Tier
from .cost_model import CostModel, StepShape
from .profile import HardwareProfile
from .registry import POLICIES
from .shapes import ModelShape


@dataclass(frozen=True)
class StepChoice:
    prefill: str | None          # the policy that runs the tier's prefill chunks (None: there are none)
    decode: str | None           # the policy that runs the tier's decodes
    seconds: float               # predicted time of the tier's share of the step
    reason: str


@dataclass(frozen=True)
class Placement:
    prefill_tier: Tier           # where the request's KV is written during prefill
    decode_tier: Tier            # where it lives while decoding (moved there once, after prefill)
    seconds: float               # predicted prefill + move + decode time of the request
    reason: str
    promote: bool = False        # prefill on the device after copying its host-cached prefix there


def bucket(n: float) -> int:
    """The power of two at or above n (0 stays 0): nearby shapes share a decision."""
    return 0 if n <= 0 else 1 << max(0, math.ceil(math.log2(n)))


class StepPlanner:
    def __init__(self, model: ModelShape, profile: HardwareProfile, candidates: tuple[str, ...], kv_dtype: str,
                 device_memory_bytes: int | None = None, host_kv_dtype: str | None = None):
        bad = [p for p in candidates if p not in POLICIES or not POLICIES[p].plannable]
        if bad:
            raise ValueError(f"candidates: {bad[0]!r} is not a plannable policy")
        self.model, self.kv_dtype = model, kv_dtype
        self.cost = CostModel(profile, device_memory_bytes, host_kv_dtype)   # host attention in the host tier's format
        self.by_tier: dict[Tier, tuple[str, ...]] = {}
        for p in candidates:
            tier = POLICIES[p].kv_tier
            self.by_tier[tier] = self.by_tier.get(tier, ()) + (p,)
        self._steps: dict[tuple, StepChoice] = {}
        self._places: dict[tuple, Placement] = {}

    @property
    def tiers(self) -> tuple[Tier, ...]:
        return tuple(self.by_tier)

    def _time(self, policy: str, s: StepShape) -> float:
        return self.cost.step(policy, self.model, s).seconds if s.tokens else 0.0

    # -- per step ------------------------------------------------------------------

    def choose(self, tier: Tier, prefill: StepShape, decode: StepShape) -> StepChoice:
        """The executors for one tier's share of a step: prefill chunks and decodes, run together by one
        executor (one pass over the weights) or apart by two, whichever the tables say is faster."""
        pre = StepShape(bucket(prefill.prefill_tokens), bucket(prefill.prefill_seqs),
                        float(bucket(prefill.prefill_context)), kv_dtype=self.kv_dtype)
        seqs = bucket(decode.decode_seqs)
        per_seq = decode.decode_context / decode.decode_seqs if decode.decode_seqs else 0.0
        dec = StepShape(decode_seqs=seqs, decode_context=seqs * bucket(per_seq), kv_dtype=self.kv_dtype)
        key = (tier, pre, dec)
        hit = self._steps.get(key)
        if hit is None:
            hit = self._steps[key] = self._choose(tier, pre, dec)
        return hit

    def _choose(self, tier: Tier, pre: StepShape, dec: StepShape) -> StepChoice:
        cands = self.by_tier.get(tier)
        if not cands:
            raise ValueError(f"tier: no candidate policy keeps KV on the {Tier(tier).value!r} tier")
        both = StepShape(pre.prefill_tokens, pre.prefill_seqs, pre.prefill_context, dec.decode_seqs,
                         dec.decode_context, self.kv_dtype)
        best = None
        for p in (cands if pre.tokens else (None,)):
            for d in (cands if dec.tokens else (None,)):
                if p is None or d is None or p == d:
                    t = self._time(p or d, both)
                else:
                    t = self._time(p, pre) + self._time(d, dec)
                if best is None or t < best[0]:
                    best = (t, p, d)
        t, p, d = best
        what = " + ".join(x for x in (f"{pre.prefill_tokens} prefill tokens" if p else "",
                                      f"{dec.decode_seqs} decodes" if d else "") if x)
        runs = p or d if (p is None or d is None or p == d) else f"prefill {p}, decode {d}"
        return StepChoice(p, d, t, f"{tier.value} tier, {what} -> {runs} ({t * 1e3:.2f} ms predicted)")

    # -- per request ----------------------------------------------------------------

    def place(self, prompt_tokens: int, new_tokens: int, batch: int, device_hit: int = 0, host_hit: int = 0,
              promotable: int = 0) -> Placement:
        """Where a new request's KV lives: its prefill alone on a tier, then, after a move if the decode
        tier differs, its decodes as one of `batch` running sequences, priced per token of output.

        Prefix cache hits: a prefill on a tier skips that tier's cached tokens (device_hit, host_hit); a
        device prefill may also copy `promotable` host-cached tokens down first (promotion, priced as a
        host-to-device copy) instead of computing them. So on a host hit this asks whether to promote
        the blocks or to place the request on the host tier and attend them where they are."""
        key = (bucket(prompt_tokens), bucket(new_tokens), bucket(batch), bucket(prompt_tokens - device_hit),
               bucket(prompt_tokens - host_hit), bucket(promotable))
        hit = self._places.get(key)
        if hit is None:
            hit = self._places[key] = self._place(*key)
        return hit

    def _place(self, prompt: int, new: int, batch: int, dev_left: int = 0, host_left: int = 0,
               promotable: int = 0) -> Placement:
        m, hw = self.model, self.cost.hw
        per_token = m.kv_bytes_per_token(BYTES[self.kv_dtype])
        kv_bytes = prompt * per_token
        dec = StepShape(decode_seqs=batch, decode_context=batch * (prompt + new / 2), kv_dtype=self.kv_dtype)
        options = []
        for tp, pc in self.by_tier.items():
            left = dev_left if tp == Tier.DEVICE else host_left
            promote = tp == Tier.DEVICE and Tier.HOST in self.by_tier and promotable > 0
            variants = [(left, 0.0, False)]
            if promote:
                variants.append((max(1, left - promotable), promotable * per_token / hw.h2d_pinned, True))
            for run, copy, pr in variants:
                pre = StepShape(max(1, min(run, prompt)), 1, float(prompt), kv_dtype=self.kv_dtype)
                t_pre = min(self._time(p, pre) for p in pc) + copy
                for td, dc in self.by_tier.items():
                    t_dec = min(self._time(d, dec) for d in dc) / batch * max(new - 1, 0)
                    move = 0.0 if tp == td else kv_bytes / (hw.d2h_pinned if td == Tier.HOST else hw.h2d_pinned)
                    options.append((t_pre + move + t_dec, tp, td, move, pr, copy))
        t, tp, td, move, pr, copy = min(options, key=lambda o: o[0])
        why = (f"prompt ~{prompt}, ~{new} new tokens, batch ~{batch}: prefill on the {tp.value} tier"
               + (f" after promoting ~{promotable} host-cached tokens ({copy * 1e3:.2f} ms copy)" if pr else "")
               + f", decode on the {td.value} tier" + (f" after a {move * 1e3:.2f} ms move" if tp != td else "")
               + f" ({t * 1e3:.1f} ms predicted)")
        return Placement(tp, td, t, why, pr)


def useful_policies(planner: StepPlanner, max_tokens: int, max_seqs: int, max_len: int) -> tuple[str, ...]:
    """The candidates the planner picks for some step or request of a grid spanning the engine's limits:
    the rest need no executor, and a tier none of them uses needs no memory."""
    kv = planner.kv_dtype
    used: set[str] = set()
    tokens = sorted({t for t in (16, 128, 512, 2048, max_tokens) if t <= max_tokens})
    seqs = sorted({n for n in (1, 4, 16, max_seqs) if n <= max_seqs})
    ctxs = sorted({c for c in (128, 1024, 8192, max_len) if c <= max_len})
    for tier in planner.tiers:
        for t in tokens:
            for c in ctxs:
                used.add(planner.choose(tier, StepShape(t, 1, float(c), kv_dtype=kv), StepShape(kv_dtype=kv)).prefill)
        for n in seqs:
            for c in ctxs:
                used.add(planner.choose(tier, StepShape(kv_dtype=kv),
                                        StepShape(decode_seqs=n, decode_context=n * c, kv_dtype=kv)).decode)
    tiers = {planner.place(prompt, new, n).prefill_tier for prompt in ctxs for new in (16, 256) for n in seqs}
    tiers |= {planner.place(prompt, new, n).decode_tier for prompt in ctxs for new in (16, 256) for n in seqs}
    keep = []
    for t, cands in planner.by_tier.items():
        if t in tiers:
            keep += [p for p in cands if p in used] or list(cands)
    return tuple(keep)


def describe(planner: StepPlanner, max_len: int) -> list[str]:
    """What the planner picks for a few typical steps and requests: the start-up log's 'why'."""
    kv, lines = planner.kv_dtype, []
    for tier in planner.tiers:
        for n in (1, 8, 32):
            lines.append(planner.choose(tier, StepShape(kv_dtype=kv),
                                        StepShape(decode_seqs=n, decode_context=n * 512, kv_dtype=kv)).reason)
        for n in (16, 512, 2048):
            lines.append(planner.choose(tier, StepShape(n, 1, float(n), kv_dtype=kv), StepShape(kv_dtype=kv)).reason)
    for prompt in (16, 512, min(4096, max_len // 2)):
        lines.append("a request with " + planner.place(prompt, 128, 8).reason)
    return lines
