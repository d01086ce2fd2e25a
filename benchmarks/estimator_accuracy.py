"""How well the cost model predicts real prefill and decode times, and how often the planner picks right.

    python benchmarks/estimator_accuracy.py [--batches 1,4,16] [--inputs 128,512,2048] [--output 32]
                                            [--policies gpu_only,gpu_offload,partition,cpu_only]

Measures this machine's profile first (same run), then for every cell and runnable
policy runs a real batch through the engine: one prefill step over the whole batch,
then output-1 decode steps. Prints predicted vs measured time, relative error, and
per phase whether the planner's pick was within 10% of the measured best.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine, table  # noqa: E402


def run_cell(llm, batch: int, input_len: int, output_len: int) -> tuple[float, float]:
    from hybridllm import SamplingParams
    engine = llm.engine
    g = torch.Generator().manual_seed(batch * 100003 + input_len)
    p = SamplingParams(max_tokens=output_len, temperature=0.0, ignore_eos=True)
    for i in range(batch):
        ids = torch.randint(100, 40000, (input_len,), generator=g).tolist()
        engine.add_request(f"cell-{batch}-{input_len}-{i}-{time.perf_counter_ns()}", None, p, prompt_token_ids=ids)
    t = time.perf_counter()
    engine.step()                                   # the whole batch's prefill (budget covers it)
    prefill = time.perf_counter() - t
    t = time.perf_counter()
    while engine.has_unfinished_requests():
        engine.step()
    return prefill, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="1,4,16")
    ap.add_argument("--inputs", default="128,512,2048")
    ap.add_argument("--output", type=int, default=32)
    ap.add_argument("--policies", default="gpu_only,gpu_offload,partition,cpu_only")
    ap.add_argument("--profile-out", default=None, help="also save the measured profile here")
    args = ap.parse_args()
    batches = [int(x) for x in args.batches.split(",")]
    inputs = [int(x) for x in args.inputs.split(",")]

    from hybridllm import LLM, default_model
    from hybridllm.models.config import ModelConfig
    from hybridllm.policy import BatchShape, CostModel, ModelShape
    from hybridllm.profiling.measure import measure
    from hybridllm.profiling.store import save_profile

    path = default_model()
    mc = ModelConfig.from_folder(path)
    t = time.perf_counter()
    profile = measure(mc, "float32", progress=True)
    print(f"profile measured in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    if args.profile_out:
        save_profile(profile, args.profile_out)
    shape = ModelShape.from_config(mc, "float32")
    cost = CostModel(profile)
    budget = max(batches) * max(inputs)
    measured: dict[tuple, float] = {}
    predicted: dict[tuple, float] = {}
    policies = []
    # KV room for the largest cell on either tier: a preempted (recomputed) request would time
    # something the cost model does not describe.
    kv_bytes = int(1.25 * max(batches) * (max(inputs) + args.output + 32) * shape.kv_bytes_per_token(4))
    for policy in args.policies.split(","):
        try:
            llm = LLM(str(path), policy=policy, max_num_batched_tokens=budget, max_num_seqs=max(batches),
                      host_kv_bytes=kv_bytes, device_kv_bytes=kv_bytes)
        except (NotImplementedError, ImportError, ValueError) as e:
            print(f"skipping {policy}: {e}", file=sys.stderr)
            continue
        policies.append(policy)
        run_cell(llm, 1, 16, 4)                     # warm-up
        for b in batches:
            for n in inputs:
                before = llm.engine.stats().num_preemptions
                pre, dec = run_cell(llm, b, n, args.output)
                if llm.engine.stats().num_preemptions != before:
                    raise RuntimeError(f"{policy} b={b} in={n}: requests were preempted; give the KV more room")
                bs = BatchShape(b, n, args.output, "f32")
                for phase, secs in (("prefill", pre), ("decode", dec)):
                    measured[(policy, phase, b, n)] = secs
                    predicted[(policy, phase, b, n)] = cost.estimate(policy, phase, shape, bs).seconds
                print(f"{policy} b={b} in={n}: prefill {pre:.3f}s decode {dec:.3f}s", file=sys.stderr)
        del llm

    rows, errors, hits, cells = [], [], 0, 0
    for b in batches:
        for n in inputs:
            for phase in ("prefill", "decode"):
                best_measured = min(measured[(p, phase, b, n)] for p in policies)
                pick = min(policies, key=lambda p: predicted[(p, phase, b, n)])
                ok = measured[(pick, phase, b, n)] <= 1.10 * best_measured
                hits += ok
                cells += 1
                for p in policies:
                    m, pr = measured[(p, phase, b, n)], predicted[(p, phase, b, n)]
                    err = (pr - m) / m
                    errors.append(abs(err))
                    rows.append([b, n, phase, p, f"{pr:.3f}", f"{m:.3f}", f"{100 * err:+.0f}%",
                                 ("pick" + (" ok" if ok else " MISS")) if p == pick else
                                 ("best" if m == best_measured else "")])
    print(f"machine: {machine()}")
    print(f"profile: host read {profile.host_memory_bandwidth / 1e9:.1f} GB/s; output {args.output}; "
          f"policies: {', '.join(policies)}\n")
    print(table(["batch", "input", "phase", "policy", "predicted s", "measured s", "error", "planner"], rows))
    print(f"\nmedian |error| {100 * statistics.median(errors):.1f}% (target <= 15%); "
          f"pick within 10% of measured best in {hits}/{cells} phase-cells = {100 * hits / cells:.0f}% (target >= 90%)")


if __name__ == "__main__":
    main()
