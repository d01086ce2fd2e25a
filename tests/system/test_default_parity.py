"""The real default model (SmolLM2-135M, converted from its GGUF) against HF transformers.

Greedy tokens must be equal token for token in fp32.
"""
import pytest
import torch

from hybridllm import LLM, SamplingParams

from ..helpers.arrivals import run_staggered
from ..helpers.default_prompts import GREEDY, N, PROMPTS
from ..helpers.tiny_models import hf_greedy

pytestmark = pytest.mark.slow      # the real default model


@pytest.fixture(scope="module")
def llm():
    return LLM(model="default", weight_dtype="float32", kv_cache_dtype="f32")   # exact: f32 KV


@pytest.fixture(scope="module")
def hf_tokens(default_model_path, llm):
    import transformers
    hf = transformers.AutoModelForCausalLM.from_pretrained(default_model_path, dtype=torch.float32).eval()
    return [hf_greedy(hf, llm.tokenizer.encode(p).ids, N) for p in PROMPTS]


def test_prompts_have_different_lengths(llm):
    lengths = [len(llm.tokenizer.encode(p).ids) for p in PROMPTS]
    assert len(set(lengths)) >= 8 and min(lengths) == 1 and max(lengths) > 100


def test_greedy_batched_matches_hf_token_for_token(llm, hf_tokens):
    outs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    for prompt, out, ref in zip(PROMPTS, outs, hf_tokens):
        assert list(out.token_ids) == ref, f"prompt {prompt[:40]!r}"
        assert out.finish_reason == "length"
    assert sum(llm.engine.stats().blocks_used.values()) == 0


def test_one_at_a_time_matches_hf(llm, hf_tokens):
    for prompt, ref in zip(PROMPTS, hf_tokens):
        (out,) = llm.generate([prompt], GREEDY, use_tqdm=False)
        assert list(out.token_ids) == ref


def test_staggered_arrivals_small_budget_and_preemption_match_hf(default_model_path, hf_tokens):
    # A small token budget forces chunked prefill; a small KV pool forces preemption (recompute).
    llm = LLM(model=str(default_model_path), policy="gpu_only", max_num_batched_tokens=48, max_num_seqs=6,
              device_kv_bytes=24 * 16 * 46080)   # 24 blocks of 16 tokens
    engine = llm.engine
    outs = run_staggered(engine, PROMPTS, GREEDY, every=3)
    assert engine.stats().num_preemptions > 0, "the KV pool was meant to force preemption"
    for i, ref in enumerate(hf_tokens):
        assert list(outs[f"r{i}"].token_ids) == ref, f"prompt {i}"
    assert engine.kv.num_used() == 0


def test_stream_concatenates_to_generate_text(llm):
    params = SamplingParams(max_tokens=40, temperature=0.0)
    deltas = list(llm.stream(PROMPTS[1], params))
    (full,) = llm.generate([PROMPTS[1]], params, use_tqdm=False)
    assert "".join(d.text for d in deltas) == full.text
    assert sum((d.token_ids for d in deltas), ()) == full.token_ids
    assert [d.finish_reason for d in deltas][-1] == full.finish_reason
    assert all(d.finish_reason is None for d in deltas[:-1])
    assert full.text.startswith(" girl named Emma")
