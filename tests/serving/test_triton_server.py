"""Against the real tritonserver: streaming parity with LLM.generate, concurrency, cancellation,
metrics, and a mixed load of good and bad requests."""
from __future__ import annotations

import json
import queue
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from hybridllm import LLM, SamplingParams
from hybridllm.serving.openai.client import build_inputs, raw_inputs
from hybridllm.serving.triton.metrics import FAMILIES

from .conftest import DEFAULT, TINY
from .triton_helpers import grpc_stream, http_post, metric, scrape, sse_events

PROMPT = "Once upon a time, there was a little"
GREEDY = {"max_tokens": 24, "temperature": 0.0}


@pytest.fixture(scope="module")
def reference(default_model_path):
    llm = LLM(str(default_model_path), device_kv_bytes=64 << 20)
    (out,) = llm.generate([PROMPT], SamplingParams(**GREEDY), use_tqdm=False)
    assert out.num_prompt_tokens == len(llm.tokenizer.encode(PROMPT).ids)
    return out


def _ids(value) -> list[int]:
    # Triton's JSON writes a 1-element output as a scalar.
    return [value] if isinstance(value, int) else list(value)


@pytest.mark.slow
def test_grpc_stream_equals_llm_generate(triton, reference):
    res = grpc_stream(triton, DEFAULT, PROMPT, GREEDY)
    assert res.errors == [] and res.finals == 1 and res.after_final == 0
    assert res.text == reference.text
    assert res.token_ids == list(reference.token_ids)
    assert len(res.chunks) == len(reference.token_ids)          # a response per token
    assert [c.finish_reason for c in res.chunks[:-1]] == [None] * (len(res.chunks) - 1)
    assert res.chunks[-1].finish_reason == reference.finish_reason
    assert {c.num_input_tokens for c in res.chunks} == {reference.num_prompt_tokens}


@pytest.mark.slow
def test_http_generate_stream_equals_llm_generate(triton, reference):
    status, body = http_post(triton, f"/v2/models/{DEFAULT}/generate_stream",
                             {"text_input": PROMPT, "stream": True, "sampling_parameters": json.dumps(GREEDY)})
    assert status == 200, body
    events = sse_events(body)
    assert all("error" not in e for e in events), events
    assert "".join(e["text_output"] for e in events) == reference.text
    assert [t for e in events for t in _ids(e["output_ids"])] == list(reference.token_ids)
    assert events[-1]["finish_reason"] == reference.finish_reason


@pytest.mark.slow
def test_non_streaming_answers_once_and_echoes_the_prompt(triton, reference):
    res = grpc_stream(triton, DEFAULT, PROMPT, GREEDY, stream=False)
    assert res.errors == [] and res.finals == 1 and len(res.chunks) == 1
    assert res.chunks[0].text == PROMPT + reference.text     # vllm_backend: echoed unless excluded
    assert list(res.chunks[0].token_ids) == list(reference.token_ids)
    res = grpc_stream(triton, DEFAULT, PROMPT, GREEDY, stream=False, exclude_input_in_output=True)
    assert res.chunks[0].text == reference.text


@pytest.mark.slow
def test_input_ids_instead_of_text(triton, reference, default_model_path):
    from tokenizers import Tokenizer
    ids = Tokenizer.from_file(str(default_model_path / "tokenizer.json")).encode(PROMPT).ids
    status, body = http_post(triton, f"/v2/models/{DEFAULT}/generate",
                             {"input_ids": ids, "exclude_input_in_output": True,
                              "sampling_parameters": json.dumps(GREEDY)})
    assert status == 200, body
    out = json.loads(body)
    assert _ids(out["output_ids"]) == list(reference.token_ids)
    assert out["text_output"] == reference.text
    assert out["num_input_tokens"] == reference.num_prompt_tokens


