"""policy="auto" out of the box and per step, on the real default model."""
import json
import logging

import pytest

from hybridllm import LLM, SamplingParams
from hybridllm.kv import Tier
from hybridllm.profiling import cache
from hybridllm.profiling.store import save_profile
from hybridllm.runtime import Tracer

from ..helpers.profiles import size_dependent

pytestmark = pytest.mark.slow      # the real default model
GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
LONG = "The history of the printing press begins in the fifteenth century. " * 40     # ~560 tokens
SHORT = ["Hi", "The capital of France is", "Water boils at", "List of prime numbers: 2, 3, 5,"]


def sizes(**kw):
    return {"device_kv_bytes": 96 << 20, "host_kv_bytes": 96 << 20, **kw}


def test_long_and_short_prompts_take_different_executors_in_one_run(tmp_path, default_model_path):
    # Host GEMMs cheap for few rows, dear for many: the long prompt prefills on the device (gpu_only) and
    # moves to the host tier for decode; the short ones prefill and decode on the host (cpu_only).
    save_profile(size_dependent(), tmp_path / "p.json")
    prompts = [LONG] + SHORT
    ref = LLM(str(default_model_path), weight_dtype="float32", policy="gpu_only", **sizes())
    want = [o.token_ids for o in ref.generate(prompts, GREEDY, use_tqdm=False)]
    del ref
    tracer = Tracer()
    llm = LLM(str(default_model_path), weight_dtype="float32", kv_cache_dtype="f32", hardware_profile=str(tmp_path / "p.json"),
              tracer=tracer, **sizes())
    rt = llm.engine.runtime
    assert rt.planner is not None and {"gpu_only", "cpu_only"} <= set(rt.executors), rt.reason
    engine = llm.engine
    for i, p in enumerate(prompts):                     # all in one step: both tiers' prefills together
        engine.add_request(f"r{i}", p, GREEDY)
    tiers, outs = {}, {}
    while engine.has_unfinished_requests():
        for s in engine.scheduler.running.values():
            if engine.kv.has(s.request_id):
                tiers.setdefault(s.request_id, []).append(engine.kv.tier_of(s.request_id))
        for o in engine.step():
            if o.finished:
                outs[o.request_id] = o
        engine.kv.check()
    assert [outs[f"r{i}"].token_ids for i in range(len(prompts))] == want
    steps = engine.stats().steps_by_policy
    assert steps.get("gpu_only", 0) > 0 and steps.get("cpu_only", 0) > 0, steps
    assert tiers["r0"][0] == Tier.DEVICE and tiers["r0"][-1] == Tier.HOST      # moved after its prefill
    assert all(set(tiers[f"r{i}"]) == {Tier.HOST} for i in range(1, len(prompts)))
    assert engine.stats().blocks_used == {"device": 0, "host": 0}
    # Each step's choice and its reason are in the trace, on the planner's lane.
    tracer.save(tmp_path / "trace.json")
    notes = [e["name"] for e in json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
             if e["ph"] == "i" and e["tid"] == 5]
    assert any("device tier" in n and "-> gpu_only" in n for n in notes)
    assert any("host tier" in n and "-> cpu_only" in n for n in notes)


def test_first_start_measures_and_caches_then_the_second_reads_it(tmp_path, monkeypatch, caplog,
                                                                  default_model_path):
    monkeypatch.setenv("HYBRIDLLM_CACHE", str(tmp_path))
    calls = []
    real = cache.measure

    def spy(*a, **k):
        calls.append(k)
        return real(*a, **k)

    monkeypatch.setattr(cache, "measure", spy)
    with caplog.at_level(logging.INFO, logger="hybridllm"):
        first = LLM(str(default_model_path), weight_dtype="float32", host_kv_bytes=64 << 20)
    assert len(calls) == 1 and calls[0]["quick"]
    assert first.engine.runtime.planner is not None
    assert any("measured now and cached in" in r.getMessage() for r in caplog.records)
    assert any(r.getMessage().startswith("auto: ") for r in caplog.records)      # the start-up log says why
    out = first.generate(SHORT, GREEDY, use_tqdm=False)
    del first
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="hybridllm"):
        second = LLM(str(default_model_path), weight_dtype="float32", host_kv_bytes=64 << 20)
    assert len(calls) == 1
    assert any("cached profile" in r.getMessage() for r in caplog.records)
    assert [o.token_ids for o in second.generate(SHORT, GREEDY, use_tqdm=False)] == [o.token_ids for o in out]


def test_hardware_profile_none_keeps_the_rule_without_a_profile(default_model_path):
    llm = LLM(str(default_model_path), weight_dtype="float32", hardware_profile="none", device_kv_bytes=64 << 20)
    rt = llm.engine.runtime
    assert rt.planner is None and (rt.prefill_policy, rt.decode_policy) == ("gpu_only", "gpu_only")
    assert "no hardware profile" in rt.reason


def test_flexinfer_long_prompt_plan_gpu_offload_prefill_cpu_only_decode(tmp_path, default_model_path):
    # Weights that do not fit the (emulated) device: auto's device candidate is gpu_offload, beside
    # cpu_only on the host tier. The long prompt prefills with streamed weights, then decodes on the host.
    save_profile(size_dependent(device_memory_bytes=400 << 20), tmp_path / "p.json")
    prompts = [LONG, SHORT[1]]
    ref = LLM(str(default_model_path), weight_dtype="float32", policy="gpu_only", **sizes())
    want = [o.token_ids for o in ref.generate(prompts, GREEDY, use_tqdm=False)]
    del ref
    llm = LLM(str(default_model_path), weight_dtype="float32", kv_cache_dtype="f32", hardware_profile=str(tmp_path / "p.json"),
              device_memory_bytes=400 << 20,
              **sizes(device_kv_bytes=32 << 20))
    assert set(llm.engine.runtime.executors) == {"gpu_offload", "cpu_only"}, llm.engine.runtime.reason
    assert [o.token_ids for o in llm.generate(prompts, GREEDY, use_tqdm=False)] == want
    steps = llm.engine.stats().steps_by_policy
    assert steps.get("gpu_offload", 0) > 0 and steps.get("cpu_only", 0) > 0, steps
    assert llm.engine.stats().blocks_used == {"device": 0, "host": 0}
