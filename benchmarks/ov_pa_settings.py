"""OpenVINO PagedAttention decode over every setting it has, against the read bandwidth of the same run.

    python benchmarks/ov_pa_settings.py [--batch 32] [--context 2048] [--heads llama8b,smollm2] [--repeats 5]

Straight on the compiled op (one layer, batch B decodes of `context` cached tokens, scattered
blocks): KV precision per K and V (KEY/VALUE_CACHE_PRECISION: f32 f16 bf16 u8 u4), the
quantization group (KEY/VALUE_CACHE_GROUP_SIZE), the kernel's arithmetic
(INFERENCE_PRECISION_HINT f32 / bf16) and threads (1 vs all). "KV GB/s" counts the bytes of the
blocks the step reads, scale/zero-point rows included, as the compiled ports lay them out.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np
import openvino as ov

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine, median, read_bandwidth_gbs, table  # noqa: E402

from hybridllm.attention.host_ov_paged import build_model  # noqa: E402
from hybridllm.attention.spec import HostAttentionSpec  # noqa: E402
from hybridllm.ov_common import core  # noqa: E402

HEADS = {"llama8b": (32, 8, 128), "smollm2": (9, 3, 64)}

# (label, K precision, V precision, group size or 0, inference precision)
SETTINGS = [
    ("f32", "f32", "f32", 0, "f32"),
    ("f16", "f16", "f16", 0, "f32"),
    ("f16, bf16 math", "f16", "f16", 0, "bf16"),
    ("bf16, bf16 math", "bf16", "bf16", 0, "bf16"),
    ("u8", "u8", "u8", 0, "f32"),
    ("u8, bf16 math", "u8", "u8", 0, "bf16"),
    ("u8 g32", "u8", "u8", 32, "f32"),
    ("u8 g32, bf16 math", "u8", "u8", 32, "bf16"),
    ("u8 K / u4 V, bf16 math", "u8", "u4", 0, "bf16"),
    ("u8 K / u4 V g32, bf16 math", "u8", "u4", 32, "bf16"),
]


def run_one(h, kvh, d, b, ctx, kp, vp, group, infer, threads, repeats):
    spec = HostAttentionSpec(num_layers=1, num_heads=h, num_kv_heads=kvh, head_dim=d)
    cfg = {"INFERENCE_PRECISION_HINT": infer, "PERFORMANCE_HINT": "LATENCY", "KEY_CACHE_PRECISION": kp,
           "VALUE_CACHE_PRECISION": vp}
    if group:
        cfg["KEY_CACHE_GROUP_SIZE"] = group
        cfg["VALUE_CACHE_GROUP_SIZE"] = group
    if threads:
        cfg["INFERENCE_NUM_THREADS"] = threads
    compiled = core().compile_model(build_model(spec), "CPU", cfg)
    kport, vport = compiled.input("key_cache"), compiled.input("value_cache")
    kshape = [kport.get_partial_shape()[i].get_length() for i in range(1, 4)]
    vshape = [vport.get_partial_shape()[i].get_length() for i in range(1, 4)]
    bs = vshape[1]
    nb = math.ceil((ctx + 1) / bs)
    caches, nbytes = [], 0
    for port, shape in ((kport, kshape), (vport, vshape)):
        et = port.get_element_type()
        shp = [b * nb] + shape
        store = np.full(math.prod(shp) * et.bitwidth // 8, 0x3C, np.uint8)   # real pages, finite values
        nbytes += store.nbytes
        caches.append((ov.Tensor(store, shp, et), store))
    req = compiled.create_infer_request()
    rng = np.random.default_rng(0)
    blocks = np.arange(b * nb, dtype=np.int32).reshape(b, nb)[:, rng.permutation(nb)].ravel()
    feed = {"query": rng.standard_normal((b, h * d), np.float32),
            "key": rng.standard_normal((b, kvh * d), np.float32),
            "value": rng.standard_normal((b, kvh * d), np.float32),
            "past_lens": np.full(b, ctx, np.int32), "subsequence_begins": np.arange(b + 1, dtype=np.int32),
            "block_indices": blocks, "block_indices_begins": (np.arange(b + 1) * nb).astype(np.int32),
            "max_context_len": np.array(ctx + 1, np.int32)}
    for n, a in feed.items():
        req.set_tensor(n, ov.Tensor(a, shared_memory=True))
    req.set_tensor("key_cache", caches[0][0])
    req.set_tensor("value_cache", caches[1][0])
    req.infer()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        req.infer()
        ts.append(time.perf_counter() - t)
    return median(ts), nbytes, (kshape, vshape)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--heads", default="llama8b,smollm2")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    print(f"machine: {machine()}; openvino {ov.__version__}; batch {args.batch} x context {args.context}; "
          f"median of {args.repeats}\n")
    bw_start = read_bandwidth_gbs(512 << 20, repeats=3)
    rows = []
    for heads in args.heads.split(","):
        h, kvh, d = HEADS[heads]
        base = None
        for label, kp, vp, group, infer in SETTINGS:
            try:
                t_all, nbytes, shapes = run_one(h, kvh, d, args.batch, args.context, kp, vp, group, infer, 0,
                                                args.repeats)
                t_one, _, _ = run_one(h, kvh, d, args.batch, args.context, kp, vp, group, infer, 1, args.repeats)
            except Exception as e:  # noqa: BLE001 - a setting this plugin refuses is a row too
                rows.append([heads, label, "refused: " + str(e).strip().splitlines()[-1][:60]] + [""] * 6)
                print(rows[-1], flush=True)
                continue
            bw = read_bandwidth_gbs(512 << 20, repeats=3)
            base = base or t_all
            gbs = nbytes / t_all / 1e9
            rows.append([heads, label, f"{shapes[0]}/{shapes[1]}", f"{t_all * 1e3:.2f}", f"{gbs:.1f}",
                         f"{100 * gbs / bw:.0f}%", f"{base / t_all:.2f}x", f"{t_one * 1e3:.2f}",
                         f"{t_one / t_all:.2f}x"])
            print(" | ".join(rows[-1]), flush=True)
    bw_end = read_bandwidth_gbs(512 << 20, repeats=3)
    print(f"\nread bandwidth: {bw_start:.1f} GB/s at start, {bw_end:.1f} GB/s at end\n")
    print(table(["heads", "setting", "K / V block", "ms (all threads)", "KV GB/s", "% of read BW",
                 "vs f32", "ms (1 thread)", "1 thread / all"], rows))


if __name__ == "__main__":
    main()
