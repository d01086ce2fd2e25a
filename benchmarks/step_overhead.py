"""Per-step Python overhead of the engine under policy="cpu_only" (default model, batch 32).

    python benchmarks/step_overhead.py [--src CHECKOUT] [--batch 32] [--steps 50]
                                       [--prompt-tokens 256] [--short-tokens 32] [--out overhead.json]

Adds `batch` greedy requests (EOS ignored) of `prompt-tokens` distinct prompt tokens each,
runs their prefill untimed, then times decode steps: first without a profiler (the true
ms/step), then `steps` steps, each under its own cProfile, so the split below is a median
over steps (the machine may be shared). Each step's wall time is split into the model
call (the OpenVINO infer call, found by name: openvino's `infer`, else `run_model`, else
an `execute` under runtime/; the script says which) and everything else, which is the
engine's per-step overhead: scheduling, metadata, sampling, detokenizing, output objects.
The same is done at `short-tokens` first, so overhead that grows with context (O(context)
work per step) shows up as the difference between the two points.

--src measures another checkout (e.g. a `git worktree` of an older commit): its backend/
and converters/ are put ahead of the venv's editable install; `hybridllm.__file__` is
printed to show which tree ran. cProfile inflates Python time, so the profiled overhead is
an upper bound; "est. overhead" = unprofiled ms/step - profiled model-call ms/step. On a busy
machine, time spent descheduled lands in "overhead"; the sum of per-function median own
times outside the model call is the steadier number then.
"""
from __future__ import annotations

import argparse
import cProfile
import importlib.abc
import importlib.machinery
import json
import logging
import os
import pstats
import statistics
import sys
import time

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--src", help="checkout to measure (its backend/ and converters/)")
p.add_argument("--batch", type=int, default=32)
p.add_argument("--steps", type=int, default=50, help="decode steps to profile per point")
p.add_argument("--prompt-tokens", type=int, default=256)
p.add_argument("--short-tokens", type=int, default=32, help="the short-context point (0: skip it)")
p.add_argument("--top", type=int, default=12)
p.add_argument("--out", help="write the numbers as JSON here")
args = p.parse_args()

if args.src:
    src = os.path.abspath(args.src)
    sys.path.insert(0, os.path.join(src, "backend"))

    class _SrcFinder(importlib.abc.MetaPathFinder):
        # The venv's editable finder maps hybridllm.converters to /work/main/converters; this one
        # runs first, so both packages come from --src (pyproject's package-dir, mirrored).
        # Checkouts before the converters moved into the package kept them at the top level.
        roots = {"hybridllm": os.path.join(src, "backend")}
        if os.path.isdir(os.path.join(src, "converters")):
            roots["hybridllm.converters"] = src

        def find_spec(self, name, path=None, target=None):
            root = self.roots.get(name)
            return importlib.machinery.PathFinder.find_spec(name, [root]) if root else None

    sys.meta_path.insert(0, _SrcFinder())

import hybridllm  # noqa: E402
from hybridllm import SamplingParams  # noqa: E402

print(f"hybridllm: {hybridllm.__file__}")
if args.src and not os.path.abspath(hybridllm.__file__).startswith(src + os.sep):
    sys.exit(f"--src {src} did not take precedence")
logging.getLogger("hybridllm").setLevel(logging.WARNING)

TEXT = ("The old lighthouse keeper climbed the spiral stairs every evening, counting the steps "
        "and listening to the sea below, while the ships passed slowly along the dark coast. ")

STAGES = ["schedule", "prepare_step", "build_metadata", "prepare", "make_step", "sample", "_append", "_output"]


def model_call_key(stats: dict):
    """The innermost function that runs the model, by name: (its keys, label) or (None, reason)."""
    keys = list(stats)
    tiers = [  # innermost first: anything above the infer call is Python the engine could avoid
        ("openvino infer (C++)", [k for k in keys if k[0] == "~" and "openvino" in k[2] and k[2].endswith("infer>")]),
        ("InferRequest.infer", [k for k in keys if k[2] == "infer" and "openvino" in k[0]]),
        ("run_model", [k for k in keys if k[2] == "run_model"]),
        ("runtime/*.execute", [k for k in keys if k[2] == "execute" and f"{os.sep}runtime{os.sep}" in k[0]]),
    ]
    for label, found in tiers:
        if found:
            return found, label
    return None, "no model call found"


