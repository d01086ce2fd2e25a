"""Host attention: each path (ov_paged, ov_sdpa, torch) against a float64 reference on random data.

Grid: packed prefills, ragged decodes and mixed steps; batch 1-33; lengths 1-4096
with block boundaries hit exactly and off by one; heads 9/3 and 32/8; head_dim
64/128; sliding window; every KV precision each path supports. Then selection,
bad metadata, failed steps, and the host tier HostAttention.create allocates.
"""
import logging

import numpy as np
import openvino as ov
import pytest
import torch

from hybridllm import utils
from hybridllm.attention import build_metadata
from hybridllm.attention.host import HostAttention, HostAttentionSpec, select_backend
from hybridllm.kv import KVCacheTier, Tier
from hybridllm.utils import ceil_div

PRECISIONS = {"ov_paged": ("f32", "f16", "bf16", "u8"), "ov_sdpa": ("f32", "f16", "bf16"),
              "torch": ("f32", "f16", "bf16")}
# Max abs error on unit-variance q/k/v; the output is a convex mix of V rows. f32 is limited by the
# kernels' summation order, the others by rounding (bf16 also runs q in bf16, u8 quantises K/V to 8 bits).
TOL = {"f32": 1e-5, "f16": 5e-3, "bf16": 4e-2, "u8": 6e-2}
HEADS = [(9, 3, 64), (32, 8, 128)]
HEAD_IDS = {(9, 3, 64): "h9-3-d64", (32, 8, 128): "h32-8-d128"}

_backends = {}


def backend(path, precision, heads=(9, 3, 64), window=None):
    key = (path, precision, heads, window)
    if key not in _backends:
        h, kvh, d = heads
        spec = HostAttentionSpec(num_layers=2, num_heads=h, num_kv_heads=kvh, head_dim=d,
                                 kv_precision=precision, sliding_window=window, path=path)
        _backends[key] = select_backend(spec)[0]
    return _backends[key]


def reference(q, keys, vals, qlens, window=None):
    """Float64, explicit softmax, one sequence and 256 queries at a time: q [T, H, D] -> [T, H * D]."""
    outs, start = [], 0
    for kk, vv, n in zip(keys, vals, qlens):
        g = q.shape[1] // kk.shape[1]
        k64 = kk.double().repeat_interleave(g, 1).permute(1, 2, 0)          # [H, D, S]
        v64 = vv.double().repeat_interleave(g, 1).transpose(0, 1)           # [H, S, D]
        s_len = kk.shape[0]
        for a in range(0, n, 256):
            b = min(n, a + 256)
            qq = q[start + a:start + b].double().transpose(0, 1)            # [H, b - a, D]
            scores = qq @ k64 / q.shape[2] ** 0.5                           # [H, b - a, S]
            qp = torch.arange(s_len - n + a, s_len - n + b)[:, None]
            kp = torch.arange(s_len)[None, :]
            visible = (kp <= qp) & ((qp - kp < window) if window else True)
            scores = scores.masked_fill(~visible, float("-inf"))
            outs.append((scores.softmax(-1) @ v64).transpose(0, 1).reshape(b - a, -1))
        start += n
    return torch.cat(outs).float()


class Run:
    """Sequences on a fresh tier of `be`'s layout, with random non-contiguous block tables."""

    def __init__(self, be, total_lens, seed=0, spare=3):
        self.be, self.bs = be, be.layout.block_size
        self.gen = torch.Generator().manual_seed(seed)
        need = [ceil_div(n, self.bs) for n in total_lens]
        self.ha = HostAttention(be, KVCacheTier(Tier.HOST, be.layout, sum(need) + spare, "cpu"))
        perm = torch.randperm(sum(need) + spare, generator=self.gen).tolist()
        self.tables, o = [], 0
        for n in need:
            self.tables.append(perm[o:o + n])
            o += n
        s = be.spec
        self.keys = [self.rand(n, s.num_kv_heads, s.head_dim) for n in total_lens]
        self.vals = [self.rand(n, s.num_kv_heads, s.head_dim) for n in total_lens]
        self.done = [0] * len(total_lens)

    def rand(self, *shape):
        return torch.randn(*shape, generator=self.gen)

    def step(self, work, layer=0):
        """work: [(seq, num_new_tokens)] -> (out, ref) for this step."""
        s = self.be.spec
        qlens = [n for _, n in work]
        slens = [self.done[i] + n for i, n in work]
        md = build_metadata(qlens, slens, [self.tables[i] for i, _ in work], self.bs, torch.device("cpu"),
                            s.sliding_window)
        q = self.rand(sum(qlens), s.num_heads, s.head_dim)
        k = torch.cat([self.keys[i][self.done[i]:e] for (i, _), e in zip(work, slens)])
        v = torch.cat([self.vals[i][self.done[i]:e] for (i, _), e in zip(work, slens)])
        out = self.ha.forward(layer, q, k, v, md)
        for (i, _), e in zip(work, slens):
            self.done[i] = e
        ref = reference(q, [self.keys[i][:e] for (i, _), e in zip(work, slens)],
                        [self.vals[i][:e] for (i, _), e in zip(work, slens)], qlens, s.sliding_window)
        return out, ref