@pytest.mark.slow
def test_sampling_keys_as_strings_and_logprob_outputs(triton, default_model_path):
    # String values, as genai-perf's vLLM converter and vllm_backend's client send them.
    keys = {"max_tokens": "10", "temperature": "0", "min_tokens": "6", "repetition_penalty": "1.3",
            "presence_penalty": "0.4", "logprobs": "2", "stop_token_ids": [2]}
    status, body = http_post(triton, f"/v2/models/{DEFAULT}/generate",
                             {"text_input": PROMPT, "exclude_input_in_output": True, "return_logprobs": True,
                              "return_cumulative_logprob": True, "sampling_parameters": json.dumps(keys)})
    assert status == 200, body
    out = json.loads(body)
    want = LLM(str(default_model_path), device_kv_bytes=64 << 20).generate(
        [PROMPT], SamplingParams(max_tokens=10, temperature=0.0, min_tokens=6, repetition_penalty=1.3,
                                 presence_penalty=0.4, logprobs=2, stop_token_ids=[2]), use_tqdm=False)[0]
    assert _ids(out["output_ids"]) == list(want.token_ids) and out["text_output"] == want.text
    # vllm_backend's format: per token {token_id: {logprob, rank, decoded_token}}, the token first, then its top 2.
    rows = json.loads(out["logprobs"])
    assert [int(next(iter(r))) for r in rows] == list(want.token_ids)
    assert all(2 <= len(r) <= 3 and sorted(v["rank"] for v in r.values())[:2] == [1, 2] for r in rows)
    assert [round(next(iter(r.values()))["logprob"], 4) for r in rows] == [round(lp.logprob, 4) for lp in want.logprobs]
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(default_model_path / "tokenizer.json"))
    assert all(v["decoded_token"] == tok.decode([int(t)], skip_special_tokens=False) for r in rows for t, v in r.items())
    assert abs(out["cumulative_logprob"] - want.cumulative_logprob) < 1e-3


@pytest.mark.slow
def test_prompt_logprobs_output_over_grpc_streams_first(triton, default_model_path):
    llm = LLM(str(default_model_path), device_kv_bytes=64 << 20)
    want = llm.generate([PROMPT], SamplingParams(max_tokens=3, temperature=0.0, prompt_logprobs=1), use_tqdm=False)[0]
    res = grpc_stream(triton, DEFAULT, PROMPT, {"max_tokens": 3, "temperature": 0, "prompt_logprobs": 1})
    assert res.errors == [] and res.finals == 1
    given = [c.prompt_logprobs for c in res.chunks if c.prompt_logprobs is not None]
    assert len(given) == 1 and res.chunks[0].prompt_logprobs is not None        # once, on the first response
    rows = given[0]
    assert rows[0] is None and len(rows) == want.num_prompt_tokens
    assert [int(next(iter(r))) for r in rows[1:]] == [e.token_id for e in want.prompt_logprobs]
    assert max(abs(next(iter(r.values()))["logprob"] - e.logprob) for r, e in zip(rows[1:], want.prompt_logprobs)) < 1e-3


@pytest.mark.slow
def test_the_request_tritons_openai_frontend_sends(triton):
    # Read from triton-inference-server/server python/openai (engine/utils/triton.py, backend vllm):
    # BYTES/BOOL tensors of shape [1], its pydantic request dumped without None as sampling_parameters
    # (defaults included), and the two return_* switches; it reads usage from UINT32 outputs.
    import numpy as np
    chat_defaults = {"frequency_penalty": 0.0, "logprobs": False, "n": 1, "presence_penalty": 0.0,
                     "temperature": 0.0, "top_p": 1.0, "max_tokens": 8}
    prompt = "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n"
    res = grpc_stream(triton, DEFAULT, inputs=raw_inputs({
        "text_input": np.array([prompt.encode()], dtype=np.object_),
        "stream": np.array([False]), "exclude_input_in_output": np.array([True]),
        "sampling_parameters": np.array([json.dumps(chat_defaults).encode()], dtype=np.object_),
        "return_num_input_tokens": np.array([True]), "return_num_output_tokens": np.array([True])}))
    assert res.errors == [] and res.finals == 1 and len(res.chunks) == 1, res.errors
    assert not res.chunks[0].text.startswith("<|im_start|>")            # the prompt is excluded
    assert 1 <= len(res.chunks[0].token_ids) <= 8 and res.chunks[0].num_input_tokens > 5


