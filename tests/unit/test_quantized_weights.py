"""GGUF codes kept as OpenVINO compressed weights, and our own rounding: the weight OpenVINO computes
with must equal gguf's dequantized tensor (f32 arithmetic on f16 scales: to 1e-6 of the weight)."""
from types import SimpleNamespace

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize, quantize as gguf_quantize

from hybridllm.converters.gguf_quant import block_codes, group_size
from hybridllm.models.quantized import QuantWeight, concat_rows, from_gguf_codes, quantize
from hybridllm.ov_common import compile_config, core
from hybridllm.runtime.cpu.host_precision import EXACT, WEIGHT_DTYPES, resolve
from hybridllm.runtime.cpu.ov_weights import finish, linear

from ..helpers.tiny_gguf import K_SCALES, k_blocks


def ov_matrix(prec, w: torch.Tensor, kept: QuantWeight | None = None) -> np.ndarray:
    """The [rows, cols] weight OpenVINO's FullyConnected uses: x = I through the compiled graph (the identity
    survives int8 activation quantization exactly, so this also reads weights built for it)."""
    rows, cols = w.shape
    x = ops.parameter([-1, cols], ov.Type.f32, name="x")
    compiled = core().compile_model(finish(ov.Model([linear(x, prec, w, kept)], [x]), prec), "CPU",
                                    compile_config("f32", DYNAMIC_QUANTIZATION_GROUP_SIZE=str(prec.dynamic_quant)))
    return compiled(np.eye(cols, dtype=np.float32))[0].T


def reader_tensor(w: np.ndarray, qtype) -> SimpleNamespace:
    """What gguf's GGUFReader hands the converter: ggml shape (reversed) and the raw block bytes."""
    return SimpleNamespace(tensor_type=qtype, shape=list(reversed(w.shape)), data=gguf_quantize(w, qtype))


@pytest.mark.parametrize("dynamic_quant", [0, 32])
@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.Q5_0, Q.Q5_1])
def test_k_quant_and_q5_codes_are_kept_exactly_to_f16_scales(qtype, dynamic_quant):
    rng = np.random.default_rng(int(qtype))
    rows, cols = 24, 512
    if qtype in K_SCALES:
        raw = k_blocks(rows, cols, qtype, rng, (1e-4, 2e-3))
    else:
        raw = gguf_quantize((rng.standard_normal((rows, cols)) * 0.05).astype(np.float32), qtype)
    ref = dequantize(raw, qtype).reshape(rows, cols)                      # gguf's own arithmetic, f32
    a = block_codes(SimpleNamespace(tensor_type=qtype, shape=[cols, rows], data=raw))
    q = from_gguf_codes(qtype.name, a["qweight"], a["scales"], a.get("mins"), group_size(qtype.name))
    assert q.bits == (4 if qtype == Q.Q4_K else 8) and q.group_size == (16 if qtype == Q.Q6_K else 32)
    # Sub-scales are multiplied out and stored as f16: each term is off by at most 2^-11 of itself.
    scale = np.repeat(np.abs(a["scales"].astype(np.float32)), q.group_size, axis=1)
    low = np.repeat(np.abs(a["mins"].astype(np.float32)), q.group_size, axis=1) if "mins" in a else 0
    tol = 2.0 ** -10 * (scale * (32 if q.bits == 8 else 16) + low) + 1e-9
    assert (np.abs(q.dequantize() - ref) <= tol).all()
    assert np.abs(ref).max() > 100 * tol.max()                           # the bound is tight, not vacuous
    prec = resolve("int4" if q.bits == 4 else "int8", {"w": qtype.name}, frozenset(), dynamic_quant)
    assert prec.source == qtype.name                                      # the codes are used, not rounded again
    got = ov_matrix(prec, torch.from_numpy(ref), q)
    np.testing.assert_allclose(got, q.dequantize(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dynamic_quant", [0, 32])
@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1, Q.Q8_0])
def test_openvino_weight_equals_gguf_dequantized(qtype, dynamic_quant):
    # dynamic_quant 0: Q4_1's remainder folds into f32 zero points; 32: integer zero points plus the
    # remainder over group sums (the form int8 activations need).
    rng = np.random.default_rng(int(qtype))
    w = (rng.standard_normal((48, 128)) * 0.05 + rng.standard_normal((48, 1)) * 0.02).astype(np.float32)
    w[3, :32] = 0.25            # a constant block: Q4_1's scale is 0 there
    ref = dequantize(gguf_quantize(w, qtype), qtype).reshape(w.shape)
    q = kept(w, qtype)
    np.testing.assert_allclose(q.dequantize(), ref, rtol=1e-6, atol=1e-7)
    prec = resolve("int4" if qtype != Q.Q8_0 else "int8", {"w": qtype.name}, frozenset(), dynamic_quant)
    got = ov_matrix(prec, torch.from_numpy(ref), q)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    assert np.abs(ref - w).max() > 1e-4          # the test weights really are quantized


