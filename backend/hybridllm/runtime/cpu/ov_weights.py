"""Weight constants for OpenVINO's FullyConnected, in each precision the CPU data plane runs.

Float weights are constants of their own type converted to f32: the CPU plugin keeps them at that
type and converts inside the kernel. Integer weights use the decompression pattern the plugin fuses
into a compressed FullyConnected (the codes stay u4/u8/i8 in memory):

    codes [rows, groups, G] -> f16 -> (- zero [rows, groups, 1]) -> (* scale [rows, groups, 1]) -> [rows, cols] -> f32

Q4_1's remainder (models/quantized.py) goes one of two ways. With f32 activations it folds into f32
zero points, z - r/d: one kernel, exact. With int8 activations (dynamic quantization, which takes
integer zero points only) it is a second, small FullyConnected over the activations' group sums; on
the default model that costs ~1.1 ms of a ~8 ms batch-1 step (OpenVINO per-node counters).
"""
from __future__ import annotations

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import torch

from ...models.quantized import QuantWeight, quantize
from .host_precision import HostPrecision

INT4_GROUP = 32          # OpenVINO GenAI's int4 default is 128; 32 matches GGUF's blocks and is more accurate


def _owned(raw: np.ndarray, shape: list[int], etype: ov.Type):
    """A constant whose bytes OpenVINO owns: an ov.Tensor made on a numpy array only borrows it, and
    the array (a temporary, or a weight the runtime releases later) may be gone before the plugin reads it."""
    t = ov.Tensor(etype, shape)
    t.data.reshape(-1)[:] = np.ascontiguousarray(raw).reshape(-1).view(t.data.dtype)
    return ops.constant(t)


def float_weight(t: torch.Tensor, dtype: str = "float32"):
    """t [rows, cols] stored as `dtype` (float32 | bfloat16 | float16) -> an f32-valued node.
    float16: an f32 constant that finish() stores as f16."""
    t = t.detach().cpu()
    if dtype in ("float32", "float16") and t.dtype == torch.float32:
        return ops.constant(t.contiguous().numpy())
    if dtype == "float32" and t.dtype != torch.float32:
        dtype = {torch.bfloat16: "bfloat16", torch.float16: "float16"}[t.dtype]     # exact: keep the source's
    if dtype == "bfloat16":
        raw = t.to(torch.bfloat16).contiguous().view(torch.int16).numpy().view(np.uint16)
        return ops.convert(_owned(raw, list(t.shape), ov.Type.bf16), ov.Type.f32)
    return ops.convert(ops.constant(t.to(torch.float16).contiguous().numpy()), ov.Type.f32)


def finish(model: ov.Model, prec: HostPrecision) -> ov.Model:
    """The last pass over a built graph. float16: OpenVINO's own fp16 compression, whose Converts carry
    the decompression mark the CPU plugin keeps inside FullyConnected (f16 weights read, f32 math). A
    Convert we build ourselves is folded into an f32 constant at compile time (batch 1: 71 -> 84 tok/s)."""
    if prec.weights == "float16":
        from openvino._offline_transformations import compress_model_transformation
        compress_model_transformation(model)
    return model


def compressed_weight(q: QuantWeight, fold_min: bool = False):
    """QuantWeight -> an f32-valued node the plugin runs as a compressed FullyConnected (q.min left out)."""
    rows, cols = q.shape
    groups, g = cols // q.group_size, q.group_size
    if q.bits == 4:
        codes = _owned(q.codes, [rows, groups, g], ov.Type.u4)
    else:
        codes = ops.constant(np.ascontiguousarray(q.codes.reshape(rows, groups, g)))
    if fold_min and q.min is not None:
        # f32 zero points z - r/d carry the remainder: one kernel, but no int8 activations.
        d = q.scale.astype(np.float32)
        zero = np.where(d > 0, q.zero - q.min / np.where(d > 0, d, 1), -1).astype(np.float32)
        scale = np.where(d > 0, d, q.min).astype(np.float32)
        w = ops.subtract(ops.convert(codes, ov.Type.f32), ops.constant(zero[..., None]))
        w = ops.multiply(w, ops.constant(np.ascontiguousarray(scale[..., None])))
        return ops.reshape(w, np.array([rows, cols], np.int64), False)
    w = ops.convert(codes, ov.Type.f16)
    if q.zero is not None:
        w = ops.subtract(w, ops.convert(ops.constant(np.ascontiguousarray(q.zero[..., None])), ov.Type.f16))
    w = ops.multiply(w, ops.constant(np.ascontiguousarray(q.scale[..., None])))
    return ops.convert(ops.reshape(w, np.array([rows, cols], np.int64), False), ov.Type.f32)


def rounded(w: torch.Tensor, bits: int) -> QuantWeight:
    """Our own rounding of a float weight: int8 per output channel, int4 per 32 columns."""
    wf = w.detach().float().cpu().numpy()
    group = INT4_GROUP if bits == 4 and wf.shape[1] % INT4_GROUP == 0 else None
    return quantize(wf, bits, group)


def linear(x, prec: HostPrecision, w: torch.Tensor, kept: QuantWeight | None = None):
    """x [T, cols] @ w [rows, cols]^T at `prec` -> [T, rows]; kept: the GGUF's codes for w, if `prec` uses them."""
    if prec.bits is None:
        return ops.matmul(x, float_weight(w, prec.weights), False, True)
    q = kept if kept is not None else rounded(w, prec.bits)
    fold = not prec.dynamic_quant
    y = ops.matmul(x, compressed_weight(q, fold), False, True)
    if q.min is None or fold:
        return y
    # + sum over each group of x times the group's minimum: [T, groups] @ [rows, groups]^T
    sums = ops.reduce_sum(ops.reshape(x, np.array([0, -1, q.group_size], np.int64), True), np.array([-1], np.int64),
                          False)
    mins = ops.constant(np.ascontiguousarray(q.min, dtype=np.float32))
    return ops.add(y, ops.matmul(sums, mins, False, True))


def sample_linear(x, prec: HostPrecision, n: int, k: int, rng: np.random.Generator):
    """x @ a random [n, k] weight in the form `prec` builds (for the profile's GEMM timings)."""
    w = torch.from_numpy(rng.standard_normal((n, k)).astype(np.float32) * 0.02)
    kept = None
    if prec.bits == 4 and prec.source and "Q4_1" in prec.source and k % 32 == 0:
        q = rounded(w, 4)                                    # Q4_1's form: unsigned codes, scale, minimum
        kept = QuantWeight(4, q.codes, q.scale, q.zero, q.group_size, "Q4_1", min=q.scale.astype(np.float32) / 4)
    return linear(x, prec, w, kept)