@pytest.mark.slow
def test_the_request_genai_perfs_vllm_converter_sends(triton):
    # Read from genai-perf's inputs/converters/vllm_converter.py: text_input, exclude_input_in_output
    # [True], stream [True], and max_tokens / min_tokens as strings in deterministic-output mode.
    import numpy as np
    sampling = json.dumps({"max_tokens": "24", "min_tokens": "24"})
    prompt = "<|im_start|>user\nWhat is 2+2? Answer with a number.<|im_end|>\n<|im_start|>assistant\n"   # ~7 tokens
    res = grpc_stream(triton, DEFAULT, inputs=raw_inputs({
        "text_input": np.array([prompt.encode()], dtype=np.object_), "exclude_input_in_output": np.array([True]),
        "stream": np.array([True]), "sampling_parameters": np.array([sampling.encode()], dtype=np.object_)}))
    assert res.errors == [] and res.finals == 1
    assert len(res.token_ids) == 24 and res.chunks[-1].finish_reason == "length"
    free = grpc_stream(triton, DEFAULT, prompt, {"max_tokens": 24, "temperature": 0.0})
    assert len(free.token_ids) < 24 and free.chunks[-1].finish_reason == "stop"     # what min_tokens prevented


def test_32_concurrent_streams_none_lost_each_one_final(triton):
    steps_before = _metric_or_0(triton, "hybridllm_steps_total", model=TINY)  # no series before the 1st step
    want = {i: 20 + i for i in range(32)}
    with ThreadPoolExecutor(32) as pool:
        futures = {i: pool.submit(grpc_stream, triton, TINY, f"request {i}:",
                                  {"max_tokens": n, "temperature": 0.0, "ignore_eos": True})
                   for i, n in want.items()}
        results = {i: f.result(timeout=300) for i, f in futures.items()}
    for i, res in results.items():
        assert res.errors == [], (i, res.errors)
        assert res.finals == 1 and res.after_final == 0, (i, res.finals, res.after_final)
        assert len(res.token_ids) == want[i], i
        assert res.chunks[-1].finish_reason == "length"
    # They were batched together, not run one after another.
    steps = metric(triton, "hybridllm_steps_total", model=TINY) - steps_before
    assert steps < sum(want.values()) / 4, f"{steps} steps for {sum(want.values())} tokens: not batched"
    # The FINAL goes out before the step's metrics are written, hence the wait.
    assert _wait_for(lambda: metric(triton, "hybridllm_kv_blocks_used", model=TINY) == 0)


def _metric_or_0(server, name, **labels) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in scrape(server).items() if n == name and want <= ls)


