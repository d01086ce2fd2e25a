"""Which small-M linear layers take the split-K GEMV (kernels/splitk_gemv.py), measured once at start-up.

For each weight shape named (a decode step's qkv and o_proj) and each row count of the small decode
buckets, the start-up times cuBLAS (F.linear) and a few tile choices on weights read cold, and keeps
the fastest; cuBLAS stays unless a tile beats it by `MARGIN` (noise must not flip a shape). The result
is a GemvTable, consulted by DeviceOps.linear per call (a dict lookup; under CUDA graphs only at
capture). Nothing is measured on the CPU: there every shape runs F.linear.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

ROWS = (1, 2, 4, 8)            # the decode graphs' smallest buckets
MARGIN = 0.95                  # a tile must take at most this share of cuBLAS's time
COLD_BYTES = 256 << 20         # rotate through this many bytes of weights, more than any L2


@dataclass(frozen=True)
class Tile:
    block_n: int
    block_k: int
    split: int
    warps: int = 4

    def __str__(self) -> str:
        return f"{self.block_n}x{self.block_k}/{self.split}"


CANDIDATES = (Tile(16, 256, 4), Tile(32, 128, 4), Tile(32, 256, 2), Tile(32, 256, 4), Tile(64, 128, 4),
              Tile(16, 512, 8), Tile(32, 128, 8))


def decode_gemv_shapes(num_heads: int, num_kv_heads: int, head_dim: int, hidden: int) -> dict[str, tuple[int, int]]:
    """The small matrices of a decoder layer as (N, K): the fused qkv projection and o_proj."""
    return {"qkv": ((num_heads + 2 * num_kv_heads) * head_dim, hidden), "o_proj": (hidden, num_heads * head_dim)}


def choose(times: dict[Tile | None, float], margin: float = MARGIN) -> Tile | None:
    """times: seconds per call, None = cuBLAS -> the tile to use, or None for cuBLAS."""
    base = times.get(None, math.inf)
    tiles = {t: s for t, s in times.items() if t is not None and math.isfinite(s)}
    if not tiles:
        return None
    best = min(tiles, key=tiles.__getitem__)
    return best if tiles[best] <= margin * base else None


@dataclass(frozen=True)
class GemvTable:
    choices: dict[tuple[int, int, int], Tile]          # (N, K, M) -> tile; absent: cuBLAS
    report: tuple[tuple[str, int, int, int, float, float, str], ...] = ()   # name, N, K, M, cuBLAS s, best s, pick

    def lookup(self, n: int, k: int, m: int) -> Tile | None:
        return self.choices.get((n, k, m))

    def summary(self) -> str:
        if not self.report:
            return "split-K GEMV: not measured"
        picked = [f"{name} M={m} {pick} ({base / best:.2f}x)" for name, _, _, m, base, best, pick in self.report
                  if pick != "cuBLAS"]
        return "split-K GEMV for " + (", ".join(picked) if picked else "no shape (cuBLAS everywhere)")


def cuda_timer(fn: Callable[[], object], reps: int = 20) -> float:
    """Median seconds per call of fn over `reps` calls, timed with CUDA events after two warm-ups."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    return sorted(times)[len(times) // 2]


def measure_table(shapes: dict[str, tuple[int, int]], dtype: torch.dtype, device: torch.device,
                  rows: tuple[int, ...] = ROWS, candidates: tuple[Tile, ...] = CANDIDATES,
                  timer: Callable[[Callable[[], object]], float] = cuda_timer) -> GemvTable:
    """Times cuBLAS and each candidate tile for every (shape, M); a tile that fails to run is skipped."""
    from . import splitk_gemv as g                     # Triton: imported only where it runs
    choices, report = {}, []
    for name, (n, k) in shapes.items():
        copies = min(64, max(2, COLD_BYTES // (n * k * torch.finfo(dtype).bits // 8)))
        ws = [torch.randn(n, k, device=device, dtype=dtype) * 0.02 for _ in range(copies)]
        for m in rows:
            x = torch.randn(m, k, device=device, dtype=dtype)
            turn = iter(range(1 << 62))

            def cold(f):                                 # each call reads the next copy: DRAM, not L2
                return lambda: f(ws[next(turn) % copies])

            times: dict[Tile | None, float] = {None: timer(cold(lambda w: F.linear(x, w)))}
            for t in candidates:
                try:
                    times[t] = timer(cold(lambda w, t=t: g.splitk_gemv(x, w, None, t.block_n, t.block_k, t.split,
                                                                         t.warps)))
                except Exception:  # noqa: BLE001 - a tile this GPU cannot compile is just not a candidate
                    times[t] = math.inf
            pick = choose(times)
            if pick is not None:
                choices[n, k, m] = pick
            finite = [s for s in times.values() if math.isfinite(s)]
            report.append((name, n, k, m, times[None], min(finite), str(pick) if pick else "cuBLAS"))
        del ws
    return GemvTable(choices, tuple(report))


def linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, table: GemvTable | None) -> torch.Tensor:
    """x: [M, K] @ w[N, K].T (+ bias) -> [M, N]: the table's tile for this shape, else F.linear."""
    tile = table.lookup(w.shape[0], w.shape[1], x.shape[0]) if table is not None and x.dim() == 2 else None
    if tile is None or w.stride(1) != 1 or w.stride(0) != w.shape[1]:
        return F.linear(x, w, bias)
    from . import splitk_gemv as g
    return g.splitk_gemv(x, w, bias, tile.block_n, tile.block_k, tile.split, tile.warps)
