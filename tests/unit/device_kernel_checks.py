"""The device decode path's Triton kernels against their torch forms (kernels/ops.py), under Triton's
CPU interpreter: paged decode attention reading the block table in the kernel (GQA, scattered blocks,
sliding window), fused residual-add + RMSNorm, SiLU-and-mul, RoPE fused with the KV store, and the
split-K GEMV of small-M linear layers (f32, f16, bf16; the interpreter has no bf16 dot, so the kernel
computes in f32, where bf16 and f16 values are exact).

Run by tests/unit/test_device_kernels.py in a fresh process with TRITON_INTERPRET=1 (Triton picks
interpreted or compiled when it is first imported, and the suite's other imports load it first);
tests/cuda/test_graphs.py checks the same kernels compiled on a GPU.

Tolerance: f32 1e-5 (the interpreter computes in numpy f32); f16 caches 2e-3.
"""
import math
import os

import pytest
import torch

from hybridllm.kernels import DeviceOps
from hybridllm.models.config import ModelConfig
from hybridllm.models.rope import RotaryEmbedding


@pytest.fixture(scope="module")
def kernels():
    assert os.environ.get("TRITON_INTERPRET") == "1", "run through tests/unit/test_device_kernels.py"
    return DeviceOps("triton")


REF = DeviceOps("torch")
# The interpreter's numpy scalars warn on every index; not ours.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _caches(num_blocks, kvh, bs, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(num_blocks, kvh, bs, d, generator=g).to(dtype),
            torch.randn(num_blocks, kvh, bs, d, generator=g).to(dtype))


def _tables(context_lens, bs, num_blocks, width, seed=1):
    """Each row's blocks drawn without repeats from the pool, in scrambled order, padded with junk."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(num_blocks, generator=g).tolist()
    rows, at = [], 0
    for n in context_lens:
        nb = -(-n // bs)
        rows.append(perm[at:at + nb] + [num_blocks - 1] * (width - nb))
        at += nb
    return torch.tensor(rows, dtype=torch.int32)


def _naive(q, kc, vc, tables, lens, scale, window):
    """Attention of each row over its own tokens, gathered one by one (no padding, no masks)."""
    out = []
    bs = kc.shape[2]
    group = q.shape[1] // kc.shape[1]
    for r, n in enumerate(lens):
        toks = range(max(0, n - window) if window else 0, n)
        k = torch.stack([kc[tables[r, t // bs], :, t % bs] for t in toks]).float()      # [n, KVH, D]
        v = torch.stack([vc[tables[r, t // bs], :, t % bs] for t in toks]).float()
        k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)           # [n, H, D]
        w = torch.softmax(torch.einsum("hd,nhd->hn", q[r].float(), k) * scale, -1)
        out.append(torch.einsum("hn,nhd->hd", w, v).reshape(-1))
    return torch.stack(out)


@pytest.mark.parametrize("heads,kv_heads,d,window", [(4, 2, 32, None), (9, 3, 64, None), (8, 8, 16, 20),
                                                     (32, 8, 128, None)])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 2e-3)])
def test_paged_decode_matches_gather_and_naive(kernels, heads, kv_heads, d, window, dtype, tol):
    bs, num_blocks = 16, 64
    lens = [1, 17, 64, 100, 16, 33]
    kc, vc = _caches(num_blocks, kv_heads, bs, d, dtype)
    tables = _tables(lens, bs, num_blocks, width=10)
    q = torch.randn(len(lens), heads, d).to(dtype)
    ctx = torch.tensor(lens, dtype=torch.int32)
    scale = 1 / math.sqrt(d)
    got = kernels.paged_decode(q, kc, vc, tables, ctx, scale, window)
    ref = REF.paged_decode(q, kc, vc, tables, ctx, scale, window)
    assert got.shape == ref.shape == (len(lens), heads * d)
    torch.testing.assert_close(got.float(), ref.float(), atol=tol, rtol=tol)
    torch.testing.assert_close(got.float(), _naive(q, kc, vc, tables, lens, scale, window), atol=tol, rtol=tol)


def test_paged_decode_reads_only_its_rows_blocks(kernels):
    """Poisoning every block no row owns (and the table's padding) changes nothing."""
    bs, lens = 16, [5, 40]
    kc, vc = _caches(16, 2, bs, 32, torch.float32)
    tables = _tables(lens, bs, 16, width=6)
    q, ctx = torch.randn(2, 4, 32), torch.tensor(lens, dtype=torch.int32)
    before = kernels.paged_decode(q, kc, vc, tables, ctx, 0.2, None)
    owned = {int(tables[r, i]) for r, n in enumerate(lens) for i in range(-(-n // bs))}
    for b in set(range(16)) - owned:
        kc[b], vc[b] = float("nan"), float("nan")
    # The tokens past each row's context inside its last block are junk too.
    kc[tables[0, 0], :, 5:] = float("nan")
    after = kernels.paged_decode(q, kc, vc, tables, ctx, 0.2, None)
    assert torch.equal(before, after)


@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 2e-3)])
def test_add_rms_norm(kernels, with_residual, dtype, tol):
    x = torch.randn(5, 96).to(dtype)
    res = torch.randn(5, 96).to(dtype) if with_residual else None
    w = torch.randn(96).to(dtype)
    out, total = kernels.add_rms_norm(x, res, w, 1e-6)
    want_out, want_total = REF.add_rms_norm(x, res, w, 1e-6)
    torch.testing.assert_close(total, want_total, atol=tol, rtol=tol)
    torch.testing.assert_close(out, want_out, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 2e-3)])
