"""Load-aware choice of NEO's host sub-batch (pure: queue state + profile in, decision out).

Sub-batch A (prefills and device decodes) runs attention on the device; sub-batch B
(host decodes) runs attention on the host while the device does linear work.
A host decode joins B only while the host's attention still hides under the
device's linear work (the step's slack); one that would lengthen the step waits.
Finally the pipelined step is compared with a device-only step (B empty) by
throughput, and the better one is chosen.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..dtypes import BYTES
from .cost_model import CostModel, StepShape
from .profile import HardwareProfile
from .shapes import ModelShape

STARVATION_STEPS = 4   # a host decode skipped this many steps in a row joins regardless


@dataclass(frozen=True)
class HostCandidate:
    request_id: str
    context: int          # tokens of KV it reads
    skipped: int = 0      # consecutive steps it was left out


@dataclass(frozen=True)
class HostBatchChoice:
    chosen: tuple[str, ...]
    pipelined_s: float     # predicted step time with B = chosen
    device_only_s: float   # predicted step time with B empty
    reason: str

    def describe(self) -> str:
        return (f"host sub-batch {len(self.chosen)}: {self.reason} (predicted {self.pipelined_s * 1e3:.2f} ms "
                f"pipelined, {self.device_only_s * 1e3:.2f} ms device-only)")


class NeoCostTables:
    """The handful of per-step predictions the decision needs, composed from CostModel's blocks.

    Sub-batch A (prefill chunks, device decodes) is a StepShape; B is host decodes only.
    """

    def __init__(self, m: ModelShape, hw: HardwareProfile, kv_dtype: str, host_kv_dtype: str | None = None):
        self.m, self.hw, self.kv_dtype = m, hw, kv_dtype
        self.cost = CostModel(hw, host_kv_dtype=host_kv_dtype)      # B's attention in the host tier's format
        # Measured profiles time, on the real runner, what a pipelined step costs per layer beyond
        # these tables (hand-offs, event waits, B's launches); spec profiles have none.
        self.handoff_s = float(hw.extra.get("host_handoff_s", 0.0))

    def linear(self, tokens: int, seqs: int) -> float:
        if tokens == 0:
            return 0.0
        return self.cost.linear("device", self.m, tokens, seqs) + self.cost.fixed(self.m)

    def device_attention(self, a: StepShape) -> float:
        return self.cost.attention("device", self.m, a)

    def host_attention(self, seqs: int, context: int) -> float:
        if seqs == 0:
            return 0.0
        b = StepShape(decode_seqs=seqs, decode_context=context, kv_dtype=self.kv_dtype)
        return self.cost.attention("host", self.m, b) + self.cost.handoff(self.m, seqs)

    def device(self, a: StepShape, b_seqs: int) -> float:
        """The device's work in a step: A's linear layers and attention, and B's linear layers, which
        run as separate calls (B's activations come back from the host layer by layer), so a small B
        still reads every weight once more."""
        return self.linear(a.tokens, a.seqs) + self.device_attention(a) + self.linear(b_seqs, b_seqs)

    def step(self, a: StepShape, b_seqs: int, b_context: int) -> float:
        dev = self.device(a, b_seqs)
        host = self.host_attention(b_seqs, b_context)
        pipe = self.m.num_layers * self.handoff_s if b_seqs else 0.0
        if self.hw.device_is_host or a.tokens == 0:
            return dev + host + pipe               # same cores, or nothing to overlap with
        # B's attention hides under A's device work; only a per-layer sliver of the shorter is exposed.
        return max(dev, host) + min(dev, host) / self.m.num_layers + pipe


def promotion_pays(costs: NeoCostTables | None, tokens: int, context: int) -> tuple[bool, str]:
    """Whether copying `tokens` host-cached tokens of KV to the device beats recomputing them there
    (a prefill chunk of that many tokens at `context`). Without tables, copying: it moves only the KV,
    a recompute reads every weight and does the attention too."""
    if costs is None:
        return True, "no profile: promote"
    kv = tokens * costs.m.kv_bytes_per_token(BYTES[costs.kv_dtype])
    copy_s = kv / costs.hw.h2d_pinned
    redo_s = costs.linear(tokens, 1) + costs.device_attention(StepShape(tokens, 1, float(context),
                                                                        kv_dtype=costs.kv_dtype))
    return copy_s < redo_s, f"copy {copy_s * 1e3:.2f} ms vs recompute {redo_s * 1e3:.2f} ms"


def decodes(seqs: int, context: int, kv_dtype: str = "f32") -> StepShape:
    """A step of `seqs` device decodes reading `context` tokens of KV in all."""
    return StepShape(decode_seqs=seqs, decode_context=context, kv_dtype=kv_dtype)


def choose_host_batch(a: StepShape, candidates: list[HostCandidate], costs: NeoCostTables,
                      max_seqs: int) -> HostBatchChoice:
    room = max(0, max_seqs - a.seqs)
    if a.tokens == 0:
        chosen = tuple(c.request_id for c in candidates[:max(room, 1)])
        t = costs.step(a, len(chosen), sum(c.context for c in candidates[:len(chosen)]))
        return HostBatchChoice(chosen, t, 0.0, "no device work: a host-only step")
    base = costs.step(a, 0, 0)
    chosen: list[HostCandidate] = []
    ctx = 0
    # Starving requests first, all of them together: a step with host decodes pays B's device calls
    # and the hand-offs once, so forcing them in one at a time would pay that for a token each.
    for c in sorted(candidates, key=lambda c: c.skipped < STARVATION_STEPS):
        if len(chosen) >= room:
            break
        forced = c.skipped >= STARVATION_STEPS
        dev = costs.device(a, len(chosen) + 1)
        host = costs.host_attention(len(chosen) + 1, ctx + c.context)
        if forced or host <= dev:
            chosen.append(c)
            ctx += c.context
    piped = costs.step(a, len(chosen), ctx)
    # Throughput: tokens produced per second of step.
    if chosen and (a.seqs + len(chosen)) / piped < a.seqs / base:
        if not any(c.skipped >= STARVATION_STEPS for c in chosen):
            return HostBatchChoice((), piped, base, "device-only step has the higher throughput")
    why = f"{len(chosen)} of {len(candidates)} host decodes fit the slack"
    return HostBatchChoice(tuple(c.request_id for c in chosen), piped, base, why)
