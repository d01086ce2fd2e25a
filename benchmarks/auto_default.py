"""Out of the box: `LLM(model="default")` with no options (policy auto, profile on first use) against
forced `policy="cpu_only"`, decode tokens/s in the same run. The goal on a CPU-only machine: within 10%.

    python benchmarks/auto_default.py [--batches 1,8,32] [--new-tokens 128] [--repeats 3]

Both engines are built once; each (batch, engine) cell is run `repeats` times, the two engines
interleaved, and the median taken (the machine may be shared). The first start of the auto engine
measures this machine's profile unless one is cached; the start-up times are printed.
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from _common import decode_parser, decode_tps, machine, median, table  # noqa: E402

PROMPT = "Once upon a time, there was a little"


def main() -> None:
    ap = decode_parser(__doc__)
    args = ap.parse_args()
    from hybridllm import LLM
    t = time.perf_counter()
    auto = LLM(model="default")
    t_auto = time.perf_counter() - t
    t = time.perf_counter()
    cpu = LLM(model="default", policy="cpu_only")
    t_cpu = time.perf_counter() - t
    rt = auto.engine.runtime
    print(f"auto: {rt.reason}", file=sys.stderr)
    rows = []
    for b in [int(x) for x in args.batches.split(",")]:
        runs = {"auto": [], "cpu_only": []}
        for _ in range(args.repeats):
            for name, llm in (("auto", auto), ("cpu_only", cpu)):
                runs[name].append(decode_tps(llm, b, args.new_tokens, PROMPT))
        a, c = median(runs["auto"]), median(runs["cpu_only"])
        rows.append([b, f"{a:.1f}", f"{c:.1f}", f"{a / c:.2f}", "ok" if a >= 0.9 * c else "MISSED"])
    # The per-step decision, warm: a dict lookup behind the bucketing.
    from hybridllm.policy import StepShape
    planner, tier = rt.planner, rt.planner.tiers[0]
    shapes = [(StepShape(n, 1, float(n)), StepShape(decode_seqs=b, decode_context=b * 300))
              for n in (0, 16, 500) for b in (1, 7, 30)]
    for pre, dec in shapes:
        planner.choose(tier, pre, dec)
    t = time.perf_counter()
    for _ in range(1000):
        for pre, dec in shapes:
            planner.choose(tier, pre, dec)
    choose_us = (time.perf_counter() - t) / (1000 * len(shapes)) * 1e6
    print(f"machine: {machine()}")
    print(f"per-step choice, warm: {choose_us:.1f} us per StepPlanner.choose")
    print(f"start-up: auto {t_auto:.1f} s, cpu_only {t_cpu:.1f} s; auto runs {', '.join(rt.executors)}; "
          f"steps by policy {auto.engine.stats().steps_by_policy}\n")
    print(table(["batch", "auto tok/s", "cpu_only tok/s", "auto / cpu_only", "within 10%"], rows))


if __name__ == "__main__":
    main()
