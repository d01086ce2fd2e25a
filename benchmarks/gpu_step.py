"""Decode step time of a real model's shape on the GPU, as a ratio to reading its weights and KV once at the
HBM bandwidth measured in the same run. Paths (--modes): eager-torch (layer by layer, torch ops: the old
path), eager-triton, graphs-torch, graphs-triton (CUDA graphs, Triton kernels, cuBLAS for every linear
layer) and graphs-triton-gemv (the default: qkv / o_proj as the split-K GEMV where the start-up table
chose it; the table is printed).

    python benchmarks/gpu_step.py [--shape llama-3-8b] [--batches 1,16,64,128] [--context 1024] [--out step.md]
    python benchmarks/gpu_step.py --device cpu --shape tiny --modes eager-torch,graphs-torch   # the dry run

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
from _common import machine, read_bandwidth_gbs  # noqa: E402
from random_model import SHAPES  # noqa: E402

from hybridllm.attention import DeviceAttention  # noqa: E402
from hybridllm.kernels import DeviceOps  # noqa: E402
from hybridllm.dtypes import KV_OF_MODEL  # noqa: E402
from hybridllm.kernels.linear import decode_gemv_shapes  # noqa: E402
from hybridllm.policy import ModelShape  # noqa: E402
from hybridllm.policy.neo import NeoCostTables, decodes  # noqa: E402
from hybridllm.profiling.store import load_profile  # noqa: E402
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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(runner: ModelRunner, seqs: list[StepInput], steps: int, device: torch.device) -> float:
    step = [SubBatch("gpu_only", Tier.DEVICE, tuple(seqs))]
    for _ in range(3):
        runner.execute(step)
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        runner.execute(step)
    sync(device)
    return (time.perf_counter() - t) / steps


def gemv_rows(ops: DeviceOps) -> list[str]:
    """The start-up table: per shape and rows, cuBLAS against the best split-K tile, as read bandwidth."""
    rows = ["| weight | N x K | rows | cuBLAS | best split-K tile | chosen |", "|---|---|---|---|---|---|"]
    for name, n, k, m, base, best, pick in ops.gemv.report if ops.gemv else ():
        gb = n * k * 2 / 1e9
        rows.append(f"| {name} | {n} x {k} | {m} | {1e6 * base:.1f} us ({gb / base:.0f} GB/s) | "
                    f"{1e6 * best:.1f} us ({gb / best:.0f} GB/s) | {pick} |")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="llama-3-8b", choices=sorted(SHAPES))
    ap.add_argument("--batches", default="1,16,64,128")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--modes", default="eager-torch,graphs-torch,graphs-triton,graphs-triton-gemv")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    ap.add_argument("--profile", default=None, help="a hardware profile: add its predicted step time as a column")
    ap.add_argument("--out", default=None, help="also write the table (markdown) and a JSON beside it here")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    modes = args.modes.split(",")
    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    bw = hbm_read_gbs() if device.type == "cuda" else read_bandwidth_gbs()
    torch.manual_seed(0)
    model = random_model(args.shape, dtype, device=device)
    cfg = model.cfg
    ctx = args.context
    per_seq = -(-(ctx + 1) // BS)
    layout = KVLayout(cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim, BS, dtype)
    tier = KVCacheTier(Tier.DEVICE, layout, per_seq * max(batches), device, pad_block=True)
    kinds = sorted({m.split("-", 1)[1] for m in modes})
    ops = {k: DeviceOps(k.split("-")[0]) for k in kinds}
    if "triton-gemv" in ops:
        t0 = time.perf_counter()
        line = ops["triton-gemv"].tune_gemv(decode_gemv_shapes(cfg.num_attention_heads, cfg.num_key_value_heads,
                                                               cfg.head_dim, cfg.hidden_size), dtype, device)
        print(f"GEMV table measured in {time.perf_counter() - t0:.1f} s: {line}", flush=True)
    attn = {k: DeviceAttention(tier.key_cache, tier.value_cache, cfg.num_attention_heads, cfg.num_key_value_heads,
                               cfg.head_dim, None, ops[k]) for k in kinds}
    elt = torch.finfo(dtype).bits // 8
    weight_read = model.weight_bytes - (0 if cfg.tie_word_embeddings else model.embed_tokens.numel() * elt)
    kv_per_token = layout.bytes_per_block // BS
    costs = None
    if args.profile:
        costs = NeoCostTables(ModelShape.from_config(cfg, args.dtype), load_profile(args.profile), KV_OF_MODEL[args.dtype])
    print(f"# {machine()}; HBM read {bw:.0f} GB/s; {args.shape} {args.dtype}, weights read {weight_read / 1e9:.2f} GB; "
          f"context {ctx}", flush=True)
    rows, results = [], []
    runners = {}
    with torch.inference_mode():
        for mode in modes:
            kind, kernels = mode.split("-", 1)
            t0 = time.perf_counter()
            graphs = (DecodeGraphs(model, attn[kernels], tier, max(batches), ctx + BS, capture=device.type == "cuda")
                      if kind == "graphs" else None)
            runners[mode] = (ModelRunner(model, attn[kernels], BS, graphs=graphs), kernels)
            if graphs is not None:
                print(f"{mode}: captured {len(graphs.buckets)} graphs in {time.perf_counter() - t0:.1f} s", flush=True)
        for b in batches:
            seqs = [StepInput(f"r{i}", (1,), ctx, list(range(i * per_seq, (i + 1) * per_seq)), True) for i in range(b)]
            ideal = (weight_read + b * (ctx + 1) * kv_per_token) / (bw * 1e9)
            line = {"batch": b, "ideal_ms": ideal * 1e3}
            if costs is not None:
                line["predicted_ms"] = 1e3 * costs.step(decodes(b, b * (ctx + 1), costs.kv_dtype), 0, 0)
            for mode in modes:
                runner, kernels = runners[mode]
                model.ops = attn[kernels].ops          # the model's own norms and MLP take the same ops
                try:
                    line[mode] = time_steps(runner, seqs, args.steps, device) * 1e3
                except Exception as e:              # one failing path must not hide the others' figures
                    print(f"{mode} batch {b}: {type(e).__name__}: {e}", flush=True)
                    line[mode] = float("nan")
            results.append(line)
            cells = " | ".join(f"{line[m]:.2f} ms ({line[m] / line['ideal_ms']:.2f}x)" for m in modes)
            pred = f" {line['predicted_ms']:.2f} ms |" if costs is not None else ""
            rows.append(f"| {b} | {line['ideal_ms']:.2f} ms | {cells} |{pred}")
            print(rows[-1], flush=True)
    extra = 1 if costs is not None else 0
    head = ["| batch | weights + KV read at HBM speed | " + " | ".join(modes) + " |"
            + (" profile's prediction (gpu_only) |" if extra else ""),
            "|---|---|" + "---|" * (len(modes) + extra)]
    table = "\n".join(head + rows)
    gemv = "\n".join(gemv_rows(ops["triton-gemv"])) if "triton-gemv" in ops else "(no split-K GEMV mode run)"
    print(table + "\n\nsplit-K GEMV table (start-up, weights read cold):\n" + gemv)
    if args.out:
        Path(args.out).write_text(f"{machine()}; HBM read {bw:.0f} GB/s; {args.shape} {args.dtype}, context {ctx}\n\n"
                                  f"{table}\n\nsplit-K GEMV table (start-up, weights read cold):\n\n{gemv}\n")
        Path(args.out).with_suffix(".json").write_text(json.dumps({"hbm_gbs": bw, "rows": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
