"""Does a measured profile rise where it should? More tokens never make a GEMM cheaper, and more KV never
makes decode attention cheaper. A table of those orders, for this machine (a benchmark, not a test: on a
shared machine, one noisy probe may break an order without anything being wrong).

    python benchmarks/profile_check.py [--model default] [--dtype float32]
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine, table  # noqa: E402

from hybridllm.models.config import ModelConfig  # noqa: E402
from hybridllm.models.default import resolve_model  # noqa: E402
from hybridllm.profiling.measure import measure  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    prof = measure(ModelConfig.from_folder(resolve_model(args.model)), args.dtype, progress=True)
    rows = []

    def order(what, small, large):
        rows.append([what, f"{small * 1e3:.3f}", f"{large * 1e3:.3f}", f"{large / small:.2f}",
                     "ok" if large > small else "INVERTED"])

    for name in ("device_gemm", "host_gemm"):
        t = getattr(prof, name)
        order(f"{name}: 1 -> 1024 tokens (largest matrix)", t(1, max(t.y)), t(1024, max(t.y)))
    order("device decode attention: least -> most KV", prof.device_attention_decode(4, min(prof.device_attention_decode.y)),
          prof.device_attention_decode(4, max(prof.device_attention_decode.y)))
    for kv, t in prof.host_attention_decode.items():
        order(f"host decode attention ({kv}): least -> most KV", t(4, min(t.y)), t(4, max(t.y)))
    print(f"machine: {machine()}\nprofile notes: {prof.notes}\n")
    print(table(["order", "small ms", "large ms", "ratio", ""], rows))
    print(f"\nNEO pipelining overhead: {prof.extra['host_handoff_s'] * 1e6:.1f} us per layer")


if __name__ == "__main__":
    main()