def read_back(tier, layer, table, n):
    """Positions [0, n) of a sequence as float32 K, V [n, KVH, D], read straight from the tier's tensors
    in the layout kv/layout.py documents (u8: dequantized with its per-block parameters)."""
    idx = torch.tensor(table, dtype=torch.int64)
    kb, vb = tier.key_cache[layer][idx], tier.value_cache[layer][idx]   # [nb, KVH, *, *]
    if tier.layout.quantized:
        f32 = torch.float32
        k_scale = kb[:, :, 0:4].contiguous().flatten(-2).view(f32)[:, :, None]   # [nb, KVH, 1, D]
        k_zp = kb[:, :, 4:8].contiguous().flatten(-2).view(f32)[:, :, None]
        kb = (kb[:, :, 8:].float() - k_zp) * k_scale                            # [nb, KVH, bs, D]
        v_par = vb[..., :8].contiguous().view(f32)                              # [nb, KVH, bs, 2]
        vb = (vb[..., 8:].float() - v_par[..., 1:2]) * v_par[..., 0:1]
    d = tier.layout.head_dim
    k = kb.float().transpose(1, 2).reshape(-1, tier.layout.num_kv_heads, d)   # [nb * bs, KVH, D]
    v = vb.float().transpose(1, 2).reshape(-1, tier.layout.num_kv_heads, d)
    return k[:n], v[:n]


def check(out, ref, precision):
    assert out.shape == ref.shape and out.dtype == torch.float32
    err = (out - ref).abs().max().item()
    assert err <= TOL[precision], f"max error {err:.3g} > {TOL[precision]} ({precision})"


def boundary_lens(bs):
    return [1, bs - 1, bs, bs + 1, 2 * bs, 2 * bs + 1, 3 * bs - 1]


CASES = [(path, prec, heads) for path, precs in PRECISIONS.items() for prec in precs for heads in HEADS]


@pytest.mark.parametrize("path, precision, heads", CASES, ids=[f"{p}-{pr}-{HEAD_IDS[h]}" for p, pr, h in CASES])
def test_packed_prefill_then_ragged_decode_then_mixed(path, precision, heads):
    be = backend(path, precision, heads)
    bs = be.layout.block_size
    prompt = boundary_lens(bs) + [77]
    run = Run(be, [n + 3 for n in prompt] + [2 * bs + 5, bs + 2], seed=len(prompt) + bs)
    n = len(prompt)
    check(*run.step([(i, p) for i, p in enumerate(prompt)]), precision)        # packed varlen prefill
    check(*run.step([(i, 1) for i in range(n)]), precision)                    # ragged decode, crossing blocks
    # Mixed: decodes, a chunked prefill continuing at a block boundary, and fresh prefills.
    check(*run.step([(0, 1), (n, 2 * bs), (2, 2), (n + 1, bs + 2), (5, 1)]), precision)
    check(*run.step([(n, 5), (1, 1), (3, 1)]), precision)


@pytest.mark.parametrize("path, precision", [(p, pr) for p, prs in PRECISIONS.items() for pr in prs])
def test_decode_batch_33_ragged(path, precision):
    be = backend(path, precision, (32, 8, 128))
    bs = be.layout.block_size
    rng = np.random.default_rng(bs)
    lens = boundary_lens(bs) * 3 + [int(x) for x in rng.integers(1, 300, size=12)]
    assert len(lens) == 33
    run = Run(be, [n + 1 for n in lens], seed=1)
    run.step([(i, n) for i, n in enumerate(lens)])
    check(*run.step([(i, 1) for i in range(33)]), precision)


@pytest.mark.parametrize("path, precision", [("ov_paged", "f32"), ("ov_paged", "f16"), ("ov_paged", "u8"),
                                             ("ov_sdpa", "f32"), ("torch", "f32")])
