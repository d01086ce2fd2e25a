"""Decode tokens/s on the default model: hybridllm against HF transformers `generate`, same run.

    python benchmarks/generate_throughput.py [--batches 1,8,32] [--new-tokens 128] [--repeats 3]

Both run greedy, fp32, ignoring EOS, on the same converted weights and the same
prompt repeated `batch` times (so HF needs no padding). Decode time excludes the
prefill: for hybridllm, time after the first step; for HF, generate(N) minus
generate(1). The machine's read bandwidth is measured in the same run, because
these machines drift; compare the ratio column, not absolute numbers across runs.
"""
from __future__ import annotations

import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import decode_parser, decode_tps, machine, median, read_bandwidth_gbs, table  # noqa: E402

PROMPT = "Once upon a time, there was a little"


def bench_hybridllm(llm, batch: int, new_tokens: int) -> float:
    return decode_tps(llm, batch, new_tokens, PROMPT)


def bench_hf(model, tok, batch: int, new_tokens: int) -> float:
    ids = tok([PROMPT] * batch, return_tensors="pt")

    def run(n):
        t = time.perf_counter()
        with torch.inference_mode():
            model.generate(**ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=tok.eos_token_id)
        return time.perf_counter() - t

    t_one = run(1)
    t_all = run(new_tokens)
    return batch * (new_tokens - 1) / max(t_all - t_one, 1e-9)


def main() -> None:
    ap = decode_parser(__doc__)
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]

    import transformers
    from hybridllm import LLM, default_model
    path = default_model()
    llm = LLM(model=str(path), enable_prefix_caching=False)   # repeated prompts: time cold prefill, as HF does
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"

    bench_hybridllm(llm, 1, 8)                          # warm-up both
    bench_hf(hf, tok, 1, 8)
    rows = []
    bw_start = read_bandwidth_gbs()
    for b in batches:
        ours, theirs = [], []
        for _ in range(args.repeats):                   # interleaved, so drift hits both alike
            ours.append(bench_hybridllm(llm, b, args.new_tokens))
            theirs.append(bench_hf(hf, tok, b, args.new_tokens))
        o, h = median(ours), median(theirs)
        rows.append([b, f"{o:.1f}", f"{h:.1f}", f"{o / h:.2f}x"])
    bw_end = read_bandwidth_gbs()
    from hybridllm.policy import ModelShape
    weights_gb = ModelShape.from_config(llm.engine.model_config).weight_bytes / 1e9
    print(f"machine: {machine()}")
    print(f"read bandwidth: {bw_start:.1f} GB/s at start, {bw_end:.1f} GB/s at end; "
          f"fp32 weights {weights_gb:.3f} GB -> batch-1 roofline ~{min(bw_start, bw_end) / weights_gb:.0f} tok/s")
    print(f"greedy, fp32, {args.new_tokens} new tokens, median of {args.repeats}; hybridllm: LLM(model=\"default\"), "
          f"which ran {llm.engine.stats().steps_by_policy}\n")
    print(table(["batch", "hybridllm tok/s", "HF generate tok/s", "hybridllm / HF"], rows))


if __name__ == "__main__":
    main()
