"""Plans for big models on reference (spec, not measured) profiles, against FlexInfer's figures.

    python benchmarks/plan_reference.py

For OPT-66B- and Llama-70B-shaped models in bf16, input 512/1024, output 32,
batch 1/4/16: the chosen per-phase policies, their predicted latency, gpu_offload's
latency and the share of it spent on PCIe (FlexInfer: 89-96% on an H100), and the
predicted reduction of the chosen plan against gpu_offload (FlexInfer: 75-76%).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _common import table  # noqa: E402

from hybridllm.policy import BatchShape, ModelShape, PlanError, Planner, reference_profile  # noqa: E402
from hybridllm.policy.reference import SPECS  # noqa: E402

MODELS = (
    ModelShape("OPT-66B", num_layers=64, hidden=9216, num_heads=72, num_kv_heads=72, head_dim=128,
               intermediate=36864, vocab=50272, weight_bytes_per_param=2, act_bytes=2, gated_mlp=False),
    ModelShape("Llama-70B", num_layers=80, hidden=8192, num_heads=64, num_kv_heads=8, head_dim=128,
               intermediate=28672, vocab=128256, weight_bytes_per_param=2, act_bytes=2),
)


def main() -> None:
    rows = []
    for spec in SPECS:
        prof = reference_profile(spec.name)
        for m in MODELS:
            planner = Planner(m, prof)
            for n in (512, 1024):
                for b in (1, 4, 16):
                    batch = BatchShape(b, n, 32, "bf16")
                    try:
                        plan = planner.plan(batch)
                    except PlanError:
                        rows.append([spec.name, m.name, n, b, "no policy fits", "", "", "", ""])
                        continue
                    by = {(e.policy, e.phase): e for e in plan.estimates}
                    off_pre, off_dec = by[("gpu_offload", "prefill")], by[("gpu_offload", "decode")]
                    off = off_pre.seconds + off_dec.seconds
                    pcie = (off_pre.transfer_s + off_dec.transfer_s) / (off_pre.compute_s + off_dec.compute_s
                                                                        + off_pre.transfer_s + off_dec.transfer_s)
                    rows.append([spec.name, m.name, n, b, f"{plan.prefill.policy} / {plan.decode.policy}",
                                 f"{plan.seconds:.2f}", f"{off:.2f}", f"{100 * pcie:.0f}%",
                                 f"{100 * (1 - plan.seconds / off):.0f}%"])
    print("Reference profiles are FROM SPECS, NOT MEASURED (see hybridllm/policy/reference.py).\n")
    print(table(["profile", "model", "input", "batch", "chosen prefill / decode", "predicted s",
                 "gpu_offload s", "offload PCIe share", "reduction vs offload"], rows))


if __name__ == "__main__":
    main()
