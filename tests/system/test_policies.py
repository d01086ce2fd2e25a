"""Every executor gives gpu_only's greedy tokens on the real default model, phase switches included."""
import json

import pytest

from hybridllm import LLM, SamplingParams
from hybridllm.kv import Tier
from hybridllm.profiling.store import PROFILE_DIR

PROMPTS = ["Once upon a time, there was a little", "The capital of France is", "Hi",
           "def fibonacci(n):\n    " * 4, "Water boils at", "List of prime numbers: 2, 3, 5,"]
GREEDY = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True)


def tokens(llm):
    return [o.token_ids for o in llm.generate(PROMPTS, GREEDY, use_tqdm=False)]


@pytest.fixture(scope="module")
def reference(default_model_path):
    return tokens(LLM(str(default_model_path), weight_dtype="float32", policy="gpu_only", max_num_batched_tokens=48))


@pytest.mark.parametrize("policy", ["gpu_offload"])   # partition (NEO) is tested in test_neo.py
def test_forced_policy_matches_gpu_only(default_model_path, reference, policy):
    llm = LLM(str(default_model_path), weight_dtype="float32", kv_cache_dtype="f32", policy=policy,
              max_num_batched_tokens=48)
    assert tokens(llm) == reference
    stats = llm.engine.stats()
    assert stats.steps_by_policy == {policy: stats.num_steps}
    assert sum(stats.blocks_used.values()) == 0
    assert list(llm.engine.kv.tiers) == [Tier.DEVICE]


def slowed(reference: str, table: str, tmp_path) -> str:
    """A reference profile with one table 10^4 times slower, saved as JSON; returns its path."""
    prof = json.loads((PROFILE_DIR / f"{reference}.json").read_text())
    prof["name"] = f"{reference}-slow-{table}"
    prof[table]["seconds"] = [[v * 1e4 for v in r] for r in prof[table]["seconds"]]
    (tmp_path / "p.json").write_text(json.dumps(prof))
    return str(tmp_path / "p.json")


def auto_llm(path, profile: str) -> LLM:
    return LLM(str(path), weight_dtype="float32", kv_cache_dtype="f32", policy="auto", hardware_profile=profile,
               max_num_batched_tokens=48)


def test_auto_switches_device_prefill_to_host_decode(default_model_path, reference, tmp_path):
    # A profile whose device decode attention is very slow makes the planner run decodes with partition
    # while prefills stay on gpu_only: KV written on the device must be read on the host.
    llm = auto_llm(default_model_path, slowed("h100-sxm-spr", "device_attention_decode", tmp_path))
    rt = llm.engine.runtime
    assert set(rt.executors) == {"gpu_only", "partition"}, rt.reason
    assert tokens(llm) == reference
    stats = llm.engine.stats()
    assert stats.steps_by_policy["gpu_only"] > 0 and stats.steps_by_policy["partition"] > 0
    assert stats.blocks_used == {"device": 0, "host": 0}
    llm.engine.kv.check()


def test_auto_without_profile_runs_on_the_device_and_says_why(default_model_path):
    llm = LLM(str(default_model_path), weight_dtype="float32", policy="auto", hardware_profile="none")
    rt = llm.engine.runtime
    assert (rt.prefill_policy, rt.decode_policy) == ("gpu_only", "gpu_only")
    assert "no hardware profile" in rt.reason


def test_policy_that_cannot_fit_is_refused_at_start_up(default_model_path):
    with pytest.raises(ValueError, match=r"no device memory left for the KV cache: the weights take \d+ bytes"):
        LLM(str(default_model_path), weight_dtype="float32", policy="gpu_only", device_memory_bytes=100 * 2**20)
    with pytest.raises(FileNotFoundError, match="hardware_profile: 'nope'"):
        LLM(str(default_model_path), weight_dtype="float32", policy="auto", hardware_profile="nope")


def test_model_shape_counts_the_weights_the_model_loads(default_model_path):
    # The default model ties its LM head to the embedding: the planner must not count it twice.
    from hybridllm.models.config import ModelConfig
    from hybridllm.models.llama import LlamaModel
    from hybridllm.policy import ModelShape
    mc = ModelConfig.from_folder(default_model_path)
    assert mc.tie_word_embeddings
    shape = ModelShape.from_config(mc, "float32")
    loaded = LlamaModel.load(default_model_path, "cpu", "float32").weight_bytes
    # ModelShape leaves out the final norm (hidden floats) and nothing else.
    assert loaded - mc.hidden_size * 4 == shape.weight_bytes


def test_auto_picks_cpu_only_when_the_host_is_faster(default_model_path, reference, tmp_path):
    # A profile whose device GEMMs are very slow: the whole model belongs on the host (cpu_only).
    llm = auto_llm(default_model_path, slowed("a10g-epyc", "device_gemm", tmp_path))
    rt = llm.engine.runtime
    assert list(rt.executors) == ["cpu_only"] and list(llm.engine.kv.tiers) == [Tier.HOST], rt.reason
    assert "among cpu_only" in rt.reason
    assert tokens(llm) == reference
    stats = llm.engine.stats()
    assert stats.steps_by_policy == {"cpu_only": stats.num_steps}
