"""Host attention numerics: each path (ov_paged, ov_sdpa, torch) against a float64 reference on random data.

Grid: packed prefills, ragged decodes and mixed steps; batch 1-33; lengths 1-4096 with block
boundaries hit exactly and off by one; heads 9/3 and 32/8; head_dim 64/128; sliding window;
every KV precision each path supports.
"""
import numpy as np
import pytest
import torch

from ..helpers.host_attention import PRECISIONS, HEADS, HEAD_IDS, backend, Run, read_back, check, boundary_lens

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


@pytest.mark.slow      # 4096-token contexts: seconds per case on 2 cores
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


