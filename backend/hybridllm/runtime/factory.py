"""Builds the runtime from its RuntimeSpec: the model on its device, the KV tiers, and the executors.

Decided once at start-up. The policy table (policy/registry.py) says which tiers each policy keeps
its KV on; the factory makes the parts they share (one model, one device tier, one host tier with its
HostAttention, the copier that moves KV between them) and asks each policy's builder for its executor.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..attention import DeviceAttention
from ..attention.host import HostAttention, HostAttentionSpec
from ..attention.kv_cache import KVCacheTier, KVLayout
from ..config import EngineConfig
from ..dtypes import torch_dtype
from ..kernels import DeviceOps, resolve_kernels
from ..kernels.linear import decode_gemv_shapes
from ..kv import BlockTables, Tier
from ..models.config import ModelConfig
from ..models.llama import LlamaModel
from ..policy import HardwareProfile, ModelShape
from ..policy.neo import NeoCostTables
from ..policy.registry import POLICIES
from ..policy.step_planner import StepPlanner
from ..scheduler import SchedulerOutput
from .cpu.host_precision import HostPrecision, host_precision
from .executors import BUILDERS
from .executors.base import Executor, Parts, StepResult
from .kv_copy import KVCopier
from .memory import num_device_blocks
from .spec import HOST, RuntimeSpec, resolve
from .trace import NullTracer, Tracer

log = logging.getLogger("hybridllm")
assert set(BUILDERS) == set(POLICIES), "every policy in the table has an executor builder"


@dataclass
class Runtime:
    spec: RuntimeSpec
    executors: dict[str, Executor]           # by policy name
    tiers: dict[Tier, KVCacheTier]           # the KV tensors, by tier
    model: LlamaModel
    copier: KVCopier
    max_model_len: int                       # the model's limit, lowered to what one request's KV can hold
    reason: str = ""                         # why these policies (logged at start-up)
    neo_costs: NeoCostTables | None = None   # NEO's load-aware choice, when a hardware profile is given
    planner: StepPlanner | None = None       # auto with a profile: the per-step choice among `executors`
    steps_by_policy: dict[str, int] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.spec.device

    @property
    def prefill_policy(self) -> str:
        return self.spec.prefill_policy

    @property
    def decode_policy(self) -> str:
        return self.spec.decode_policy

    @property
    def scheduler(self) -> str:
        """"plain" or "neo", as the policy table says."""
        return "plain" if self.planner is not None else POLICIES[self.prefill_policy].scheduler

    @property
    def policy(self) -> str:
        if self.prefill_policy == self.decode_policy:
            return self.prefill_policy
        return f"{self.prefill_policy}+{self.decode_policy}"

    def block_tables(self) -> BlockTables:
        """Fresh bookkeeping over this runtime's tiers (for the scheduler)."""
        return BlockTables({t: c.new_pool() for t, c in self.tiers.items()})

    def execute(self, out: SchedulerOutput) -> StepResult:
        """One step: its tier moves start, then each executor runs its sub-batches (waiting for the moves
        before its first KV read); one StepResult for the step."""
        self.copier.submit(out.copies)
        results = []
        for policy, batches in out.by_policy().items():
            r = self.executors[policy].execute(batches)
            label = r.policy or policy
            self.steps_by_policy[label] = self.steps_by_policy.get(label, 0) + 1
            results.append(r)
        self.copier.wait()                   # an executor that read no KV still leaves the moves done
        return results[0] if len(results) == 1 else StepResult.merge(results)


def build_runtime(config: EngineConfig, model_path: Path, mc: ModelConfig, profile: HardwareProfile | None = None,
                  tracer: Tracer | None = None, precision: HostPrecision | None = None) -> Runtime:
    """profile: the hardware profile auto plans with and NEO places by (found by the caller), or None.
    precision: cpu_only's, resolved by the caller (None: resolved here)."""
    precision = precision or host_precision(config.weight_dtype, model_path, config.dynamic_quant_group_size)
    spec = resolve(config, model_path, mc, profile, precision)
    if spec.host_only and config.device not in (None, "cpu"):
        log.info("policy %s runs on the host; device=%s is not used", spec.prefill_policy, config.device)
    return build(spec, profile, tracer)


