"""The CUDA paths: NEO's second stream and pinned hand-off, gpu_offload's copy stream, partition.

Skipped where there is no CUDA GPU (CI has none); run on a GPU machine with
`pytest tests/cuda`. Reference: HF transformers on the CPU, fp32,
greedy tokens equal (as tests/system/test_tiny_parity.py).
"""
import pytest
import torch

from hybridllm import LLM, SamplingParams
from hybridllm.kv import Tier
from hybridllm.runtime.executors import neo as neo_runner

from ..helpers.tiny_models import tiny_with_greedy
from .common import PROMPTS, SHAPE

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; this machine has none")

GREEDY = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
BLOCK = 16 * 3 * 2 * 2 * 32 * 4                      # tokens x layers x (K, V) x kv heads x head_dim x fp32


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_with_greedy(tmp_path_factory.mktemp("llama"), PROMPTS, GREEDY.max_tokens, seed=3, **SHAPE)


def tokens(llm):
    return [list(o.token_ids) for o in llm.generate(PROMPTS, GREEDY, use_tqdm=False)]


def test_gpu_only_on_cuda_matches_hf(model):
    folder, want = model
    llm = LLM(str(folder), policy="gpu_only")
    assert llm.engine.runtime.device.type == "cuda"
    assert tokens(llm) == want


def test_neo_stream_and_pinned_handoff_match_hf(model, monkeypatch):
    folder, want = model
    staged, filed = [], []
    down, file_kv = neo_runner._Staging.down, neo_runner._file_kv
    monkeypatch.setattr(neo_runner._Staging, "down", lambda self, *qkv: staged.append(1) or down(self, *qkv))
    monkeypatch.setattr(neo_runner, "_file_kv", lambda *args: filed.append(1) or file_kv(*args))
    # Four device blocks for ten requests: most decode on the host tier, handed off through the staging.
    llm = LLM(str(folder), policy="neo", device_kv_bytes=4 * BLOCK, host_kv_bytes=400 * BLOCK,
              max_num_seqs=8)
    runner = llm.engine.runtime.executors["neo"]
    assert runner.staging is not None and runner.staging.q.is_pinned()
    assert llm.engine.runtime.tiers[Tier.HOST].key_cache[0].is_pinned()
    assert tokens(llm) == want
    assert llm.engine.stats().steps_by_policy.get("neo", 0) > 0
    assert staged, "host decodes never went through the pinned staging"
    assert filed, "no host-bound prefill had its K/V filed from the pinned slots"
    assert llm.engine.kv.num_used(Tier.DEVICE) == 0 and llm.engine.kv.num_used(Tier.HOST) == 0
    llm.engine.kv.check()


def test_neo_more_tokens_than_staging_falls_back_to_plain_copies(model):
    folder, want = model
    llm = LLM(str(folder), policy="neo", device_kv_bytes=2 * BLOCK, host_kv_bytes=400 * BLOCK,
              max_num_seqs=8)
    stg = llm.engine.runtime.executors["neo"].staging
    stg.max_tokens = stg.max_prefill_tokens = 1          # every B and every host-bound prefill is larger
    assert tokens(llm) == want
    assert llm.engine.stats().steps_by_policy.get("neo", 0) > 0


@pytest.mark.parametrize("policy", ["gpu_offload", "partition", "cpu_only"])   # "neo": tested above
def test_each_policy_on_a_cuda_machine_matches_hf(model, policy):
    folder, want = model
    # fp32 host weights: weight_dtype=auto picks bf16 on a CPU with AMX/AVX512_BF16 (the GPU machines' Xeons).
    llm = LLM(str(folder), policy=policy, max_num_batched_tokens=64, host_kv_bytes=64 << 20,
              weight_dtype="float32")
    assert tokens(llm) == want
    assert llm.engine.stats().steps_by_policy == {policy: llm.engine.stats().num_steps}


