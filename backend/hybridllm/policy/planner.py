"""Planner: the fastest feasible policy per phase, KV hand-over between phases included."""
from __future__ import annotations

from dataclasses import dataclass

from .cost_model import CostModel, Estimate
from .profile import HardwareProfile
from .registry import PLANNABLE
from .shapes import BatchShape, ModelShape


class PlanError(ValueError):
    pass


@dataclass(frozen=True)
class Plan:
    batch: BatchShape
    prefill: Estimate
    decode: Estimate
    switch_s: float                            # KV copy between tiers when the phases' KV tiers differ
    estimates: tuple[Estimate, ...]            # every policy and phase, for display

    @property
    def seconds(self) -> float:
        return self.prefill.seconds + self.switch_s + self.decode.seconds


class Planner:
    def __init__(self, model: ModelShape, profile: HardwareProfile, runnable: tuple[str, ...] = PLANNABLE,
                 device_memory_bytes: int | None = None):
        self.model = model
        self.cost = CostModel(profile, device_memory_bytes)
        bad = [p for p in runnable if p not in PLANNABLE]
        if bad:
            raise ValueError(f"runnable: {bad[0]!r} is not a plannable policy ({', '.join(PLANNABLE)})")
        self.runnable = tuple(p for p in PLANNABLE if p in runnable)

    def estimates(self, batch: BatchShape) -> tuple[Estimate, ...]:
        return tuple(self.cost.estimate(p, ph, self.model, batch) for ph in ("prefill", "decode") for p in PLANNABLE)

    def plan(self, batch: BatchShape) -> Plan:
        ests = self.estimates(batch)
        by = {(e.policy, e.phase): e for e in ests}
        best = None
        for pre in self.runnable:
            for dec in self.runnable:
                a, b = by[(pre, "prefill")], by[(dec, "decode")]
                if not (a.feasible and b.feasible):
                    continue
                sw = self.cost.switch_seconds(pre, dec, self.model, batch)
                total = a.seconds + sw + b.seconds
                if best is None or total < best[0]:
                    best = (total, a, b, sw)
        if best is None:
            lines = [f"  {e.policy} {e.phase}: {e.why_not or 'fits'}" for e in ests if e.policy in self.runnable]
            raise PlanError(f"no policy fits batch={batch.batch} input_len={batch.input_len} "
                            f"output_len={batch.output_len}:\n" + "\n".join(lines))
        _, a, b, sw = best
        return Plan(batch, a, b, sw, ests)


def format_plan(plan: Plan) -> str:
    rows = [f"{'policy':<12} {'phase':<8} {'time s':>10} {'compute s':>10} {'transfer s':>10} "
            f"{'overlap s':>10} {'device GiB':>10}  fits"]
    for e in plan.estimates:
        rows.append(f"{e.policy:<12} {e.phase:<8} {e.seconds:>10.4f} {e.compute_s:>10.4f} {e.transfer_s:>10.4f} "
                    f"{e.overlap_s:>10.4f} {e.device_bytes / 2**30:>10.2f}  {'yes' if e.feasible else e.why_not}")
    rows.append(f"chosen: prefill={plan.prefill.policy} decode={plan.decode.policy} "
                f"(KV hand-over {plan.switch_s:.4f} s) total {plan.seconds:.4f} s")
    return "\n".join(rows)
