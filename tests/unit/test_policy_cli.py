"""`hybridllm profile` / `hybridllm plan` and the profile measurement, run for real."""
import json
import subprocess
import sys

import pytest

from hybridllm.models.config import ModelConfig
from hybridllm.policy import ModelShape
from hybridllm.profiling.measure import measure
from hybridllm.profiling.store import load_profile, save_profile

TINY = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512,
        "max_position_embeddings": 4096}


def cli(*args):
    return subprocess.run([sys.executable, "-m", "hybridllm.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow      # a real measurement: about 90 s on 2 cores
def test_measured_profile_is_valid_and_round_trips(tmp_path):
    # Which timings exceed which is for benchmarks/profile_check.py; here, the profile's structure.
    prof = measure(ModelConfig.from_dict(TINY), progress=False)
    assert prof.source == "measured" and prof.device_is_host
    assert prof.host_memory_bandwidth > 0 and prof.h2d_pinned > 0
    # Host attention is timed through HostAttention (the native kernel here) for the model dtype and f16 KV;
    # host GEMMs through OpenVINO FullyConnected, which cpu_only runs.
    assert set(prof.host_attention_decode) == {"f32", "f16"} == set(prof.host_attention_prefill)
    assert "host attention: native" in prof.notes
    shape = ModelShape.from_config(ModelConfig.from_dict(TINY))
    assert set(prof.device_gemm.y) == {float(n * k) for n, k in shape.gemms} | {float(512 * 64)}
    # NEO's pipelining overhead, timed on the real NeoRunner: per layer, non-negative.
    assert prof.extra["host_handoff_s"] >= 0.0
    save_profile(prof, tmp_path / "p.json")
    assert load_profile(tmp_path / "p.json").to_dict() == json.loads((tmp_path / "p.json").read_text())


def test_profile_refuses_an_unknown_host_kv_dtype():
    with pytest.raises(ValueError, match="host_kv: 'f8' is not one of"):
        measure(ModelConfig.from_dict(TINY), progress=False, host_kv=("f8",))


def test_plan_prints_every_policy_and_the_choice(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    r = cli("plan", "--batch", "4", "--input-len", "512", "--output-len", "32", "--profile", "a10g-epyc",
            "--model", str(tmp_path / "config.json"))
    assert r.returncode == 0, r.stderr
    for policy in ("gpu_only", "gpu_offload", "cpu_only", "partition"):
        assert r.stdout.count(policy) >= 2
    assert "chosen: prefill=" in r.stdout and "[spec]" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["--batch", "0", "--input-len", "5", "--output-len", "3"], "BatchShape.batch must be an integer >= 1"),
    (["--batch", "1", "--input-len", "5", "--output-len", "3", "--profile", "v100"], "'v100' is neither"),
])
def test_plan_bad_input_is_named(tmp_path, args, message):
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    r = cli("plan", *args, "--model", str(tmp_path / "config.json"), *([] if "--profile" in args else
                                                                       ["--profile", "t4-xeon8"]))
    assert r.returncode == 2 and message in r.stderr


def test_plan_that_nothing_fits_reports_each_policys_needs(tmp_path):
    from hybridllm.profiling.store import PROFILE_DIR
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    prof = json.loads((PROFILE_DIR / "t4-xeon8.json").read_text())
    prof["host_memory_bytes"] = 1000
    (tmp_path / "small.json").write_text(json.dumps(prof))
    r = cli("plan", "--batch", "64", "--input-len", "4000", "--output-len", "32", "--profile",
            str(tmp_path / "small.json"), "--model", str(tmp_path / "config.json"), "--device-memory-bytes", "1000")
    assert r.returncode == 2
    assert "gpu_only prefill: needs" in r.stderr and "available" in r.stderr


def test_neo_probe_uses_fewer_layers_when_memory_is_short(monkeypatch):
    import torch

    from hybridllm.profiling import measure_neo
    mc = ModelConfig.from_dict(TINY)                    # hidden 64, heads 4/2 x 16, intermediate 128, vocab 512
    per_layer = 4 * 64 * ((4 + 2 * 2) * 16 + 4 * 16 + 3 * 128)
    fixed = 4 * 512 * 64
    for free_quarter, want in [(fixed + 4 * per_layer, 4), (fixed + 2 * per_layer, 2), (fixed, 0)]:
        monkeypatch.setattr(measure_neo, "mem_available", lambda q=free_quarter: 4 * q)
        assert measure_neo._probe_layers(mc, torch.device("cpu"), 4) == want
