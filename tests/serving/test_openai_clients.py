"""What real OpenAI clients send, through the frontend to the real tritonserver, driven by the `openai`
package: several prompts and n per request (merged by index, usage summed, seeds seed + index), best_of,
streaming fan-out, echo with prompt logprobs, token-id prompts and max_tokens=0, prompt_logprobs, min_p,
continuous usage, vLLM's tokenizer endpoints and model cards, harmless and refused keys, bad input (400s
naming the field and the limit, the server keeps serving), tool turns in chat history, and a chat
template that writes its own BOS (tokenized once, not twice)."""
from __future__ import annotations

import json
import urllib.request

import pytest

from hybridllm import SamplingParams

from .conftest import DEFAULT, DEFAULT_MAX_N, TINY
from .triton_helpers import start_frontend as start

pytestmark = pytest.mark.slow       # the default model behind a real tritonserver
PROMPTS = ["Once upon a time, there was a little", "The capital of France is"]


def post(url: str, body: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_several_prompts_and_n_merge_by_index_with_summed_usage(client, llm):
    want = llm.generate(PROMPTS, SamplingParams(max_tokens=8, temperature=0.0), use_tqdm=False)
    got = client.completions.create(model=DEFAULT, prompt=PROMPTS, n=2, max_tokens=8, temperature=0)
    assert [c.index for c in got.choices] == [0, 1, 2, 3]
    assert [c.text for c in got.choices] == [want[0].text] * 2 + [want[1].text] * 2
    assert got.usage.prompt_tokens == sum(w.num_prompt_tokens for w in want)           # each prompt once
    assert got.usage.completion_tokens == 2 * sum(len(w.token_ids) for w in want)


def test_each_choice_samples_with_seed_plus_its_index(client, llm):
    got = client.completions.create(model=DEFAULT, prompt=PROMPTS[0], n=3, max_tokens=8, temperature=1.0, seed=7)
    want = llm.generate([PROMPTS[0]] * 3, [SamplingParams(max_tokens=8, temperature=1.0, seed=7 + i) for i in range(3)],
                        use_tqdm=False)
    assert [c.text for c in got.choices] == [w.text for w in want]
    assert len({c.text for c in got.choices}) > 1


def test_best_of_keeps_the_highest_cumulative_logprob(client, llm):
    got = client.completions.create(model=DEFAULT, prompt=PROMPTS[1], n=1, best_of=3, max_tokens=6,
                                    temperature=1.0, seed=11)
    cands = llm.generate([PROMPTS[1]] * 3, [SamplingParams(max_tokens=6, temperature=1.0, seed=11 + i, logprobs=0)
                                            for i in range(3)], use_tqdm=False)
    assert [c.text for c in got.choices] == [max(cands, key=lambda c: c.cumulative_logprob).text]
    assert got.usage.completion_tokens == sum(len(c.token_ids) for c in cands)


def test_streamed_fan_out_carries_choice_indices_and_usage(client, llm):
    want = llm.generate(PROMPTS, SamplingParams(max_tokens=6, temperature=0.0), use_tqdm=False)
    chunks = list(client.completions.create(model=DEFAULT, prompt=PROMPTS, n=2, max_tokens=6, temperature=0,
                                            stream=True, stream_options={"include_usage": True,
                                                                         "continuous_usage_stats": True}))
    texts = {i: "" for i in range(4)}
    for c in chunks:
        for ch in c.choices:
            texts[ch.index] += ch.text
    assert texts == {0: want[0].text, 1: want[0].text, 2: want[1].text, 3: want[1].text}
    assert all(c.usage is not None for c in chunks)                                   # continuous_usage_stats
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 2 * sum(len(w.token_ids) for w in want)
    finals = [ch.index for c in chunks for ch in c.choices if ch.finish_reason]
    assert sorted(finals) == [0, 1, 2, 3]


def test_echo_with_logprobs_scores_every_prompt_token(client, llm, default_model_path):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(default_model_path / "tokenizer.json"))
    want = llm.generate([PROMPTS[1]], SamplingParams(max_tokens=1, temperature=0.0, logprobs=1, prompt_logprobs=1),
                        use_tqdm=False)[0]
    got = client.completions.create(model=DEFAULT, prompt=PROMPTS[1], max_tokens=1, temperature=0, echo=True,
                                    logprobs=1).choices[0]
    lp = got.logprobs
    ids = tok.encode(PROMPTS[1]).ids
    assert got.text == PROMPTS[1] + want.text
    assert lp.tokens == [tok.decode([t]) for t in ids + list(want.token_ids)]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None              # the first token has none
    scored = [e.logprob for e in want.prompt_logprobs] + [want.logprobs[0].logprob]
    assert max(abs(a - b) for a, b in zip(lp.token_logprobs[1:], scored)) < 1e-3
    assert all(len(t) == 1 for t in lp.top_logprobs[1:])
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    # Token ids in, the prompt only out (max_tokens=0): lm-eval's and vLLM's scoring request.
    only = client.completions.create(model=DEFAULT, prompt=ids, max_tokens=0, echo=True, logprobs=0)
    assert only.choices[0].text == PROMPTS[1] and only.usage.completion_tokens == 0
    assert len(only.choices[0].logprobs.token_logprobs) == len(ids)
    # vLLM's prompt_logprobs key: its own format, the first position null.
    raw = client.completions.create(model=DEFAULT, prompt=ids, max_tokens=1, temperature=0,
                                    extra_body={"prompt_logprobs": 2}).choices[0].model_extra["prompt_logprobs"]
    assert raw[0] is None and [int(next(iter(r))) for r in raw[1:]] == ids[1:]
    assert all(len(r) in (2, 3) for r in raw[1:])


