"""Synthetic hardware profiles: every table a constant, so expected times are simple sums."""
from hybridllm.policy import HardwareProfile, Table2D


def const(v, name="t"):
    return Table2D((1.0,), (1.0,), ((v,),), name)


def synthetic(**over) -> HardwareProfile:
    """Every table a constant, so expected times are simple sums."""
    kw = dict(name="synthetic", source="spec", device_name="dev", host_name="host", dtype="float32",
              device_memory_bytes=10 * 2**30, host_memory_bytes=100 * 2**30, host_memory_bandwidth=1e10,
              h2d_pinned=1e9, h2d_pageable=5e8, d2h_pinned=1e9, d2h_pageable=5e8,
              launch_overhead_s=0.0, layer_overhead_s=0.0,
              device_gemm=const(1e-3), device_attention_decode=const(2e-3), device_attention_prefill=const(4e-3),
              host_gemm=const(5e-3), host_attention_decode={"f32": const(5e-3)},
              host_attention_prefill={"f32": const(3e-3)})
    kw.update(over)
    return HardwareProfile(**kw)


def size_dependent(**over) -> HardwareProfile:
    """Host GEMMs fast for a few rows and slow for many (log-log between 1 and 4096 rows); device GEMMs
    a flat 1 ms. The planner then runs decodes and short prefills on the host (cpu_only) and long
    prefills on the device (gpu_only), whose KV then moves to the host for decode (copies are free)."""
    host = Table2D((1.0, 4096.0), (1.0, 1e10), ((1e-5, 1e-5), (1e-1, 1e-1)), "host_gemm")
    kw = dict(device_gemm=const(1e-3), host_gemm=host, device_attention_decode=const(1e-5),
              device_attention_prefill=const(1e-5), host_attention_decode={"f32": const(1e-5)},
              host_attention_prefill={"f32": const(1e-5)}, h2d_pinned=1e15, d2h_pinned=1e15,
              device_memory_bytes=100 * 2**30)
    kw.update(over)
    return synthetic(**kw)
