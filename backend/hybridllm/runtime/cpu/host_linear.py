"""The model's linear parts as compiled OpenVINO graphs on the CPU (the cpu_only policy).

Per layer, two graphs around the attention call, mirroring LlamaModel:
- pre(i):  h [T, hidden], cos/sin [T, D] -> q [T, H, D], k/v [T, KVH, D]   (RMSNorm, QKV, bias, RoPE)
- post(i): h [T, hidden], attn [T, H*D] -> h [T, hidden]                (o_proj, residual, RMSNorm, MLP)
and one head graph: h [S, hidden] -> logits [S, vocab] (final norm, lm_head).

Why OpenVINO: its FullyConnected kernels read f32 weights faster than torch
F.linear on this class of CPU (benchmarks/RESULTS.md), and the elementwise work around
each matmul fuses into the same call. Everything is compiled once at start-up
with dynamic token counts; each graph has its own infer request, so its
outputs stay valid until that graph runs again (the next step) and are handed
on without copies.

Weights and arithmetic follow a HostPrecision (runtime/cpu/host_precision.py): f32, bf16 or f16
weights, or integer codes (a GGUF's own where kept, runtime/cpu/ov_weights.py) that FullyConnected
decompresses in the kernel; compute in f32, or bf16 where the CPU has it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import torch

from ...attention.host_ov_paged import _STEP_INPUTS, cache_layout, cache_tensors, paged_attention, step_params
from ...models.llama import LlamaModel
from ...models.quantized import QuantizedCheckpoint, concat_rows
from ...ov_common import compile_config, core, param, stable_names
from .host_precision import EXACT, HostPrecision
from .ov_weights import finish as finish_graph, float_weight, linear


@dataclass(frozen=True)
class HostLinearOptions:
    precision: HostPrecision = EXACT
    cache_dir: str | None = None        # OpenVINO CACHE_DIR (holds a copy of the weights); None: off


def _i64(values):
    return ops.constant(np.array(values, dtype=np.int64))


def _f32(value):
    return ops.constant(np.array(value, dtype=np.float32))


class _GraphBuilder:
    def __init__(self, model: LlamaModel, precision: HostPrecision, kept: QuantizedCheckpoint | None):
        self.m, self.cfg, self.prec = model, model.cfg, precision
        self.kept = kept if precision.source else None
        self.kept_types = set((precision.source or "").split("+"))

    def done(self, model: ov.Model, prefix: str) -> ov.Model:
        return finish_graph(stable_names(model, prefix), self.prec)

    def const(self, t: torch.Tensor):
        """A norm vector or bias as an f32-valued node (exact)."""
        return float_weight(t)

    def _kept(self, names: list[str]):
        parts = [self.kept.get(n) for n in names] if self.kept is not None else [None] * len(names)
        return [p if p is not None and p.source in self.kept_types else None for p in parts]

    def linear(self, x, w: torch.Tensor, names: list[str], bias: torch.Tensor | None = None):
        """x [T, in] @ w[out, in]^T (+ bias); names: the checkpoint's weights stacked in w's rows."""
        kept = self._kept(names)
        fused = concat_rows(kept) if all(p is not None for p in kept) else None
        if fused is not None or not any(kept):
            y = linear(x, self.prec, w, fused)
        else:
            # The parts differ in form: one FullyConnected each, outputs side by side.
            sizes = [p.shape[0] if p is not None else None for p in kept]
            missing = sizes.count(None)            # 0 when every part is kept, in different forms
            rest = (w.shape[0] - sum(s or 0 for s in sizes)) // max(missing, 1)
            ys, row = [], 0
            for p, size in zip(kept, sizes):
                size = size or rest
                ys.append(linear(x, self.prec, w[row:row + size], p))
                row += size
            y = ops.concat(ys, -1)
        return y if bias is None else ops.add(y, self.const(bias))

    def rms_norm(self, x, w: torch.Tensor):
        var = ops.reduce_mean(ops.multiply(x, x), _i64([-1]), True)
        inv = ops.divide(_f32(1.0), ops.sqrt(ops.add(var, _f32(self.cfg.rms_norm_eps))))
        return ops.multiply(ops.multiply(x, inv), self.const(w))

    def rope(self, x, heads: int, cos, sin):
        # x: [T, heads * D] -> [T, heads, D] with RoPE; cos/sin: [T, D] broadcast over heads
        d = self.cfg.head_dim
        x = ops.reshape(x, _i64([-1, heads, d]), False)
        c, s = ops.unsqueeze(cos, _i64([1])), ops.unsqueeze(sin, _i64([1]))
        lo, hi = ops.split(x, _i64(2), 2).outputs()
        rotated = ops.concat([ops.negative(hi), lo], 2)                   # rotate_half
        return ops.add(ops.multiply(x, c), ops.multiply(rotated, s))

    def qkv(self, i: int, h, cos, sin):
        """-> q [T, H, D], k [T, KVH, D] with RoPE, v [T, KVH, D]."""
        cfg, w = self.cfg, self.m.layers[i]
        a = f"model.layers.{i}.self_attn."
        qkv = self.linear(self.rms_norm(h, w.input_norm), w.qkv, [a + "q_proj.weight", a + "k_proj.weight",
                                                                  a + "v_proj.weight"], w.qkv_bias)
        q, k, v = ops.variadic_split(qkv, _i64(1), _i64([self.m.q_size, self.m.kv_size, self.m.kv_size])).outputs()
        q = self.rope(q, cfg.num_attention_heads, cos, sin)
        k = self.rope(k, cfg.num_key_value_heads, cos, sin)
        v = ops.reshape(v, _i64([-1, cfg.num_key_value_heads, cfg.head_dim]), False)
        return q, k, v

    def finish(self, i: int, h, attn):
        """h [T, hidden], attn [T, H*D] -> the layer's output [T, hidden]."""
        w, p = self.m.layers[i], f"model.layers.{i}."
        h = ops.add(h, self.linear(attn, w.o_proj, [p + "self_attn.o_proj.weight"]))
        gate_up = self.linear(self.rms_norm(h, w.post_norm), w.gate_up, [p + "mlp.gate_proj.weight",
                                                                          p + "mlp.up_proj.weight"])
        gate, up = ops.split(gate_up, _i64(1), 2).outputs()
        return ops.add(h, self.linear(ops.multiply(ops.swish(gate), up), w.down, [p + "mlp.down_proj.weight"]))

    def inputs(self):
        cfg = self.cfg
        return (param([-1, cfg.hidden_size], ov.Type.f32, "h"), param([-1, cfg.head_dim], ov.Type.f32, "cos"),
                param([-1, cfg.head_dim], ov.Type.f32, "sin"))

    def pre(self, i: int) -> ov.Model:
        h, cos, sin = self.inputs()
        return self.done(ov.Model(list(self.qkv(i, h, cos, sin)), [h, cos, sin], f"pre{i}"), f"pre{i}")

    def post(self, i: int) -> ov.Model:
        h = param([-1, self.cfg.hidden_size], ov.Type.f32, "h")
        attn = param([-1, self.m.q_size], ov.Type.f32, "attn")
        return self.done(ov.Model([self.finish(i, h, attn)], [h, attn], f"post{i}"), f"post{i}")

    def logits(self, h):
        tied = self.m.lm_head is self.m.embed_tokens
        name = "model.embed_tokens.weight" if tied else "lm_head.weight"
        return self.linear(self.rms_norm(h, self.m.norm), self.m.lm_head, [name])        # [S, vocab]

    def head(self) -> ov.Model:
        h = param([-1, self.cfg.hidden_size], ov.Type.f32, "h")
        return self.done(ov.Model([self.logits(h)], [h], "head"), "head")

    def whole(self, spec) -> ov.Model:
        """Every layer with the PagedAttention op inside, then the head on the sampled rows:
        h [T, hidden], cos/sin [T, D], sample_index [S], step inputs, key/value_cache.{i} -> logits [S, vocab],
        and each row's argmax [S] (greedy rows need no pass over the logits in single-threaded torch)."""
        h, cos, sin = self.inputs()
        rows = param([-1], ov.Type.i64, "sample_index")
        shared = {n: p for n, p in step_params().items() if n in _STEP_INPUTS}
        caches, x = [], h
        for i in range(self.cfg.num_hidden_layers):
            kc = param(ov.PartialShape.dynamic(), ov.Type.dynamic, f"key_cache.{i}")
            vc = param(ov.PartialShape.dynamic(), ov.Type.dynamic, f"value_cache.{i}")
            caches += [kc, vc]
            flat = [ops.reshape(t, _i64([0, -1]), True).output(0) for t in self.qkv(i, x, cos, sin)]  # [T, heads * D]
            x = self.finish(i, x, paged_attention(spec, *flat, dict(shared, key_cache=kc, value_cache=vc)))
        logits = self.logits(ops.gather(x, rows, _i64(0)))
        top = ops.topk(logits, _i64(1), -1, "max", "none", ov.Type.i64)                   # [S, 1]
        argmax = ops.squeeze(top.output(1), _i64([1]))
        return self.done(ov.Model([logits, argmax], [h, cos, sin, rows, *shared.values(), *caches], "whole"),
                            "whole")


