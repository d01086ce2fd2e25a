"""Online serving with NEO's measures: Poisson arrivals, per-token latency, trimmed throughput.

    python benchmarks/online.py sim  [--rates ...]    # cost-model simulation on the reference profiles
    python benchmarks/online.py real [--rates ...]    # the real engine on this machine (default model)

Both compare `partition` (NEO: split KV, swapping, pipelined host decodes) with
`gpu_only` at the same device KV budget, capped so that memory, not compute,
limits gpu_only. Throughput drops the first 10% and last 30% of requests (by
arrival); latency is each request's (finish - arrival) / output tokens, averaged.

The simulation drives the real schedulers (Scheduler, NeoScheduler: pure code)
with a virtual clock, each step costed by the profile's tables (NeoCostTables).
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine, table  # noqa: E402

from hybridllm.engine import Request, RequestStatus, Scheduler  # noqa: E402
from hybridllm.engine.neo_scheduler import NeoScheduler  # noqa: E402
from hybridllm.kv import KVCacheManager, KVCacheTier, KVLayout, Tier  # noqa: E402
from hybridllm.policy import ModelShape, reference_profile  # noqa: E402
from hybridllm.policy.neo import DeviceWork, NeoCostTables  # noqa: E402
from hybridllm.sampling_params import SamplingParams  # noqa: E402


def workload(n: int, rate: float, in_mean: int, out_lo: int, out_hi: int, seed: int = 0):
    rnd = random.Random(seed)
    t, reqs = 0.0, []
    for i in range(n):
        t += rnd.expovariate(rate)
        reqs.append((t, max(1, int(in_mean * rnd.uniform(0.9, 1.1))), rnd.randint(out_lo, out_hi)))
    return reqs


def summarize(arrival, finish, outs):
    n = len(arrival)
    keep = range(int(0.1 * n), max(int(0.7 * n), int(0.1 * n) + 1))
    lat = sum((finish[i] - arrival[i]) / outs[i] for i in range(n)) / n
    span = max(finish[i] for i in keep) - min(arrival[i] for i in keep)
    return lat, sum(outs[i] for i in keep) / span


# -- simulation ------------------------------------------------------------------

def simulate(policy: str, m: ModelShape, costs: NeoCostTables, reqs, dev_blocks: int, host_blocks: int,
             max_num_seqs: int, budget: int):
    lay = KVLayout(1, 1, 1, 16, torch.float32)         # bookkeeping only: tiny tensors
    tiers = {Tier.DEVICE: KVCacheTier(Tier.DEVICE, lay, dev_blocks, "cpu")}
    if policy == "partition":
        tiers[Tier.HOST] = KVCacheTier(Tier.HOST, lay, host_blocks, "cpu")
    kv = KVCacheManager(tiers, 16)
    sched = (NeoScheduler(kv, max_num_seqs, budget, costs) if policy == "partition"
             else Scheduler(kv, max_num_seqs, budget))
    clock, nxt = 0.0, 0
    arrival, finish, outs = {}, {}, {}
    piped = steps = 0
    while nxt < len(reqs) or sched.has_unfinished():
        while nxt < len(reqs) and reqs[nxt][0] <= clock:
            t, n_in, n_out = reqs[nxt]
            rid = f"r{nxt}"
            sched.add(Request(rid, None, [1] * n_in, SamplingParams(max_tokens=n_out), None, None, 10**9))
            arrival[rid], outs[rid] = t, n_out
            nxt += 1
        out = sched.schedule()
        if out.empty:
            clock = reqs[nxt][0] if nxt < len(reqs) else clock + 1e-3
            continue
        a = [s for s in out.scheduled if s.attn != "host"]
        b = [s for s in out.scheduled if s.attn == "host"]
        dec = [s for s in a if len(s.token_ids) == 1]
        pre = [s for s in a if len(s.token_ids) > 1]
        pt = sum(len(s.token_ids) for s in pre)
        work = DeviceWork(sum(len(s.token_ids) for s in a), len(a), len(dec),
                          sum(s.num_computed_tokens + 1 for s in dec), pt,
                          sum(s.num_computed_tokens + len(s.token_ids) for s in pre) / max(len(pre), 1))
        swap = sum(len(c.src_blocks) for c in out.copies) * 16 * m.kv_bytes_per_token(costs.kv_bytes)
        clock += costs.step(work, len(b), sum(s.num_computed_tokens + 1 for s in b)) + swap / costs.hw.d2h_pinned
        steps += 1
        piped += bool(a and b)
        for s in out.scheduled:
            r = sched.requests[s.request_id]
            r.num_computed_tokens += len(s.token_ids)
            if s.sample:
                r.output_token_ids.append(1)
                if len(r.output_token_ids) >= r.params.max_tokens:
                    finish[r.request_id] = clock
                    sched.finish(r, RequestStatus.FINISHED_LENGTH)
    ids = sorted(arrival, key=lambda k: arrival[k])
    lat, thr = summarize([arrival[i] for i in ids], [finish[i] for i in ids], [outs[i] for i in ids])
    return lat, thr, piped / max(steps, 1)


SIM_SETUPS = (
    # profile, model, device KV cap (GB), as in NEO's settings: 7-8B models, memory-bound GPUs
    ("t4-xeon8", ModelShape("Llama-2-7B", 32, 4096, 32, 32, 128, 11008, 32000, 2, 2), 2.0),
    ("a10g-epyc", ModelShape("Llama-3-8B", 32, 4096, 32, 8, 128, 14336, 128256, 2, 2), 4.0),
    ("h100-sxm-spr", ModelShape("Llama-3-8B", 32, 4096, 32, 8, 128, 14336, 128256, 2, 2), 8.0),
)


def run_sim(args) -> None:
    rows = []
    for prof_name, m, kv_gb in SIM_SETUPS:
        if args.profiles and prof_name not in args.profiles:
            continue
        prof = reference_profile(prof_name)
        costs = NeoCostTables(m, prof, "bf16", 2)
        block = 16 * m.kv_bytes_per_token(2)
        dev_blocks = int(kv_gb * 1e9 // block)
        host_blocks = int(min(prof.host_memory_bytes * 0.5, 200e9) // block)
        for rate in args.rates:
            reqs = workload(args.requests, rate, args.input_len, 50, 400, seed=1)
            res = {p: simulate(p, m, costs, reqs, dev_blocks, host_blocks, 256, 4096)
                   for p in ("gpu_only", "partition")}
            (lg, tg, _), (ln, tn, share) = res["gpu_only"], res["partition"]
            rows.append([prof_name, m.name, f"{kv_gb:.0f}", rate, f"{tg:.0f}", f"{tn:.0f}", f"{100 * (tn / tg - 1):+.0f}%",
                         f"{1e3 * lg:.0f}", f"{1e3 * ln:.0f}", f"{100 * share:.0f}%"])
    print("SIMULATION on reference profiles (FROM SPECS, NOT MEASURED); real schedulers, cost-model clock.")
    print(f"{args.requests} requests, input {args.input_len} +-10%, output 50-400\n")
    print(table(["profile", "model", "device KV GB", "rate req/s", "gpu_only tok/s", "NEO tok/s", "NEO gain",
                 "gpu_only ms/token", "NEO ms/token", "pipelined steps"], rows))


# -- real ------------------------------------------------------------------------

def run_real(args) -> None:
    from hybridllm import LLM, default_model
    path = default_model()
    block_bytes = 16 * 30 * 2 * 3 * 64 * 4
    rows = []
    for rate in args.rates:
        reqs = workload(args.requests, rate, args.input_len, args.out_lo, args.out_hi, seed=2)
        res = {}
        for policy in ("gpu_only", "partition"):
            llm = LLM(str(path), policy=policy, device_kv_bytes=args.device_blocks * block_bytes,
                      host_kv_bytes=1 << 30, max_num_seqs=64, hardware_profile=args.profile)
            engine = llm.engine
            g = torch.Generator().manual_seed(0)
            start = time.perf_counter()
            arrival, finish, nxt = {}, {}, 0
            while nxt < len(reqs) or engine.has_unfinished_requests():
                now = time.perf_counter() - start
                while nxt < len(reqs) and reqs[nxt][0] <= now:
                    t, n_in, n_out = reqs[nxt]
                    ids = torch.randint(100, 40000, (n_in,), generator=g).tolist()
                    engine.add_request(f"r{nxt}", None, SamplingParams(max_tokens=n_out, temperature=0.0,
                                                                       ignore_eos=True), prompt_token_ids=ids)
                    arrival[f"r{nxt}"] = t
                    nxt += 1
                if not engine.has_unfinished_requests():
                    time.sleep(max(0.0, reqs[nxt][0] - now))
                    continue
                for o in engine.step():
                    if o.finished:
                        finish[o.request_id] = time.perf_counter() - start
            order = [f"r{i}" for i in range(len(reqs))]
            res[policy] = summarize([arrival[i] for i in order], [finish[i] for i in order],
                                    [reqs[i][2] for i in range(len(reqs))]) + (engine.stats(),)
        (lg, tg, _), (ln, tn, st) = res["gpu_only"], res["partition"]
        rows.append([rate, f"{tg:.1f}", f"{tn:.1f}", f"{100 * (tn / tg - 1):+.0f}%", f"{1e3 * lg:.0f}",
                     f"{1e3 * ln:.0f}", st.num_preemptions, st.steps_by_policy])
    print(f"machine: {machine()}; device KV capped at {args.device_blocks} blocks of 16 tokens (both policies)")
    print(f"{args.requests} requests, input {args.input_len} +-10%, output {args.out_lo}-{args.out_hi}\n")
    print(table(["rate req/s", "gpu_only tok/s", "NEO tok/s", "NEO gain", "gpu_only ms/token", "NEO ms/token",
                 "NEO preemptions", "NEO steps"], rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("sim", "real"))
    ap.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")], default=None)
    ap.add_argument("--requests", type=int, default=None)
    ap.add_argument("--input-len", type=int, default=None)
    ap.add_argument("--out-lo", type=int, default=50)
    ap.add_argument("--out-hi", type=int, default=400)
    ap.add_argument("--device-blocks", type=int, default=64)
    ap.add_argument("--profile", default=None, help="hardware profile for NEO's load-aware choice (real mode)")
    ap.add_argument("--profiles", type=lambda s: s.split(","), default=None, help="sim: only these reference profiles")
    args = ap.parse_args()
    if args.mode == "sim":
        args.rates = args.rates or [1.0, 2.0, 4.0, 8.0]
        args.requests = args.requests or 400
        args.input_len = args.input_len or 1000
        run_sim(args)
    else:
        args.rates = args.rates or [0.5, 1.0, 2.0]
        args.requests = args.requests or 24
        args.input_len = args.input_len or 200
        run_real(args)


if __name__ == "__main__":
    main()
