"""Prefix caching end to end on a tiny random Llama: a hit gives the cold run's greedy tokens under
every policy (a prefix ending mid-block, a prompt equal to a cached one, a prompt inside a cached one),
and the hits are really taken (counted per tier, fewer tokens prefilled)."""
import pytest

from hybridllm import LLM, SamplingParams
from hybridllm.kv import Tier
from hybridllm.profiling.store import save_profile

from ..helpers.profiles import size_dependent
from ..helpers.tiny_models import make_tiny

GREEDY = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
SYSTEM = "You are a helpful assistant of the tiny model company; answer briefly. "      # 72 tokens (one per char)
TURNS = [SYSTEM + "What is two plus two?", SYSTEM + "Name a colour.", SYSTEM[:40] + "cut mid-block",
         SYSTEM, SYSTEM + "What is two plus two?", SYSTEM[:50]]
BLOCK_BYTES = 2 * 2 * 2 * 16 * 16 * 4        # K and V, 2 layers, 2 KV heads, head_dim 16, 16 tokens, f32

POLICIES = {
    "gpu_only": {},
    "gpu_offload": {},
    "cpu_only": {},
    "partition": {},
    # 4 device blocks: the long prompts go to the host tier, so hits are taken on both tiers.
    "neo": dict(device_kv_bytes=4 * BLOCK_BYTES),
    "auto": {},
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("tiny"), "llama")


@pytest.fixture(scope="module")
def cold(tiny):
    llm = LLM(str(tiny), policy="gpu_only", enable_prefix_caching=False)
    return [o.token_ids for o in llm.generate(TURNS, GREEDY, use_tqdm=False)]


def options(policy, tmp_path):
    kw = dict(POLICIES[policy])
    if policy == "auto":      # long prompts prefill on the device and move to the host, short ones stay there
        save_profile(size_dependent(), tmp_path / "p.json")
        kw["hardware_profile"] = str(tmp_path / "p.json")
    return kw


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_hits_give_the_cold_greedy_tokens(tiny, cold, policy, tmp_path):
    llm = LLM(str(tiny), policy=policy, max_num_batched_tokens=48, **options(policy, tmp_path))
    engine = llm.engine
    got = [llm.generate([p], GREEDY, use_tqdm=False)[0].token_ids for p in TURNS]       # one by one: later ones hit
    assert got == cold
    stats = engine.stats()
    assert sum(stats.prefix_cache_hits.values()) >= 4 * 48, stats
    assert stats.blocks_used == {t.value: 0 for t in engine.kv.tiers} and sum(stats.blocks_cached.values()) > 0
    # All at once: the first of each prefix and its sharers in one batch, sharing blocks in use.
    assert [o.token_ids for o in llm.generate(TURNS, GREEDY, use_tqdm=False)] == cold
    engine.kv.check()
    if policy == "neo":
        assert stats.prefix_cache_hits["host"] > 0 and stats.prefix_cache_hits["device"] > 0, stats


def test_cache_salt_separates_tenants_and_off_means_off(tiny):
    llm = LLM(str(tiny), policy="gpu_only")
    salted = lambda salt: SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True, cache_salt=salt)
    a = llm.generate([TURNS[0]], salted("a"), use_tqdm=False)[0].token_ids
    before = llm.engine.stats().prefix_cache_hits["device"]
    assert llm.generate([TURNS[0]], salted("b"), use_tqdm=False)[0].token_ids == a
    assert llm.engine.stats().prefix_cache_hits["device"] == before          # another tenant: no hit
    assert llm.generate([TURNS[0]], salted("a"), use_tqdm=False)[0].token_ids == a
    assert llm.engine.stats().prefix_cache_hits["device"] > before
    off = LLM(str(tiny), policy="gpu_only", enable_prefix_caching=False)
    off.generate(TURNS[:2], GREEDY, use_tqdm=False)
    assert off.engine.stats().prefix_cache_hits == {"device": 0} and off.engine.kv.num_cached(Tier.DEVICE) == 0
    with pytest.raises(ValueError, match="cache_salt must be None or a non-empty string of at most 256"):
        SamplingParams(cache_salt="x" * 300)
    with pytest.raises(ValueError, match="enable_prefix_caching must be True or False"):
        LLM(str(tiny), policy="gpu_only", enable_prefix_caching="yes")


def test_cancelling_a_sharer_mid_prefill_leaves_the_others_tokens(tiny, cold):
    llm = LLM(str(tiny), policy="gpu_only", max_num_batched_tokens=16)
    engine = llm.engine
    llm.generate([TURNS[0]], GREEDY, use_tqdm=False)
    engine.add_request("keep", TURNS[0], GREEDY)
    engine.add_request("drop", TURNS[0], GREEDY)
    engine.step()
    shared = engine.kv.block_table("keep")[:4]
    assert engine.kv.block_table("drop")[:4] == shared
    assert engine.abort_request("drop")
    assert all(engine.kv.pool().refcount(b) == 1 for b in shared)
    outs = {}
    while engine.has_unfinished_requests():
        for o in engine.step():
            outs[o.request_id] = o
    assert outs["keep"].token_ids == cold[0] and "drop" not in outs
    engine.kv.check()


def test_neo_demotes_evicted_device_blocks_and_promotes_host_hits_with_real_copies(tiny):
    # 6 device blocks: a second long prompt evicts the first's cached blocks, which are copied to the host
    # tier; the first prompt's next turn then fits on the device and copies them back instead of recomputing.
    first = "".join(chr(65 + i % 26) for i in range(64))
    other = "".join(chr(97 + i % 26) for i in range(90))
    prompts = [first, other, first + " and more", first + "?"]
    ref = LLM(str(tiny), policy="gpu_only", enable_prefix_caching=False)
    want = [o.token_ids for o in ref.generate(prompts, GREEDY, use_tqdm=False)]
    llm = LLM(str(tiny), policy="neo", device_kv_bytes=6 * BLOCK_BYTES)
    got = [llm.generate([p], GREEDY, use_tqdm=False)[0].token_ids for p in prompts]
    stats = llm.engine.stats()
    assert got == want
    assert stats.kv_demotions >= 2 and stats.kv_promotions >= 2, stats
    assert stats.prefix_cache_hits["device"] >= 2 * 64, stats
    llm.engine.kv.check()


def test_a_request_asking_for_prompt_logprobs_takes_no_hit(tiny):
    llm = LLM(str(tiny), policy="gpu_only")
    llm.generate([TURNS[0]], GREEDY, use_tqdm=False)
    before = llm.engine.stats().prefix_cache_hits["device"]
    out = llm.generate([TURNS[0]], SamplingParams(max_tokens=2, temperature=0.0, prompt_logprobs=0),
                       use_tqdm=False)[0]
    assert out.finish_reason == "length" and len(out.prompt_logprobs) == len(TURNS[0]) - 1
    assert llm.engine.stats().prefix_cache_hits["device"] == before        # every prompt position was computed
    llm.generate([TURNS[0]], GREEDY, use_tqdm=False)
    assert llm.engine.stats().prefix_cache_hits["device"] > before         # plain requests still hit
