"""The main host attention path: one compiled graph around OpenVINO's PagedAttention op.

The op (openvino.op._PagedAttentionExtension, private API pinned to openvino
2026.4) takes the step's new q/k/v as [tokens, heads * head_dim], writes k/v
into the paged caches itself and attends over past + new tokens of every
sequence: causal prefill, ragged decode and mixed steps in one call.

Compiled once at start-up with dynamic shapes (any number of tokens, sequences
and cache blocks). The caches are declared with dynamic shape and type; after
compiling, the ports report the concrete block layout and precision, from which
the host tier is allocated. The tier's tensors are then wrapped as ov.Tensors
over the same memory (zero copy) and bound layer by layer to a single infer
request, so one compiled model and one set of scratch buffers serve all layers.
"""
from __future__ import annotations

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import torch

from ..dtypes import torch_dtype
from .kv_cache import KVCacheTier, KVLayout
from ..ov_common import compile_config as ov_compile_config, core as ov_core, param as _param, stable_names
from .ov_cache import OV_TYPES, cache_tensors
from .spec import HostAttentionSpec, HostStep

# The 28 inputs of the op in openvino 2026.4, in order. Those we do not use get empty constants.
_INPUTS = ("query", "key", "value", "key_cache", "value_cache", "past_lens", "subsequence_begins",
           "block_indices", "block_indices_begins", "scale", "sliding_window", "alibi_slopes",
           "max_context_len", "score_aggregation_window", "rotated_block_indices", "rotation_deltas",
           "rotation_trig_lut", "xattention_threshold", "xattention_block_size", "xattention_stride", "sinks",
           "adaptive_rkv_start_size", "adaptive_rkv_evictable_sizes", "adaptive_rkv_diversity_block_set_indices",
           "adaptive_rkv_diversity_block_set_indices_begins", "token_type_ids", "qq_bias", "qq_bias_begins")
_STEP_INPUTS = ("past_lens", "subsequence_begins", "block_indices", "block_indices_begins", "max_context_len")
_PRECISION_OF = {t: name for name, t in OV_TYPES.items()}


def step_params() -> dict:
    """The op's per-layer cache inputs and per-step inputs, as named parameters."""
    return {
        # Shape and type are left to the plugin; its compiled ports then tell us the layout.
        "key_cache": _param(ov.PartialShape.dynamic(), ov.Type.dynamic, "key_cache"),
        "value_cache": _param(ov.PartialShape.dynamic(), ov.Type.dynamic, "value_cache"),
        "past_lens": _param([-1], ov.Type.i32, "past_lens"),
        "subsequence_begins": _param([-1], ov.Type.i32, "subsequence_begins"),
        "block_indices": _param([-1], ov.Type.i32, "block_indices"),
        "block_indices_begins": _param([-1], ov.Type.i32, "block_indices_begins"),
        "max_context_len": _param([], ov.Type.i32, "max_context_len"),
    }


def paged_attention(spec: HostAttentionSpec, query, key, value, params: dict) -> ov.Output:
    """query [T, H*D], key/value [T, KVH*D] (f32 outputs) -> attention output [T, H*D]."""
    kvh, d = spec.num_kv_heads, spec.head_dim
    f32, i32 = np.float32, np.int32

    def const(dtype, values, shape):
        return ops.constant(np.array(values, dtype=dtype).reshape(shape)).output(0)

    consts = {
        "scale": const(f32, [spec.scale], []),
        "sliding_window": const(i32, [spec.sliding_window or 0], []),   # 0: no window
        "alibi_slopes": const(f32, [], [0]),
        # Rank 1 and empty: a scalar here is read as one value per sequence and fails for batch > 1.
        "score_aggregation_window": const(i32, [], [0]),
        "rotated_block_indices": const(i32, [], [0]),
        "rotation_deltas": const(i32, [], [0]),
        "rotation_trig_lut": const(f32, [], [0]),
        "xattention_threshold": const(f32, [], [0]),
        "xattention_block_size": const(i32, [64], []),
        "xattention_stride": const(i32, [8], []),
        "sinks": const(f32, [], [0]),
        "adaptive_rkv_start_size": const(i32, [0], []),
        "adaptive_rkv_evictable_sizes": const(i32, [], [0]),
        "adaptive_rkv_diversity_block_set_indices": const(i32, [], [0]),
        "adaptive_rkv_diversity_block_set_indices_begins": const(i32, [], [0]),
        "token_type_ids": const(i32, [], [0]),
        "qq_bias": const(np.uint8, [], [0]),
        "qq_bias_begins": const(i32, [], [0]),
    }
    given = {"query": query, "key": key, "value": value, **{n: p.output(0) for n, p in params.items()}}
    pa = ov.op._PagedAttentionExtension([given[n] if n in given else consts[n] for n in _INPUTS])
    rt = pa.get_rt_info()
    # The CPU plugin reads the head geometry from these; without them it cannot split q/k/v.
    rt["num_k_heads"], rt["k_head_size"] = kvh, d
    rt["num_v_heads"], rt["v_head_size"] = kvh, d
    return pa.output(0)


