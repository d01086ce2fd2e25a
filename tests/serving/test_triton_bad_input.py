"""Every bad input from the issue gets INVALID_ARG (HTTP 400) naming the field and the limit,
over HTTP and gRPC, and the server keeps serving."""
from __future__ import annotations

import json

import numpy as np
import pytest

from hybridllm.serving.openai.client import raw_inputs

from .conftest import DEFAULT, TINY, TINY_NON_STREAM_CAP
from .triton_helpers import grpc_stream, http_post, metric


def _text(s: str) -> np.ndarray:
    return np.array([s.encode()], dtype=np.object_)


def _params(obj) -> np.ndarray:
    return _text(obj if isinstance(obj, str) else json.dumps(obj))


# id -> (inputs, fragments the error must contain). The tiny model: vocab 256, context 512.
CASES = {
    "text_input missing": ({"stream": np.array([True])}, ["text_input", "is missing", "input_ids"]),
    "text_input empty": ({"text_input": _text("")}, ["text_input", "is empty", "at least 1"]),
    "text_input and input_ids": ({"text_input": _text("hi"), "input_ids": np.array([1, 2], dtype=np.int32)},
                                 ["text_input", "not both"]),
    "sampling_parameters not JSON": ({"text_input": _text("hi"), "sampling_parameters": _params("{max_tokens: 3")},
                                     ["sampling_parameters", "is not JSON"]),
    "sampling_parameters not an object": ({"text_input": _text("hi"), "sampling_parameters": _params("[1, 2]")},
                                          ["sampling_parameters", "JSON object"]),
    "unknown key": ({"text_input": _text("hi"), "sampling_parameters": _params({"max_token": 3})},
                    ["sampling_parameters", "unknown key(s) max_token", "max_tokens"]),
    "max_tokens < 1": ({"text_input": _text("hi"), "sampling_parameters": _params({"max_tokens": 0})},
                       ["max_tokens", ">= 1", "got 0"]),
    "temperature < 0": ({"text_input": _text("hi"), "sampling_parameters": _params({"temperature": -0.5})},
                        ["temperature", ">= 0", "-0.5"]),
    "top_p = 0": ({"text_input": _text("hi"), "sampling_parameters": _params({"top_p": 0})},
                  ["top_p", "(0, 1]", "got 0"]),
    "top_p > 1": ({"text_input": _text("hi"), "sampling_parameters": _params({"top_p": 1.5})},
                  ["top_p", "(0, 1]", "1.5"]),
    "n > 1": ({"text_input": _text("hi"), "sampling_parameters": _params({"n": 2})},
              ["sampling_parameters.n", "only 1"]),
    "prompt longer than the context": ({"text_input": _text("z" * 600)},
                                       ["text_input", "600 tokens", "512", "at most 511"]),
    "input_ids out of vocab": ({"input_ids": np.array([5, 256, 7], dtype=np.int32)},
                               ["input_ids", "256", "[0, 256)"]),
    "input_ids negative": ({"input_ids": np.array([-1], dtype=np.int32)}, ["input_ids", "-1", "[0, 256)"]),
    "stream=false max_tokens over the cap": (
        {"text_input": _text("hi"), "stream": np.array([False]),
         "sampling_parameters": _params({"max_tokens": 10 ** 6})},
        ["max_tokens", str(10 ** 6), f"cap of {TINY_NON_STREAM_CAP}", "max_tokens_non_stream"]),
    # Request-size caps (the tiny model's: 2048 bytes, 1024 ids, 1024 bytes, 4 stops of <= 32 chars).
    "text_input over its byte cap": ({"text_input": _text("z" * 3000)},
                                     ["text_input", "3000 bytes", "cap is 2048", "max_text_input_bytes"]),
    "input_ids over their cap": ({"input_ids": (np.arange(2000) % 250).astype(np.int32)},
                                 ["input_ids", "2000 ids", "cap is 1024", "max_input_ids"]),
    "sampling_parameters over the byte cap": ({"text_input": _text("hi"),
                                               "sampling_parameters": _params({"stop": ["x" * 30] * 50})},
                                              ["sampling_parameters", "cap is 1024", "max_sampling_parameters_bytes"]),
    "too many stop strings": ({"text_input": _text("hi"), "sampling_parameters": _params({"stop": list("abcde")})},
                              ["sampling_parameters.stop", "5 stop strings", "cap is 4", "max_stop"]),
    "a JSON bomb": ({"text_input": _text("hi"), "sampling_parameters": _params("[" * 1000 + "]" * 20)},
                    ["sampling_parameters"]),
    "invalid UTF-8": ({"text_input": np.array([b"ok \xff\xfe"], dtype=np.object_)}, ["text_input", "not valid UTF-8"]),
    "stream with the input echoed": ({"text_input": _text("hi"), "stream": np.array([True]),
                                      "exclude_input_in_output": np.array([False])},
                                     ["exclude_input_in_output", "stream=true"]),
}


def _still_serves(triton):
    res = grpc_stream(triton, TINY, "fine", {"max_tokens": 3, "temperature": 0.0})
    assert res.errors == [] and res.finals == 1 and len(res.token_ids) == 3


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_grpc(triton, case):
    inputs, fragments = CASES[case]
    res = grpc_stream(triton, TINY, inputs=raw_inputs(inputs))
    assert len(res.errors) == 1, res
    for fragment in fragments:
        assert fragment in res.errors[0], (fragment, res.errors[0])
    assert res.chunks == [] and res.after_final == 0
    _still_serves(triton)


def _json_body(inputs: dict) -> dict:
    body = {}
    for name, arr in inputs.items():
        values = [v.decode() if isinstance(v, bytes) else v.item() for v in arr.reshape(-1)]
        body[name] = values if name == "input_ids" else values[0]
    return body


# JSON cannot carry invalid UTF-8; the echo case is a stream-only rule.
@pytest.mark.parametrize("case", [c for c in CASES if c not in ("stream with the input echoed", "invalid UTF-8")])
def test_bad_input_http_is_400(triton, case):
    inputs, fragments = CASES[case]
    status, text = http_post(triton, f"/v2/models/{TINY}/generate", _json_body(inputs))
    assert status == 400, (status, text)       # Triton's HTTP status for INVALID_ARG
    message = json.loads(text)["error"]
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_bad_input_on_the_default_model(triton):
    status, text = http_post(triton, f"/v2/models/{DEFAULT}/generate", {"input_ids": [1, 49152]})
    assert status == 400 and "input_ids: 49152 is not a token id in [0, 49152)" in text, text


def test_nothing_leaks_after_bad_input(triton):
    for case in CASES:
        grpc_stream(triton, TINY, inputs=raw_inputs(CASES[case][0]))
    _still_serves(triton)
    assert metric(triton, "hybridllm_num_requests_running", model=TINY) == 0
    assert metric(triton, "hybridllm_num_requests_waiting", model=TINY) == 0
