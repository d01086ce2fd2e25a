"""FlexInfer's per-phase plan against weight offloading, for a model whose weights do not fit the device.

    python benchmarks/flex_offload.py --model FOLDER --profile P [--batches 1,8] [--input-len 512]
        [--output-len 32] [--device-fraction 0.5] [--dtype bfloat16] [--out flex.md]

device_memory_bytes is set to a fraction of the model's weights, so gpu_only cannot run and `auto` chooses
per step among gpu_offload (weights streamed over PCIe, FlexGen) and cpu_only (FlexInfer's setting:
input 512, output 32). Each policy gets one engine, used for every batch: `auto` (its per-phase choice,
what it ran counted from steps_by_policy), forced `gpu_offload` and forced `cpu_only`. A row is
end-to-end latency (prompts in -> last token out) beside what the planner predicted for that policy
(Planner.plan for auto, prefill + decode estimates for a forced one). Rows print as they finish.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine, table  # noqa: E402

from hybridllm import LLM, SamplingParams  # noqa: E402
from hybridllm.dtypes import KV_OF_MODEL  # noqa: E402
from hybridllm.models.config import ModelConfig  # noqa: E402
from hybridllm.policy import BatchShape, ModelShape, Planner  # noqa: E402
from hybridllm.profiling.store import load_profile  # noqa: E402

POLICIES = ("auto", "gpu_offload", "cpu_only")
HEAD = ["policy", "batch", "e2e s", "planner s", "meas / pred", "steps run", "latency vs gpu_offload"]


def predicted(planner: Planner, policy: str, batch: BatchShape) -> tuple[float, str]:
    """(seconds, what) the planner expects for `policy` on `batch`."""
    plan = planner.plan(batch)
    if policy == "auto":
        return plan.seconds, f"{plan.prefill.policy}+{plan.decode.policy}"
    by = {(e.policy, e.phase): e for e in plan.estimates}
    pre, dec = by[policy, "prefill"], by[policy, "decode"]
    return pre.seconds + dec.seconds, policy if pre.feasible and dec.feasible else f"{policy} (infeasible)"


def run_batch(llm: LLM, batch: int, input_len: int, output_len: int, vocab: int, seed: int) -> tuple[float, dict]:
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(100, min(40000, vocab), (input_len,), generator=g).tolist() for _ in range(batch)]
    params = SamplingParams(max_tokens=output_len, temperature=0.0, ignore_eos=True)
    before = dict(llm.engine.stats().steps_by_policy)
    t = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    dt = time.perf_counter() - t
    assert all(len(o.token_ids) == output_len for o in outs), "every request runs to output_len"
    after = llm.engine.stats().steps_by_policy
    return dt, {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--profile", required=True, help="hardware profile JSON (the planner's, and auto's)")
    ap.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--input-len", type=int, default=512)
    ap.add_argument("--output-len", type=int, default=32)
    ap.add_argument("--device-fraction", type=float, default=0.5, help="device memory as a share of the weights")
    ap.add_argument("--host-kv-gb", type=float, default=2.0)
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--out", default=None, help="also write the table (markdown) here")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    policies = args.policies.split(",")
    mc = ModelConfig.from_folder(args.model)
    shape = ModelShape.from_config(mc, args.dtype)
    cap = int(shape.weight_bytes * args.device_fraction)
    kv = KV_OF_MODEL[args.dtype]
    profile = load_profile(args.profile)
    planner = Planner(shape, profile, ("gpu_offload", "cpu_only"), device_memory_bytes=cap)
    head = (f"# {machine()}; model {args.model} ({shape.weight_bytes / 1e9:.2f} GB of weights, {args.dtype}), "
            f"device_memory_bytes {cap / 1e9:.2f} GB ({args.device_fraction:.0%} of the weights); input "
            f"{args.input_len}, output {args.output_len}; profile {args.profile}")
    print(head, flush=True)
    rows, e2e = [], {}

    def write() -> str:
        # auto runs before gpu_offload: the comparison column is (re)filled whenever the table is written.
        for r in rows:
            base = e2e.get(("gpu_offload", r[1]))
            r[6] = f"{100 * (float(r[2]) / base - 1):+.0f}%" if base and r[0] != "gpu_offload" else ""
        out = table(HEAD, rows)
        if args.out:                    # after every row, so a time-out still leaves the table so far
            Path(args.out).write_text(head + "\n\n" + out + "\n")
        return out

    for policy in policies:
        t0 = time.perf_counter()
        llm = LLM(args.model, policy=policy, dtype=args.dtype, device=args.device, device_memory_bytes=cap,
                  hardware_profile=args.profile, host_kv_bytes=int(args.host_kv_gb * 1e9),
                  max_model_len=args.input_len + args.output_len + 16)
        run_batch(llm, 1, 16, 2, mc.vocab_size, seed=99)                  # warm: first calls, compiles
        print(f"{policy}: engine ready in {time.perf_counter() - t0:.1f} s ({llm.engine.runtime.reason})", flush=True)
        for b in batches:
            dt, steps = run_batch(llm, b, args.input_len, args.output_len, mc.vocab_size, seed=b)
            pred, what = predicted(planner, policy, BatchShape(b, args.input_len, args.output_len, kv))
            e2e[policy, b] = dt
            rows.append([policy, b, f"{dt:.3f}", f"{pred:.3f} ({what})", f"{dt / pred:.2f}",
                         ", ".join(f"{k} {v}" for k, v in sorted(steps.items())), ""])
            write()
            print("| " + " | ".join(str(c) for c in rows[-1]) + " |", flush=True)
        del llm
        gc.collect()                    # the next engine's memory check must not see this one's
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    print("\n" + write())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
