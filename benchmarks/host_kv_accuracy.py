"""Accuracy of each host KV format on the default model against f32 host KV (issue 22).

    python benchmarks/host_kv_accuracy.py [--formats f32,f16,bf16,u8] [--tokens 512] [--prefill 128]

Perplexity of benchmarks/data/perplexity_text.txt (the first --tokens tokens: --prefill in one prefill
step, then one decode step per token, every position scored), and how many of 8 prompts keep f32 KV's
first 16 greedy tokens. Two planes: "native" is cpu_only with attention per layer through HostAttention
(OpenVINO's prefill, our decode kernel), "fused" the default engine's one OpenVINO graph (its
PagedAttention for both). f32 weights, so the KV format is the only change.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from _common import machine, table  # noqa: E402

from tests.helpers.default_prompts import PROMPTS  # noqa: E402
from tests.helpers.host_kv import AGREE_PROMPTS, engine, greedy, perplexity, text_ids  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--formats", default="f32,f16,bf16,u8")
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--prefill", type=int, default=128)
    ap.add_argument("--planes", default="native,fused")
    args = ap.parse_args()
    prompts = PROMPTS[1:1 + AGREE_PROMPTS]
    print(f"machine: {machine()}; {args.tokens} tokens ({args.prefill} prefilled, then decodes)\n")
    rows = []
    for plane in args.planes.split(","):
        base = None
        for kv in args.formats.split(","):
            try:
                llm = engine(kv, fused=plane == "fused")
            except Exception as e:  # noqa: BLE001 - a format this CPU's op refuses is a row too
                rows.append([plane, kv, "refused: " + str(e).splitlines()[-1][:60], "", "", ""])
                continue
            ids = text_ids(llm, args.tokens)
            ppl, toks = perplexity(llm, ids, args.prefill), greedy(llm, prompts)
            base = base or (ppl, toks)
            same = sum(a == b for a, b in zip(toks, base[1]))
            rows.append([plane, kv, f"{ppl:.4f}", f"{100 * (ppl / base[0] - 1):+.2f}%", f"{same}/{len(prompts)}",
                         "native" if plane == "native" and "host attention native" in llm.engine.runtime.reason
                         else "op"])
            print(" | ".join(rows[-1]), flush=True)
            del llm
    print()
    print(table(["plane", "host KV", "perplexity", "vs f32 KV", "greedy 16 tokens = f32 KV's", "decode kernel"], rows))


if __name__ == "__main__":
    main()