class _Graph:
    """A compiled graph and its own infer request; inputs are shared, outputs read in place."""

    def __init__(self, compiled: ov.CompiledModel):
        self.compiled = compiled
        self.request = compiled.create_infer_request()

    def __call__(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        r = self.request
        for j, x in enumerate(inputs):
            r.set_input_tensor(j, ov.Tensor(x.numpy(), shared_memory=True))
        r.infer()
        # Views of the request's output memory: valid until this graph runs again (next step).
        return [torch.from_numpy(r.get_output_tensor(j).data) for j in range(len(self.compiled.outputs))]


class HostLinearModel:
    """LlamaModel's linear parts compiled for the CPU at a HostPrecision.

    Split mode (any host attention): attn_inputs / attn_finish around a HostAttention call,
    then logits().
    Fused mode (fuse_with= an ov_paged HostAttention): the whole model in one graph with a
    PagedAttention op per layer, each bound once to its layer's host KV; run_model() is one
    infer call per step. Per-call costs (Python, thread wake-ups) were a third of a batch-1
    step with a graph per layer.
    """

    def __init__(self, model: LlamaModel, options: HostLinearOptions = HostLinearOptions(), fuse_with=None,
                 kept: QuantizedCheckpoint | None = None):
        """kept: the model folder's GGUF codes, used where options.precision says so."""
        self.model, self.cfg, self.options = model, model.cfg, options
        prec = options.precision
        # DYNAMIC_QUANTIZATION_GROUP_SIZE=0 keeps activations f32 in front of compressed weights (the
        # plugin's default quantises them to int8); integer weights ask for it.
        config = compile_config(prec.compute, options.cache_dir, None,
                                DYNAMIC_QUANTIZATION_GROUP_SIZE=str(prec.dynamic_quant))
        b = _GraphBuilder(model, prec, kept)
        c = core()
        n = self.cfg.num_hidden_layers
        self.pre, self.post, self.head, self.whole = [], [], None, None
        self.fused = fuse_with is not None
        if self.fused:
            self._bind_fused(b, c, config, fuse_with)
        else:
            self.pre = [_Graph(c.compile_model(b.pre(i), "CPU", config)) for i in range(n)]
            self.post = [_Graph(c.compile_model(b.post(i), "CPU", config)) for i in range(n)]
            self.head = _Graph(c.compile_model(b.head(), "CPU", config))
        rope = model.rope
        self.cos, self.sin = rope.cos.float().contiguous(), rope.sin.float().contiguous()   # [max_pos, D]
        self._step = None

    def _bind_fused(self, b: _GraphBuilder, c: ov.Core, config: dict, attention) -> None:
        spec = attention.spec
        bf16_kv = spec.kv_precision == "bf16" and self.options.precision.compute != "bf16"
        if attention.name != "ov_paged" or bf16_kv:
            # bf16 KV needs a bf16 kernel, which would also round the linear layers.
            raise ValueError(f"the fused model needs ov_paged attention with f32/f16/u8 KV (or bf16 compute), not "
                             f"{attention.name} with {spec.kv_precision}")
        compiled = c.compile_model(b.whole(spec), "CPU", dict(config, KV_CACHE_PRECISION=spec.kv_precision))
        self.whole = _Graph(compiled)
        self._keep: list = []
        for i in range(self.cfg.num_hidden_layers):
            got = cache_layout(compiled, spec, f".{i}")
            if got != attention.layout:
                raise RuntimeError(f"layer {i}: the fused model wants KV layout {got}, the host tier has "
                                   f"{attention.layout}")
            kc, vc = cache_tensors(attention.tier, i, self._keep)
            self.whole.request.set_tensor(f"key_cache.{i}", kc)     # bound once: the tier never moves
            self.whole.request.set_tensor(f"value_cache.{i}", vc)

    def rope_tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin: [T, D] for the step; gathered once and shared by every layer."""
        return self.cos[positions], self.sin[positions]

    def attn_inputs(self, i: int, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """h: [T, hidden] -> q [T, H, D], k [T, KVH, D], v [T, KVH, D] (RoPE applied)."""
        return self.pre[i](h, cos, sin)

    def attn_finish(self, i: int, h: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """h: [T, hidden], attn_out: [T, H * D] -> the layer's output [T, hidden]."""
        return self.post[i](h, attn_out)[0]

    def run_model(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, step,
                  sample_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused mode, one call per step: h [T, hidden], cos/sin [T, D], step: the checked HostStep,
        sample_index [S] -> (logits [S, vocab] float32, argmax [S] int64), views of the graph's output
        buffers: valid until the next run_model (the engine samples before then; a copy of the logits
        would cost ~0.3 ms at batch 32)."""
        r = self.whole.request
        if step is not self._step:
            # `step` holds the arrays these tensors share; self._step keeps it alive until the next step.
            self._step = step
            for n in _STEP_INPUTS:
                r.set_tensor(n, ov.Tensor(getattr(step, n), shared_memory=True))
        for name, x in (("h", h), ("cos", cos), ("sin", sin), ("sample_index", sample_index)):
            r.set_tensor(name, ov.Tensor(x.numpy(), shared_memory=True))
        r.infer()
        return torch.from_numpy(r.get_output_tensor(0).data), torch.from_numpy(r.get_output_tensor(1).data)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """h: [S, hidden] -> [S, vocab] float32, owned by the caller."""
        return self.head(h.contiguous())[0].clone()
