"""Online serving with NEO's measures: Poisson arrivals, per-token latency, trimmed throughput.

    python benchmarks/online.py sim  [--rates ...]    # cost-model simulation on the reference profiles
    python benchmarks/online.py real [--rates ...]    # the real engine on this machine (default model,
                                                      # or --model FOLDER, e.g. from random_model.py)
    python benchmarks/online.py agree [--profile P]   # the scheduler's pipelined/device-only choice vs measured

Both compare `neo` (NEO: split KV, swapping, pipelined host decodes) with
`gpu_only` at the same device KV budget, capped so that memory, not compute,
limits gpu_only. Throughput drops the first 10% and last 30% of requests (by
arrival); latency is each request's (finish - arrival) / output tokens, averaged.

The simulation drives the real schedulers (Scheduler, NeoScheduler: pure code)
with a virtual clock, each step costed by the profile's tables (NeoCostTables).
`agree` checks those predictions on this machine: for a grid of step states it asks
choose_host_batch (as the scheduler does) whether to pipeline host decodes into the
step, then runs the real NeoRunner both ways (device-only, and with host decodes)
and reports whether the choice was the measured-faster one by throughput.
"""
from __future__ import annotations

import argparse
import gc
import os
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine, table  # noqa: E402

from hybridllm.dtypes import BYTES as DTYPE_BYTES, KV_OF_MODEL  # noqa: E402
from hybridllm.kv import BlockPool, BlockTables, Tier  # noqa: E402
from hybridllm.policy import ModelShape, StepShape, reference_profile  # noqa: E402
from hybridllm.policy.neo import NeoCostTables, decodes  # noqa: E402
from hybridllm.scheduler import NeoScheduler, Request, RequestStatus, Scheduler  # noqa: E402
from hybridllm.utils import ceil_div  # noqa: E402
from hybridllm.sampling_params import SamplingParams  # noqa: E402


def workload(n: int, rate: float, in_mean: int, out_lo: int, out_hi: int, seed: int = 0):
    rnd = random.Random(seed)
    t, reqs = 0.0, []
    for i in range(n):
        t += rnd.expovariate(rate)
        reqs.append((t, max(1, int(in_mean * rnd.uniform(0.9, 1.1))), rnd.randint(out_lo, out_hi)))
    return reqs


def percentiles(arrival, finish, outs, qs=(50, 99)) -> list[float]:
    """Per-token latency (finish - arrival) / output tokens of every request, at the given percentiles."""
    lat = sorted((finish[i] - arrival[i]) / outs[i] for i in range(len(arrival)))
    return [lat[min(len(lat) - 1, int(round(q / 100 * (len(lat) - 1))))] for q in qs]


