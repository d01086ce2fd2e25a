"""Reference profiles built from published specs, NOT measured.

They let the planner reason about hardware we do not have (H100, A10G, T4).
Each table is a roofline: max(FLOPs / (efficiency * peak), bytes / (efficiency * bandwidth))
plus a per-call overhead. Spec numbers are the vendors' datasheet figures (dense,
no sparsity); the efficiencies are the usual rules of thumb and are labelled as such.

    python -m hybridllm.profiling.store    # writes them as JSON to policy/profiles/, for reading
"""
from __future__ import annotations

from dataclasses import dataclass

from .profile import HardwareProfile
from .tables import Table2D

GB = 1e9
GEMM_EFF, BW_EFF, ATTN_EFF = 0.7, 0.8, 0.5      # rules of thumb, not measurements
TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
PARAMS = (1e5, 1e6, 4e6, 1.6e7, 6.4e7, 2.56e8, 1e9, 4e9)
SEQS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
KV_BYTES = (1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11)
FLOPS_PER_TOKEN = (1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9)


@dataclass(frozen=True)
class Spec:
    name: str
    device_name: str
    host_name: str
    device_tflops: float          # bf16/fp16 dense tensor-core peak
    device_bw_gbs: float          # HBM/GDDR bandwidth
    device_mem_gb: float
    host_tflops: float            # host peak in the served dtype (AMX bf16 where present)
    host_bw_gbs: float
    host_mem_gb: float
    pcie_pinned_gbs: float        # achievable host<->device, pinned
    pcie_pageable_gbs: float
    gpu_launch_s: float = 5e-6    # per kernel
    cpu_call_s: float = 3e-6      # per compiled-graph call
    notes: str = ""


SPECS = (
    Spec("h100-sxm-spr", "NVIDIA H100 SXM5 80GB", "Intel Xeon Platinum 8480+ (Sapphire Rapids, AMX), 1 socket",
         989, 3350, 80, 60, 307, 512, 50, 25,
         notes="H100 SXM datasheet; Xeon 8480+: 56 cores, AMX bf16, 8ch DDR5-4800; PCIe Gen5 x16"),
    Spec("h100-pcie-spr", "NVIDIA H100 PCIe 80GB", "Intel Xeon Platinum 8480+ (Sapphire Rapids, AMX), 1 socket",
         756, 2000, 80, 60, 307, 512, 50, 25,
         notes="H100 PCIe datasheet; PCIe Gen5 x16"),
    Spec("a10g-epyc", "NVIDIA A10G 24GB", "AMD EPYC 7R32, 24 cores (AWS g5)",
         70, 600, 24, 2.0, 150, 192, 24, 12,
         notes="A10G: 70 TFLOPS dense bf16 tensor, 600 GB/s GDDR6; PCIe Gen4 x16; host AVX2 fp32"),
    Spec("t4-xeon8", "NVIDIA T4 16GB", "Intel Xeon, 8 cores (AVX-512)",
         65, 320, 16, 1.0, 60, 208, 12, 6,
         notes="T4: 65 TFLOPS dense fp16 tensor, 320 GB/s GDDR6; PCIe Gen3 x16; 8-core Xeon host "
               "with 208 GB, as in FlexGen's T4 machine"),
)


def _gemm(peak_tflops: float, bw_gbs: float, call_s: float, wbytes: int = 2):
    def t(tokens: float, params: float) -> float:
        flops = 2 * tokens * params
        moved = params * wbytes + tokens * 2 * (params ** 0.5) * wbytes   # weights + in/out activations
        return max(flops / (GEMM_EFF * peak_tflops * 1e12), moved / (BW_EFF * bw_gbs * GB)) + call_s
    return t


def _decode_attn(bw_gbs: float, peak_tflops: float, call_s: float):
    def t(seqs: float, kv_bytes: float) -> float:
        return kv_bytes / (BW_EFF * bw_gbs * GB) + call_s * (1 + seqs / 64)
    return t


def _prefill_attn(peak_tflops: float, call_s: float):
    def t(tokens: float, flops_per_token: float) -> float:
        return tokens * flops_per_token / (ATTN_EFF * peak_tflops * 1e12) + call_s
    return t


def build(spec: Spec) -> HardwareProfile:
    T = Table2D.from_function
    host_decode = T(SEQS, KV_BYTES, _decode_attn(spec.host_bw_gbs, spec.host_tflops, spec.cpu_call_s * 10),
                    f"{spec.name}.host_attention_decode")
    host_prefill = T(TOKENS, FLOPS_PER_TOKEN, _prefill_attn(spec.host_tflops, spec.cpu_call_s * 10),
                     f"{spec.name}.host_attention_prefill")
    return HardwareProfile(
        name=spec.name, source="spec", device_name=spec.device_name, host_name=spec.host_name, dtype="bfloat16",
        device_memory_bytes=int(spec.device_mem_gb * GB), host_memory_bytes=int(spec.host_mem_gb * GB),
        host_memory_bandwidth=spec.host_bw_gbs * GB,
        h2d_pinned=spec.pcie_pinned_gbs * GB, h2d_pageable=spec.pcie_pageable_gbs * GB,
        d2h_pinned=spec.pcie_pinned_gbs * GB, d2h_pageable=spec.pcie_pageable_gbs * GB,
        launch_overhead_s=20 * spec.gpu_launch_s, layer_overhead_s=8 * spec.gpu_launch_s,
        device_gemm=T(TOKENS, PARAMS, _gemm(spec.device_tflops, spec.device_bw_gbs, spec.gpu_launch_s),
                      f"{spec.name}.device_gemm"),
        device_attention_decode=T(SEQS, KV_BYTES, _decode_attn(spec.device_bw_gbs, spec.device_tflops,
                                                               spec.gpu_launch_s), f"{spec.name}.device_attn_decode"),
        device_attention_prefill=T(TOKENS, FLOPS_PER_TOKEN, _prefill_attn(spec.device_tflops, spec.gpu_launch_s),
                                   f"{spec.name}.device_attn_prefill"),
        host_gemm=T(TOKENS, PARAMS, _gemm(spec.host_tflops, spec.host_bw_gbs, spec.cpu_call_s),
                    f"{spec.name}.host_gemm"),
        host_attention_decode={"bf16": host_decode, "f16": host_decode},
        host_attention_prefill={"bf16": host_prefill, "f16": host_prefill},
        notes=f"FROM SPECS, NOT MEASURED. {spec.notes}. Efficiencies: GEMM {GEMM_EFF}, bandwidth {BW_EFF}, "
              f"attention {ATTN_EFF} (rules of thumb).",
    )


_SPECS = {s.name: s for s in SPECS}


def reference_profile(name: str) -> HardwareProfile:
    """A reference profile by name (see SPECS), built from its spec."""
    if name not in _SPECS:
        raise ValueError(f"hardware_profile: no reference profile {name!r}; known: {', '.join(_SPECS)}")
    return build(_SPECS[name])
