"""The OpenAI-compatible frontend in front of the real tritonserver, driven by the `openai` package:
completions and chat, streaming and not, stop strings, usage, logprobs, bad requests, a client that
disconnects (its KV blocks come back), and a frontend whose Triton is gone (503)."""
from __future__ import annotations

import time

import pytest

from hybridllm import SamplingParams

from .conftest import DEFAULT
from .triton_helpers import free_ports, metric, start_frontend as start

pytestmark = pytest.mark.slow       # the default model behind a real tritonserver
PROMPT = "Once upon a time, there was a little"
CHAT = [{"role": "user", "content": "What is the capital of France?"}]


def chat_prompt(default_model_path, messages) -> str:
    import transformers       # the reference rendering of the template
    tok = transformers.AutoTokenizer.from_pretrained(default_model_path)
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list().data] == [DEFAULT]


def test_completion_equals_llm_generate(client, llm):
    want = llm.generate([PROMPT], SamplingParams(max_tokens=20, temperature=0.0), use_tqdm=False)[0]
    got = client.completions.create(model=DEFAULT, prompt=PROMPT, max_tokens=20, temperature=0)
    assert got.choices[0].text == want.text and got.choices[0].finish_reason == want.finish_reason
    assert (got.usage.prompt_tokens, got.usage.completion_tokens) == (want.num_prompt_tokens, len(want.token_ids))
    assert got.usage.total_tokens == got.usage.prompt_tokens + got.usage.completion_tokens


def test_chat_equals_llm_generate_on_the_templated_prompt(client, llm, default_model_path):
    prompt = chat_prompt(default_model_path, CHAT)
    want = llm.generate([prompt], SamplingParams(max_tokens=24, temperature=0.0), use_tqdm=False)[0]
    got = client.chat.completions.create(model=DEFAULT, messages=CHAT, max_tokens=24, temperature=0)
    assert got.choices[0].message.role == "assistant"
    assert got.choices[0].message.content == want.text
    assert got.usage.prompt_tokens == want.num_prompt_tokens
    stream = client.chat.completions.create(model=DEFAULT, messages=CHAT, max_tokens=24, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want.text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == want.finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(want.token_ids)


def test_streamed_completion_with_a_stop_string(client, llm):
    want = llm.generate([PROMPT], SamplingParams(max_tokens=40, temperature=0.0, stop=["."]), use_tqdm=False)[0]
    assert want.finish_reason == "stop"
    chunks = list(client.completions.create(model=DEFAULT, prompt=PROMPT, max_tokens=40, temperature=0, stop=["."],
                                            stream=True))
    assert "".join(c.choices[0].text for c in chunks) == want.text and "." not in want.text
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_sampling_keys_and_logprobs(client, llm, default_model_path):
    got = client.chat.completions.create(
        model=DEFAULT, messages=CHAT, max_tokens=8, temperature=0, logprobs=True, top_logprobs=2,
        presence_penalty=0.5, seed=3, extra_body={"min_tokens": 8, "repetition_penalty": 1.2})
    want = llm.generate([chat_prompt(default_model_path, CHAT)],
                        SamplingParams(max_tokens=8, temperature=0.0, presence_penalty=0.5, seed=3, min_tokens=8,
                                       repetition_penalty=1.2, logprobs=2), use_tqdm=False)[0]
    assert got.choices[0].message.content == want.text and got.usage.completion_tokens == 8
    content = got.choices[0].logprobs.content
    assert [round(c.logprob, 3) for c in content] == [round(lp.logprob, 3) for lp in want.logprobs]
    assert all(len(c.top_logprobs) == 2 for c in content)


@pytest.mark.parametrize("kwargs, status, fragment", [
    ({"temperature": -1}, 400, "temperature must be a finite number >= 0"),
    ({"n": 99}, 400, "n: must be an integer in [1, 4]"),
    ({"model": "gpt-4"}, 404, "'gpt-4' does not exist"),
    ({"max_tokens": -1}, 400, "max_tokens must be an integer >= 1"),
])
def test_bad_requests_get_openai_errors(client, kwargs, status, fragment):
    import openai
    args = dict(model=DEFAULT, prompt=PROMPT, max_tokens=4) | kwargs
    with pytest.raises(openai.APIStatusError) as e:
        client.completions.create(**args)
    assert e.value.status_code == status and fragment in e.value.message, e.value.message
    assert client.completions.create(model=DEFAULT, prompt=PROMPT, max_tokens=2).usage.completion_tokens == 2


def test_a_client_that_disconnects_frees_its_kv_blocks(client, triton):
    before = metric(triton, "hybridllm_generation_tokens_total", model=DEFAULT)
    stream = client.completions.create(model=DEFAULT, prompt=PROMPT, max_tokens=400, temperature=0, stream=True,
                                       extra_body={"ignore_eos": True})
    for i, _ in enumerate(stream):
        if i == 3:
            break
    assert metric(triton, "hybridllm_kv_blocks_used", model=DEFAULT) > 0
    stream.close()                                          # the client goes away mid-stream
    deadline = time.monotonic() + 60
    while metric(triton, "hybridllm_kv_blocks_used", model=DEFAULT) != 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert metric(triton, "hybridllm_kv_blocks_used", model=DEFAULT) == 0, "blocks not freed"
    assert metric(triton, "hybridllm_generation_tokens_total", model=DEFAULT) - before < 400


def status_of(url: str) -> int:
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_health_and_503_when_triton_is_gone(frontend, default_model_path):
    import openai
    assert status_of(f"{frontend}/health") == 200
    (dead,) = free_ports(1)
    server, thread, url = start(f"127.0.0.1:{dead}", default_model_path)
    try:
        assert status_of(f"{url}/health") == 503
        c = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        with pytest.raises(openai.APIStatusError) as e:
            c.completions.create(model=DEFAULT, prompt="hi", max_tokens=2)
        assert e.value.status_code == 503
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_chat_without_a_template_names_the_fix(triton, tiny_model_dir):
    import openai
    server, thread, url = start(triton.grpc_url, tiny_model_dir)
    try:
        c = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model=DEFAULT, messages=CHAT, max_tokens=2)
        assert "no chat template" in e.value.message and "/v1/completions" in e.value.message
    finally:
        server.should_exit = True
        thread.join(timeout=10)
