"""TritonPythonModel and EngineLoop in process, with a fake pb_utils and the tiny model: fast
checks of streaming, the one-FINAL rule, errors, cancellation, shutdown and metrics."""
from __future__ import annotations

import dataclasses
import json
import sys
import time

import numpy as np
import pytest

from hybridllm import LLM, SamplingParams
from hybridllm.config import EngineConfig
from hybridllm.serving.triton.options import ServingLimits, to_parameters

from . import fake_pb_utils as pb

GREEDY = {"max_tokens": 12, "temperature": 0.0, "ignore_eos": True}


def _config(tiny: str, decoupled: bool = True) -> dict:
    params = to_parameters(EngineConfig(model=tiny, policy="gpu_only", device_kv_bytes=2 << 20, host_kv_bytes=1 << 20),
                           ServingLimits(max_tokens_non_stream=64))
    return {"name": "tiny", "model_transaction_policy": {"decoupled": decoupled},
            "parameters": {k: {"string_value": v} for k, v in params.items()}}


@pytest.fixture
def model(monkeypatch, tiny_model_dir):
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    from hybridllm.serving.triton.model import TritonPythonModel

    m = TritonPythonModel()
    m.initialize({"model_config": json.dumps(_config(str(tiny_model_dir))), "model_name": "tiny",
                  "model_version": "1"})
    yield m
    m.finalize()


def _request(prompt=None, params=None, stream=True, **extra) -> pb.InferenceRequest:
    inputs = {"stream": np.array([stream])}
    if prompt is not None:
        inputs["text_input"] = np.array([prompt.encode()], dtype=np.object_)
    if params is not None:
        inputs["sampling_parameters"] = np.array([json.dumps(params).encode()], dtype=np.object_)
    inputs.update(extra)
    return pb.InferenceRequest(inputs)


def _wait(*requests, timeout=60.0):
    for r in requests:
        assert r.sender.done.wait(timeout), "no FINAL response"
    time.sleep(0.05)  # a response after the FINAL would show now
    for r in requests:
        assert r.sender.finals == 1 and r.sender.sent_after_final == 0


def _text(sender) -> str:
    return "".join(a[0].decode() for a in sender.output("text_output"))


def test_streams_the_same_tokens_as_llm_generate(model, tiny_model_dir):
    prompts = ["hello there", "a longer prompt, to batch with"]
    reqs = [_request(p, GREEDY) for p in prompts]
    assert model.execute(reqs) is None            # decoupled: returns at once, answers come later
    _wait(*reqs)
    ref = LLM(str(tiny_model_dir), policy="gpu_only").generate(prompts, SamplingParams(**GREEDY), use_tqdm=False)
    for r, out in zip(reqs, ref):
        s = r.sender
        assert [int(t) for a in s.output("output_ids") for t in a] == list(out.token_ids)
        assert _text(s) == out.text
        reasons = [a[0].decode() for a in s.output("finish_reason")]
        assert reasons == [""] * (len(reasons) - 1) + ["length"]
        assert {int(a[0]) for a in s.output("num_output_tokens")} == {1}
        assert {int(a[0]) for a in s.output("num_input_tokens")} == {out.num_prompt_tokens}


def test_non_streaming_sends_one_response_with_the_prompt(model):
    r = _request("echo me", GREEDY, stream=False)
    model.execute([r])
    _wait(r)
    assert len(r.sender.responses) == 1
    (text,) = r.sender.output("text_output")
    assert text[0].decode().startswith("echo me") and len(r.sender.output("output_ids")[0]) == 12


def test_only_requested_outputs_are_built(model):
    r = pb.InferenceRequest({"text_input": np.array([b"hi"], dtype=np.object_),
                             "stream": np.array([True])}, requested=("text_output",))
    model.execute([r])
    _wait(r)
    assert all(set(resp.outputs) == {"text_output"} for resp, _ in r.sender.responses)