def test_long_context_4096(path, precision):
    be = backend(path, precision, (9, 3, 64))
    run = Run(be, [4097, 4096 + 2, 33], seed=2)
    check(*run.step([(0, 4096), (2, 31)]), precision)              # 4096: exactly on a block boundary
    check(*run.step([(1, 4095)]), precision)                        # one short of a boundary
    check(*run.step([(0, 1), (1, 1), (2, 1)]), precision)           # decodes to 4097 / 4096 / 32
    check(*run.step([(1, 1)]), precision)


@pytest.mark.parametrize("path", list(PRECISIONS))
@pytest.mark.parametrize("window", [1, 7, 32])
def test_sliding_window(path, window):
    be = backend(path, "f32", (9, 3, 64), window)
    run = Run(be, [70, 40, 5], seed=window)
    check(*run.step([(0, 50), (1, 33), (2, 4)]), "f32")
    check(*run.step([(0, 1), (1, 7), (2, 1)]), "f32")
    check(*run.step([(0, 19)]), "f32")


@pytest.mark.parametrize("path", list(PRECISIONS))
def test_every_layer_has_its_own_cache(path):
    be = backend(path, "f32", (9, 3, 64))
    run = Run(be, [40])
    keys0, vals0 = run.keys[0].clone(), run.vals[0].clone()
    check(*run.step([(0, 39)], layer=0), "f32")
    # Layer 1 gets other K/V for the same positions and blocks.
    run.keys[0], run.vals[0], run.done[0] = run.rand(40, 3, 64), run.rand(40, 3, 64), 0
    check(*run.step([(0, 39)], layer=1), "f32")
    check(*run.step([(0, 1)], layer=1), "f32")
    assert torch.equal(read_back(run.ha.tier, 0, run.tables[0], 39)[0], keys0[:39])
    assert torch.equal(read_back(run.ha.tier, 1, run.tables[0], 40)[1], run.vals[0])
    assert not torch.equal(vals0[:39], run.vals[0][:39])


# -- selection ---------------------------------------------------------------


def spec(precision="f32", **kw):
    return HostAttentionSpec(num_layers=2, num_heads=9, num_kv_heads=3, head_dim=64, kv_precision=precision, **kw)


def test_auto_picks_the_paged_op_and_logs_why(caplog):
    with caplog.at_level(logging.INFO, logger="hybridllm"):
        ha = HostAttention.create(spec(), num_blocks=4)
    assert ha.name == "ov_paged" and ha.layout.block_size == 32
    assert "host attention: ov_paged" in caplog.text and "self-check" in caplog.text


@pytest.mark.parametrize("path", list(PRECISIONS))
def test_spec_path_forces_each_path(path):
    ha = HostAttention.create(spec("f16", path=path), num_blocks=4)
    assert ha.name == path and ha.reason == f"forced by host_attention={path}"
    assert ha.tier.key_cache[0].dtype == torch.float16 and ha.tier.tier == Tier.HOST


def test_path_typo_is_rejected_by_name():
    with pytest.raises(ValueError, match="host_attention: 'paged' is not one of auto, ov_paged"):
        spec(path="paged")


def test_missing_private_op_falls_back_to_public_opset(monkeypatch, caplog):
    monkeypatch.delattr(ov.op, "_PagedAttentionExtension")
    with caplog.at_level(logging.INFO, logger="hybridllm"):
        ha = HostAttention.create(spec(), num_blocks=4)
    assert ha.name == "ov_sdpa"
    assert "ov_paged unavailable" in caplog.text and "_PagedAttentionExtension" in caplog.text
    with pytest.raises(RuntimeError, match="_PagedAttentionExtension"):
        HostAttention.create(spec(path="ov_paged"), num_blocks=4)       # forced: no silent fallback


def test_compile_failures_fall_through_to_torch(monkeypatch, caplog):
    from hybridllm.attention import host_ov_paged, host_ov_sdpa

    def broken(*a, **k):
        raise RuntimeError("compile failed on purpose")
    monkeypatch.setattr(host_ov_paged, "build_model", broken)
    monkeypatch.setattr(host_ov_sdpa, "build_model", broken)
    with caplog.at_level(logging.WARNING, logger="hybridllm"):
        ha = HostAttention.create(spec(), num_blocks=4)
    assert ha.name == "torch"
    assert caplog.text.count("compile failed on purpose") == 2