def build_model(spec: HostAttentionSpec) -> ov.Model:
    h, kvh, d = spec.num_heads, spec.num_kv_heads, spec.head_dim
    qkv = [_param([-1, h * d], ov.Type.f32, "query"), _param([-1, kvh * d], ov.Type.f32, "key"),
           _param([-1, kvh * d], ov.Type.f32, "value")]
    params = step_params()
    out = paged_attention(spec, *(p.output(0) for p in qkv), params)
    return stable_names(ov.Model([out], qkv + list(params.values()), "hybridllm_paged_attention"), "pa")


def cache_layout(compiled: ov.CompiledModel, spec: HostAttentionSpec, suffix: str = "") -> KVLayout:
    """The host tier layout a compiled graph's key_cache / value_cache ports (+ suffix) ask for."""
    kp, vp = compiled.input("key_cache" + suffix), compiled.input("value_cache" + suffix)
    precision = _PRECISION_OF.get(kp.get_element_type())
    if precision is None or vp.get_element_type() != kp.get_element_type():
        raise RuntimeError(f"unexpected cache types {kp.get_element_type()} / {vp.get_element_type()}")
    if precision != spec.kv_precision:
        raise RuntimeError(f"KV_CACHE_PRECISION {spec.kv_precision} was compiled as {precision}")
    kshape = tuple(kp.get_partial_shape()[i].get_length() for i in range(1, 4))
    vshape = tuple(vp.get_partial_shape()[i].get_length() for i in range(1, 4))
    block_size = vshape[1]          # value rows are tokens in every precision
    layout = KVLayout(spec.num_layers, spec.num_kv_heads, spec.head_dim, block_size, torch_dtype(precision))
    if (kshape, vshape) != (layout.key_block_shape, layout.value_block_shape):
        # A plugin that changed its cache format: the tier would be read wrongly, so refuse.
        raise RuntimeError(f"{precision} blocks of {block_size} tokens should be key {layout.key_block_shape} / "
                           f"value {layout.value_block_shape}, the op reports {kshape} / {vshape}")
    return layout


def compile_config(spec: HostAttentionSpec) -> dict:
    # bf16 caches need a bf16 kernel; everything else runs exact f32.
    return ov_compile_config("bf16" if spec.kv_precision == "bf16" else "f32", spec.cache_dir, spec.num_threads,
                             KV_CACHE_PRECISION=spec.kv_precision)


class PagedOVAttention:
    name = "ov_paged"

    def __init__(self, spec: HostAttentionSpec, core: ov.Core | None = None):
        if not hasattr(ov.op, "_PagedAttentionExtension"):
            raise RuntimeError(f"openvino {ov.__version__} has no op._PagedAttentionExtension")
        self.spec = spec
        self.compiled = (core or ov_core()).compile_model(build_model(spec), "CPU", compile_config(spec))
        self.layout = cache_layout(self.compiled, spec)
        self.request = self.compiled.create_infer_request()
        self._caches: list[tuple[ov.Tensor, ov.Tensor]] = []
        self._keep: list = []           # numpy views behind the ov.Tensors: they do not keep memory alive
        self._step: HostStep | None = None

    def bind(self, tier: KVCacheTier) -> None:
        """Wraps every layer's cache tensors once; forward() only switches between them."""
        if tier.layout != self.layout:
            raise ValueError(f"host tier layout {tier.layout} differs from the compiled op's {self.layout}")
        self._keep = []
        self._caches = [cache_tensors(tier, layer, self._keep) for layer in range(self.layout.num_layers)]
        self._step = None

    def forward(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                step: HostStep) -> torch.Tensor:
        r = self.request
        if step is not self._step:
            # Per-step inputs: set once, shared by every layer. `step` keeps the arrays alive.
            for name in _STEP_INPUTS:
                r.set_tensor(name, ov.Tensor(getattr(step, name), shared_memory=True))
            self._step = step
        t = q.shape[0]
        q2 = q.reshape(t, -1).contiguous()                      # [T, H * D]
        k2 = k.reshape(t, -1).contiguous()                      # [T, KVH * D]
        v2 = v.reshape(t, -1).contiguous()
        out = torch.empty((t, q2.shape[1]), dtype=torch.float32)  # [T, H * D], written by the op in place
        kc, vc = self._caches[layer]
        r.set_tensor("key_cache", kc)
        r.set_tensor("value_cache", vc)
        r.set_tensor("query", ov.Tensor(q2.numpy(), shared_memory=True))
        r.set_tensor("key", ov.Tensor(k2.numpy(), shared_memory=True))
        r.set_tensor("value", ov.Tensor(v2.numpy(), shared_memory=True))
        r.set_output_tensor(0, ov.Tensor(out.numpy(), shared_memory=True))
        r.infer()
        return out
