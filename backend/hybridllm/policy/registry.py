"""The policy table: every policy's name, KV tier, executor and pricing, in one place.

Adding a policy is one entry here, its executor builder in runtime/ (named by `executor`) and
its per-step cost method on CostModel (named by `cost`). The table is plain data, so config
validation and the pure planner read it without importing torch or the runtime.
"""
from __future__ import annotations

from dataclasses import dataclass

KV_TIERS = ("device", "host", "both")


@dataclass(frozen=True)
class PolicySpec:
    name: str
    kv_tier: str            # where its requests' KV lives: "device", "host", or "both" (NEO)
    executor: str           # "module:function" in hybridllm.runtime that builds its executor
    cost: str               # the CostModel method that prices one step of it
    plannable: bool         # auto's planner may give it a phase
    linear_on: str          # where its linear layers run: "device" | "host" | "streamed"
    scheduler: str = "plain"  # "plain" (continuous batching) | "neo" (two KV tiers, swapping)
    summary: str = ""

    def __post_init__(self):
        if self.kv_tier not in KV_TIERS:
            raise ValueError(f"PolicySpec {self.name}: kv_tier {self.kv_tier!r} is not one of {', '.join(KV_TIERS)}")
        if ":" not in self.executor:
            raise ValueError(f"PolicySpec {self.name}: executor must be 'module:function', got {self.executor!r}")


POLICIES: dict[str, PolicySpec] = {p.name: p for p in (
    PolicySpec("gpu_only", "device", "hybridllm.runtime.executors.gpu_only:build", "gpu_only", True, "device",
               summary="everything resident on the compute device"),
    PolicySpec("gpu_offload", "device", "hybridllm.runtime.executors.gpu_offload:build", "gpu_offload", True, "streamed",
               summary="decoder layers stream from host memory, two staging slots (FlexGen)"),
    PolicySpec("cpu_only", "host", "hybridllm.runtime.executors.cpu_only:build", "cpu_only", True, "host",
               summary="the whole model in OpenVINO graphs on the host, over the host KV tier"),
    PolicySpec("partition", "host", "hybridllm.runtime.executors.partition:build", "partition", True, "device",
               summary="linear layers on the device, all attention on the host KV tier"),
    PolicySpec("neo", "both", "hybridllm.runtime.executors.neo:build", "neo", False, "device", scheduler="neo",
               summary="NEO online serving: KV split across tiers, swapping, pipelined host decodes"),
)}
POLICY_NAMES = tuple(POLICIES)
PLANNABLE = tuple(n for n, p in POLICIES.items() if p.plannable)


def on_host(policy: str) -> bool:
    """Whether the policy's requests keep their KV on the host tier."""
    return POLICIES[policy].kv_tier == "host"