def test_invalid_request_gets_invalid_arg_at_once(model):
    bad = _request("hi", {"max_tokens": 0})
    good = _request("hi", {"max_tokens": 2})
    model.execute([bad, good])
    assert bad.sender.done.is_set()               # answered inside execute, before the engine saw it
    (err,) = bad.sender.errors
    assert err.code() == pb.TritonError.INVALID_ARG and "max_tokens must be an integer >= 1" in err.message()
    _wait(bad, good)
    assert good.sender.errors == []


def test_engine_rejection_is_invalid_arg(model):
    r = _request("x" * 600, {"max_tokens": 2})   # tiny context is 512: only the engine knows
    model.execute([r])
    _wait(r)
    (err,) = r.sender.errors
    assert err.code() == pb.TritonError.INVALID_ARG and err.message().startswith("text_input: prompt is 600 tokens")


def test_cancel_frees_blocks_and_sends_cancelled(model):
    r = _request("cancel me", {"max_tokens": 400, "temperature": 0.0, "ignore_eos": True})
    model.execute([r])
    deadline = time.monotonic() + 30
    while len(r.sender.responses) < 3 and time.monotonic() < deadline:
        time.sleep(0.001)
    r.sender.cancelled = True
    _wait(r)
    (err,) = r.sender.errors
    assert err.code() == pb.TritonError.CANCELLED
    assert len(r.sender.output("output_ids")) < 400
    assert model.engine.kv.num_used() == 0
    used = pb.MetricFamily.families["hybridllm_kv_blocks_used"]
    assert used.value(model="tiny") == 0


def test_prefix_cache_metrics_count_a_repeated_prompt_and_its_salt(model):
    prompt = "a system prompt long enough to fill a few KV blocks, shared by turns; " * 2
    for salt in (None, None, "tenant"):
        r = _request(prompt, {"max_tokens": 2, "temperature": 0.0, **({"cache_salt": salt} if salt else {})})
        model.execute([r])
        _wait(r)
        assert r.sender.errors == []
    hits = pb.MetricFamily.families["hybridllm_prefix_cache_hits_total"]
    queries = pb.MetricFamily.families["hybridllm_prefix_cache_queries_total"]
    deadline = time.monotonic() + 10             # the outbox writes metrics after the responses
    while queries.value(model="tiny", tier="device") < 3 * len(prompt) and time.monotonic() < deadline:
        time.sleep(0.01)
    # The second request hits every whole block but the one with its last token; the salted third hits none.
    assert queries.value(model="tiny", tier="device") == 3 * len(prompt)
    assert hits.value(model="tiny", tier="device") == (len(prompt) - 1) // 16 * 16
    assert pb.MetricFamily.families["hybridllm_kv_blocks_cached"].value(model="tiny", tier="device") > 0
    bad = _request(prompt, {"max_tokens": 2, "cache_salt": 5})
    model.execute([bad])
    _wait(bad)
    (err,) = bad.sender.errors
    assert err.code() == pb.TritonError.INVALID_ARG and "cache_salt must be None or a non-empty string" in err.message()


def test_finalize_fails_what_is_in_flight(monkeypatch, tiny_model_dir):
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    from hybridllm.serving.triton.model import TritonPythonModel

    m = TritonPythonModel()
    m.initialize({"model_config": json.dumps(_config(str(tiny_model_dir))), "model_name": "t", "model_version": "1"})
    reqs = [_request(f"p{i}", {"max_tokens": 400, "ignore_eos": True}) for i in range(4)]
    m.execute(reqs)
    m.finalize()
    _wait(*reqs, timeout=5)
    for r in reqs:
        (err,) = r.sender.errors
        assert err.code() == pb.TritonError.UNAVAILABLE
    late = _request("too late", {"max_tokens": 2})
    m.execute([late])
    _wait(late, timeout=5)
    assert late.sender.errors[0].code() == pb.TritonError.UNAVAILABLE


def test_engine_error_fails_in_flight_and_the_loop_goes_on(model, monkeypatch):
    real_step = model.engine.step
    calls = {"n": 0}

    def flaky_step():
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom")
        return real_step()

    monkeypatch.setattr(model.engine, "step", flaky_step)
    r = _request("first", {"max_tokens": 50, "ignore_eos": True})
    model.execute([r])
    _wait(r)
    (err,) = r.sender.errors
    assert err.code() == pb.TritonError.INTERNAL and "boom" in err.message()
    after = _request("second", {"max_tokens": 3})
    model.execute([after])
    _wait(after)
    assert after.sender.errors == [] and len(after.sender.output("output_ids")) == 3


