"""Paged decode attention, one layer: our Triton kernel (reads the block table itself) against torch's
flex_attention (compiled) with a paged block mask, and the torch gather + SDPA reference; the outputs
are checked against the reference before timing.

flex_attention sees the whole KV cache of a layer as one sequence of num_blocks * 16 positions per KV
head, shared by the batch, and a mask that lets row b see the positions of its own blocks below its
context length (owner / logical-index tables made per step, then create_block_mask).

    python benchmarks/flex_paged.py [--batches 1,16,64,128] [--context 1024]    # on a GPU
    python benchmarks/flex_paged.py --smoke                                     # the numerics, on the CPU, eager
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

from hybridllm.kernels import DeviceOps, resolve_kernels  # noqa: E402

BS = 16


def flex_paged(flex, create_block_mask):
    """-> fn(q, kc, vc, tables, lens) -> ([B, H * D], mask build seconds)."""
    def run(q, kc, vc, tables, lens, scale):
        b, h, d = q.shape
        nb, kvh = kc.shape[0], kc.shape[1]
        t0 = time.perf_counter()
        nblk = (lens + BS - 1) // BS
        owner = torch.full((nb,), -1, dtype=torch.int64, device=q.device)
        logical = torch.zeros(nb, dtype=torch.int64, device=q.device)
        cols = torch.arange(tables.shape[1], device=q.device)[None, :]
        used = cols < nblk[:, None]                                         # [B, max_blocks]
        owner[tables[used]] = torch.arange(b, device=q.device)[:, None].expand_as(tables)[used]
        logical[tables[used]] = cols.expand_as(tables)[used]

        def mask_mod(bi, hi, qi, kvi):
            blk = kvi // BS
            return (owner[blk] == bi) & (logical[blk] * BS + kvi % BS < lens[bi])

        mask = create_block_mask(mask_mod, b, None, 1, nb * BS, device=q.device, BLOCK_SIZE=(128, BS))
        if q.is_cuda:
            torch.cuda.synchronize()
        built = time.perf_counter() - t0
        k = kc.permute(1, 0, 2, 3).reshape(1, kvh, nb * BS, d).expand(b, -1, -1, -1)
        v = vc.permute(1, 0, 2, 3).reshape(1, kvh, nb * BS, d).expand(b, -1, -1, -1)
        out = flex(q.unsqueeze(2), k, v, block_mask=mask, enable_gqa=True, scale=scale)    # [B, H, 1, D]
        return out.reshape(b, h * d), built
    return run


def case(b, ctx, heads, kv_heads, d, dtype, device, spare=64):
    per = -(-(ctx + 1) // BS)
    nb = b * per + spare
    g = torch.Generator(device=device).manual_seed(0)
    kc = torch.randn(nb, kv_heads, BS, d, device=device, generator=g).to(dtype)
    vc = torch.randn(nb, kv_heads, BS, d, device=device, generator=g).to(dtype)
    perm = torch.randperm(nb, device=device, generator=g)
    tables = perm[:b * per].view(b, per)                                   # scattered blocks
    lens = torch.full((b,), ctx + 1, dtype=torch.int64, device=device)
    lens[::3] -= 7                                                          # some partial last blocks
    q = torch.randn(b, heads, d, device=device, generator=g).to(dtype)
    return q, kc, vc, tables, lens


def bench(fn, reps=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,16,64,128")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--smoke", action="store_true", help="CPU, eager flex, small shapes: numerics only")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    device = torch.device("cpu" if args.smoke else "cuda")
    dtype = torch.float32 if args.smoke else torch.bfloat16
    heads, kv_heads, d = (8, 2, 32) if args.smoke else (32, 8, 128)
    batches = [1, 3] if args.smoke else [int(x) for x in args.batches.split(",")]
    ctx = 40 if args.smoke else args.context
    ref = DeviceOps("torch")
    tri = DeviceOps("triton") if resolve_kernels("auto", device) == "triton" else None
    flex = flex_paged(flex_attention if args.smoke else torch.compile(flex_attention),
                      create_block_mask)
    scale = 1 / math.sqrt(d)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    print(f"# {machine()}; {heads} heads, {kv_heads} KV heads, head_dim {d}, {dtype}, context {ctx}", flush=True)
    rows = ["| batch | torch gather + SDPA | Triton paged kernel | flex_attention (compiled) | flex's block mask build |",
            "|---|---|---|---|---|"]
    for b in batches:
        q, kc, vc, tables, lens = case(b, ctx, heads, kv_heads, d, dtype, device)
        want = ref.paged_decode(q, kc, vc, tables, lens, scale, None)
        try:
            got, _ = flex(q, kc, vc, tables, lens, scale)
            flex_error = None
        except Exception as e:         # compiled flex refuses some shapes; the other columns still count
            got, flex_error = want, f"{type(e).__name__}: {str(e).splitlines()[-1][:120]}"
        torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol)
        if tri is not None:
            torch.testing.assert_close(tri.paged_decode(q, kc, vc, tables, lens, scale, None).float(), want.float(),
                                       atol=tol, rtol=tol)
        if args.smoke:
            print(f"batch {b}: flex and the reference agree within {tol}")
            continue
        t_ref = bench(lambda: ref.paged_decode(q, kc, vc, tables, lens, scale, None))
        t_tri = bench(lambda: tri.paged_decode(q, kc, vc, tables, lens, scale, None)) if tri else float("nan")
        if flex_error is None:
            builds = []
            t_flex = bench(lambda: builds.append(flex(q, kc, vc, tables, lens, scale)[1]))
            t_build = sorted(builds)[len(builds) // 2]
            flex_cells = f"{t_flex * 1e6:.0f} us | {t_build * 1e6:.0f} us (inside the flex column)"
        else:
            flex_cells = f"failed: {flex_error} | -"
        rows.append(f"| {b} | {t_ref * 1e6:.0f} us | {t_tri * 1e6:.0f} us | {flex_cells} |")
        print(rows[-1], flush=True)
    if not args.smoke:
        print("\n".join(rows))
        if args.out:
            Path(args.out).write_text(machine() + "\n\n" + "\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
