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
