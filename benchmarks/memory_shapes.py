"""Does the engine's resident memory grow with requests or with distinct shapes? Runs the default model in
process, 32 requests per round, and prints RSS after each round: `fixed` sends one prompt and output
length every time, `random` draws them (3-120 words, 4-40 tokens, sampling). glibc's malloc_trim at the
end shows how much of the growth is freed memory the allocator kept.

    python benchmarks/memory_shapes.py fixed --rounds 12
    python benchmarks/memory_shapes.py random --rounds 30
"""
from __future__ import annotations

import argparse
import ctypes
import random
import time

from hybridllm import LLM, SamplingParams

WORDS = "the quick brown fox jumps over the lazy dog".split()


def rss_mib() -> float:
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2 ** 20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("fixed", "random"))
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--max-num-seqs", type=int, default=16)
    args = ap.parse_args()
    llm = LLM("default", max_num_seqs=args.max_num_seqs)
    rng = random.Random(0)
    t = time.perf_counter()
    print(f"start: {rss_mib():.0f} MiB (policy {llm.engine.runtime.policy})", flush=True)
    for r in range(args.rounds):
        if args.mode == "fixed":
            prompts = [" ".join(WORDS * 3)] * 32
            params = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
        else:
            prompts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 120))) for _ in range(32)]
            params = [SamplingParams(max_tokens=rng.randint(4, 40), temperature=0.7, ignore_eos=True)
                      for _ in prompts]
        llm.generate(prompts, params, use_tqdm=False)
        print(f"round {r}: {rss_mib():.0f} MiB after {32 * (r + 1)} requests, {time.perf_counter() - t:.0f} s",
              flush=True)
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    print(f"after malloc_trim(0): {rss_mib():.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