def test_chat_prompt_logprobs_ride_on_the_response_as_vllms(client, default_model_path):
    import transformers
    hf = transformers.AutoTokenizer.from_pretrained(default_model_path)
    messages = [{"role": "user", "content": "Hi"}]
    ids = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    got = client.chat.completions.create(model=DEFAULT, messages=messages, max_tokens=1,
                                         extra_body={"prompt_logprobs": 0})
    rows = got.model_extra["prompt_logprobs"]
    assert rows[0] is None and [int(next(iter(r))) for r in rows[1:]] == ids[1:]


def test_min_p_one_keeps_only_the_top_token(client, llm):
    greedy = llm.generate([PROMPTS[0]], SamplingParams(max_tokens=8, temperature=0.0), use_tqdm=False)[0]
    got = client.completions.create(model=DEFAULT, prompt=PROMPTS[0], max_tokens=8, temperature=1.0, seed=3,
                                    extra_body={"min_p": 1.0})
    assert got.choices[0].text == greedy.text


def test_tokenizer_endpoints_and_model_cards(frontend, default_model_path):
    import transformers
    hf = transformers.AutoTokenizer.from_pretrained(default_model_path)
    status, out = post(f"{frontend}/tokenize", {"prompt": PROMPTS[0]})
    assert status == 200 and out["tokens"] == hf(PROMPTS[0])["input_ids"] and out["count"] == len(out["tokens"])
    messages = [{"role": "user", "content": "Hi"}]
    status, out = post(f"{frontend}/tokenize", {"messages": messages})
    assert out["tokens"] == hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                   return_dict=True)["input_ids"]
    assert post(f"{frontend}/detokenize", {"tokens": out["tokens"]})[1]["prompt"] == \
        hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    status, err = post(f"{frontend}/detokenize", {"tokens": [10 ** 9]})
    assert status == 400 and "is not a token id in [0, 49152)" in err["error"]["message"]
    with urllib.request.urlopen(f"{frontend}/tokenizer_info", timeout=30) as r:
        info = json.loads(r.read())
    assert info["eos_token"] == hf.eos_token and info["chat_template"] == hf.chat_template
    with urllib.request.urlopen(f"{frontend}/v1/models", timeout=30) as r:
        card = json.loads(r.read())["data"][0]
    assert card["root"] == str(default_model_path) and card["max_model_len"] == 8192
    with urllib.request.urlopen(f"{frontend}/v1/models/{DEFAULT}", timeout=30) as r:
        assert json.loads(r.read())["id"] == DEFAULT
    assert post(f"{frontend}/v1/models/nope")[0] == 404


