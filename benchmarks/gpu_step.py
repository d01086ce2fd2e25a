"""Decode step time of a real model's shape on the GPU, as a ratio to reading its weights and KV once at the
HBM bandwidth measured in the same run. Paths: eager layer by layer with torch ops (the old path), eager
with the Triton kernels, CUDA graphs with torch ops, CUDA graphs with the Triton kernels (the default).

    python benchmarks/gpu_step.py [--shape llama-3-8b] [--batches 1,16,64,128] [--context 1024] [--out step.md]

Random bf16 weights made on the GPU (speed depends on shapes only); the KV blocks of each row are its own.
A step is ModelRunner.execute (host-side inputs, the step, the logits) without sampling.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402
from random_model import SHAPES  # noqa: E402

from hybridllm.attention import DeviceAttention  # noqa: E402
from hybridllm.kernels import DeviceOps  # noqa: E402
from hybridllm.kv import Tier  # noqa: E402
from hybridllm.attention.kv_cache import KVCacheTier, KVLayout  # noqa: E402
from hybridllm.models.config import ModelConfig  # noqa: E402
from hybridllm.models.llama import LlamaModel  # noqa: E402
from hybridllm.runtime.decode_graphs import DecodeGraphs  # noqa: E402
from hybridllm.runtime.executors.gpu_only import ModelRunner  # noqa: E402
from hybridllm.scheduler import StepInput, SubBatch  # noqa: E402

BS = 16


def hbm_read_gbs(gb: float = 8.0) -> float:
    """Best of five full reads (a sum) of a large buffer, timed with CUDA events."""
    x = torch.ones(int(gb * 1e9) // 2, dtype=torch.bfloat16, device="cuda")
    x.sum()
    best = float("inf")
    for _ in range(5):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        x.sum()
        b.record()
        b.synchronize()
        best = min(best, a.elapsed_time(b) / 1e3)
    n = x.numel() * 2
    del x
    torch.cuda.empty_cache()
    return n / best / 1e9


def random_model(name: str, dtype: torch.dtype, layers: int | None = None, device: str | torch.device = "cuda"
                 ) -> LlamaModel:
    """Random weights of a named shape (the first `layers` decoder layers), made on `device`."""
    hidden, all_layers, heads, kvh, inter, vocab, theta, max_pos, tied = SHAPES[name]
    cfg = ModelConfig(architecture="LlamaForCausalLM", hidden_size=hidden, intermediate_size=inter,
                      num_hidden_layers=layers or all_layers, num_attention_heads=heads, num_key_value_heads=kvh,
                      head_dim=hidden // heads, vocab_size=vocab, rms_norm_eps=1e-5, rope_theta=theta,
                      max_position_embeddings=max_pos, tie_word_embeddings=tied, attention_bias=False)
    return LlamaModel.random(cfg, torch.device(device), dtype, separate_head=not tied)


def time_steps(runner: ModelRunner, seqs: list[StepInput], steps: int) -> float:
    step = [SubBatch("gpu_only", Tier.DEVICE, tuple(seqs))]
    for _ in range(3):
        runner.execute(step)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        runner.execute(step)
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / steps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="llama-3-8b", choices=sorted(SHAPES))
    ap.add_argument("--batches", default="1,16,64,128")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--modes", default="eager-torch,eager-triton,graphs-torch,graphs-triton")
    ap.add_argument("--out", default=None, help="also write the table (markdown) and a JSON beside it here")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    modes = args.modes.split(",")
    dtype = torch.bfloat16
    bw = hbm_read_gbs()
    torch.manual_seed(0)
    model = random_model(args.shape, dtype)
    cfg = model.cfg
    ctx = args.context
    per_seq = -(-(ctx + 1) // BS)
    layout = KVLayout(cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim, BS, dtype)
    tier = KVCacheTier(Tier.DEVICE, layout, per_seq * max(batches), "cuda", pad_block=True)
    attn = {k: DeviceAttention(tier.key_cache, tier.value_cache, cfg.num_attention_heads, cfg.num_key_value_heads,
                               cfg.head_dim, None, DeviceOps(k)) for k in ("torch", "triton")}
    weight_read = model.weight_bytes - (0 if cfg.tie_word_embeddings else model.embed_tokens.numel() * 2)
    kv_per_token = layout.bytes_per_block // BS
    print(f"# {machine()}; HBM read {bw:.0f} GB/s; {args.shape} bf16, weights read {weight_read / 1e9:.2f} GB; "
          f"context {ctx}", flush=True)
    rows, results = [], []
    runners = {}
    with torch.inference_mode():
        for mode in modes:
            kind, kernels = mode.split("-")
            t0 = time.perf_counter()
            graphs = (DecodeGraphs(model, attn[kernels], tier, max(batches), ctx + BS, capture=True)
                      if kind == "graphs" else None)
            runners[mode] = (ModelRunner(model, attn[kernels], BS, graphs=graphs), kernels)
            if graphs is not None:
                print(f"{mode}: captured {len(graphs.buckets)} graphs in {time.perf_counter() - t0:.1f} s", flush=True)
        for b in batches:
            seqs = [StepInput(f"r{i}", (1,), ctx, list(range(i * per_seq, (i + 1) * per_seq)), True) for i in range(b)]
            ideal = (weight_read + b * (ctx + 1) * kv_per_token) / (bw * 1e9)
            line = {"batch": b, "ideal_ms": ideal * 1e3}
            for mode in modes:
                runner, kernels = runners[mode]
                model.ops = attn[kernels].ops          # the model's own norms and MLP take the same ops
                try:
                    line[mode] = time_steps(runner, seqs, args.steps) * 1e3
                except Exception as e:              # one failing path must not hide the others' figures
                    print(f"{mode} batch {b}: {type(e).__name__}: {e}", flush=True)
                    line[mode] = float("nan")
            results.append(line)
            cells = " | ".join(f"{line[m]:.2f} ms ({line[m] / line['ideal_ms']:.2f}x)" for m in modes)
            rows.append(f"| {b} | {line['ideal_ms']:.2f} ms | {cells} |")
            print(rows[-1], flush=True)
    head = ["| batch | weights + KV read at HBM speed | " + " | ".join(modes) + " |",
            "|---|---|" + "---|" * len(modes)]
    table = "\n".join(head + rows)
    print(table)
    if args.out:
        Path(args.out).write_text(f"{machine()}; HBM read {bw:.0f} GB/s; context {ctx}\n\n{table}\n")
        Path(args.out).with_suffix(".json").write_text(json.dumps({"hbm_gbs": bw, "rows": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
