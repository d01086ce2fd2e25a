"""request_io: Triton inputs -> GenerateRequest, without a server."""
from __future__ import annotations

import json

import numpy as np
import pytest

from hybridllm.serving.triton.options import ServingLimits
from hybridllm.serving.triton.request_io import RequestError, output_arrays, parse_request

LIMITS = ServingLimits(max_tokens_non_stream=50)
VOCAB = 100


def parse(get, limits, parameters=None):
    return parse_request(get, limits, parameters, vocab_size=VOCAB)


def _get(**inputs):
    arrays = {}
    for name, value in inputs.items():
        if isinstance(value, str):
            value = np.array([value.encode()], dtype=np.object_)
        elif isinstance(value, bytes):
            value = np.array([value], dtype=np.object_)
        elif isinstance(value, bool):
            value = np.array([value])
        elif isinstance(value, dict):
            value = np.array([json.dumps(value).encode()], dtype=np.object_)
        arrays[name] = value
    return arrays.get


def test_defaults_follow_vllm_backend():
    r = parse(_get(text_input="hi"), LIMITS)
    assert (r.prompt, r.prompt_token_ids, r.stream, r.prepend_input) == ("hi", None, False, True)
    assert r.params.max_tokens == 16
    r = parse(_get(text_input="hi", stream=True), LIMITS)
    assert r.stream and not r.prepend_input          # streaming never echoes the prompt
    r = parse(_get(text_input="hi", exclude_input_in_output=True), LIMITS)
    assert not r.prepend_input


def test_sampling_parameters_typed_and_as_strings():
    r = parse(_get(text_input="hi", sampling_parameters={
        "max_tokens": "7", "temperature": "0.5", "top_p": 0.9, "top_k": "3", "seed": 4, "stop": ["."],
        "ignore_eos": "true"}), LIMITS)
    p = r.params
    assert (p.max_tokens, p.temperature, p.top_p, p.top_k, p.seed, p.stop, p.ignore_eos) == \
        (7, 0.5, 0.9, 3, 4, (".",), True)


def test_openai_frontend_defaults_are_accepted():
    # What Triton's OpenAI frontend (--backend vllm) dumps for a plain completion request.
    sent = {"best_of": 1, "frequency_penalty": 0.0, "n": 1, "presence_penalty": 0.0, "temperature": 1.0,
            "top_p": 1.0, "logprobs": False, "max_tokens": 5}
    assert parse(_get(text_input="hi", sampling_parameters=sent), LIMITS).params.max_tokens == 5


@pytest.mark.parametrize("params, fragment", [
    ({"n": 2}, "sampling_parameters.n: 2 is not supported; only 1"),
    ({"frequency_penalty": 2.5}, "frequency_penalty must be a number in [-2, 2], got 2.5"),
    ({"min_tokens": 9, "max_tokens": 5}, "min_tokens (9) must be at most max_tokens (5)"),
    ({"logprobs": 21}, "logprobs must be None or an integer in [0, 20]"),
    ({"top_logprobs": 2}, "sampling_parameters.top_logprobs: 2 is not supported"),
    ({"temperature": float("nan")}, "temperature must be a finite number >= 0, got nan"),
    ({"max_tokens": 2.5}, "max_tokens must be an integer >= 1"),
    ({"stop": [1]}, "stop must be a string or a list of non-empty strings"),
    ({"max_tokens": 51}, "51 is over the cap of 50"),
])
def test_bad_sampling_values(params, fragment):
    with pytest.raises(RequestError) as e:
        parse(_get(text_input="hi", sampling_parameters=params), LIMITS)
    assert fragment in str(e.value)


def test_the_keys_clients_send_are_implemented():
    # genai-perf's vLLM converter sends min_tokens as a string in its deterministic mode.
    r = parse(_get(text_input="hi", sampling_parameters={
        "min_tokens": "4", "max_tokens": "8", "presence_penalty": "0.5", "frequency_penalty": 0.25,
        "repetition_penalty": "1.2", "logprobs": "2", "stop_token_ids": [7, 9], "seed": "3"}), LIMITS)
    p = r.params
    assert (p.min_tokens, p.presence_penalty, p.frequency_penalty, p.repetition_penalty, p.logprobs,
            p.stop_token_ids, p.seed) == (4, 0.5, 0.25, 1.2, 2, (7, 9), 3)
    asked = parse(_get(text_input="hi", return_logprobs=True), LIMITS)
    assert asked.params.logprobs == 0 and parse(_get(text_input="hi"), LIMITS).params.logprobs is None


def test_logprob_outputs_are_in_vllm_backends_format():
    from hybridllm.engine.sampler import TokenLogprob
    decode = {5: "a", 6: "b", 7: "c"}.get
    out = output_arrays("a", (5,), None, 2, [TokenLogprob(5, -0.5, ((5, -0.5), (6, -1.5)), rank=1)], -0.5,
                        decode=decode)
    # {token_id: {logprob, rank, decoded_token}} per token: the token itself first, then the top k.
    assert json.loads(out["logprobs"][0]) == [{"5": {"logprob": -0.5, "rank": 1, "decoded_token": "a"},
                                               "6": {"logprob": -1.5, "rank": 2, "decoded_token": "b"}}]
    assert out["cumulative_logprob"].dtype == np.float32 and out["cumulative_logprob"][0] == -0.5
    assert "logprobs" not in output_arrays("a", (5,), None, 2)
    # A token outside the top k keeps its own rank and comes first; null stands for the prompt's first token.
    out = output_arrays("a", (), None, 2, prompt_logprobs=[TokenLogprob(7, -3.0, ((6, -1.5),), rank=9)],
                        decode=decode)
    assert json.loads(out["prompt_logprobs"][0]) == [None, {"7": {"logprob": -3.0, "rank": 9, "decoded_token": "c"},
                                                            "6": {"logprob": -1.5, "rank": 1, "decoded_token": "b"}}]
    assert list(json.loads(out["prompt_logprobs"][0])[1]) == ["7", "6"]


