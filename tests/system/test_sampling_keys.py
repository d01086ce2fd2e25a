"""The sampling keys OpenAI and vLLM clients send, against references: HF transformers' own
repetition penalty, a direct re-computation of OpenAI's frequency/presence penalties and of logprobs
from HF's logits (tiny random Llama, fp32; logprobs to 1e-4), min_tokens and stop_token_ids."""
import math

import pytest
import torch

from hybridllm import LLM, SamplingParams
from hybridllm.engine.logits_processors import process

from ..helpers.tiny_models import make_tiny

N = 12
PROMPTS = ["aaaa bbbb aaaa", "the quick brown fox", "xyz" * 5]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import transformers
    folder = make_tiny(tmp_path_factory.mktemp("keys") / "llama", "llama", seed=3)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return folder, hf, LLM(str(folder), policy="gpu_only", max_num_batched_tokens=64)


def reference(hf, prompt_ids, n, adjust):
    """Greedy decoding on HF's logits, each step's row changed by adjust(row, output_ids)."""
    out, logprobs = [], []
    with torch.no_grad():
        for _ in range(n):
            row = hf(torch.tensor([prompt_ids + out])).logits[0, -1]
            logprobs.append(torch.log_softmax(row, -1))
            out.append(int(adjust(row.clone(), out).argmax()))
    return out, logprobs


def test_repetition_penalty_matches_hf_generate(tiny):
    folder, hf, llm = tiny
    for prompt in PROMPTS:
        ids = llm.tokenizer.encode(prompt).ids
        # pad_token_id: not 0, which is a space here and would be masked out of the prompt
        want = hf.generate(torch.tensor([ids]), max_new_tokens=N, min_new_tokens=N, do_sample=False,
                           repetition_penalty=1.7, pad_token_id=255)[0, len(ids):].tolist()
        (out,) = llm.generate([prompt], SamplingParams(max_tokens=N, temperature=0, ignore_eos=True,
                                                       repetition_penalty=1.7), use_tqdm=False)
        assert list(out.token_ids) == want, prompt
        plain, _ = reference(hf, ids, N, lambda row, out: row)
        assert want != plain or prompt == PROMPTS[-1]     # the penalty changed something


@pytest.mark.parametrize("freq,pres", [(0.9, 0.0), (0.0, 1.5), (0.6, -0.4)])
def test_frequency_and_presence_penalties(tiny, freq, pres):
    _, hf, llm = tiny

    def penalize(row, out):
        for t in set(out):
            row[t] -= freq * out.count(t) + pres
        return row
    params = SamplingParams(max_tokens=N, temperature=0, ignore_eos=True, frequency_penalty=freq,
                            presence_penalty=pres)
    outs = llm.generate(PROMPTS, params, use_tqdm=False)
    for prompt, out in zip(PROMPTS, outs):
        want, _ = reference(hf, llm.tokenizer.encode(prompt).ids, N, penalize)
        assert list(out.token_ids) == want, prompt


def test_logprobs_are_the_models_distribution(tiny):
    _, hf, llm = tiny
    ids = llm.tokenizer.encode(PROMPTS[1]).ids
    (out,) = llm.generate([PROMPTS[1]], SamplingParams(max_tokens=N, temperature=0, ignore_eos=True, logprobs=3),
                          use_tqdm=False)
    want_ids, want_lp = reference(hf, ids, N, lambda row, out: row)
    assert list(out.token_ids) == want_ids and len(out.logprobs) == N
    for tok, lp, ref in zip(out.token_ids, out.logprobs, want_lp):
        assert lp.token_id == tok and abs(lp.logprob - float(ref[tok])) < 1e-4
        vals, top = torch.topk(ref, 3)
        assert [t for t, _ in lp.top] == top.tolist()
        assert all(abs(v - float(r)) < 1e-4 for (_, v), r in zip(lp.top, vals))
    assert math.isclose(out.cumulative_logprob, sum(lp.logprob for lp in out.logprobs), rel_tol=1e-9)


def test_streamed_deltas_carry_their_logprobs(tiny):
    _, _, llm = tiny
    engine = llm.engine
    engine.add_request("s", PROMPTS[0], SamplingParams(max_tokens=5, temperature=0.8, seed=1, logprobs=0))
    got = []
    while engine.has_unfinished_requests():
        for o in engine.step():
            got.extend(o.delta_logprobs)
            assert all(lp.top == () for lp in o.delta_logprobs)
            last = o
    assert [lp.token_id for lp in got] == list(last.token_ids) and len(got) == 5


def test_min_tokens_and_stop_token_ids(tiny):
    _, hf, llm = tiny
    ids = llm.tokenizer.encode(PROMPTS[2]).ids
    plain, _ = reference(hf, ids, N, lambda row, out: row)
    stop = plain[1]                                     # greedy would emit it second
    (early,) = llm.generate([PROMPTS[2]], SamplingParams(max_tokens=N, temperature=0, stop_token_ids=[stop]),
                            use_tqdm=False)
    cut = plain.index(stop) + 1
    assert list(early.token_ids) == plain[:cut] and early.finish_reason == "stop"

    def banned_until_4(row, out):
        if len(out) < 4:
            row[stop] = float("-inf")
        return row
    want, _ = reference(hf, ids, N, banned_until_4)
    (late,) = llm.generate([PROMPTS[2]], SamplingParams(max_tokens=N, temperature=0, stop_token_ids=[stop],
                                                        min_tokens=4), use_tqdm=False)
    assert stop not in late.token_ids[:4]
    end = want.index(stop) + 1 if stop in want[4:] else N
    assert list(late.token_ids) == want[:end]
    assert llm.engine.kv.num_used() == 0


def test_min_tokens_masks_eos_unless_ignored():
    row = torch.zeros(8)
    p = SamplingParams(max_tokens=5, min_tokens=2, stop_token_ids=[3])
    masked = process(row, p, [], [1], eos_ids=[7])
    assert torch.isinf(masked[[3, 7]]).all() and torch.isfinite(masked[[0, 1, 2, 4, 5, 6]]).all()
    assert torch.isfinite(process(row, p, [], [1, 2], eos_ids=[7])).all()          # min_tokens reached
    ignored = SamplingParams(max_tokens=5, min_tokens=2, ignore_eos=True)
    assert torch.isfinite(process(row, ignored, [], [], eos_ids=[7])).all()


def test_repetition_penalty_scales_by_sign():
    row = torch.tensor([2.0, -2.0, 2.0, -2.0])
    p = SamplingParams(repetition_penalty=2.0)
    assert process(row, p, [0], [1], eos_ids=()).tolist() == [1.0, -4.0, 2.0, -2.0]