def kept(w: np.ndarray, qtype) -> QuantWeight:
    a = block_codes(reader_tensor(w, qtype))
    return from_gguf_codes(qtype.name, a["qweight"], a["scales"], a.get("mins"))


def test_rows_stack_like_the_fused_projections():
    rng = np.random.default_rng(1)
    qs = [kept(rng.standard_normal((r, 64)).astype(np.float32), Q.Q4_1) for r in (32, 16, 16)]
    stacked = concat_rows(qs)
    np.testing.assert_array_equal(stacked.dequantize(), np.concatenate([q.dequantize() for q in qs]))
    assert concat_rows([qs[0], kept(rng.standard_normal((16, 64)).astype(np.float32), Q.Q8_0)]) is None


@pytest.mark.parametrize("bits,group", [(8, None), (4, 32)])
def test_our_rounding_is_within_half_a_step(bits, group):
    rng = np.random.default_rng(bits)
    w = rng.standard_normal((24, 96)).astype(np.float32)
    q = quantize(w, bits, group)
    step = np.repeat(q.scale.astype(np.float32), q.group_size, axis=1)
    assert np.all(np.abs(q.dequantize() - w) <= step * 0.5 + 1e-6)
    prec = resolve(f"int{bits}", None, frozenset(), 0)
    np.testing.assert_allclose(ov_matrix(prec, torch.from_numpy(q.dequantize()), q), q.dequantize(), rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_float_weights_are_the_rounded_values(dtype):
    w = torch.randn(16, 64)
    prec = resolve(dtype, None, frozenset(), None)
    want = w.to(getattr(torch, dtype)).float().numpy()
    np.testing.assert_allclose(ov_matrix(prec, w), want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ov_matrix(EXACT, w), w.numpy(), rtol=1e-6, atol=1e-7)


def test_resolution_follows_source_and_cpu():
    gguf = {"a": "Q4_1", "head": "Q8_0"}
    auto = resolve("auto", gguf, frozenset({"BF16"}))
    assert (auto.weights, auto.source, auto.dynamic_quant, auto.compute) == ("int4", "Q4_1+Q8_0", 0, "f32")
    int8 = resolve("int8", gguf, frozenset())
    assert (int8.source, int8.dynamic_quant) == ("Q8_0", 32)            # Q4 codes are rounded to 8 bits
    assert resolve("auto", None, frozenset({"BF16"})).label == "bfloat16/bf16"
    assert resolve("auto", None, frozenset()).label == "float32/f32"
    assert resolve("bfloat16", None, frozenset()).compute == "f32"       # no native bf16: decompressed
    assert resolve("float16", None, frozenset({"FP16"})).compute == "f16"
    assert resolve("int4", gguf, frozenset(), 32).dynamic_quant == 32
    assert resolve("float32", gguf, frozenset(), 32).dynamic_quant == 0  # float weights: nothing to quantize
    assert set(WEIGHT_DTYPES) == {"auto", "float32", "bfloat16", "float16", "int8", "int4"}
    with pytest.raises(ValueError, match="weight_dtype: 'int3'"):
        resolve("int3", None, frozenset())
    with pytest.raises(ValueError, match="dynamic_quant_group_size"):
        resolve("int8", None, frozenset(), -1)