def inside(stats: dict, roots: list) -> set:
    """Functions called only from within `roots` (transitively): their own time is model time."""
    inner = set(roots)
    grew = True
    while grew:
        grew = False
        for k, (_, _, _, _, callers) in stats.items():
            if k not in inner and callers and all(c in inner for c in callers):
                inner.add(k)
                grew = True
    return inner


def fname(k) -> str:
    file, line, func = k
    if file == "~":
        return func
    parts = file.split(os.sep)
    tail = os.sep.join(parts[parts.index("hybridllm"):]) if "hybridllm" in parts else os.sep.join(parts[-2:])
    return f"{tail}:{line}({func})"


def run_point(engine, tok, n_prompt: int, tag: str) -> dict:
    """Prefill `batch` requests of n_prompt tokens untimed, then time and profile decode steps."""
    plain = max(5, args.steps // 2)
    warm = 3
    # Chunked prefill lets early requests decode while later ones prefill: leave room so none finishes.
    margin = args.batch + args.batch * n_prompt // 512
    params = SamplingParams(max_tokens=warm + plain + args.steps + margin, temperature=0.0, ignore_eos=True)
    base = tok.encode(TEXT * (n_prompt // 20 + 2)).ids
    ids = []
    for i in range(args.batch):  # a distinct prefix per request, so nothing could share KV
        pre = tok.encode(f"Story {i}: ").ids
        prompt = (pre + base)[:n_prompt]
        rid = f"{tag}-{i}"
        try:
            engine.add_request(rid, None, params, prompt_token_ids=prompt)
        except TypeError:  # an engine without prompt_token_ids: text that encodes to about n_prompt
            engine.add_request(rid, tok.decode(prompt), params)
        ids.append(rid)
    seen, t0 = set(), time.perf_counter()
    while len(seen) < len(ids):  # prefill (chunked): done when every request has its first token
        seen |= {o.request_id for o in engine.step()}
    prefill_s = time.perf_counter() - t0
    for _ in range(warm):
        engine.step()
    plain_ms = []
    for _ in range(plain):  # no profiler: the real ms/step
        t0 = time.perf_counter()
        engine.step()
        plain_ms.append((time.perf_counter() - t0) * 1e3)
    # A profile per step, so the split is a median over steps: the machine is shared, and a
    # slow step (another process, page faults) should not decide the answer.
    total_ms, per_step, agg = [], [], None
    for _ in range(args.steps):
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        outs = engine.step()
        prof.disable()
        total_ms.append((time.perf_counter() - t0) * 1e3)
        assert len(outs) == args.batch, f"{len(outs)} outputs, not {args.batch}: {engine.stats()}"
        one = pstats.Stats(prof)
        per_step.append(dict(one.stats))  # a copy: agg.add() below updates the first step's dict in place
        agg = one if agg is None else agg.add(prof)
    for rid in ids:
        engine.abort_request(rid)
    stats = agg.stats
    roots, label = model_call_key(stats)
    med = statistics.median

    def med_ms(keys, col: int) -> float:  # median over steps; col 2: own time, col 3: cumulative
        return med(sum(st[k][col] for k in keys if k in st) for st in per_step) * 1e3

    model_ms = [sum(st[k][3] for k in roots or [] if k in st) * 1e3 for st in per_step]
    split = {"total": med(total_ms), "model": med(model_ms), "overhead": med(t - m for t, m in zip(total_ms, model_ms)),
             "plain": med(plain_ms)}
    inner = inside(stats, roots or [])
    # Per function the median too: one call that a context switch hit should not top the list.
    own_med = {k: med_ms([k], 2) for k in stats if k not in inner and "_lsprof" not in k[2]}
    top = sorted(((ms, k) for k, ms in own_med.items()), reverse=True)[:args.top]
    # Context for the split: where the executor's Python sits around the infer call.
    layers = {lab: med_ms(ks, 3)
              for lab, ks in [("execute", [k for k in stats if k[2] == "execute" and f"{os.sep}runtime{os.sep}" in k[0]]),
                              ("run_model", [k for k in stats if k[2] == "run_model"])] if ks}
    # The engine's stages by name (hybridllm files only), so a refactor's before/after line up.
    hl = [k for k in stats if f"{os.sep}hybridllm{os.sep}" in k[0]]
    stages = {name: med_ms(ks, 3) for name in STAGES if (ks := [k for k in hl if k[2] == name])}
    return {"prompt_tokens": n_prompt, "context_at_profile": n_prompt + warm + plain + args.steps // 2,
            "prefill_s": prefill_s, "plain_ms_per_step": split["plain"], "total_ms_per_step": split["total"],
            "model_call": label, "model_ms_per_step": split["model"], "overhead_ms_per_step": split["overhead"],
            "est_overhead_ms_unprofiled": split["plain"] - split["model"],
            "overhead_sum_of_medians_ms": sum(own_med.values()),
            "mean_ms_per_step": {"total": statistics.mean(total_ms), "model": statistics.mean(model_ms)},
            "executor_cum_ms": layers, "stages_cum_ms": stages,
            "top_own_ms_per_step": [[fname(k), ms, stats[k][1] / args.steps] for ms, k in top],
            "own_ms_per_step": {fname(k): ms for k, ms in own_med.items() if ms > 1e-3}}


def report(r: dict) -> None:
    print(f"\n== batch {args.batch}, prompt {r['prompt_tokens']} tokens (context ~{r['context_at_profile']} "
          f"at mid-profile), {args.steps} profiled decode steps; prefill took {r['prefill_s']:.1f}s ==")
    print(f"model call found as: {r['model_call']};  executor median cumulative ms/step: "
          + ", ".join(f"{k} {v:.2f}" for k, v in r["executor_cum_ms"].items()))
    t, m, o, u = (r[k] for k in ("total_ms_per_step", "model_ms_per_step", "overhead_ms_per_step", "plain_ms_per_step"))
    rows = [("cProfile, median over steps", t, m, o), ("cProfile, overhead = sum of per-function medians",
            t, m, r["overhead_sum_of_medians_ms"]), ("no profiler (model call from cProfile)", u, m, u - m)]
    print("| ms/step | total | model call | overhead | overhead share |\n|---|---|---|---|---|")
    for name, tot, mod, ovh in rows:
        print(f"| {name} | {tot:.2f} | {mod:.2f} | {ovh:.2f} | {ovh / tot:.1%} |")
    print("engine stages, median cumulative ms/step: " + ", ".join(f"{k} {v:.2f}" for k, v in r["stages_cum_ms"].items()))
    print(f"top {args.top} by own time outside the model call (median ms/step over steps, mean calls/step):")
    print(f"  {'own ms':>8} {'calls':>8}  function")
    for name, ms, calls in r["top_own_ms_per_step"]:
        print(f"  {ms:8.3f} {calls:8.1f}  {name}")


llm = hybridllm.LLM(model="default", policy="cpu_only", max_num_seqs=args.batch)
engine = llm.engine
points = [n for n in (args.short_tokens, args.prompt_tokens) if n]
results = [run_point(engine, llm.tokenizer, n, f"p{n}") for n in points]
if args.src:  # every hybridllm module that ran, converters included, came from --src
    stray = sorted(m for m, mod in sys.modules.items() if m.startswith("hybridllm")
                   and not os.path.abspath(getattr(mod, "__file__", None) or src).startswith(src + os.sep))
    print(f"modules from outside {src}: {stray}" if stray else f"all hybridllm modules from {src}")
for r in results:
    report(r)
if len(results) == 2:
    a, b = results
    dctx = b["context_at_profile"] - a["context_at_profile"]
    d = b["overhead_ms_per_step"] - a["overhead_ms_per_step"]
    dm = b["model_ms_per_step"] - a["model_ms_per_step"]
    dr = b["overhead_sum_of_medians_ms"] - a["overhead_sum_of_medians_ms"]
    print(f"\ncontext growth {a['context_at_profile']} -> {b['context_at_profile']} tokens/request: overhead "
          f"{d:+.2f} ms/step, sum of medians {dr:+.2f} ms/step ({dr / dctx * 1e3:+.2f} ms per 1000 tokens "
          f"of context); model call {dm:+.2f} ms/step")
    grew = sorted(((ms - a["own_ms_per_step"].get(n, 0.0), n, ms) for n, ms in b["own_ms_per_step"].items()),
                  reverse=True)
    for dms, name, ms in grew[:5]:  # the functions whose own time grew most: the O(context) suspects
        if dms > 0.02:
            print(f"  grew: {name}: {ms - dms:.3f} -> {ms:.3f} ms/step")
if args.out:
    with open(args.out, "w") as f:
        json.dump({"hybridllm": hybridllm.__file__, "batch": args.batch, "steps": args.steps,
                   "points": results}, f, indent=1)
