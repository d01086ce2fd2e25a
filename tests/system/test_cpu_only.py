"""policy="cpu_only", weight_dtype="float32" on the real default model: OpenVINO linear graphs + host attention.

With f32 KV and exact weights, greedy tokens must equal the default (torch) path's
token for token; batched, chunked and preempted runs too. The KV blocks all go
back to the host pool afterwards.
"""
import pytest
import torch

from hybridllm import LLM
from hybridllm.kv import Tier

from ..helpers.arrivals import run_staggered
from ..helpers.default_prompts import GREEDY, PROMPTS
from ..helpers.scheduling import on_host

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def restore_torch_threads():
    # cpu_only drops torch to one thread for the whole process; the tests after these need them back.
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def reference_tokens():
    llm = LLM(model="default", policy="gpu_only")     # the device path, as the reference
    return [list(o.token_ids) for o in llm.generate(PROMPTS, GREEDY, use_tqdm=False)]


@pytest.fixture(scope="module")
def cpu_llm():
    return LLM(model="default", policy="cpu_only", weight_dtype="float32", kv_cache_dtype="f32", host_kv_bytes=1 << 28)


def test_runs_on_the_host_with_the_paged_op_fused(cpu_llm):
    engine = cpu_llm.engine
    assert engine.runtime.policy == "cpu_only" and list(engine.kv.tiers) == [Tier.HOST]
    runner = engine.runtime.executors["cpu_only"]
    assert runner.attention.name == "native" and runner.linear.fused        # its tier is the op's layout
    assert runner.attention.tier is engine.runtime.tiers[Tier.HOST]     # the op's caches are the tier
    assert engine.kv.block_size == runner.attention.layout.block_size


def test_greedy_batched_equals_default_path(cpu_llm, reference_tokens):
    outs = cpu_llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    for prompt, out, ref in zip(PROMPTS, outs, reference_tokens):
        assert list(out.token_ids) == ref, f"prompt {prompt[:40]!r}"
    assert cpu_llm.engine.kv.num_used(Tier.HOST) == 0
    cpu_llm.engine.kv.check()


def test_chunked_prefill_and_preemption_equal_default_path(reference_tokens):
    # 48-token budget: prompts arrive in chunks beside running decodes (mixed steps);
    # 10 blocks of 32 tokens: requests get preempted and recomputed.
    llm = LLM(model="default", policy="cpu_only", weight_dtype="float32", kv_cache_dtype="f32", max_num_batched_tokens=48,
              max_num_seqs=6, host_kv_bytes=10 * 30 * 2 * 3 * 32 * 64 * 4)
    engine = llm.engine
    assert engine.kv.pool(Tier.HOST).num_blocks == 10
    outs = run_staggered(engine, PROMPTS[:8], GREEDY, every=3)
    assert engine.stats().num_preemptions > 0, "the pool was meant to force preemption"
    for i, ref in enumerate(reference_tokens[:8]):
        assert list(outs[f"r{i}"].token_ids) == ref, f"prompt {i}"
    assert engine.kv.num_used(Tier.HOST) == 0


@pytest.mark.parametrize("options, attention", [({"cpu_fused": False}, "native"),
                                                ({"cpu_fused": False, "host_attention": "ov_paged"}, "ov_paged"),
                                                ({"host_attention": "ov_sdpa"}, "ov_sdpa"),
                                                ({"host_attention": "torch"}, "torch")])
def test_split_graphs_with_each_attention_path_equal_default_path(options, attention, reference_tokens):
    llm = LLM(model="default", policy="cpu_only", weight_dtype="float32", kv_cache_dtype="f32", host_kv_bytes=1 << 26, **options)
    runner = llm.engine.runtime.executors["cpu_only"]
    assert runner.attention.name == attention and not runner.linear.fused
    outs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    for prompt, out, ref in zip(PROMPTS, outs, reference_tokens):
        assert list(out.token_ids) == ref, f"prompt {prompt[:40]!r}"
    assert llm.engine.kv.num_used(Tier.HOST) == 0


@pytest.mark.parametrize("kv_cache_dtype", ["f16", "u8"])
def test_lower_precision_kv_stays_close(kv_cache_dtype, reference_tokens):
    llm = LLM(model="default", policy="cpu_only", weight_dtype="float32", kv_cache_dtype=kv_cache_dtype, host_kv_bytes=1 << 26)
    assert llm.engine.runtime.tiers[Tier.HOST].layout.precision == kv_cache_dtype
    outs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    # Rounded K/V may flip a near-tie late in a continuation, not the first tokens.
    for out, ref in zip(outs, reference_tokens):
        assert list(out.token_ids[:4]) == ref[:4]
    same = sum(list(o.token_ids) == r for o, r in zip(outs, reference_tokens))
    assert same >= len(PROMPTS) // 2, f"only {same} of {len(PROMPTS)} continuations equal with {kv_cache_dtype} KV"
    assert llm.engine.kv.num_used(Tier.HOST) == 0


def test_bad_step_raises_before_touching_the_cache_and_others_carry_on(reference_tokens):
    from hybridllm.scheduler import StepInput
    llm = LLM(model="default", policy="cpu_only", weight_dtype="float32", kv_cache_dtype="f32", host_kv_bytes=1 << 24)
    engine = llm.engine
    engine.add_request("a", PROMPTS[1], GREEDY)
    for _ in range(5):
        engine.step()
    tier = engine.runtime.tiers[Tier.HOST]
    before = (tier._k.clone(), tier._v.clone())
    runner = engine.runtime.executors["cpu_only"]
    bad = StepInput("x", (1, 2, 3), 0, (tier.num_blocks + 1,), True)             # block index out of range
    with pytest.raises(ValueError, match="block index"):
        runner.execute(on_host(bad))
    short = StepInput("y", tuple(range(40)), 0, (0,), True)                       # 40 tokens, one 32-token block
    with pytest.raises(ValueError, match="blocks"):
        runner.execute(on_host(short))
    assert torch.equal(tier._k, before[0]) and torch.equal(tier._v, before[1])
    out = None
    while engine.has_unfinished_requests():
        for o in engine.step():
            out = o
    assert list(out.token_ids) == reference_tokens[1]
    assert engine.kv.num_used(Tier.HOST) == 0


def test_steps_with_nothing_to_sample_still_fill_the_cache(reference_tokens):
    # A 16-token budget: the long prompt's first chunks sample nothing, but must write their K/V.
    llm = LLM(model="default", policy="cpu_only", weight_dtype="float32", kv_cache_dtype="f32", max_num_batched_tokens=16,
              host_kv_bytes=1 << 24)
    (out,) = llm.generate([PROMPTS[7]], GREEDY, use_tqdm=False)
    assert list(out.token_ids) == reference_tokens[7]
    assert llm.engine.stats().num_steps > GREEDY.max_tokens + 5               # it really was chunked
