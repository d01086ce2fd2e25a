"""Host attention speed: decode KV read rate against this machine's read bandwidth, prefill GFLOP/s.

    python benchmarks/host_attention.py [--batches 32] [--contexts 2048] [--kv f32,f16,bf16,u8]
                                        [--heads llama8b,smollm2] [--paths ov_paged,native]
                                        [--prefill 128,512,2048] [--path ov_paged] [--levers] [--repeats 5]

Decode: one step of B sequences, each with `context` tokens already cached, for each head
geometry (llama8b: 32/8 heads of 128; smollm2: 9/3 of 64), path and KV format, through
HostAttention.forward (the public call, metadata check and KV write included). "KV GB/s" is the
bytes of the blocks the step reads (u8 counts its scale/zero-point bytes) over the median time;
"% of read BW" divides it by the read bandwidth measured right before and after that row, because
these machines drift. "vs ..." is the first path's first format (the peer, same heads) over this
row's time: > 1 is faster. "1 thread / all": the same step on one thread; near 1 means the
kernel is bound by memory bandwidth, near the core count means it is compute-bound.

Prefill: one sequence of L new tokens, causal; GFLOP/s counts 4*H*D*L*(L+1)/2.

--levers times the issue's levers at batch 32 x context 2048, f16: one request
on all cores (what HostAttention does), the batch split over two infer requests
on two streams, one thread only (if one thread is half as fast, the kernel is
compute-bound, not bandwidth-bound) and thread pinning off.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine, median, read_bandwidth_gbs, table  # noqa: E402

from hybridllm.attention import build_metadata  # noqa: E402
from hybridllm.attention.host import HostAttention, HostAttentionSpec  # noqa: E402
from hybridllm.utils import ceil_div  # noqa: E402

H, KVH, D = 32, 8, 128
CPU = torch.device("cpu")


def timed(fn, repeats: int) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return median(ts)


def bandwidth() -> float:
    return read_bandwidth_gbs(512 << 20, repeats=3)


HEADS = {"llama8b": (32, 8, 128), "smollm2": (9, 3, 64)}


def make_attention(precision: str, path: str, num_blocks: int, heads=(H, KVH, D), threads=None) -> HostAttention:
    h, kvh, d = heads
    spec = HostAttentionSpec(num_layers=1, num_heads=h, num_kv_heads=kvh, head_dim=d, kv_precision=precision,
                             path=path, num_threads=threads)
    ha = HostAttention.create(spec, num_blocks=num_blocks)
    for t in (ha.tier._k, ha.tier._v):      # values: finite, and the pages really allocated
        if t.dtype == torch.uint8:
            t.random_(0, 255)
        else:
            t.uniform_(-1, 1)
    if precision == "u8":                    # sane scales / zero points: f32 1/64 and 128
        kb, vb = ha.tier._k, ha.tier._v
        kb[..., 0:4, :] = torch.tensor([0.015625], dtype=torch.float32).view(torch.uint8).repeat(d).view(4, d)
        kb[..., 4:8, :] = torch.tensor([128.0], dtype=torch.float32).view(torch.uint8).repeat(d).view(4, d)
        vb[..., 0:8] = torch.tensor([0.015625, 128.0], dtype=torch.float32).view(torch.uint8)
    return ha


def decode_time(precision, path, heads, b, ctx, repeats, threads=None):
    """(median seconds, KV bytes read) of one decode step of b sequences x ctx cached tokens."""
    h, kvh, d = heads
    bs = 16 if path in ("ov_sdpa", "torch") else 32
    nb = ceil_div(ctx + 1, bs)
    ha = make_attention(precision, path, b * nb, heads, threads)
    tables = torch.arange(b * nb).view(b, nb)[:, torch.randperm(nb)].tolist()   # scattered blocks
    md = build_metadata([1] * b, [ctx + 1] * b, tables, bs, CPU)
    q, k, v = torch.randn(b, h, d), torch.randn(b, kvh, d), torch.randn(b, kvh, d)
    t = timed(lambda: ha.forward(0, q, k, v, md), repeats)
    return t, b * nb * ha.layout.bytes_per_block


def decode_rows(args) -> list[list]:
    """Every path x format x heads; "vs f32" is the peer's (ov_paged, f32) time over this row's, same heads."""
    rows = []
    for heads_name in args.heads:
        heads = HEADS[heads_name]
        for ctx in args.contexts:
            for b in args.batches:
                base = None
                for path in args.paths:
                    for precision in args.kv:
                        bw0 = bandwidth()
                        try:
                            t_all, kv_bytes = decode_time(precision, path, heads, b, ctx, args.repeats)
                            t_one = decode_time(precision, path, heads, b, ctx, args.repeats, threads=1)[0]
                        except Exception as e:  # noqa: BLE001 - a format a path refuses is a row too
                            rows.append([heads_name, path, precision, b, ctx, "refused: " + str(e)[:50]] + [""] * 6)
                            continue
                        bw = median([bw0, bandwidth()])
                        base = base or t_all
                        gbs = kv_bytes / t_all / 1e9
                        rows.append([heads_name, path, precision, b, ctx, f"{t_all * 1e3:.2f}", f"{gbs:.1f}",
                                     f"{bw:.1f}", f"{100 * gbs / bw:.0f}%", f"{base / t_all:.2f}x",
                                     f"{t_one * 1e3:.2f}", f"{t_one / t_all:.2f}x"])
                        print(" | ".join(str(c) for c in rows[-1]), flush=True)
    return rows


def prefill_rows(args) -> list[list]:
    rows = []
    for n in args.prefill:
        bs = 32 if args.path == "ov_paged" else 16
        nb = ceil_div(n, bs)
        ha = make_attention("f32", args.path, nb)
        md = build_metadata([n], [n], [list(range(nb))], bs, CPU)
        q, k, v = torch.randn(n, H, D), torch.randn(n, KVH, D), torch.randn(n, KVH, D)
        flops = 4 * H * D * n * (n + 1) / 2
        t_ours = timed(lambda: ha.forward(0, q, k, v, md), args.repeats)
        qt, kt, vt = q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None]
        t_torch = timed(lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, enable_gqa=True),
                        args.repeats)
        rows.append([n, f"{t_ours * 1e3:.1f}", f"{flops / t_ours / 1e9:.0f}", f"{t_torch * 1e3:.1f}",
                     f"{flops / t_torch / 1e9:.0f}", f"{t_torch / t_ours:.2f}x"])
        print(" | ".join(str(c) for c in rows[-1]), flush=True)
    return rows


def lever_rows(args) -> list[list]:
    """Batch 32 x context 2048, f16, straight on the compiled op with different stream / thread setups."""
    import openvino as ov
    from hybridllm.attention.host_ov_paged import build_model, cache_layout, cache_tensors, compile_config
    from hybridllm.kv import Tier
    from hybridllm.attention.kv_cache import KVCacheTier
    from hybridllm.ov_common import core

    b, ctx = 32, 2048
    spec = HostAttentionSpec(num_layers=1, num_heads=H, num_kv_heads=KVH, head_dim=D, kv_precision="f16")
    setups = [("1 request, LATENCY, all cores", {}, 1),
              ("2 requests x 2 streams (batch split)", {"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": "2"}, 2),
              ("1 request, 1 thread", {"INFERENCE_NUM_THREADS": "1"}, 1),
              ("1 request, pinning off", {"ENABLE_CPU_PINNING": "NO"}, 1)]
    rows = []
    for name, extra, nreq in setups:
        cfg = dict(compile_config(spec), **extra)
        compiled = core().compile_model(build_model(spec), "CPU", cfg)
        layout = cache_layout(compiled, spec)
        nb = ctx // layout.block_size
        tier = KVCacheTier(Tier.HOST, layout, b * nb, "cpu")
        tier._k.uniform_(-1, 1)
        tier._v.uniform_(-1, 1)
        reqs, keep = [], []
        kc, vc = cache_tensors(tier, 0, keep)
        per = b // nreq
        for r in range(nreq):
            req = compiled.create_infer_request()
            feed = {
                "query": np.random.randn(per, H * D).astype(np.float32),
                "key": np.random.randn(per, KVH * D).astype(np.float32),
                "value": np.random.randn(per, KVH * D).astype(np.float32),
                "past_lens": np.full(per, ctx - 1, np.int32),
                "subsequence_begins": np.arange(per + 1, dtype=np.int32),
                "block_indices": np.arange(r * per * nb, (r + 1) * per * nb, dtype=np.int32),
                "block_indices_begins": (np.arange(per + 1) * nb).astype(np.int32),
                "max_context_len": np.array(ctx, np.int32),
            }
            keep.append(feed)
            for n, a in feed.items():
                req.set_tensor(n, ov.Tensor(a, shared_memory=True))
            req.set_tensor("key_cache", kc)
            req.set_tensor("value_cache", vc)
            reqs.append(req)

        def run():
            for req in reqs:
                req.start_async()
            for req in reqs:
                req.wait()
        bw0 = bandwidth()
        t = timed(run, args.repeats)
        bw = median([bw0, bandwidth()])
        gbs = tier.num_bytes / t / 1e9
        flops = 4 * b * H * D * ctx
        rows.append([name, f"{t * 1e3:.2f}", f"{gbs:.1f}", f"{100 * gbs / bw:.0f}%", f"{flops / t / 1e9:.0f}"])
        print(" | ".join(str(c) for c in rows[-1]), flush=True)
        del reqs, tier
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--contexts", default="512,2048,8192")
    ap.add_argument("--kv", default="f32,f16,bf16,u8")
    ap.add_argument("--heads", default="llama8b,smollm2", help="llama8b (32/8 x 128), smollm2 (9/3 x 64)")
    ap.add_argument("--paths", default="ov_paged,native", help="the first path's first format is the peer")
    ap.add_argument("--prefill", default="128,512,2048")
    ap.add_argument("--path", default="ov_paged", choices=["native", "ov_paged", "ov_sdpa", "torch"],
                    help="prefill rows' path")
    ap.add_argument("--levers", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    args.batches = [int(x) for x in args.batches.split(",")]
    args.contexts = [int(x) for x in args.contexts.split(",")]
    args.kv = args.kv.split(",")
    args.heads = args.heads.split(",")
    args.paths = args.paths.split(",")
    args.prefill = [int(x) for x in args.prefill.split(",") if x]
    torch.manual_seed(0)

    print(f"machine: {machine()}; median of {args.repeats}\n")
    bw_start = bandwidth()
    dec = decode_rows(args)
    pre = prefill_rows(args) if args.prefill else []
    lev = lever_rows(args) if args.levers else []
    print(f"\nread bandwidth {bw_start:.1f} GB/s at start, {bandwidth():.1f} GB/s at end")
    print("\n### Decode (one layer)\n")
    print(table(["heads", "path", "KV", "batch", "context", "ms", "KV GB/s", "read BW GB/s", "% of read BW",
                 f"vs {args.paths[0]} {args.kv[0]}", "ms, 1 thread", "1 thread / all"], dec))
    if pre:
        print("\n### Prefill (causal, one sequence, f32 KV)\n")
        print(table(["tokens", "ms", "GFLOP/s", "torch SDPA ms", "torch GFLOP/s", "vs torch"], pre))
    if lev:
        print("\n### Levers at batch 32 x context 2048, f16 KV\n")
        print(table(["setup", "ms", "KV GB/s", "% of read BW", "GFLOP/s"], lev))


if __name__ == "__main__":
    main()
