"""Sampler distributions and stop-string helpers."""
import math

import pytest
import torch

from hybridllm.engine.sampler import _probs, sample
from hybridllm.engine.stop import find_stop, held_back
from hybridllm.sampling_params import SamplingParams

# softmax of these logits is exactly [0.5, 0.25, 0.125, 0.125]
LOGITS = torch.log(torch.tensor([0.5, 0.25, 0.125, 0.125]))


def test_temperature_one_keeps_the_distribution():
    torch.testing.assert_close(_probs(LOGITS, SamplingParams()), torch.tensor([0.5, 0.25, 0.125, 0.125]))


def test_temperature_sharpens():
    p = _probs(LOGITS, SamplingParams(temperature=0.5))       # squares, then renormalises
    expect = torch.tensor([0.25, 0.0625, 0.015625, 0.015625])
    torch.testing.assert_close(p, expect / expect.sum())


def test_top_k_keeps_k_most_likely():
    p = _probs(LOGITS, SamplingParams(top_k=2))
    torch.testing.assert_close(p, torch.tensor([2 / 3, 1 / 3, 0.0, 0.0]))


@pytest.mark.parametrize("top_p, kept", [(0.5, 1), (0.6, 2), (0.75, 2), (0.8, 3), (0.9, 4), (1.0, 4)])
def test_top_p_keeps_smallest_set_reaching_p(top_p, kept):
    p = _probs(LOGITS, SamplingParams(top_p=top_p))
    assert int((p > 0).sum()) == kept
    assert math.isclose(float(p.sum()), 1.0, rel_tol=1e-6)


def test_greedy_rows_ignore_generators_and_seeded_rows_repeat():
    logits = torch.randn(3, 50)
    params = [SamplingParams(temperature=0), SamplingParams(temperature=1.0, seed=7), SamplingParams(top_k=1)]
    a, _ = sample(logits, params, [None, torch.Generator().manual_seed(7), None])
    b, _ = sample(logits, params, [None, torch.Generator().manual_seed(7), None])
    assert a == b
    assert a[0] == a[2] == int(logits[0].argmax()) or a[2] == int(logits[2].argmax())
    assert a[0] == int(logits[0].argmax()) and a[2] == int(logits[2].argmax())


def test_sampling_follows_the_distribution():
    g = torch.Generator().manual_seed(0)
    p = SamplingParams(temperature=1.0)
    draws = [sample(LOGITS[None], [p], [g])[0][0] for _ in range(4000)]
    freq = torch.bincount(torch.tensor(draws), minlength=4).float() / len(draws)
    torch.testing.assert_close(freq, torch.tensor([0.5, 0.25, 0.125, 0.125]), atol=0.03, rtol=0)


def test_find_stop_finds_earliest_new_match():
    assert find_stop("hello world", 6, ("wor", "o w")) == 4
    assert find_stop("hello world", 11, ("hello",)) == -1      # ended before the new text
    assert find_stop("abcSTOP", 4, ("STOP",)) == 3             # straddles the boundary


def test_held_back_covers_partial_stop_prefixes():
    assert held_back("the end is ne", ("near",)) == 2
    assert held_back("the end is n", ("near", "n!")) == 1
    assert held_back("nothing here", ("STOP",)) == 0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -0.5, "0.7", True])
def test_sampling_params_refuse_a_temperature_that_is_not_a_finite_number(bad):
    """Checked where the value is defined, so the in-process API refuses what the Triton path refuses."""
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
        SamplingParams(temperature=bad)