def test_wrong_results_fail_the_self_check(monkeypatch):
    from hybridllm.attention import host_ov_paged
    real = host_ov_paged.PagedOVAttention.forward
    monkeypatch.setattr(host_ov_paged.PagedOVAttention, "forward", lambda *a: real(*a) * 1.01)
    be, reason = select_backend(spec())
    assert be.name == "ov_sdpa" and "self-check" in reason and "max error" in reason


def test_u8_without_the_op_has_no_path(monkeypatch):
    monkeypatch.delattr(ov.op, "_PagedAttentionExtension")
    with pytest.raises(RuntimeError, match="u8.*needs the ov_paged"):
        HostAttention.create(spec("u8"), num_blocks=4)


# -- bad metadata and failed steps ---------------------------------------------


def two_sequences(path):
    be = backend(path, "f32")
    run = Run(be, [40, 20, 30], seed=5)
    run.step([(0, 39), (1, 19)])
    run.step([(0, 1), (1, 1)])
    return run


def snapshot(tier):
    return [t.clone() for t in tier.key_cache + tier.value_cache]


def assert_unchanged(tier, snap):
    for a, b in zip(tier.key_cache + tier.value_cache, snap):
        assert torch.equal(a.view(torch.uint8) if a.dtype == torch.bfloat16 else a, b.view(torch.uint8)
                           if b.dtype == torch.bfloat16 else b)


@pytest.mark.parametrize("path", list(PRECISIONS))
def test_bad_metadata_names_the_field_and_writes_nothing(path):
    run = two_sequences(path)
    ha, bs = run.ha, run.bs
    snap = snapshot(ha.tier)
    q, k = torch.randn(3, 9, 64), torch.randn(3, 3, 64)
    cpu = torch.device("cpu")
    bad = [
        (build_metadata([3], [3], [[ha.tier.num_blocks]], bs, cpu), "block index .* out of range"),
        (build_metadata([3], [3], [[-1]], bs, cpu), "block index -1"),
        (build_metadata([3], [3], [[0]], bs + 1, cpu), "block_size"),
    ]
    for md, match in bad:
        with pytest.raises(ValueError, match=match):
            ha.forward(0, q, k, k, md)
    md = build_metadata([3], [3], [[run.tables[2][0]]], bs, cpu)
    with pytest.raises(ValueError, match="q: expected shape"):
        ha.forward(0, q[:2], k, k, md)
    with pytest.raises(ValueError, match="k: host attention computes in float32"):
        ha.forward(0, q, k.half(), k, md)
    # Lengths against block tables: a hand-made metadata whose table is one block short.
    import dataclasses
    md_long = build_metadata([3], [bs + 3], [[0, 1]], bs, cpu)
    short = dataclasses.replace(md_long.prefills[0], block_table=md_long.prefills[0].block_table[:1])
    with pytest.raises(ValueError, match="block_table of sequence 0 has 1 blocks; seq_len=.* needs 2"):
        ha.forward(0, q, k, k, dataclasses.replace(md_long, prefills=(short,)))
    assert_unchanged(ha.tier, snap)


def test_kv_dtype_mismatch_is_named():
    be = backend("ov_paged", "f16")
    with pytest.raises(ValueError, match="layout"):
        HostAttention(be, KVCacheTier(Tier.HOST, backend("ov_paged", "f32").layout, 4, "cpu"))
    ha = HostAttention(be, KVCacheTier(Tier.HOST, be.layout, 4, "cpu"))
    ha.tier.key_cache[0] = ha.tier.key_cache[0].float()
    md = build_metadata([1], [1], [[0]], be.layout.block_size, torch.device("cpu"))
    with pytest.raises(ValueError, match="KV dtype"):
        ha.forward(0, torch.randn(1, 9, 64), torch.randn(1, 3, 64), torch.randn(1, 3, 64), md)


@pytest.mark.parametrize("path", list(PRECISIONS))
def test_failed_step_leaves_other_sequences_blocks_bit_identical(path, monkeypatch):
    run = two_sequences(path)
    ha = run.ha
    others = run.tables[0] + run.tables[1]
    before = [t[others].clone() for t in ha.tier.key_cache + ha.tier.value_cache]
    # Sequence 2's step runs layer 0, then the backend dies on layer 1.
    run.step([(2, 9)], layer=0)
    real = type(ha.backend).forward

    def dies(self, layer, *a):
        if layer == 1:
            raise RuntimeError("injected fault")
        return real(self, layer, *a)
    monkeypatch.setattr(type(ha.backend), "forward", dies)
    run.done[2] = 0
    with pytest.raises(RuntimeError, match="injected fault"):
        run.step([(2, 9)], layer=1)
    after = [t[others] for t in ha.tier.key_cache + ha.tier.value_cache]
    for a, b in zip(before, after):
        assert torch.equal(a, b)


