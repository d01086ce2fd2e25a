"""The policy table: every policy's name, KV tier, executor and pricing, in one place.

Adding a policy is one entry here, its executor module in runtime/executors/ (a `build(parts)`
function, listed in runtime/executors/__init__.py under the same name) and its per-step cost method
on CostModel (named by `cost`). The table is plain data, so config validation and the pure planner
read it without importing torch or the runtime.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..kv.tier import Tier

D, H = Tier.DEVICE, Tier.HOST


@dataclass(frozen=True)
class PolicySpec:
    name: str
    kv_tiers: tuple[Tier, ...]  # where its requests' KV lives; NEO has both (prefills start on the first)
    cost: str               # the CostModel method that prices one step of it
    plannable: bool         # auto's planner may give it a phase
    linear_on: str          # where its linear layers run: "device" | "host" | "streamed"
    scheduler: str = "plain"  # "plain" (continuous batching) | "neo" (two KV tiers, swapping)
    summary: str = ""

    def __post_init__(self):
        if not self.kv_tiers or not all(isinstance(t, Tier) for t in self.kv_tiers):
            raise ValueError(f"PolicySpec {self.name}: kv_tiers must be one or more Tier, got {self.kv_tiers!r}")

    @property
    def kv_tier(self) -> Tier:
        """The tier its requests' KV starts on (the only one, except under NEO)."""
        return self.kv_tiers[0]


POLICIES: dict[str, PolicySpec] = {p.name: p for p in (
    PolicySpec("gpu_only", (D,), "gpu_only", True, "device",
               summary="everything resident on the compute device"),
    PolicySpec("gpu_offload", (D,), "gpu_offload", True, "streamed",
               summary="decoder layers stream from host memory, two staging slots (FlexGen)"),
    PolicySpec("cpu_only", (H,), "cpu_only", True, "host",
               summary="the whole model in OpenVINO graphs on the host, over the host KV tier"),
    PolicySpec("partition", (H,), "partition", True, "device",
               summary="linear layers on the device, all attention on the host KV tier"),
    PolicySpec("neo", (D, H), "neo", False, "device", scheduler="neo",
               summary="NEO online serving: KV split across tiers, swapping, pipelined host decodes"),
)}
POLICY_NAMES = tuple(POLICIES)
PLANNABLE = tuple(n for n, p in POLICIES.items() if p.plannable)


def on_host(policy: str) -> bool:
    """Whether the policy's requests keep their KV on the host tier."""
    return POLICIES[policy].kv_tiers == (H,)
