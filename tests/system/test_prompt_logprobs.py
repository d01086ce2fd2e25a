"""Prompt logprobs (SamplingParams.prompt_logprobs) against HF transformers on a tiny random Llama, in every
prefill path: every policy, chunked prefill (chunks of 16 tokens), cpu_only fused and split, NEO's host-bound
fresh prefills and its host-tier chunks, and a prefill recomputed after preemption. min_p in the sampler.

Tolerance: 1e-4 nats for the torch executors (fp32, observed ~5e-7); 0.01 for cpu_only's OpenVINO graphs
(observed ~2e-3 on this random model). Ranks and top-k ids are compared where no near tie makes them fragile.
"""
import pytest
import torch

from hybridllm import LLM, SamplingParams

from ..helpers.tiny_models import make_tiny

PROMPTS = ["abcdefghij" * 5, "Hello there!", "x", "The quick brown fox jumps over the lazy dog"]
K = 3
BLOCK = 16 * 2 * 2 * 16 * 4          # one fp32 16-token block of the tiny model, K and V of 2 layers
POLICIES = {
    "gpu_only": dict(policy="gpu_only"),
    "gpu_offload": dict(policy="gpu_offload"),
    "partition": dict(policy="partition"),
    "cpu_only": dict(policy="cpu_only"),
    "cpu_only-split": dict(policy="cpu_only", cpu_fused=False),
    # 3 device blocks: most requests' KV lives on the host (fresh prefills in A, later chunks in B).
    "neo": dict(policy="neo", device_kv_bytes=3 * BLOCK * 2, host_kv_bytes=256 * BLOCK * 2),
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import transformers
    folder = make_tiny(tmp_path_factory.mktemp("tiny"), "llama")
    return folder, transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def reference(hf, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), -1)      # [P, vocab]


def check(entries, ids, ref, tol, k=K):
    assert len(entries) == len(ids) - 1                 # every prompt token after the first
    for j, e in enumerate(entries):
        target = ids[j + 1]
        assert e.token_id == target
        assert abs(e.logprob - float(ref[j, target])) < tol, (j, e.logprob, float(ref[j, target]))
        gaps = (ref[j] - ref[j, target]).abs()
        if not ((gaps < 2 * tol) & (gaps > 0)).any():    # no near tie around the target: its rank is exact
            assert e.rank == int((ref[j] > ref[j, target]).sum()) + 1
        assert len(e.top) == k
        top = ref[j].topk(k + 1).values
        if k and (top[:-1] - top[1:]).min() > 2 * tol:
            assert [t for t, _ in e.top] == ref[j].topk(k).indices.tolist()


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_prompt_logprobs_match_hf_in_every_policy(tiny, name):
    folder, hf = tiny
    llm = LLM(str(folder), max_num_batched_tokens=16, **POLICIES[name])
    params = SamplingParams(max_tokens=3, temperature=0.0, prompt_logprobs=K)
    outs = llm.generate(PROMPTS, params, use_tqdm=False)
    tol = 1e-2 if name.startswith("cpu_only") else 1e-4
    for prompt, out in zip(PROMPTS, outs):
        ids = llm.engine.tokenizer.encode(prompt).ids
        check(out.prompt_logprobs, ids, reference(hf, ids), tol)
    if name == "neo":
        assert llm.engine.stats().steps_by_policy.get("neo", 0) > 0       # host sub-batches really ran
    assert sum(llm.engine.stats().blocks_used.values()) == 0