# -- the host tier -----------------------------------------------------------------


@pytest.mark.parametrize("precision", ["f32", "f16", "bf16", "u8"])
def test_tier_reads_back_what_the_op_wrote(precision):
    be = backend("ov_paged", precision)
    run = Run(be, [70], seed=9)
    run.step([(0, 33)])
    run.step([(0, 1)])
    run.step([(0, 36)])
    k, v = read_back(run.ha.tier, 0, run.tables[0], 70)
    assert k.shape == (70, 3, 64) and k.dtype == torch.float32
    tol = {"f32": 0, "f16": 2e-3, "bf16": 2e-2, "u8": 0.1}[precision]
    assert (k - run.keys[0]).abs().max() <= tol * run.keys[0].abs().max()
    assert (v - run.vals[0]).abs().max() <= tol * run.vals[0].abs().max()


def test_create_sizes_the_tier_from_bytes_in_the_backends_layout():
    lay = backend("ov_paged", "u8").layout
    assert lay.quantized and lay.key_block_shape == (3, 32 + 8, 64)     # the op's u8 parameter rows
    ha = HostAttention.create(spec("u8"), num_bytes=5 * lay.bytes_per_block + 1)
    assert ha.layout == lay and ha.tier.num_blocks == 5 and ha.tier.num_bytes == 5 * lay.bytes_per_block
    assert ha.tier.key_cache[1].shape == (5, *lay.key_block_shape)
    assert ha.tier.value_cache[1].shape == (5, *lay.value_block_shape)


def test_create_refuses_bad_sizes_by_name(monkeypatch):
    with pytest.raises(ValueError, match=r"host_kv_bytes \(100\) holds no KV block"):
        HostAttention.create(spec(), num_bytes=100)
    with pytest.raises(ValueError, match="num_blocks must be >= 1, got 0"):
        HostAttention.create(spec(), num_blocks=0)
    with pytest.raises(ValueError, match="exactly one of num_blocks, num_bytes"):
        HostAttention.create(spec(), num_blocks=4, num_bytes=1 << 20)
    with pytest.raises(ValueError, match="exactly one of num_blocks, num_bytes"):
        HostAttention.create(spec())
    monkeypatch.setattr(utils, "mem_available", lambda: 1 << 20)
    with pytest.raises(ValueError, match="host_kv_bytes .* larger than the free host memory"):
        HostAttention.create(spec(), num_bytes=2 << 20)


def test_cache_dir_hashes_identical_graphs_alike(tmp_path):
    s = spec(cache_dir=str(tmp_path), path="ov_paged")
    select_backend(s)
    select_backend(s)                                   # the same graph again, in the same process
    assert len(list(tmp_path.glob("*.blob"))) == 1


@pytest.mark.parametrize("path", ["ov_sdpa", "torch"])
def test_fallbacks_run_over_a_tier_made_outside_create(path):
    be = backend(path, "f16")
    plain = KVCacheTier(Tier.HOST, be.layout, 6, "cpu")     # 16-token blocks, like the device tier
    ha = HostAttention(be, plain)
    md = build_metadata([20, 1], [20, 1], [[4, 1], [0]], 16, torch.device("cpu"))
    q, k, v = torch.randn(21, 9, 64), torch.randn(21, 3, 64), torch.randn(21, 3, 64)
    out = ha.forward(0, q, k, v, md)
    check(out, reference(q, [k[:20], k[20:]], [v[:20], v[20:]], [20, 1]), "f16")
    assert torch.equal(plain.key_cache[0][1, :, :4], k[16:20].transpose(0, 1).half())
    with pytest.raises(ValueError, match="layout"):
        HostAttention(backend(path, "f32"), plain)


def test_host_threads_leave_a_core_beside_a_gpu_and_check_the_override():
    import os

    from hybridllm import EngineConfig
    from hybridllm.runtime.factory import host_threads
    assert host_threads(None, torch.device("cpu")) is None
    assert host_threads(None, torch.device("cuda")) == max(1, os.cpu_count() - 1)
    assert host_threads(3, torch.device("cuda")) == 3
    with pytest.raises(ValueError, match="host_threads must be None or an integer >= 1, got 0"):
        EngineConfig(host_threads=0)