def _wait_for(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


@pytest.mark.slow
def test_cancel_mid_stream_frees_kv_blocks(triton):
    import tritonclient.grpc as grpcclient

    generated_before = metric(triton, "hybridllm_generation_tokens_total", model=DEFAULT)
    q: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    client.start_stream(callback=lambda result, error: q.put((result, error)))
    try:
        client.async_stream_infer(DEFAULT, build_inputs(PROMPT, {"max_tokens": 400, "temperature": 0.0,
                                                                 "ignore_eos": True}, True),
                                  enable_empty_final_response=True)
        for _ in range(3):
            result, error = q.get(timeout=120)
            assert error is None, error
        assert metric(triton, "hybridllm_kv_blocks_used", model=DEFAULT) > 0
        assert metric(triton, "hybridllm_num_requests_running", model=DEFAULT) == 1
    finally:
        client.stop_stream(cancel_requests=True)
        client.close()
    assert _wait_for(lambda: metric(triton, "hybridllm_kv_blocks_used", model=DEFAULT) == 0), "blocks not freed"
    assert metric(triton, "hybridllm_num_requests_running", model=DEFAULT) == 0
    assert metric(triton, "hybridllm_generation_tokens_total", model=DEFAULT) - generated_before < 400
    res = grpc_stream(triton, DEFAULT, PROMPT, {"max_tokens": 2, "temperature": 0.0})  # still serving
    assert res.errors == [] and len(res.token_ids) == 2


def test_metrics_expose_the_custom_families(triton):
    grpc_stream(triton, TINY, "metrics", {"max_tokens": 3, "temperature": 0.0})
    with __import__("urllib.request").request.urlopen(triton.metrics_url, timeout=30) as r:
        text = r.read().decode()
    for name, (kind, _help) in FAMILIES.items():
        assert f"# TYPE {name} {kind.lower()}" in text, name
    samples = scrape(triton)
    names = {n for (n, ls) in samples if ("model", TINY) in ls}
    assert {"hybridllm_time_to_first_token_seconds_count", "hybridllm_time_per_output_token_seconds_count",
            "hybridllm_kv_blocks_total", "hybridllm_steps_total"} <= names
    assert metric(triton, "hybridllm_kv_blocks_total", model=TINY, tier="device") > 0
    assert metric(triton, "hybridllm_time_to_first_token_seconds_count", model=TINY) >= 1
    assert metric(triton, "hybridllm_generation_tokens_total", model=TINY) >= 3
    assert metric(triton, "hybridllm_prompt_tokens_total", model=TINY) >= len("metrics")


BAD = [  # (sampling parameters or None, prompt, expected fragment of the error)
    ({"max_tokens": 0}, "ok", "max_tokens must be an integer >= 1"),
    ({"temperature": -1}, "ok", "temperature must be a finite number >= 0"),
    ({"top_p": 0}, "ok", "top_p must be in (0, 1]"),
    ({"bogus": 1}, "ok", "unknown key(s) bogus"),
    ({"max_tokens": 4}, "y" * 600, "at most 511"),
    ({"max_tokens": 100000}, "ok", "over the cap of 256"),
]


def test_load_200_requests_20_percent_malformed(triton):
    jobs = []
    for i in range(200):
        if i % 5 == 4:
            params, prompt, expect = BAD[(i // 5) % len(BAD)]
            jobs.append((prompt, params, params.get("max_tokens") != 100000, expect))
        else:
            jobs.append((f"load {i}", {"max_tokens": 4 + i % 13, "temperature": 0.0, "ignore_eos": True}, i % 2 == 0,
                         4 + i % 13))
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda j: grpc_stream(triton, TINY, j[0], j[1], stream=j[2]), jobs))
    for (prompt, params, stream, expect), res in zip(jobs, results):
        if isinstance(expect, str):
            assert len(res.errors) == 1 and expect in res.errors[0], (params, res.errors)
            assert res.chunks == []
        else:
            assert res.errors == [] and res.finals == 1 and res.after_final == 0, (prompt, res)
            assert len(res.token_ids) == expect
    assert _wait_for(lambda: metric(triton, "hybridllm_kv_blocks_used", model=TINY) == 0)
    assert metric(triton, "hybridllm_num_requests_running", model=TINY) == 0


def test_http_stream_example(triton):
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "examples" / "http_stream.py"
    proc = subprocess.run([sys.executable, str(example), "--url", triton.http_url, "--model", TINY,
                           "--max-tokens", "6", "example:"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    expected = grpc_stream(triton, TINY, "example:", {"max_tokens": 6, "temperature": 0.0})
    assert proc.stdout == f"example:{expected.text}\n[finish_reason=length]\n"