def build(spec: RuntimeSpec, profile: HardwareProfile | None = None, tracer: Tracer | None = None) -> Runtime:
    mc, device = spec.model, spec.device
    specs = [POLICIES[p] for p in spec.policies]
    tracer = tracer or NullTracer()
    if isinstance(tracer, Tracer):
        tracer.attach(device)
    ops = DeviceOps(resolve_kernels(spec.device_kernels, device))
    model = LlamaModel.load(spec.model_path, device, spec.dtype, layer_device=HOST if spec.streamed else None,
                            ops=ops)
    # Batch-1 qkv / o_proj: cuBLAS or the split-K GEMV, per shape, from timings taken now (kernels/linear.py).
    gemv = ops.tune_gemv(decode_gemv_shapes(mc.num_attention_heads, mc.num_key_value_heads, mc.head_dim,
                                            mc.hidden_size), model.dtype, device)
    reason = spec.reason + f"; device kernels {ops.impl}; {gemv}"
    used = {t for s in specs for t in s.kv_tiers}
    tiers: dict[Tier, KVCacheTier] = {}
    dev_attn = host_attn = None
    if Tier.DEVICE in used:
        tiers[Tier.DEVICE] = dev = _device_tier(spec, model)
        dev_attn = DeviceAttention(dev.key_cache, dev.value_cache, mc.num_attention_heads,
                                   mc.num_key_value_heads, mc.head_dim, mc.sliding_window, ops)
    if Tier.HOST in used:
        host_attn = host_attention(spec)
        tiers[Tier.HOST] = host_attn.tier
        reason += f"; host attention {host_attn.name} ({host_attn.reason})"
    max_len = _max_model_len(spec, specs, tiers)
    copier = KVCopier(tiers, device)
    parts = Parts(spec, model, tiers.get(Tier.DEVICE), dev_attn, host_attn, tracer, copier, max_len)
    executors = {s.name: BUILDERS[s.name](parts) for s in specs}
    if spec.host_only:
        # The OpenVINO graphs hold their own copy of the decoder layers: torch's would be a second one.
        model.release_layers()
    costs = planner = None
    if spec.per_step:
        planner = StepPlanner(ModelShape.from_config(mc, spec.dtype), profile, tuple(executors), spec.kv_dtype,
                              spec.planner_memory_bytes)
    elif specs[0].scheduler == "neo":
        costs = NeoCostTables(ModelShape.from_config(mc, spec.dtype), profile, spec.kv_dtype) \
            if profile is not None else None
        reason += ("; load-aware host sub-batches from the profile" if costs else
                   "; no hardware profile, so every host decode joins each step")
    return Runtime(spec, executors, tiers, model, copier, max_len, reason, costs, planner)


def _max_model_len(spec: RuntimeSpec, specs, tiers: dict[Tier, KVCacheTier]) -> int:
    """A lone request must always fit in its tier's pool, or it could never be rescheduled."""
    cap = {t: c.num_blocks * c.block_size for t, c in tiers.items()}
    if specs[0].scheduler == "neo" and not spec.per_step:
        fits = max(cap.values())                 # a request may live on either tier
    elif spec.per_step:
        fits = min(cap.values())                 # it may be placed on either
    else:
        fits = min(cap[POLICIES[p].kv_tier] for p in (spec.prefill_policy, spec.decode_policy))
    return min(spec.max_model_len, fits)


def _device_tier(spec: RuntimeSpec, model: LlamaModel) -> KVCacheTier:
    mc = spec.model
    if spec.device_kv == "u8":
        raise ValueError("kv_cache_dtype 'u8' needs a host KV tier only (policy cpu_only or partition); "
                         "the device tier holds f32/f16/bf16")
    layout = KVLayout(mc.num_hidden_layers, mc.num_key_value_heads, mc.head_dim, spec.block_size,
                      torch_dtype(spec.device_kv))
    on_device = model.weight_bytes
    if spec.streamed:     # resident weights plus two staging slots of layer weights
        on_device = model.resident_bytes + 2 * (model.weight_bytes - model.resident_bytes) // mc.num_hidden_layers
    return KVCacheTier(Tier.DEVICE, layout, num_device_blocks(spec, layout, spec.device, on_device), spec.device,
                       pad_block=True)


def host_attention(spec: RuntimeSpec) -> HostAttention:
    """HostAttention over a fresh host tier of spec.host_kv_bytes, in the chosen backend's layout.

    The backend (OpenVINO PagedAttention, else the public-opset graph, else torch; see
    attention/host.py) decides the block size: 32 tokens for the op on the CPU, so host
    blocks may be larger than device blocks; the copier moves KV between them token-wise.
    Pinned on CUDA, so device<->host copies of K/V and swaps run at full PCIe speed.
    """
    mc = spec.model
    hspec = HostAttentionSpec(
        num_layers=mc.num_hidden_layers, num_heads=mc.num_attention_heads, num_kv_heads=mc.num_key_value_heads,
        head_dim=mc.head_dim, kv_precision=spec.host_kv, sliding_window=mc.sliding_window,
        block_size=spec.block_size, cache_dir=spec.attention_cache_dir, num_threads=spec.host_threads,
        path=spec.host_attention)
    return HostAttention.create(hspec, num_bytes=spec.host_kv_bytes, pin_memory=spec.device.type == "cuda")
