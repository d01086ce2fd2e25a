"""The decode path CUDA graphs replay, run eagerly on the CPU (enforce_eager=False): bucketed batches
over static buffers, padded rows writing only to the pad block. Greedy tokens equal the eager path's
on the default model (fp32, token for token); tests/cuda replays the same path as graphs on a GPU."""
import pytest
import torch

from hybridllm import LLM, SamplingParams
from hybridllm.kv import Tier
from hybridllm.runtime.decode_graphs import batch_buckets

from ..helpers.default_prompts import PROMPTS

pytestmark = pytest.mark.slow
# Different lengths, so the batch shrinks through the buckets (6 -> 4 -> 2 -> 1) as requests finish.
GREEDY = [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for n in (20, 8, 14, 3, 11)]


def test_batch_buckets():
    assert batch_buckets(1) == (1,)
    assert batch_buckets(8) == (1, 2, 4, 8)
    assert batch_buckets(64) == (1, 2, 4, 8, 16, 32, 48, 64)
    assert batch_buckets(70) == (1, 2, 4, 8, 16, 32, 48, 64, 70)
    for m in range(1, 300):
        b = batch_buckets(m)
        assert list(b) == sorted(set(b)) and b[-1] == m


def _llm(default_model_path, **kw):
    return LLM(str(default_model_path), policy="gpu_only", weight_dtype="float32", max_num_seqs=6,
               device_kv_bytes=96 << 20, **kw)


def test_padded_decode_path_gives_the_eager_tokens(default_model_path):
    prompts = PROMPTS[:5]
    eager = _llm(default_model_path, enforce_eager=True)
    assert eager.engine.runtime.executors["gpu_only"].graphs is None
    want = [list(o.token_ids) for o in eager.generate(prompts, GREEDY, use_tqdm=False)]
    llm = _llm(default_model_path, enforce_eager=False)
    graphs = llm.engine.runtime.executors["gpu_only"].graphs
    tier = llm.engine.runtime.tiers[Tier.DEVICE]
    pad = tier.pad_block
    before = [c[pad].clone() for c in tier.key_cache[:2]]
    got = [list(o.token_ids) for o in llm.generate(prompts, GREEDY, use_tqdm=False)]
    assert got == want
    # Five requests in a bucket of 6 (one padded row), then smaller buckets as they finish.
    assert set(graphs.steps) == {1, 2, 4, 6}, graphs.steps
    assert not all(torch.equal(b, c[pad]) for b, c in zip(before, tier.key_cache[:2])), "pad rows wrote nothing"
    assert llm.engine.kv.num_used(Tier.DEVICE) == 0
    llm.engine.kv.check()
    # The default on the CPU is eager: nothing to capture there.
    assert LLM(str(default_model_path), policy="gpu_only", max_num_seqs=2, device_kv_bytes=8 << 20
               ).engine.runtime.executors["gpu_only"].graphs is None
