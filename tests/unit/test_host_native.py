"""The native decode kernel (attention/host_native.cpp) against a float64 reference: every format, each
instruction set forced (AVX-512 where the CPU has it, AVX2, scalar), GQA and sliding-window shapes of the
tiny architectures, interleaved with the op's prefills over the same blocks."""
import pytest
import torch

from hybridllm.attention.host import HostAttention, HostAttentionSpec
from hybridllm.attention.native_build import best_isa

from ..helpers.host_attention import PRECISIONS, backend, Run, check

BEST = best_isa()
ISAS = [i for i in ("avx512", "avx2", "scalar") if (i != "avx512" or BEST == "avx512") and (i != "avx2" or BEST != "scalar")]
# (heads, kv heads, head_dim): SmolLM2's 9/3 x 64; the tiny models' 4/2 x 16 (one AVX-512 vector per row,
# and a group of 2); MHA 4/4 x 8 (AVX2 width, no AVX-512 path); 8/1 x 24 (MQA, no vector path at all).
SHAPES = [(9, 3, 64), (4, 2, 16), (4, 4, 8), (8, 1, 24)]
# Every format on every shape with the CPU's own kernel; the window and the forced slower kernels on two.
CASES = sorted({(p, s, w, i) for p in PRECISIONS["native"] for s in SHAPES for w, i in [(None, "auto")]
                + ([(37, "auto")] + [(w, i) for w, i in zip((37, None), ISAS[-2:])] if s in SHAPES[:2] else [])},
               key=str)


@pytest.mark.parametrize("precision, heads, window, isa", CASES,
                         ids=[f"{p}-h{s[0]}-{s[1]}-d{s[2]}-w{w or 0}-{i}" for p, s, w, i in CASES])
def test_decodes_match_float64_between_the_ops_prefills(precision, heads, window, isa):
    be = backend("native", precision, heads, window, isa)
    run = Run(be, [100, 70, 60, 3], seed=heads[2] + (window or 0))
    check(*run.step([(0, 58), (1, 28), (2, 33)]), precision)         # prefill in the op
    for _ in range(12):                                               # decodes cross blocks and the window
        check(*run.step([(0, 1), (1, 1), (2, 1)]), precision)
    want = BEST if isa == "auto" else isa
    width = {"avx512": 16, "avx2": 8, "scalar": 1}
    while heads[2] % width[want]:               # a head_dim the vector width does not divide: the next one down
        want = {"avx512": "avx2", "avx2": "scalar"}[want]
    assert be.ran_isa == want
    check(*run.step([(1, 9), (0, 1), (3, 3)]), precision)           # the op reads blocks the kernel wrote
    check(*run.step([(0, 1), (1, 1)]), precision)


def test_auto_picks_the_native_kernel_and_logs_why(caplog):
    import logging
    with caplog.at_level(logging.INFO, logger="hybridllm"):
        ha = HostAttention.create(HostAttentionSpec(2, 9, 3, 64, kv_precision="u8"), num_blocks=4)
    assert ha.name == "native" and ha.layout.block_size == 32 and ha.layout.precision == "u8"
    assert "host attention: native" in caplog.text and "self-check" in caplog.text


def test_a_group_too_large_for_the_kernel_is_refused_by_name():
    spec = HostAttentionSpec(2, 32, 1, 64, path="native")          # 32 query heads on one KV head
    with pytest.raises(ValueError, match="at most 16 query heads per KV head"):
        HostAttention.create(spec, num_blocks=4)
    assert HostAttention.create(HostAttentionSpec(2, 32, 1, 64), num_blocks=4).name == "ov_paged"   # auto


def test_isa_typo_is_rejected_by_name():
    with pytest.raises(ValueError, match="host_isa: 'avx3' is not one of auto, avx512, avx2, scalar"):
        HostAttentionSpec(2, 9, 3, 64, isa="avx3")


def test_decode_threads_give_the_same_result():
    """(sequence, KV head) pairs are independent: 1 thread and all threads agree bit for bit."""
    outs = []
    for threads in (1, 2):
        spec = HostAttentionSpec(2, 9, 3, 64, kv_precision="u8", path="native", num_threads=threads)
        from hybridllm.attention.host import select_backend
        run = Run(select_backend(spec)[0], [80, 50], seed=3)
        run.step([(0, 60), (1, 40)])
        outs.append(run.step([(0, 1), (1, 1)])[0])
    assert torch.equal(outs[0], outs[1])