def test_silu_mul(kernels, dtype, tol):
    x = torch.randn(3, 2 * 1500).to(dtype)          # wider than one program's 1024 columns
    torch.testing.assert_close(kernels.silu_mul(x), REF.silu_mul(x), atol=tol, rtol=tol)


@pytest.mark.parametrize("heads,kv_heads,d", [(4, 2, 32), (9, 3, 64)])
def test_rope_store(kernels, heads, kv_heads, d):
    cfg = ModelConfig(architecture="LlamaForCausalLM", tie_word_embeddings=False, attention_bias=False,
                      hidden_size=heads * d, intermediate_size=64, num_hidden_layers=1, num_attention_heads=heads,
                      num_key_value_heads=kv_heads, head_dim=d, vocab_size=32, max_position_embeddings=256,
                      rms_norm_eps=1e-6, rope_theta=10000.0)
    rope = RotaryEmbedding(cfg, torch.device("cpu"), torch.float32)
    t, bs = 6, 16
    qkv = torch.randn(t, (heads + 2 * kv_heads) * d)
    positions = torch.tensor([0, 5, 17, 100, 255, 3])
    slots = torch.tensor([0, 31, 16 * 5 + 2, 7, 16 * 3 + 15, 40])
    caches = [_caches(8, kv_heads, bs, d, torch.float32, seed=s) for s in (2, 2)]
    q = kernels.rope_store(qkv, positions, slots, rope.cos, rope.sin, *caches[0], heads, kv_heads, d)
    q_ref = REF.rope_store(qkv, positions, slots, rope.cos, rope.sin, *caches[1], heads, kv_heads, d)
    torch.testing.assert_close(q, q_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(caches[0][0], caches[1][0], atol=1e-5, rtol=1e-5)
    assert torch.equal(caches[0][1], caches[1][1])
    # And the references agree with the model's own RoPE.
    qs = qkv[:, :heads * d].view(t, heads, d)
    ks = qkv[:, heads * d:(heads + kv_heads) * d].view(t, kv_heads, d)
    rq, rk = rope(qs, ks, positions)
    torch.testing.assert_close(q_ref, rq)
    torch.testing.assert_close(caches[1][0][slots // bs, :, slots % bs], rk)


# -- the split-K GEMV (kernels/splitk_gemv.py) --------------------------------------------------------

@pytest.mark.parametrize("m,n,k,tile", [(1, 40, 200, (16, 64, 3)), (3, 64, 256, (32, 32, 4)),
                                        (8, 50, 130, (16, 128, 2)), (16, 33, 70, (16, 16, 8))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("with_bias", [False, True])
def test_splitk_gemv_matches_linear(kernels, m, n, k, tile, dtype, with_bias):
    """Ragged N and K (tiles past the edges, a last split shorter than the others), M up to 16."""
    from hybridllm.kernels.splitk_gemv import splitk_gemv
    g = torch.Generator().manual_seed(m * n + k)
    x, w = torch.randn(m, k, generator=g).to(dtype), torch.randn(n, k, generator=g).to(dtype)
    bias = torch.randn(n, generator=g).to(dtype) if with_bias else None
    got = splitk_gemv(x, w, bias, *tile)
    # The f32 sum rounded once to the output dtype: f32 to 1e-5; 16-bit to one rounding step.
    ref = torch.nn.functional.linear(x.float(), w.float(), None if bias is None else bias.float())
    assert got.dtype == dtype and got.shape == (m, n)
    tol = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    torch.testing.assert_close(got.float(), ref, atol=tol * ref.abs().max().item(), rtol=tol)


def test_splitk_gemv_refuses_more_rows_than_it_pads():
    from hybridllm.kernels.splitk_gemv import splitk_gemv
    with pytest.raises(ValueError, match="M <= 16"):
        splitk_gemv(torch.zeros(17, 32), torch.zeros(8, 32), None, 16, 16, 2)


def test_device_linear_takes_the_gemv_only_for_the_table_s_shapes(kernels):
    """DeviceOps.linear: the tile of a (N, K, M) in the table; F.linear (bit-equal) for any other row count."""
    from hybridllm.kernels.linear import GemvTable, Tile
    ops = DeviceOps("triton")
    ops.gemv = GemvTable({(48, 96, 1): Tile(16, 32, 3)})
    w, b = torch.randn(48, 96), torch.randn(48)
    one, two = torch.randn(1, 96), torch.randn(2, 96)
    ref = torch.nn.functional.linear(one, w, b)
    torch.testing.assert_close(ops.linear(one, w, b), ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(ops.linear(two, w, b), torch.nn.functional.linear(two, w, b))
