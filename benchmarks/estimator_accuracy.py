"""How well the cost model predicts real prefill and decode times, and how often the planner picks right.

    python benchmarks/estimator_accuracy.py [--batches 1,4,16] [--inputs 128,512,2048] [--output 32]
                                            [--policies gpu_only,gpu_offload,partition,cpu_only]
    python benchmarks/estimator_accuracy.py --per-step [--profile P]

Phases (default): measures this machine's profile first (same run), then for every cell and
runnable policy runs a real batch through the engine: one prefill step over the whole batch,
then output-1 decode steps. Prints predicted vs measured time, relative error, and per phase
whether the planner's pick was within 10% of the measured best.

--per-step: what auto's per-step choice relies on. Single steps of one prefill chunk of
{16, 128, 512, 2048} tokens beside {1, 8, 32} decodes at context {128, 1024}, run by each
policy's executor over KV blocks on its own tier (best of 3 after a warm-up), against
CostModel.step's prediction from the profile auto uses (this machine's cached one, measured on
first use, unless --profile). Reports median |error| and how often the cheapest predicted
executor is within 10% of the measured best.
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


def per_step(args) -> None:
    from hybridllm import LLM, default_model
    from hybridllm.models.config import ModelConfig
    from hybridllm.policy import CostModel, ModelShape, StepShape
    from hybridllm.profiling.cache import cached_profile
    from hybridllm.profiling.store import load_profile
    from hybridllm.scheduler import StepInput, SubBatch

    from hybridllm.dtypes import BYTES, KV_OF_MODEL
    path = args.model or default_model()
    mc = ModelConfig.from_folder(path)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    profile = load_profile(args.profile) if args.profile else cached_profile(mc, args.dtype, dev)[0]
    shape, cost = ModelShape.from_config(mc, args.dtype), CostModel(profile)
    kv_dtype = KV_OF_MODEL[args.dtype]
    chunks, batches, ctxs = (16, 128, 512, 2048), (1, 8, 32), (128, 1024)
    measured, predicted, policies = {}, {}, []
    kv_bytes = int(1.5 * (max(batches) * (max(ctxs) + 64) + max(chunks)) * shape.kv_bytes_per_token(BYTES[kv_dtype]))
    for policy in args.policies.split(","):
        try:
            llm = LLM(str(path), policy=policy, dtype=args.dtype, max_num_batched_tokens=4096, max_num_seqs=64,
                      device_kv_bytes=kv_bytes, host_kv_bytes=kv_bytes, hardware_profile="none",
                      enable_prefix_caching=False)   # the estimator prices cold prefill
        except (ValueError, RuntimeError) as e:                   # e.g. gpu_only when the weights do not fit
            print(f"skipping {policy}: {e}", file=sys.stderr)
            continue
        runner, kv = llm.engine.runtime.executors[policy], llm.engine.kv
        (tier,) = kv.tiers
        policies.append(policy)
        for c in ctxs:
            for d in batches:
                for n in chunks:
                    rids = [f"d{i}" for i in range(d)]
                    for rid in rids:
                        assert kv.allocate_slots(rid, c + 1, tier)
                    assert kv.allocate_slots("p", n, tier)
                    seqs = [StepInput(rid, (1000 + i,), c, kv.block_table(rid), True) for i, rid in enumerate(rids)]
                    seqs.append(StepInput("p", tuple(range(100, 100 + n)), 0, kv.block_table("p"), True))
                    seqs = [SubBatch(policy, tier, tuple(seqs))]
                    runner.execute(seqs)                                   # warm-up
                    best = float("inf")
                    for _ in range(3):
                        t = time.perf_counter()
                        runner.execute(seqs)
                        if dev.type == "cuda":
                            torch.cuda.synchronize()
                        best = min(best, time.perf_counter() - t)
                    for rid in rids + ["p"]:
                        kv.free(rid)
                    key = (policy, n, d, c)
                    measured[key] = best
                    predicted[key] = cost.step(policy, shape, StepShape(n, 1, float(n), d, d * (c + 1),
                                                                      kv_dtype)).seconds
                    print(f"{policy} chunk={n} decodes={d} ctx={c}: {1e3 * best:.1f} ms "
                          f"(predicted {1e3 * predicted[key]:.1f})", file=sys.stderr)
        del llm, runner
    rows, errors, hits, cells = [], [], 0, 0
    for c in ctxs:
        for d in batches:
            for n in chunks:
                best = min(measured[(p, n, d, c)] for p in policies)
                pick = min(policies, key=lambda p: predicted[(p, n, d, c)])
                ok = measured[(pick, n, d, c)] <= 1.10 * best
                hits, cells = hits + ok, cells + 1
                for p in policies:
                    m, pr = measured[(p, n, d, c)], predicted[(p, n, d, c)]
                    errors.append(abs(pr - m) / m)
                    rows.append([n, d, c, p, f"{1e3 * pr:.1f}", f"{1e3 * m:.1f}", f"{100 * (pr - m) / m:+.0f}%",
                                 ("pick" + (" ok" if ok else " MISS")) if p == pick else
                                 ("best" if m == best else "")])
    print(f"machine: {machine()}")
    print(f"profile: {profile.name} ({profile.notes}); policies: {', '.join(policies)}\n")
    print(table(["prefill chunk", "decodes", "context", "policy", "predicted ms", "measured ms", "error",
                 "planner"], rows))
    print(f"\nmedian |error| {100 * statistics.median(errors):.1f}% (target <= 15%); "
          f"pick within 10% of measured best in {hits}/{cells} cells = {100 * hits / cells:.0f}% (target >= 90%)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="1,4,16")
    ap.add_argument("--inputs", default="128,512,2048")
    ap.add_argument("--output", type=int, default=32)
    ap.add_argument("--policies", default="gpu_only,gpu_offload,partition,cpu_only")
    ap.add_argument("--profile-out", default=None, help="also save the measured profile here")
    ap.add_argument("--per-step", action="store_true", help="single mixed steps instead of whole phases")
    ap.add_argument("--profile", default=None, help="--per-step: a profile JSON instead of the cached one")
    ap.add_argument("--model", default=None, help="--per-step: an HF folder instead of the default model")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"), help="--per-step")
    args = ap.parse_args()
    if args.per_step:
        return per_step(args)
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
                      host_kv_bytes=kv_bytes, device_kv_bytes=kv_bytes, enable_prefix_caching=False)
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
