"""`hybridllm profile`: measure this machine's HardwareProfile for a model's layer shapes.

Times the real kernels the executors call (torch linear on the compute device,
OpenVINO FullyConnected on the host, device attention and the host's HostAttention
over paged caches, host<->device copies), each at a small grid of sizes, best of a
few runs, cycling through enough copies to defeat the cache; last, NEO's pipelining
overhead on the real NeoRunner (measure_neo.py). About a minute on a 2-core VM.
"""
from __future__ import annotations

import dataclasses
import platform
import time
from dataclasses import dataclass

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..attention import DeviceAttention, build_metadata
from ..attention.host import HostAttention, HostAttentionSpec
from ..kv import Tier
from ..attention.kv_cache import KVCacheTier, KVLayout
from ..models.config import ModelConfig
from ..dtypes import BYTES, KV_OF_MODEL, torch_dtype
from ..kernels import DeviceOps, resolve_kernels
from ..models.rope import RotaryEmbedding
from ..ov_common import compile_config, core
from ..runtime.cpu.host_precision import EXACT, HostPrecision
from ..runtime.cpu.ov_weights import sample_linear
from ..policy import HardwareProfile, ModelShape, Table2D
from ..utils import ceil_div, mem_total
from .measure_neo import pipeline_overhead
from .timing import timeit

@dataclass(frozen=True)
class Grid:
    """Where the tables are sampled; the cost model interpolates between the points (log-log)."""
    gemm_tokens: tuple[int, ...] = (1, 4, 16, 64, 256, 1024)
    decode_seqs: tuple[int, ...] = (1, 4, 16, 32)
    decode_total_tokens: tuple[int, ...] = (512, 4096, 32768)
    prefill_tokens: tuple[int, ...] = (16, 128, 512, 2048)
    prefill_context: tuple[int, ...] = (16, 128, 512, 2048)


FULL = Grid()
# Profile on first use (policy auto): about half the probes, every table still spanning the same range.
QUICK = Grid(gemm_tokens=(1, 16, 256, 1024), decode_seqs=(1, 8, 32), decode_total_tokens=(512, 32768),
             prefill_tokens=(16, 256, 2048), prefill_context=(16, 256, 2048))
BLOCK = 16
COLD_BYTES = 256 << 20   # rotate through this much data so timings read DRAM, as a real step does, not cache


class _Bar:
    def __init__(self, total: int, progress: bool):
        self.bar = tqdm(total=total, desc="profile", unit="probe", disable=None if progress else True)

    def step(self, what: str):
        self.bar.set_postfix_str(what)
        self.bar.update(1)


def _gemm_grid(shape: ModelShape, name: str, bar: _Bar, prepare, grid: Grid = FULL) -> Table2D:
    """Seconds per GEMM by (tokens, n * k) for every matrix shape of the model and its LM head.

    prepare(n, k) -> time(t): seconds for one [t, k] x [k, n] product, weights read cold."""
    mats = {n * k: (n, k) for n, k in shape.gemms}
    mats[shape.vocab * shape.hidden] = (shape.vocab, shape.hidden)
    params = sorted(mats)
    rows = {}
    for p in params:
        n, k = mats[p]
        time_tokens = prepare(n, k)
        col = []
        for t in grid.gemm_tokens:
            if p == shape.vocab * shape.hidden and t > 256 and col:
                col.append(col[-1] * t / grid.gemm_tokens[len(col) - 1])   # the LM head only sees sampled rows
            else:
                col.append(time_tokens(t))
            bar.step(f"{name} {n}x{k} tokens={t}")
        rows[p] = col
    seconds = tuple(tuple(rows[p][i] for p in params) for i in range(len(grid.gemm_tokens)))
    return Table2D(tuple(float(t) for t in grid.gemm_tokens), tuple(float(p) for p in params), seconds, name)


