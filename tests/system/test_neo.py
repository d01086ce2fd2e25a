"""NEO online serving (policy="neo") on the real default model: split KV, swapping, faults."""
import json

import pytest

from hybridllm import LLM, SamplingParams
from hybridllm.kv import Tier

from ..helpers.arrivals import run_staggered

PROMPTS = [f"Story {i}: Once upon a time" + " and then" * (i % 7) for i in range(32)]
GREEDY = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
BLOCK_BYTES = 16 * 30 * 2 * 3 * 64 * 4          # one fp32 block of the default model


@pytest.fixture(scope="module")
def reference(default_model_path):
    llm = LLM(str(default_model_path), policy="gpu_only")
    return [o.token_ids for o in llm.generate(PROMPTS, GREEDY, use_tqdm=False)]


def neo(path, device_blocks=12, host_blocks=400, **kw):
    return LLM(str(path), policy="neo", kv_cache_dtype="f32", device_kv_bytes=device_blocks * BLOCK_BYTES,
               host_kv_bytes=host_blocks * BLOCK_BYTES, max_num_seqs=32, **kw)


def test_tiny_device_budget_32_concurrent_requests_match_all_device(default_model_path, reference):
    llm = neo(default_model_path)
    outs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    assert [o.token_ids for o in outs] == reference
    stats = llm.engine.stats()
    assert stats.steps_by_policy.get("neo", 0) > 0          # host decodes really ran
    assert stats.blocks_used == {"device": 0, "host": 0}
    llm.engine.kv.check()
    # The host half's decodes ran in the native kernel, over 32-token host blocks next to 16-token device ones.
    assert llm.engine.runtime.executors["neo"].host_attention.name == "native"
    assert (llm.engine.kv.block_size_of(Tier.DEVICE), llm.engine.kv.block_size_of(Tier.HOST)) == (16, 32)


@pytest.mark.parametrize("path", ["ov_sdpa", "torch"])
def test_forced_host_attention_paths_match_all_device(default_model_path, reference, path):
    llm = neo(default_model_path, device_blocks=6, host_attention=path)
    assert llm.engine.runtime.executors["neo"].host_attention.name == path
    outs = llm.generate(PROMPTS[:12], GREEDY, use_tqdm=False)
    assert [o.token_ids for o in outs] == reference[:12]
    assert llm.engine.stats().steps_by_policy.get("neo", 0) > 0
    llm.engine.kv.check()


def test_swap_out_and_in_under_load_lose_nothing(default_model_path):
    # Short prompts that grow by 60 tokens: device requests outgrow their blocks and get swapped out,
    # and once early requests finish, host requests are swapped back in.
    params = SamplingParams(max_tokens=60, temperature=0.0, ignore_eos=True)
    prompts = PROMPTS[:20]
    reference = [o.token_ids for o in LLM(str(default_model_path), policy="gpu_only").generate(
        prompts, params, use_tqdm=False)]
    llm = neo(default_model_path, device_blocks=24, host_blocks=400, max_num_batched_tokens=64)
    engine = llm.engine
    done = run_staggered(engine, prompts, params, every=2)
    sched = engine.scheduler
    assert sched.num_swap_out > 0 and sched.num_swap_in > 0, (sched.num_swap_out, sched.num_swap_in)
    assert sorted(done) == sorted(f"r{i}" for i in range(len(prompts)))
    assert [done[f"r{i}"].token_ids for i in range(len(prompts))] == reference
    assert engine.kv.num_used(Tier.DEVICE) == 0 and engine.kv.num_used(Tier.HOST) == 0


def test_host_attention_failure_fails_only_its_requests(default_model_path):
    llm = neo(default_model_path, device_blocks=6)
    engine = llm.engine
    runner = engine.runtime.executors["neo"]
    real = runner.host_attention.forward
    calls = {"n": 0}

    def flaky(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated OpenVINO fault")
        return real(*args)

    runner.host_attention.forward = flaky
    outs = llm.generate(PROMPTS[:8], GREEDY, use_tqdm=False)
    errors = [o for o in outs if o.finish_reason == "error"]
    assert errors and all("simulated OpenVINO fault" in o.error for o in errors)
    assert len(errors) < len(outs)
    assert all(len(o.token_ids) == 24 for o in outs if o.finish_reason != "error")
    assert engine.kv.num_used(Tier.DEVICE) == 0 and engine.kv.num_used(Tier.HOST) == 0
    runner.host_attention.forward = real
    (again,) = llm.generate([PROMPTS[0]], GREEDY, use_tqdm=False)
    assert again.finish_reason == "length"


def test_request_that_fits_neither_tier_is_refused(default_model_path):
    llm = neo(default_model_path, device_blocks=4, host_blocks=8)   # 128 tokens at most
    with pytest.raises(ValueError, match=r"prompt is \d+ tokens; the context holds 128"):
        llm.generate(["word " * 200], GREEDY)
    (ok,) = llm.generate(["Hi"], GREEDY, use_tqdm=False)
    assert len(ok.token_ids) == 24


def test_host_kv_budget_beyond_free_memory_is_refused(default_model_path):
    with pytest.raises(ValueError, match=r"host_kv_bytes \(\d+\) is larger than the free host memory \(\d+\)"):
        LLM(str(default_model_path), policy="neo", host_kv_bytes=1 << 50)


def test_trace_shows_device_and_host_lanes(default_model_path, tmp_path):
    from hybridllm.runtime import Tracer
    tracer = Tracer()
    llm = neo(default_model_path, device_blocks=6, tracer=tracer)
    llm.generate(PROMPTS[:6], SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True), use_tqdm=False)
    tracer.save(tmp_path / "trace.json")
    events = json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
    lanes = {e["tid"] for e in events if e["ph"] == "X"}
    assert lanes == {1, 2, 3}                                   # A on the device, B on the device, B's attention
    assert any("B attention" in e["name"] for e in events) and any(" A" in e["name"] for e in events)
    # The scheduler's decision and its reason, as instants on their own lane.
    notes = [e for e in events if e["ph"] == "i" and e["tid"] == 4]
    assert notes and all(e["name"] for e in notes)
    assert any(e["name"].startswith("host sub-batch") for e in notes)


def test_a_failed_request_that_was_sampled_ends_once_with_its_error(default_model_path, reference):
    # The CUDA path can fail a host-bound prefill after its logits row exists (its K/V did not
    # reach the host tier); the engine must end it with the error and not also append a token.
    llm = neo(default_model_path, device_blocks=6)
    runner = llm.engine.runtime.executors["neo"]
    real = runner.execute
    victim = {}

    def failing(seqs):
        result = real(seqs)
        if not victim and result.sampled:
            victim["id"] = result.sampled[0]
            result.failed[victim["id"]] = "simulated host KV write fault"
        return result

    runner.execute = failing
    outs = {}
    for i, p in enumerate(PROMPTS[:6]):
        llm.engine.add_request(f"r{i}", p, GREEDY)
    finals = []
    while llm.engine.has_unfinished_requests():
        for o in llm.engine.step():
            if o.finished:
                finals.append(o.request_id)
                outs[o.request_id] = o
    assert sorted(finals) == sorted(outs) and len(finals) == 6        # one final output each
    bad = outs[victim["id"]]
    assert bad.finish_reason == "error" and "simulated host KV write fault" in bad.error
    for i in range(6):
        if f"r{i}" != victim["id"]:
            assert list(outs[f"r{i}"].token_ids) == list(reference[i])
    assert llm.engine.kv.num_used(Tier.DEVICE) == 0 and llm.engine.kv.num_used(Tier.HOST) == 0