def test_neo_bfloat16_on_cuda_finishes_and_frees_everything(model):
    # bf16 on the device vs host attention in fp32: tokens may drift from fp32's, so this checks the
    # run itself (lengths, host steps, blocks) and that prefill's first tokens agree with gpu_only's.
    folder, _ = model
    ref = tokens(LLM(str(folder), policy="gpu_only", dtype="bfloat16"))
    llm = LLM(str(folder), policy="neo", dtype="bfloat16", device_kv_bytes=2 * BLOCK,
              host_kv_bytes=400 * BLOCK, max_num_seqs=8)
    got = tokens(llm)
    assert [len(t) for t in got] == [GREEDY.max_tokens] * len(PROMPTS)
    assert [t[0] for t in got] == [t[0] for t in ref]
    assert llm.engine.stats().steps_by_policy.get("neo", 0) > 0
    assert llm.engine.kv.num_used(Tier.DEVICE) == 0 and llm.engine.kv.num_used(Tier.HOST) == 0


def test_failed_prefill_kv_filing_fails_only_those_requests(model, monkeypatch):
    folder, want = model
    calls = {"n": 0}
    file_kv = neo_runner._file_kv

    def flaky(*args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated host KV write fault")
        return file_kv(*args)

    monkeypatch.setattr(neo_runner, "_file_kv", flaky)
    llm = LLM(str(folder), policy="neo", device_kv_bytes=4 * BLOCK, host_kv_bytes=400 * BLOCK,
              max_num_seqs=8)
    outs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    errors = [o for o in outs if o.finish_reason == "error"]
    assert errors and all("simulated host KV write fault" in o.error for o in errors)
    assert len(errors) < len(outs)
    for o, w in zip(outs, want):
        if o.finish_reason != "error":
            assert list(o.token_ids) == w
    assert llm.engine.kv.num_used(Tier.DEVICE) == 0 and llm.engine.kv.num_used(Tier.HOST) == 0
    monkeypatch.setattr(neo_runner, "_file_kv", file_kv)
    (again,) = llm.generate([PROMPTS[1]], GREEDY, use_tqdm=False)
    assert again.finish_reason == "length" and list(again.token_ids) == want[1]


def test_trace_times_device_spans_with_cuda_events(model, tmp_path):
    import json

    from hybridllm.runtime import Tracer
    folder, _ = model
    tracer = Tracer()
    llm = LLM(str(folder), policy="neo", device_kv_bytes=4 * BLOCK, host_kv_bytes=400 * BLOCK,
              max_num_seqs=8, tracer=tracer)
    assert tracer.cuda                                                 # attached to the runtime's device
    llm.generate(PROMPTS, SamplingParams(max_tokens=4, temperature=0, ignore_eos=True), use_tqdm=False)
    tracer.save(tmp_path / "trace.json")
    spans = [e for e in json.loads((tmp_path / "trace.json").read_text())["traceEvents"] if e["ph"] == "X"]
    assert {e["tid"] for e in spans} == {1, 2, 3}
    assert all(e["dur"] >= 0 and e["ts"] >= 0 for e in spans)
    assert sum(e["dur"] for e in spans if e["tid"] == 1) > 0          # A's kernels took GPU time


def test_auto_mixing_the_gpu_and_the_host_per_step_matches_hf(model, tmp_path):
    # Host GEMMs cheap for few rows: decodes on the host (cpu_only, a host copy of the weights), long
    # prefills on the GPU (gpu_only), KV moved device -> host after prefill.
    from hybridllm.profiling.store import save_profile

    from ..helpers.profiles import size_dependent
    folder, want = model
    save_profile(size_dependent(), tmp_path / "p.json")
    llm = LLM(str(folder), hardware_profile=str(tmp_path / "p.json"), host_kv_bytes=64 << 20,
              weight_dtype="float32")
    assert llm.engine.runtime.device.type == "cuda" and llm.engine.runtime.planner is not None
    assert tokens(llm) == want
    assert sum(llm.engine.stats().blocks_used.values()) == 0