def gemm_table(shape: ModelShape, device: torch.device, dtype: torch.dtype, name: str, bar: _Bar,
               grid: Grid = FULL) -> Table2D:
    """torch F.linear on `device`, which the device executors run."""
    def prepare(n, k):
        copies = max(1, COLD_BYTES // (n * k * dtype.itemsize))
        ws = [torch.randn(n, k, device=device, dtype=dtype) for _ in range(copies)]

        def time_tokens(t):
            x = torch.randn(t, k, device=device, dtype=dtype)
            return timeit(lambda: [F.linear(x, w) for w in ws], device) / copies
        return time_tokens
    return _gemm_grid(shape, name, bar, prepare, grid)


def ov_gemm_table(shape: ModelShape, name: str, bar: _Bar, grid: Grid = FULL,
                  precision: HostPrecision = EXACT) -> Table2D:
    """OpenVINO FullyConnected on the host at cpu_only's weights and arithmetic (precision)."""

    config = compile_config(precision.compute, DYNAMIC_QUANTIZATION_GROUP_SIZE=str(precision.dynamic_quant))
    rng = np.random.default_rng(0)

    def prepare(n, k):
        # Capped: a graph of thousands of tiny matmuls (small models) takes minutes to compile.
        copies = max(1, min(64, COLD_BYTES // (n * k * 4)))
        x = ops.parameter([-1, k], ov.Type.f32, name="x")
        outs = [sample_linear(x, precision, n, k, rng) for _ in range(copies)]   # `copies` weights: cold reads
        req = core().compile_model(ov.Model(outs, [x], "gemm"), "CPU", config).create_infer_request()

        def time_tokens(t):
            xt = ov.Tensor(np.random.randn(t, k).astype(np.float32))
            return timeit(lambda: req.infer({0: xt}), torch.device("cpu")) / copies
        return time_tokens
    return _gemm_grid(shape, name, bar, prepare, grid)


def attention_tables(mc: ModelConfig, make_backend, device: torch.device, kv_bytes: int, name: str,
                     bar: _Bar, grid: Grid = FULL) -> tuple[Table2D, Table2D]:
    """(decode, prefill) tables for one attention backend over a paged cache.

    make_backend(num_layers, num_tokens) -> (backend, block_size, activation dtype): a backend
    with forward(layer, q, k, v, md) over a fresh cache of that many layers and tokens."""
    H, KVH, D = mc.num_attention_heads, mc.num_key_value_heads, mc.head_dim
    # Every probe holds at most this many tokens, plus up to a block per sequence (<= 128 sequences).
    max_tokens = max(max(grid.decode_total_tokens), max(grid.prefill_tokens)) + 128 * 32
    per_layer = max_tokens * 2 * KVH * D * kv_bytes
    layers = max(1, min(8, COLD_BYTES // per_layer))     # cycle layers so small caches are not cache-hot
    attn, bs, act = make_backend(layers, max_tokens)

    def run(query_lens: list[int], seq_lens: list[int]) -> float:
        tables, nxt = [], 0
        for n in seq_lens:
            nb = ceil_div(n, bs)
            tables.append(list(range(nxt, nxt + nb)))
            nxt += nb
        md = build_metadata(query_lens, seq_lens, tables, bs, device)
        T = sum(query_lens)
        q = torch.randn(T, H, D, device=device, dtype=act)
        k = torch.randn(T, KVH, D, device=device, dtype=act)
        v = torch.randn(T, KVH, D, device=device, dtype=act)
        return timeit(lambda: [attn.forward(i, q, k, v, md) for i in range(layers)], device) / layers

    dec_rows = []
    for s in grid.decode_seqs:
        row = []
        for total in grid.decode_total_tokens:
            ctx = max(total // s, 2)
            row.append(run([1] * s, [ctx] * s))
            bar.step(f"{name} decode seqs={s} ctx={ctx}")
        dec_rows.append(row)
    y_dec = tuple(float(t * 2 * KVH * D * kv_bytes) for t in grid.decode_total_tokens)
    pre_rows = []
    for T in grid.prefill_tokens:
        row = []
        for n in grid.prefill_context:
            # Keep the mean keys per new token at (n + 1) / 2 in every cell of the column:
            # whole causal prefills of n tokens, or one chunk of T tokens ending a context of (n + T) / 2.
            if T >= n:
                row.append(run([n] * (T // n), [n] * (T // n)))
            else:
                row.append(run([T], [(n + T) // 2]))
            bar.step(f"{name} prefill tokens={T} ctx={n}")
        pre_rows.append(row)
    # y: attention FLOPs per new token, as the cost model computes them
    y_pre = tuple(4 * (n + 1) / 2 * H * D for n in grid.prefill_context)
    return (Table2D(tuple(float(s) for s in grid.decode_seqs), y_dec, tuple(map(tuple, dec_rows)), f"{name}_decode"),
            Table2D(tuple(float(t) for t in grid.prefill_tokens), y_pre, tuple(map(tuple, pre_rows)),
                    f"{name}_prefill"))


def copy_bandwidths(device: torch.device, nbytes: int = 1 << 28) -> dict[str, float]:
    host = torch.empty(nbytes, dtype=torch.uint8)
    if device.type != "cuda":
        dst = torch.empty_like(host)
        bw = nbytes / timeit(lambda: dst.copy_(host), device)
        return {"h2d_pinned": bw, "h2d_pageable": bw, "d2h_pinned": bw, "d2h_pageable": bw}
    pinned = host.pin_memory()
    dev = torch.empty(nbytes, dtype=torch.uint8, device=device)
    return {"h2d_pinned": nbytes / timeit(lambda: dev.copy_(pinned, non_blocking=True), device),
            "h2d_pageable": nbytes / timeit(lambda: dev.copy_(host), device),
            "d2h_pinned": nbytes / timeit(lambda: pinned.copy_(dev, non_blocking=True), device),
            "d2h_pageable": nbytes / timeit(lambda: host.copy_(dev), device)}


def host_read_bandwidth(nbytes: int = 1 << 29) -> float:
    x = torch.ones(nbytes // 4, dtype=torch.float32)
    return nbytes / timeit(lambda: x.sum(), torch.device("cpu"), reps=5)


def _meminfo_total() -> int:
    return mem_total() or 16 * 2**30


def measure(mc: ModelConfig, dtype: str = "float32", device: str | None = None, progress: bool = True,
            name: str | None = None, host_kv: tuple[str, ...] | None = None, quick: bool = False,
            host_linear: HostPrecision = EXACT, grid: Grid | None = None) -> HardwareProfile:
    """host_kv: the host KV precisions to time (default: the model dtype's, plus f16 for float32 models).
    host_linear: cpu_only's weights and arithmetic, which the host GEMMs are timed at.
    quick: the profile-on-first-use grid (QUICK), the model dtype's host KV only, and no NEO probe
    (auto never plans NEO): well under 90 s for the default model on 2 cores.
    grid: where the tables are sampled instead (a dry run's few points)."""
    grid = grid or (QUICK if quick else FULL)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    host = torch.device("cpu")
    tdtype = torch_dtype(dtype)
    shape = ModelShape.from_config(mc, dtype)
    n_gemm = (len(shape.gemms) + 1) * len(grid.gemm_tokens)
    n_attn = len(grid.decode_seqs) * len(grid.decode_total_tokens) + len(grid.prefill_tokens) * len(grid.prefill_context)
    own = KV_OF_MODEL[dtype]
    host_kv = tuple(host_kv or ((own, "f16") if own == "f32" and not quick else (own,)))
    for k in host_kv:
        if k not in BYTES:
            raise ValueError(f"host_kv: {k!r} is not one of {', '.join(BYTES)}")
    bar = _Bar(2 * n_gemm + (1 + len(host_kv)) * n_attn, progress)

    device_ops = DeviceOps(resolve_kernels("auto", dev))   # what the engine runs on this device by default

    def device_backend(layers, tokens):
        tier = KVCacheTier(Tier.DEVICE, KVLayout(layers, mc.num_key_value_heads, mc.head_dim, BLOCK, tdtype),
                           ceil_div(tokens, BLOCK), dev)
        return (DeviceAttention(tier.key_cache, tier.value_cache, mc.num_attention_heads, mc.num_key_value_heads,
                                mc.head_dim, ops=device_ops), BLOCK, tdtype)

    def host_backend(precision):
        def make(layers, tokens):
            spec = HostAttentionSpec(layers, mc.num_attention_heads, mc.num_key_value_heads, mc.head_dim,
                                     precision, block_size=BLOCK)
            attn = HostAttention.create(spec, num_blocks=ceil_div(tokens, 16))   # >= tokens for any block size
            host_names.append(attn.name)
            return attn, attn.layout.block_size, torch.float32
        return make

    t0 = time.perf_counter()
    bw = host_read_bandwidth()
    copies = copy_bandwidths(dev)
    dev_gemm = gemm_table(shape, dev, tdtype, "device_gemm", bar, grid)
    # cpu_only's linear layers are OpenVINO f32 graphs; for other dtypes this times torch linear instead.
    host_gemm = (ov_gemm_table(shape, "host_gemm", bar, grid, host_linear) if dtype == "float32"
                 else gemm_table(shape, host, tdtype, "host_gemm", bar, grid))
    dev_dec, dev_pre = attention_tables(mc, device_backend, dev, BYTES[dtype], "device_attention", bar, grid)
    host_dec, host_pre, host_names = {}, {}, []
    for kv_name in host_kv:
        host_dec[kv_name], host_pre[kv_name] = attention_tables(
            mc, host_backend(kv_name), host, BYTES[kv_name], f"host_attention_{kv_name}", bar, grid)
    bar.bar.close()
    overhead = _layer_overhead(mc, dev, tdtype)
    total_mem = torch.cuda.get_device_properties(dev).total_memory if dev.type == "cuda" else _meminfo_total()
    prof = HardwareProfile(
        name=name or f"{platform.node()}-{dev.type}", source="measured",
        device_name=torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({platform.processor() or platform.machine()})",
        host_name=platform.processor() or platform.machine(), dtype=dtype,
        device_memory_bytes=int(total_mem), host_memory_bytes=_meminfo_total(), host_memory_bandwidth=bw,
        **copies, launch_overhead_s=overhead["step"], layer_overhead_s=overhead["layer"],
        device_gemm=dev_gemm, device_attention_decode=dev_dec, device_attention_prefill=dev_pre,
        host_gemm=host_gemm, host_attention_decode=host_dec, host_attention_prefill=host_pre,
        device_is_host=dev.type == "cpu",
        notes=f"measured in {time.perf_counter() - t0:.0f} s ({'quick' if quick else 'full'} grid) for a model with "
              f"hidden={mc.hidden_size}, layers={mc.num_hidden_layers}; host attention: "
              f"{', '.join(sorted(set(host_names)))}; host linear {host_linear.label}",
        extra={"model_dtype_bytes": BYTES[dtype], "host_handoff_s": 0.0})
    if quick:
        return prof
    # Last: it times NEO's real runner against predictions from the tables above.
    pipe = pipeline_overhead(mc, prof, dtype, dev, host_kv[0])
    return dataclasses.replace(prof, extra={**prof.extra, "host_handoff_s": pipe})


def _layer_overhead(mc: ModelConfig, device: torch.device, dtype: torch.dtype) -> dict[str, float]:
    """Per-layer and per-step time outside GEMMs and attention: norms, RoPE, residuals, metadata, with the
    small ops the engine runs on this device by default."""
    small = DeviceOps(resolve_kernels("auto", device))
    hdim, H, KVH, D = mc.hidden_size, mc.num_attention_heads, mc.num_key_value_heads, mc.head_dim
    rope = RotaryEmbedding(mc, device, dtype)
    h = torch.randn(1, hdim, device=device, dtype=dtype)
    w = torch.ones(hdim, device=device, dtype=dtype)
    q = torch.randn(1, H, D, device=device, dtype=dtype)
    k = torch.randn(1, KVH, D, device=device, dtype=dtype)
    pos = torch.zeros(1, dtype=torch.int64, device=device)
    g = torch.randn(1, 2 * mc.intermediate_size, device=device, dtype=dtype)

    def layer():
        x, _ = small.add_rms_norm(h, None, w, 1e-5)
        rope(q, k, pos)
        small.silu_mul(g)
        x, y = small.add_rms_norm(h, x, w, 1e-5)
        return y + x

    def step():
        md = build_metadata([1], [17], [[0, 1]], BLOCK, device)
        torch.tensor([1], device=device)
        return md

    return {"layer": timeit(layer, device, reps=20), "step": timeit(step, device, reps=20)}