def test_only_the_asking_request_gets_them_and_streams_carry_them_first(tiny):
    folder, hf = tiny
    llm = LLM(str(folder), policy="gpu_only", max_num_batched_tokens=16)
    engine = llm.engine
    engine.add_request("a", PROMPTS[0], SamplingParams(max_tokens=3, temperature=0.0, prompt_logprobs=0))
    engine.add_request("b", PROMPTS[3], SamplingParams(max_tokens=3, temperature=0.0))
    seen = {"a": [], "b": []}
    while engine.has_unfinished_requests():
        for o in engine.step():
            seen[o.request_id].append(o)
    assert all(o.prompt_logprobs is None for o in seen["b"])
    first, *middle, last = seen["a"]
    assert first.prompt_logprobs == last.prompt_logprobs and all(o.prompt_logprobs is None for o in middle)
    ids = engine.tokenizer.encode(PROMPTS[0]).ids
    check(first.prompt_logprobs, ids, reference(hf, ids), 1e-4, k=0)


def test_a_prefill_recomputed_after_preemption_scores_each_token_once(tiny):
    folder, hf = tiny
    # 6 device blocks for 4 requests growing by 40 tokens: the newest get preempted and recomputed.
    llm = LLM(str(folder), policy="gpu_only", device_kv_bytes=6 * BLOCK * 2, max_num_batched_tokens=16)
    params = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True, prompt_logprobs=1)
    outs = llm.generate(PROMPTS, params, use_tqdm=False)
    assert llm.engine.stats().num_preemptions > 0
    for prompt, out in zip(PROMPTS, outs):
        ids = llm.engine.tokenizer.encode(prompt).ids
        check(out.prompt_logprobs, ids, reference(hf, ids), 1e-4, k=1)


def test_unscored_prompt_positions_end_the_request_with_an_error(tiny):
    # What a prefix-cache hit would do to a request asking for prompt logprobs: positions whose logits never
    # ran. The request must fail loudly, never answer with a short list (a silently wrong score).
    folder, _ = tiny
    llm = LLM(str(folder), policy="gpu_only", max_num_batched_tokens=16)
    engine = llm.engine
    engine.add_request("a", PROMPTS[0], SamplingParams(max_tokens=3, temperature=0.0, prompt_logprobs=0))
    engine.add_request("b", PROMPTS[3], SamplingParams(max_tokens=3, temperature=0.0))
    engine.step()                                                # the first 16-token chunk of "a"
    engine.scheduler.get("a").prompt_logprobs.clear()            # as if its first chunk came from a cache
    outs = {}
    while engine.has_unfinished_requests():
        outs.update({o.request_id: o for o in engine.step() if o.finished})
    assert outs["a"].finish_reason == "error" and "prompt_logprobs: positions 0..15" in outs["a"].error
    assert outs["b"].finish_reason == "length"                   # the others carry on
    assert sum(engine.stats().blocks_used.values()) == 0


def test_prompt_logprobs_and_min_p_are_checked():
    with pytest.raises(ValueError, match=r"prompt_logprobs must be None or an integer in \[0, 20\], got 21"):
        SamplingParams(prompt_logprobs=21)
    with pytest.raises(ValueError, match=r"min_p must be a number in \[0, 1\], got 1.5"):
        SamplingParams(min_p=1.5)


def test_min_p_keeps_only_tokens_near_the_top(tiny):
    folder, hf = tiny
    llm = LLM(str(folder), policy="gpu_only")
    ids = llm.engine.tokenizer.encode(PROMPTS[1]).ids
    probs = reference(hf, ids)[-1].exp()                                              # [vocab]
    allowed = set((probs >= 0.9 * probs.max()).nonzero()[:, 0].tolist())
    assert 1 <= len(allowed) < 20                   # the random model's top is flat but not that flat
    outs = llm.generate([PROMPTS[1]] * 40, [SamplingParams(max_tokens=1, temperature=1.0, min_p=0.9, seed=s)
                                            for s in range(40)], use_tqdm=False)
    assert {o.token_ids[0] for o in outs} <= allowed
    free = llm.generate([PROMPTS[1]] * 40, [SamplingParams(max_tokens=1, temperature=1.0, seed=s)
                                            for s in range(40)], use_tqdm=False)
    assert not {o.token_ids[0] for o in free} <= allowed       # without min_p the draws spread wider
