"""What prompt logprobs cost: scoring requests (max_tokens=1, as lm-eval sends them) with and without
SamplingParams.prompt_logprobs, in the same process, alternating, per policy.

    python benchmarks/prompt_logprobs.py [--policies auto,gpu_only] [--prompts 8] [--words 60] [--repeats 3]

The peer is the same engine without prompt_logprobs; the ratio is the price of the extra LM-head rows
(one per prompt token instead of one per request) and the log-softmax over them.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine, median, table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policies", default="auto,gpu_only")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--words", type=int, default=60, help="words per prompt (~1.3 tokens each)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from hybridllm import LLM, SamplingParams
    words = "the quick brown fox jumps over a lazy dog while seven bright stars shine".split()
    prompts = [f"Question {i}: " + " ".join(words[(i + j) % len(words)] for j in range(args.words))
               for i in range(args.prompts)]
    plain = SamplingParams(max_tokens=1, temperature=0.0)
    scored = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1)
    rows = []
    for policy in args.policies.split(","):
        llm = LLM("default", policy=policy)
        n_tokens = sum(len(llm.engine.tokenizer.encode(p).ids) for p in prompts)
        llm.generate(prompts, scored, use_tqdm=False)                  # warm up both paths
        times = {"plain": [], "prompt_logprobs=1": []}
        for _ in range(args.repeats):
            for name, params in (("plain", plain), ("prompt_logprobs=1", scored)):
                t = time.perf_counter()
                llm.generate(prompts, params, use_tqdm=False)
                times[name].append(time.perf_counter() - t)
        base = median(times["plain"])
        for name, ts in times.items():
            rows.append([policy, name, n_tokens, f"{median(ts) * 1e3:.0f}", f"{n_tokens / median(ts):.0f}",
                         f"{median(ts) / base:.2f}"])
        del llm
    print(f"machine: {machine()}")
    print(table(["policy", "requests", "prompt tokens", "median ms", "prompt tok/s", "ratio to plain"], rows))


if __name__ == "__main__":
    main()