def test_metrics_count_tokens_and_latencies(model):
    reqs = [_request(f"m{i}", {"max_tokens": 5, "ignore_eos": True}) for i in range(3)]
    model.execute(reqs)
    _wait(*reqs)
    time.sleep(0.1)
    f = pb.MetricFamily.families
    assert f["hybridllm_generation_tokens_total"].value(model="tiny") == 15
    assert f["hybridllm_prompt_tokens_total"].value(model="tiny") == sum(len(f"m{i}") for i in range(3))
    (ttft,) = f["hybridllm_time_to_first_token_seconds"].metrics
    (tpot,) = f["hybridllm_time_per_output_token_seconds"].metrics
    assert len(ttft.observations) == 3 and len(tpot.observations) == 12
    assert all(t >= 0 for t in ttft.observations + tpot.observations)
    assert f["hybridllm_kv_blocks_total"].value(model="tiny", tier="device") > 0
    assert sum(m.value for m in f["hybridllm_steps_total"].metrics) >= 5
    assert f["hybridllm_num_requests_running"].value(model="tiny") == 0


def test_a_coupled_config_is_refused(monkeypatch, tiny_model_dir):
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    from hybridllm.serving.triton.model import TritonPythonModel

    with pytest.raises(ValueError, match="decoupled"):
        TritonPythonModel().initialize({"model_config": json.dumps(_config(str(tiny_model_dir), decoupled=False)),
                                        "model_name": "t", "model_version": "1"})


def test_a_request_the_engine_fails_alone_gets_internal(model, monkeypatch):
    real_step = model.engine.step

    def step():  # the engine ends one request with finish_reason "error"; the others go on
        outs = []
        for o in real_step():
            if o.request_id.startswith("doomed") and o.num_output_tokens == 2:
                model.engine.abort_request(o.request_id)
                o = dataclasses.replace(o, finish_reason="error")
            outs.append(o)
        return outs

    monkeypatch.setattr(model.engine, "step", step)
    doomed = pb.InferenceRequest({"text_input": np.array([b"doomed"], dtype=np.object_),
                                  "stream": np.array([True]),
                                  "sampling_parameters": np.array([b'{"max_tokens": 8}'], dtype=np.object_)},
                                 request_id="doomed")
    fine = _request("fine", {"max_tokens": 8, "ignore_eos": True})
    model.execute([doomed, fine])
    _wait(doomed, fine)
    (err,) = doomed.sender.errors
    assert err.code() == pb.TritonError.INTERNAL and "engine error" in err.message()
    assert len(doomed.sender.output("output_ids")) == 1
    assert fine.sender.errors == [] and len(fine.sender.output("output_ids")) == 8


def test_loop_hands_freed_heap_back_after_work_only(monkeypatch, tiny_model_dir):
    """After work the loop calls malloc_trim (at most every TRIM_EVERY_S; 0 here), and not again until
    more work came: an idle server does not trim in a loop."""
    from hybridllm.serving.triton import engine_loop
    calls = []
    monkeypatch.setattr(engine_loop, "TRIM_EVERY_S", 0.0)
    monkeypatch.setattr(engine_loop, "_malloc_trim", lambda: calls.append)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    from hybridllm.serving.triton.model import TritonPythonModel

    m = TritonPythonModel()
    m.initialize({"model_config": json.dumps(_config(str(tiny_model_dir))), "model_name": "t", "model_version": "1"})
    try:
        time.sleep(0.3)
        assert calls == [], "trimmed before any work"
        r = _request("some work", {"max_tokens": 4})
        m.execute([r])
        _wait(r)
        deadline = time.monotonic() + 5
        while not calls and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        after_work = len(calls)
        assert after_work >= 1 and set(calls) == {0}
        time.sleep(2.5)                      # idle ticks (1 s each) with nothing new: no more trims
        assert len(calls) == after_work
    finally:
        m.finalize()
