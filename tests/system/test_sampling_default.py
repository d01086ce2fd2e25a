"""Sampling on the real default model: seeds, stop strings, EOS, streaming detokenization."""
import pytest

from hybridllm import LLM, SamplingParams

pytestmark = pytest.mark.slow      # the real default model

PROMPT = "Write a short poem about the sea:"


@pytest.fixture(scope="module")
def llm():
    return LLM(model="default", weight_dtype="float32")


def test_seeded_sampling_is_reproducible_alone_and_in_a_batch(llm):
    p = SamplingParams(max_tokens=24, temperature=0.9, top_p=0.95, top_k=50, seed=1234)
    (a,) = llm.generate([PROMPT], p, use_tqdm=False)
    (b,) = llm.generate([PROMPT], p, use_tqdm=False)
    assert a.token_ids == b.token_ids
    others = [SamplingParams(max_tokens=10, temperature=1.0), SamplingParams(max_tokens=30, temperature=0)]
    batch = llm.generate(["Tell me a joke.", PROMPT, "1 2 3"], [others[0], p, others[1]], use_tqdm=False)
    assert batch[1].token_ids == a.token_ids


def test_different_seeds_differ(llm):
    outs = llm.generate([PROMPT] * 4, [SamplingParams(max_tokens=24, temperature=1.0, seed=s) for s in range(4)],
                        use_tqdm=False)
    assert len({o.token_ids for o in outs}) > 1


def test_stop_string_truncates_and_reports_stop(llm):
    base = SamplingParams(max_tokens=32, temperature=0.0)
    (full,) = llm.generate(["Once upon a time, there was a little"], base, use_tqdm=False)
    assert "Emma" in full.text
    p = SamplingParams(max_tokens=32, temperature=0.0, stop=["Emma"])
    (out,) = llm.generate(["Once upon a time, there was a little"], p, use_tqdm=False)
    assert out.finish_reason == "stop"
    assert out.text == full.text[: full.text.index("Emma")]
    streamed = "".join(d.text for d in llm.stream("Once upon a time, there was a little", p))
    assert streamed == out.text


def test_eos_stops_unless_ignored(llm):
    prompt = "<|im_start|>user\nSay hi.<|im_end|>\n<|im_start|>assistant\n"
    (out,) = llm.generate([prompt], SamplingParams(max_tokens=200, temperature=0.0), use_tqdm=False)
    assert out.finish_reason == "stop" and out.token_ids[-1] in llm.engine.eos_token_ids
    assert len(out.token_ids) < 200
    n = len(out.token_ids) + 5
    (more,) = llm.generate([prompt], SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True), use_tqdm=False)
    assert more.finish_reason == "length" and len(more.token_ids) == n
    assert more.token_ids[: len(out.token_ids)] == out.token_ids


def test_incremental_detokenization_handles_multibyte_text(llm):
    tok = llm.tokenizer
    text = "Café ☕ naïve 日本語 emoji 🚀🎉 done"
    ids = tok.encode(text).ids
    from hybridllm.engine.detokenizer import IncrementalDetokenizer
    d = IncrementalDetokenizer(tok, [])
    pieces = [d.push(t) for t in ids] + [d.flush()]
    assert "".join(pieces) == tok.decode(ids)
    assert not any("\ufffd" in piece for piece in pieces)