@pytest.mark.parametrize("extra, fragment", [
    ({"prompt_logprobs": 21}, "prompt_logprobs: must be an integer in [0, 20], got 21"),
    ({"n": DEFAULT_MAX_N + 1}, f"n: must be an integer in [1, {DEFAULT_MAX_N}] (the cap is the model parameter max_n)"),
    ({"best_of": DEFAULT_MAX_N + 1}, "best_of: must be an integer in [1, 4]"),
    ({"prompt": []}, "prompt: must be a non-empty string, a list of token ids, or a non-empty list of either"),
    ({"prompt": ["a", ""]}, "prompt[1]: must be a non-empty string"),
    ({"logit_bias": {"5": 3}}, "logit_bias: is not supported"),
    ({"frobnicate": 1}, "unknown parameter(s) frobnicate"),
    ({"n": 2, "best_of": 3, "stream": True}, "best_of: above n is not supported with stream=true"),
])
def test_bad_input_gets_400_naming_the_field_and_the_server_keeps_serving(frontend, extra, fragment):
    status, err = post(f"{frontend}/v1/completions", {"model": DEFAULT, "prompt": "hi", "max_tokens": 2} | extra)
    assert status == 400 and fragment in err["error"]["message"], err
    status, ok = post(f"{frontend}/v1/completions", {"model": DEFAULT, "prompt": "hi", "max_tokens": 2})
    assert status == 200 and ok["usage"]["completion_tokens"] == 2


def test_harmless_keys_are_accepted_and_meaningful_ones_refused(client, frontend):
    import openai
    got = client.chat.completions.create(model=DEFAULT, messages=[{"role": "user", "content": "Hi"}], max_tokens=2,
                                         extra_body={"reasoning_effort": "low", "store": False, "metadata": {"a": "b"}})
    assert got.usage.completion_tokens <= 2
    for extra, name in (({"response_format": {"type": "json_object"}}, "response_format"),
                        ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required"},
                         "tool_choice")):
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=DEFAULT, messages=[{"role": "user", "content": "Hi"}], max_tokens=2,
                                           extra_body=extra)
        assert e.value.body["param"] == name


# A Llama-style template: writes bos_token itself, renders tool calls, tool results and the tools list.
TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'assistant' and m['tool_calls'] %}[CALL "
            "{% for c in m['tool_calls'] %}{{ c['function']['name'] }}{% endfor %}]{% elif m['role'] == 'tool' %}"
            "[RESULT {{ m['content'] }}]{% else %}[{{ m['role'] }}] {{ m['content'] }}{% endif %}{% endfor %}"
            "{% if tools %}[TOOLS {% for t in tools %}{{ t['function']['name'] }}{% endfor %}]{% endif %}"
            "{% if add_generation_prompt %}[assistant]{% endif %}")


@pytest.fixture(scope="module")
def bos_folder(tmp_path_factory, tiny_model_dir):
    """The tiny model's folder with a tokenizer that adds <s> (id 254) and a template that writes it too."""
    import shutil

    from tokenizers import Tokenizer, processors
    folder = tmp_path_factory.mktemp("bos_tiny")
    for f in tiny_model_dir.iterdir():
        shutil.copy(f, folder / f.name)
    tok = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    del vocab[next(k for k, v in vocab.items() if v == 254)]
    vocab["<s>"] = 254
    tok = Tokenizer.from_str(json.dumps(data))
    tok.add_special_tokens(["<s>"])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 254)])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "chat_template": TEMPLATE}))
    return folder


TOOL_TURNS = [{"role": "user", "content": "Weather in Paris?"},
              {"role": "assistant", "content": None, "tool_calls": [
                  {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
              {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]
TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}}}]


def test_tool_turns_and_a_template_that_writes_its_bos(triton, bos_folder):
    import openai
    import transformers
    server, thread, url = start(triton.grpc_url, bos_folder, served_model_name=TINY, triton_model=TINY)
    try:
        hf = transformers.AutoTokenizer.from_pretrained(bos_folder)
        assert hf("ab")["input_ids"][0] == 254                       # this tokenizer does add a BOS
        c = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        for messages, tools in (([{"role": "user", "content": "Hi"}], None), (TOOL_TURNS, TOOLS)):
            want = hf.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=True,
                                          return_dict=True)["input_ids"]
            assert want.count(254) == 1                              # transformers: one BOS
            got = c.chat.completions.create(model=TINY, messages=messages, max_tokens=2, temperature=0,
                                            tools=tools or openai.NOT_GIVEN)
            assert got.usage.prompt_tokens == len(want)
            status, out = post(f"{url}/tokenize", {"messages": messages, "tools": tools})
            assert status == 200 and out["tokens"] == want
    finally:
        server.should_exit = True
        thread.join(timeout=10)