def test_prompt_logprobs_and_min_p_are_sampling_parameters():
    p = parse(_get(text_input="hi", sampling_parameters=json.dumps({"prompt_logprobs": "2", "min_p": "0.1"})),
              LIMITS).params
    assert (p.prompt_logprobs, p.min_p) == (2, 0.1)
    with pytest.raises(RequestError, match=r"prompt_logprobs must be None or an integer in \[0, 20\], got 21"):
        parse(_get(text_input="hi", sampling_parameters=json.dumps({"prompt_logprobs": 21})), LIMITS)


CAPS = ServingLimits(max_tokens_non_stream=50, max_text_input_bytes=16, max_input_ids=4,
              max_sampling_parameters_bytes=64, max_stop=2, max_stop_length=5)


@pytest.mark.parametrize("inputs, fragment", [
    ({"text_input": "é" * 9}, "text_input: is 18 bytes; the cap is 16 (model parameter max_text_input_bytes)"),
    ({"input_ids": [1, 2, 3, 4, 5]}, "input_ids: has 5 ids; the cap is 4 (model parameter max_input_ids)"),
    ({"text_input": "hi", "sampling_parameters": {"stop": ["a" * 40, "b" * 40]}},
     "the cap is 64 (model parameter max_sampling_parameters_bytes)"),
    ({"text_input": "hi", "sampling_parameters": {"stop": ["a", "b"], "stop_token_ids": [3]}},
     "sampling_parameters.stop: 3 stop strings and stop_token_ids; the cap is 2 (model parameter max_stop)"),
    ({"text_input": "hi", "sampling_parameters": {"stop": ["abcdef"]}},
     "sampling_parameters.stop: a stop string is 6 characters; the cap is 5 (model parameter max_stop_length)"),
    ({"text_input": "hi", "sampling_parameters": "[" * 60 + "]" * 4}, "sampling_parameters: is not JSON"),
])
def test_request_size_caps_name_the_cap(inputs, fragment):
    with pytest.raises(RequestError) as e:
        parse(_get(**inputs), CAPS)
    assert fragment in str(e.value), str(e.value)
    assert parse(_get(text_input="é" * 8), CAPS).prompt == "é" * 8          # at the cap: fine


def test_a_json_bomb_within_the_byte_cap_is_refused():
    bomb = "[" * 60000 + "]" * 60000
    with pytest.raises(RequestError) as e:
        parse(_get(text_input="hi", sampling_parameters=bomb),
                      ServingLimits(max_tokens_non_stream=50, max_sampling_parameters_bytes=1 << 20))
    assert "sampling_parameters" in str(e.value)


def test_stream_lifts_the_non_stream_cap():
    r = parse(_get(text_input="hi", stream=True, sampling_parameters={"max_tokens": 1000}), LIMITS)
    assert r.params.max_tokens == 1000


def test_request_parameters_when_no_sampling_input():
    # HTTP generate's extra top-level keys arrive as request parameters; triton_* ones are Triton's.
    r = parse(_get(text_input="hi"), LIMITS,
                      json.dumps({"max_tokens": 3, "temperature": 0, "triton_enable_empty_final_response": True}))
    assert r.params.max_tokens == 3 and r.params.greedy
    with pytest.raises(RequestError, match="parameters: unknown key"):
        parse(_get(text_input="hi"), LIMITS, json.dumps({"max_tokns": 3}))


def test_input_ids():
    r = parse(_get(input_ids=np.array([1, 2, 99], dtype=np.int32)), LIMITS)
    assert r.prompt is None and r.prompt_token_ids == (1, 2, 99)
    with pytest.raises(RequestError, match=r"input_ids: 100 is not a token id in \[0, 100\)"):
        parse(_get(input_ids=np.array([1, 100], dtype=np.int32)), LIMITS)
    with pytest.raises(RequestError, match="input_ids: is empty"):
        parse(_get(input_ids=np.array([], dtype=np.int32)), LIMITS)


@pytest.mark.parametrize("inputs, fragment", [
    ({"text_input": np.array([b"a", b"b"], dtype=np.object_)}, "text_input: expected exactly 1 element"),
    ({"text_input": b"\xff\xfe"}, "text_input: is not valid UTF-8"),
    ({"text_input": "hi", "stream": np.array([b"true"], dtype=np.object_)}, "stream: must be BOOL"),
])
def test_malformed_tensors(inputs, fragment):
    with pytest.raises(RequestError) as e:
        parse(_get(**inputs), LIMITS)
    assert fragment in str(e.value)


def test_output_arrays_match_the_contract():
    out = output_arrays("hé", (5, 6), "stop", 3)
    assert out["text_output"].dtype == np.object_ and out["text_output"][0] == "hé".encode()
    assert out["output_ids"].dtype == np.int32 and out["output_ids"].tolist() == [5, 6]
    assert out["finish_reason"][0] == b"stop"
    assert out["num_input_tokens"].dtype == np.uint32 and out["num_input_tokens"].tolist() == [3]
    assert out["num_output_tokens"].tolist() == [2]
    assert output_arrays("", (), None, 1)["finish_reason"][0] == b""