def saturating_rates(costs: NeoCostTables, device_tokens: int, input_len: int, out_lo: int, out_hi: int,
                     max_num_seqs: int, factors=(0.5, 1.0, 2.0)) -> tuple[list[float], str]:
    """Arrival rates around where gpu_only saturates: its KV-bound batch (each request holding its
    prompt and whole output) decoding at the mid-life context, priced by the profile; the rate at
    which arrivals bring that many output tokens per second, times `factors`."""
    out_mean = (out_lo + out_hi) / 2
    batch = max(1, min(max_num_seqs, int(device_tokens // (input_len + out_mean))))
    ctx = input_len + out_mean / 2
    step = costs.step(decodes(batch, int(batch * ctx), costs.kv_dtype), 0, 0)
    sat = batch / step / out_mean
    rates = [float(f"{f * sat:.2g}") for f in factors]
    why = (f"gpu_only's KV-bound batch {batch} (device KV {device_tokens} tokens / {input_len + out_mean:.0f} per "
           f"request) at {1e3 * step:.1f} ms per step (profile) = {batch / step:.0f} tok/s, saturated at "
           f"{sat:.2f} req/s of {out_mean:.0f} output tokens; rates x{', x'.join(f'{f:g}' for f in factors)}")
    return rates, why


def summarize(arrival, finish, outs):
    n = len(arrival)
    keep = range(int(0.1 * n), max(int(0.7 * n), int(0.1 * n) + 1))
    lat = sum((finish[i] - arrival[i]) / outs[i] for i in range(n)) / n
    span = max(finish[i] for i in keep) - min(arrival[i] for i in keep)
    return lat, sum(outs[i] for i in keep) / span


# -- simulation ------------------------------------------------------------------

def simulate(policy: str, m: ModelShape, costs: NeoCostTables, reqs, dev_blocks: int, host_blocks: int,
             max_num_seqs: int, budget: int):
    pools = {Tier.DEVICE: BlockPool(dev_blocks, 16, "device")}      # bookkeeping only: no tensors
    if policy == "neo":
        pools[Tier.HOST] = BlockPool(host_blocks, 16, "host")
    kv = BlockTables(pools)
    sched = (NeoScheduler(kv, max_num_seqs, budget, costs) if policy == "neo"
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
        a = [s for x in out.batches if x.part != "B" for s in x.seqs]
        b = [s for x in out.batches if x.part == "B" for s in x.seqs]
        dec = [s for s in a if s.is_decode]
        pre = [s for s in a if not s.is_decode]
        pt = sum(len(s.token_ids) for s in pre)
        work = StepShape(pt, len(pre), sum(s.num_computed_tokens + len(s.token_ids) for s in pre) / max(len(pre), 1),
                         len(dec), sum(s.num_computed_tokens + 1 for s in dec), costs.kv_dtype)
        swap = sum(len(c.src_blocks) for c in out.copies) * 16 * m.kv_bytes_per_token(DTYPE_BYTES[costs.kv_dtype])
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
    setups = SIM_SETUPS
    if args.profile:      # a measured profile (of Llama-3-8B's shapes, bf16) instead of the reference ones
        from hybridllm.profiling.store import load_profile
        setups = ((args.profile, SIM_SETUPS[1][1], args.device_kv_gb or 4.0),)
    for prof_name, m, kv_gb in setups:
        if args.profiles and prof_name not in args.profiles:
            continue
        prof = load_profile(prof_name) if args.profile else reference_profile(prof_name)
        costs = NeoCostTables(m, prof, "bf16")
        block = 16 * m.kv_bytes_per_token(2)
        dev_blocks = int(kv_gb * 1e9 // block)
        host_blocks = int((args.host_kv_gb * 1e9 if args.host_kv_gb else min(prof.host_memory_bytes * 0.5, 200e9))
                          // block)
        for rate in args.rates:
            reqs = workload(args.requests, rate, args.input_len, 50, 400, seed=1)
            res = {p: simulate(p, m, costs, reqs, dev_blocks, host_blocks, args.max_num_seqs,
                                 args.max_num_batched_tokens)
                   for p in ("gpu_only", "neo")}
            (lg, tg, _), (ln, tn, share) = res["gpu_only"], res["neo"]
            rows.append([prof_name, m.name, f"{kv_gb:.0f}", rate, f"{tg:.0f}", f"{tn:.0f}", f"{100 * (tn / tg - 1):+.0f}%",
                         f"{1e3 * lg:.0f}", f"{1e3 * ln:.0f}", f"{100 * share:.0f}%"])
    print(f"SIMULATION on {'the MEASURED profile ' + args.profile if args.profile else 'reference profiles (FROM SPECS, NOT MEASURED)'}; "
          "real schedulers, cost-model clock.")
    print(f"{args.requests} requests, input {args.input_len} +-10%, output 50-400\n")
    print(table(["profile", "model", "device KV GB", "rate req/s", "gpu_only tok/s", "NEO tok/s", "NEO gain",
                 "gpu_only ms/token", "NEO ms/token", "pipelined steps"], rows))


# -- real ------------------------------------------------------------------------

def _drive(engine, reqs, vocab: int, tag: str):
    """Feeds `reqs` (arrival s, input len, output len) to the engine in real time; returns summarize(),
    the p50 and p99 per-token latency, and the mean running batch per step."""
    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    arrival, finish, nxt = {}, {}, 0
    steps = running = 0
    while nxt < len(reqs) or engine.has_unfinished_requests():
        now = time.perf_counter() - start
        while nxt < len(reqs) and reqs[nxt][0] <= now:
            t, n_in, n_out = reqs[nxt]
            ids = torch.randint(100, min(40000, vocab), (n_in,), generator=g).tolist()
            engine.add_request(f"{tag}{nxt}", None, SamplingParams(max_tokens=n_out, temperature=0.0,
                                                                   ignore_eos=True), prompt_token_ids=ids)
            arrival[f"{tag}{nxt}"] = t
            nxt += 1
        if not engine.has_unfinished_requests():
            time.sleep(max(0.0, reqs[nxt][0] - now))
            continue
        for o in engine.step():
            if o.finished:
                finish[o.request_id] = time.perf_counter() - start
        steps += 1
        running += engine.scheduler.num_running
    order = [f"{tag}{i}" for i in range(len(reqs))]
    a, f, n = [arrival[i] for i in order], [finish[i] for i in order], [r[2] for r in reqs]
    return (*summarize(a, f, n), *percentiles(a, f, n), running / max(steps, 1))


def run_real(args) -> None:
    from hybridllm import LLM, default_model
    from hybridllm.models.config import ModelConfig
    path = args.model or str(default_model())
    mc = ModelConfig.from_folder(path)
    block_bytes = 16 * ModelShape.from_config(mc, args.dtype).kv_bytes_per_token(DTYPE_BYTES[args.dtype])
    dev_bytes = int(args.device_kv_gb * 1e9) if args.device_kv_gb else args.device_blocks * block_bytes
    host_bytes = int(args.host_kv_gb * 1e9)
    why = "given"
    if args.rates is None:
        from hybridllm.profiling.store import load_profile
        costs = NeoCostTables(ModelShape.from_config(mc, args.dtype), load_profile(args.profile), KV_OF_MODEL[args.dtype])
        args.rates, why = saturating_rates(costs, dev_bytes // block_bytes * 16, args.input_len, args.out_lo,
                                           args.out_hi, args.max_num_seqs)
    print(f"rates {args.rates} req/s: {why}", flush=True)
    workloads = {rate: workload(args.requests, rate, args.input_len, args.out_lo, args.out_hi, seed=2)
                 for rate in args.rates}
    res = {}
    for policy in ("gpu_only", "neo"):
        # One engine per policy for every rate: loading, compiling and pinning happen once.
        llm = LLM(path, policy=policy, dtype=args.dtype, device_kv_bytes=dev_bytes, host_kv_bytes=host_bytes,
                  max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
                  hardware_profile=args.profile if policy == "neo" else None, device=args.device)
        engine = llm.engine
        _drive(engine, workload(4, 100.0, args.input_len, 8, 8, seed=9), mc.vocab_size, "warm")
        for rate, reqs in workloads.items():
            before = engine.stats()
            lat, thr, p50, p99, batch = _drive(engine, reqs, mc.vocab_size, f"{rate}-")
            after = engine.stats()
            steps = {k: v - before.steps_by_policy.get(k, 0) for k, v in after.steps_by_policy.items()}
            res[policy, rate] = (lat, thr, after.num_preemptions - before.num_preemptions, steps, p50, p99, batch)
            print(f"{policy} rate {rate}: {thr:.1f} tok/s, {1e3 * lat:.1f} ms/token (p50 {1e3 * p50:.1f}, "
                  f"p99 {1e3 * p99:.1f}), mean batch {batch:.1f}, steps {steps}", flush=True)
        engine.kv.check()
        del llm, engine
        gc.collect()                    # the next engine's memory check must not see this one's
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    rows = []
    for rate in args.rates:
        g, n = res["gpu_only", rate], res["neo", rate]
        host_steps, all_steps = n[3].get("neo", 0), sum(n[3].values())
        rows.append([rate, f"{g[1]:.1f}", f"{n[1]:.1f}", f"{100 * (n[1] / g[1] - 1):+.0f}%",
                     f"{1e3 * g[4]:.1f} / {1e3 * g[5]:.1f}", f"{1e3 * n[4]:.1f} / {1e3 * n[5]:.1f}",
                     f"{g[6]:.1f} / {n[6]:.1f}", f"{g[2]} / {n[2]}",
                     f"{host_steps} of {all_steps} ({100 * host_steps / max(all_steps, 1):.0f}%)"])
    head = (f"machine: {machine()}; model {path} ({mc.num_hidden_layers} layers, hidden {mc.hidden_size}), "
            f"{args.dtype}; device KV capped at {dev_bytes / 1e9:.2f} GB = {dev_bytes // block_bytes} blocks of 16 "
            f"tokens (both policies), host KV {host_bytes / 1e9:.1f} GB; NEO profile {args.profile}\n"
            f"{args.requests} requests per rate, input {args.input_len} +-10%, output {args.out_lo}-{args.out_hi}, "
            f"max_num_seqs {args.max_num_seqs}; rates: {why}")
    out = table(["rate req/s", "gpu_only tok/s", "NEO tok/s", "NEO gain", "gpu_only ms/token p50 / p99",
                 "NEO ms/token p50 / p99", "mean batch gpu_only / NEO", "preemptions gpu_only / NEO",
                 "NEO steps with host decodes"], rows)
    print("\n" + head + "\n\n" + out)
    if args.out:
        Path(args.out).write_text(head + "\n\n" + out + "\n")
    if args.plot:
        plot(res, args.rates, args.plot, f"{machine()}\n{os.path.basename(path.rstrip('/'))} {args.dtype}, "
             f"device KV {dev_bytes / 1e9:.1f} GB, input {args.input_len}, output {args.out_lo}-{args.out_hi}")


def plot(res, rates, out: str, title: str) -> None:
    """Latency per output token against throughput, one line per policy, a point per arrival rate.
    Without matplotlib (a lent GPU's image), an SVG drawn by hand: the plot must not fail on set-up."""
    series = {label: [(res[p, r][1], 1e3 * res[p, r][0], f"{r:g}/s") for r in rates]
              for p, label in (("gpu_only", "gpu_only (device KV only)"), ("neo", "NEO (split KV, pipelined)"))}
    try:
        import matplotlib
    except ImportError:
        from _plot import svg_lines
        out = str(Path(out).with_suffix(".svg"))
        Path(out).write_text(svg_lines(series, "throughput (output tokens/s)", "latency per output token (ms)", title))
        print(f"plot written to {out} (matplotlib is not installed: SVG)")
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for policy, label in (("gpu_only", "gpu_only (device KV only)"), ("neo", "NEO (split KV, pipelined)")):
        xs = [res[policy, r][1] for r in rates]
        ys = [1e3 * res[policy, r][0] for r in rates]
        ax.plot(xs, ys, marker="o", label=label)
        for r, x, y in zip(rates, xs, ys):
            ax.annotate(f"{r:g}/s", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("throughput (output tokens/s)")
    ax.set_ylabel("latency per output token (ms)")
    ax.set_title(title, fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"plot written to {out}")


# -- agreement: predicted vs measured pipelined-or-not ----------------------------

def run_agree(args) -> None:
    from hybridllm import LLM, default_model
    from hybridllm.models.config import ModelConfig
    from hybridllm.policy.neo import HostCandidate, choose_host_batch
    from hybridllm.profiling.measure import measure
    from hybridllm.profiling.store import save_profile
    from hybridllm.scheduler import StepInput, SubBatch
    path = args.model or str(default_model())
    mc = ModelConfig.from_folder(path)
    prof_path = args.profile
    if prof_path is None:
        prof_path = "/tmp/hybridllm-online-agree-profile.json"
        save_profile(measure(mc, args.dtype, progress=False), prof_path)
    block_bytes = 16 * ModelShape.from_config(mc, args.dtype).kv_bytes_per_token(DTYPE_BYTES[args.dtype])
    devs, hosts, ctxs = args.agree_dev, args.agree_host, args.agree_ctx
    need = max(devs) * ceil_div(max(ctxs) + 1, 16) + 8
    need_host = max(hosts) * ceil_div(max(ctxs) + 1, 32) * 2 + 8      # host blocks hold 32 tokens
    llm = LLM(path, policy="neo", dtype=args.dtype, device_kv_bytes=need * block_bytes,
              host_kv_bytes=need_host * block_bytes, max_num_seqs=256, hardware_profile=prof_path)
    engine = llm.engine
    kv, runner, costs = engine.kv, engine.runtime.executors["neo"], engine.runtime.neo_costs

    def make(prefix, n, ctx, tier):
        seqs = []
        for i in range(n):
            rid = f"{prefix}{i}"
            assert kv.allocate_slots(rid, ctx + 1, tier), "KV budget too small for the grid"
            seqs.append(StepInput(rid, (1000 + i,), ctx, kv.block_table(rid), True))
        return seqs

    def best(a, b=(), reps=3):
        step = [SubBatch("neo", Tier.DEVICE, tuple(a), "A")] + ([SubBatch("neo", Tier.HOST, tuple(b), "B")] if b else [])
        runner.execute(step)                       # warm: decode steps rewrite the same slots, so repeatable
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            runner.execute(step)
            times.append(time.perf_counter() - t)
        return min(times)

    rows, hits, cells = [], 0, 0
    for ctx in ctxs:
        for n_dev in devs:
            for n_host in hosts:
                a = make("d", n_dev, ctx, Tier.DEVICE)
                b = make("h", n_host, ctx, Tier.HOST)
                work = decodes(n_dev, n_dev * (ctx + 1), KV_OF_MODEL[args.dtype])
                choice = choose_host_batch(work, [HostCandidate(s.request_id, ctx + 1) for s in b], costs, 256)
                chosen = [s for s in b if s.request_id in set(choice.chosen)]
                t_dev, t_all = best(a), best(a, b)
                t_pick = t_dev if not chosen else (t_all if len(chosen) == len(b) else best(a, chosen))
                thr = {"device-only": n_dev / t_dev, "all host decodes": (n_dev + n_host) / t_all,
                       "pick": (n_dev + len(chosen)) / t_pick}
                ok = thr["pick"] >= 0.9 * max(thr.values())
                hits += ok
                cells += 1
                pred_pick = choice.pipelined_s if chosen else choice.device_only_s
                rows.append([ctx, n_dev, n_host, f"{len(chosen)}/{n_host}",
                             f"{1e3 * choice.device_only_s:.1f}", f"{1e3 * t_dev:.1f}",
                             f"{1e3 * costs.step(work, n_host, n_host * (ctx + 1)):.1f}", f"{1e3 * t_all:.1f}",
                             f"{1e3 * pred_pick:.1f}", f"{1e3 * t_pick:.1f}",
                             f"{thr['pick'] / max(thr.values()):.2f}", "ok" if ok else "MISS"])
                for s in a + b:
                    kv.free(s.request_id)
    kv.check()
    print(f"machine: {machine()}; profile {prof_path}; model {path}, {args.dtype}, decode steps")
    print("pred/meas: the profile's step-time prediction and the measured best of 3 (ms). 'pick' is the")
    print("load-aware choice (choose_host_batch); ok = its tokens/s within 10% of the best measured option.\n")
    print(table(["context", "device decodes", "host candidates", "picked", "device-only pred", "device-only meas",
                 "all-host pred", "all-host meas", "pick pred", "pick meas", "pick / best tok/s", "agree"], rows))
    print(f"\nchoice within 10% of the measured best in {hits}/{cells} cells = {100 * hits / cells:.0f}%")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("sim", "real", "agree"))
    ap.add_argument("--rates", type=lambda s: None if s == "auto" else [float(x) for x in s.split(",")], default=None,
                    help="req/s, comma-separated; real: 'auto' = around gpu_only's saturation, from --profile")
    ap.add_argument("--device", default=None, help="real: cuda or cpu (default: cuda if present)")
    ap.add_argument("--out", default=None, help="real: also write the table (markdown) here")
    ap.add_argument("--requests", type=int, default=None)
    ap.add_argument("--input-len", type=int, default=None)
    ap.add_argument("--out-lo", type=int, default=50)
    ap.add_argument("--out-hi", type=int, default=400)
    ap.add_argument("--device-blocks", type=int, default=64, help="real: device KV cap in 16-token blocks")
    ap.add_argument("--device-kv-gb", type=float, default=None, help="real: device KV cap in GB (over --device-blocks)")
    ap.add_argument("--host-kv-gb", type=float, default=None, help="NEO's host KV tier (real: 1; sim: half the host's)")
    ap.add_argument("--model", default=None, help="real: HF folder (default: the default model)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--max-num-seqs", type=int, default=None, help="real: 64, sim: 256")
    ap.add_argument("--max-num-batched-tokens", type=int, default=None, help="real: 2048, sim: 4096")
    ap.add_argument("--plot", default=None, help="real: write latency-vs-throughput PNG here")
    ap.add_argument("--profile", default=None, help="hardware profile for NEO's load-aware choice (real mode)")
    ap.add_argument("--profiles", type=lambda s: s.split(","), default=None, help="sim: only these reference profiles")
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    ap.add_argument("--agree-dev", type=ints, default=[1, 8, 32], help="agree: device decodes per step")
    ap.add_argument("--agree-host", type=ints, default=[1, 8, 32], help="agree: host decode candidates")
    ap.add_argument("--agree-ctx", type=ints, default=[256, 1024], help="agree: context of every decode")
    args = ap.parse_args()
    if args.mode == "agree":
        run_agree(args)
    elif args.mode == "sim":
        args.rates = args.rates or [1.0, 2.0, 4.0, 8.0]
        args.requests = args.requests or 400
        args.input_len = args.input_len or 1000
        args.max_num_seqs = args.max_num_seqs or 256
        args.max_num_batched_tokens = args.max_num_batched_tokens or 4096
        run_sim(args)
    else:
        if args.rates is None and not args.profile:
            args.rates = [0.5, 1.0, 2.0]          # 'auto' needs a profile to price gpu_only's steps
        args.requests = args.requests or 24
        args.input_len = args.input_len or 200
        args.max_num_seqs = args.max_num_seqs or 64
        args.max_num_batched_tokens = args.max_num_batched_tokens or 2048
        args.host_kv_gb = args.host_kv_gb or 1.0
        run_real(args)


if __name__ == "__main__":
    main()
