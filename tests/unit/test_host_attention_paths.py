"""Host attention around the kernels: backend selection and fallbacks, bad metadata, failed steps,
and the host tier HostAttention.create allocates."""
import logging

import openvino as ov
import pytest
import torch

from hybridllm import utils
from hybridllm.attention import build_metadata
from hybridllm.attention.host import HostAttention, HostAttentionSpec, select_backend
from hybridllm.kv import Tier
from hybridllm.attention.kv_cache import KVCacheTier

from ..helpers.host_attention import OV_BF16, PRECISIONS, backend, reference, Run, read_back, check


def spec(precision="f32", **kw):
    return HostAttentionSpec(num_layers=2, num_heads=9, num_kv_heads=3, head_dim=64, kv_precision=precision, **kw)


def test_auto_picks_the_native_kernel_over_the_ops_layout_and_logs_why(caplog):
    with caplog.at_level(logging.INFO, logger="hybridllm"):
        ha = HostAttention.create(spec(), num_blocks=4)
    assert ha.name == "native" and ha.layout.block_size == 32
    assert "host attention: native" in caplog.text and "self-check" in caplog.text


@pytest.mark.parametrize("path", list(PRECISIONS))
def test_spec_path_forces_each_path(path):
    ha = HostAttention.create(spec("f16", path=path), num_blocks=4)
    assert ha.name == path and ha.reason == f"forced by host_attention={path}"
    assert ha.tier.key_cache[0].dtype == torch.float16 and ha.tier.tier == Tier.HOST


def test_bf16_kv_without_cpu_bf16_refuses_the_op_and_auto_falls_back():
    """Where the CPU lacks bf16 arithmetic, OpenVINO's PagedAttention refuses bf16 KV: forced, it raises;
    under auto the next path that passes its self-check serves."""
    if OV_BF16:
        assert HostAttention.create(spec("bf16", path="ov_paged"), num_blocks=4).name == "ov_paged"
        return
    with pytest.raises(RuntimeError, match="kvcache type"):
        HostAttention.create(spec("bf16", path="ov_paged"), num_blocks=4)
    ha = HostAttention.create(spec("bf16"), num_blocks=4)
    assert ha.name == "ov_sdpa" and "ov_paged" in ha.reason and ha.layout.precision == "bf16"


def test_path_typo_is_rejected_by_name():
    with pytest.raises(ValueError, match="host_attention: 'paged' is not one of auto, native, ov_paged"):
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
    assert caplog.text.count("compile failed on purpose") == 3      # native's prefills need the op too


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


@pytest.mark.parametrize("precision", PRECISIONS["ov_paged"])
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
    from hybridllm.runtime.spec import host_threads
    assert host_threads(None, torch.device("cpu")) is None
    assert host_threads(None, torch.device("cuda")) == max(1, os.cpu_count() - 1)
    assert host_threads(3, torch.device("cuda")) == 3
    with pytest.raises(ValueError, match="host_threads must be None or an integer >= 1, got 0"):
        EngineConfig(host_threads=0)
