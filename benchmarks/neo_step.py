"""NEO's pipelined step on a few layers of a real model's shape: what a sub-batch B of host decodes adds to
a step of device decodes A, per layer, with the device's small ops in torch (the old path) and as the
fused Triton kernels. The overlap is perfect when t(A+B) = max(t(A), t(B)); the rest is the pipelining
overhead (hand-offs, event waits, the launches of B's calls beside A's) that profiling/measure_neo.py
charges to NEO's cost model.

    python benchmarks/neo_step.py [--shape llama-3-8b] [--layers 4] [--context 1024] [--cases 8x8,32x16,64x32]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402
from gpu_step import random_model  # noqa: E402

from hybridllm.attention import DeviceAttention  # noqa: E402
from hybridllm.attention.host import HostAttention, HostAttentionSpec  # noqa: E402
from hybridllm.kernels import DeviceOps, resolve_kernels  # noqa: E402
from hybridllm.kv import Tier  # noqa: E402
from hybridllm.attention.kv_cache import KVCacheTier, KVLayout  # noqa: E402
from hybridllm.profiling.timing import timeit  # noqa: E402
from hybridllm.config import EngineConfig  # noqa: E402
from hybridllm.runtime.cpu.host_precision import host_precision  # noqa: E402
from hybridllm.runtime.spec import host_kv_precision, host_threads  # noqa: E402
from hybridllm.runtime.executors.neo import NeoRunner  # noqa: E402
from hybridllm.scheduler import StepInput, SubBatch  # noqa: E402
from hybridllm.utils import ceil_div  # noqa: E402

BS = 16


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="llama-3-8b")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--cases", default="8x8,32x16,64x32", help="A device decodes x B host decodes")
    ap.add_argument("--host-kv", default="auto", help="host KV precision (auto: what the engine gives NEO in bf16)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    host_kv = args.host_kv
    if host_kv == "auto":
        host_kv = host_kv_precision(EngineConfig(policy="neo", dtype="bfloat16"), host_precision("auto", None), False)
    cases = [tuple(int(x) for x in c.split("x")) for c in args.cases.split(",")]
    full = random_model(args.shape, torch.bfloat16, layers=args.layers, device=device)
    cfg = full.cfg
    ctx, L = args.context, args.layers
    per_seq = ceil_div(ctx + 1, BS)
    n_a, n_b = max(a for a, _ in cases), max(b for _, b in cases)
    dev_tier = KVCacheTier(Tier.DEVICE, KVLayout(L, cfg.num_key_value_heads, cfg.head_dim, BS, torch.bfloat16),
                           n_a * per_seq, device, pad_block=True)
    spec = HostAttentionSpec(L, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, host_kv,
                             block_size=BS, num_threads=host_threads(None, device))
    host = HostAttention.create(spec, num_blocks=n_b * per_seq, pin_memory=device.type == "cuda")
    host_per_seq = ceil_div(ctx + 1, host.layout.block_size)

    def seqs(n, per, tier, part, prefix):
        return [SubBatch("neo", tier, tuple(StepInput(f"{prefix}{i}", (1,), ctx, list(range(i * per, (i + 1) * per)),
                                                      True) for i in range(n)), part)]

    title = (f"{machine()}; {args.shape} bf16, {L} layers, context {ctx}; host attention {host.name} ({host_kv} KV) on "
             f"{spec.num_threads or 'all'} threads")
    print("# " + title, flush=True)
    head = ("| kernels | A x B | t(A) / layer | t(B) / layer | t(A+B) / layer | beyond max(A, B) / layer |\n"
            "|---|---|---|---|---|---|")
    rows = []
    for kernels in ("torch", "triton"):
        if kernels == "triton" and resolve_kernels("auto", device) != "triton":
            continue
        ops = DeviceOps(kernels)
        model = full
        model.ops = ops
        attn = DeviceAttention(dev_tier.key_cache, dev_tier.value_cache, cfg.num_attention_heads,
                               cfg.num_key_value_heads, cfg.head_dim, None, ops)
        runner = NeoRunner(model, attn, host, host.tier, BS, max_host_tokens=n_b, max_prefill_tokens=0)
        try:
            for a, b in cases:
                sa, sb = seqs(a, per_seq, Tier.DEVICE, "A", "d"), seqs(b, host_per_seq, Tier.HOST, "B", "h")
                t_a = timeit(lambda: runner.execute(sa), device, reps=5) / L
                t_b = timeit(lambda: runner.execute(sb), device, reps=5) / L
                t_ab = timeit(lambda: runner.execute(sa + sb), device, reps=5) / L
                rows.append(f"| {kernels} | {a} x {b} | {t_a * 1e3:.3f} ms | {t_b * 1e3:.3f} ms | {t_ab * 1e3:.3f} ms | "
                            f"{(t_ab - max(t_a, t_b)) * 1e3:+.3f} ms |")
                print(rows[-1], flush=True)
        finally:
            runner.pool.shutdown()
    table = head + "\n" + "\n".join(rows)
    print(table)
    if args.out:
        Path(args.out).write_text(title + "\n\n" + table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
