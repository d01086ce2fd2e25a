"""The model repository, its parameters and the server environment (the Dockerfiles: tests/image)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from hybridllm.config import EngineConfig
from hybridllm.serving.triton.options import ServingLimits, parse_parameters, to_parameters
from hybridllm.serving.launch.repository import (INPUTS, MODEL_PY, OUTPUTS, build_backend_dir, find_triton,
                                          render_config, server_env, write_model)

ROOT = Path(__file__).resolve().parents[2]
CHECKED_IN = ROOT / "model_repository" / "hybrid_llm"


def _pbtxt_parameters(text: str) -> dict:
    pairs = re.findall(r'parameters \{ key: "(\w+)" value: \{ string_value: "([^"]*)" \} \}', text)
    return {k: {"string_value": v} for k, v in pairs}


def test_checked_in_repository_is_the_generated_one():
    assert (CHECKED_IN / "config.pbtxt").read_text() == render_config(), \
        "regenerate: python -c 'from hybridllm.serving.launch.repository import write_model; write_model(\"model_repository\")'"
    assert (CHECKED_IN / "1" / "model.py").read_text() == MODEL_PY
    assert len(MODEL_PY.strip().splitlines()) == 2


def test_config_keeps_the_design_contract():
    text = render_config()
    assert "model_transaction_policy { decoupled: true }" in text and "kind: KIND_MODEL" in text
    contract_in = {"text_input": "TYPE_STRING", "stream": "TYPE_BOOL", "sampling_parameters": "TYPE_STRING",
                   "exclude_input_in_output": "TYPE_BOOL", "input_ids": "TYPE_INT32"}
    contract_out = {"text_output": "TYPE_STRING", "output_ids": "TYPE_INT32", "finish_reason": "TYPE_STRING",
                    "num_input_tokens": "TYPE_UINT32", "num_output_tokens": "TYPE_UINT32", "logprobs": "TYPE_STRING",
                    "prompt_logprobs": "TYPE_STRING", "cumulative_logprob": "TYPE_FP32"}
    assert contract_in.items() <= {n: t for n, t, _, _ in INPUTS}.items()
    assert contract_out == {n: t for n, t, _ in OUTPUTS}
    for name, kind in {**contract_in, **contract_out}.items():
        assert re.search(rf'name: "{name}" data_type: {kind}', text), name
    assert parse_parameters(_pbtxt_parameters(text)) == (EngineConfig(), ServingLimits())


def test_parameters_round_trip():
    cfg = EngineConfig(model="/m", policy="gpu_only", dtype="bfloat16", kv_cache_dtype="f16",
                       device_kv_bytes=123 << 20, host_kv_bytes=0, max_num_seqs=3, max_num_batched_tokens=99,
                       max_model_len=300, hardware_profile="/p.json", seed=7, weight_dtype="int8", cpu_fused=False,
                       host_attention="ov_sdpa", host_threads=3, cpu_torch_threads=2, ov_cache_dir="/ov")
    limits = ServingLimits(max_tokens_non_stream=10)
    params = {k: {"string_value": v} for k, v in to_parameters(cfg, limits).items()}
    assert parse_parameters(params) == (cfg, limits)


@pytest.mark.parametrize("params, match", [
    ({"max_num_seq": "3"}, "unknown model parameter 'max_num_seq'"),
    ({"max_num_seqs": "lots"}, "model parameter max_num_seqs: 'lots' is not an integer"),
    ({"policy": "fastest"}, "policy: 'fastest' is not one of"),
    ({"max_tokens_non_stream": "0"}, "max_tokens_non_stream must be an integer >= 1"),
    ({"cpu_fused": "maybe"}, "model parameter cpu_fused: 'maybe' is not true or false"),
    ({"host_attention": "fast"}, "host_attention: 'fast' is not one of auto, native, ov_paged, ov_sdpa, torch"),
    ({"host_threads": "0"}, "host_threads must be None or an integer >= 1"),
])
def test_bad_parameters_name_the_parameter(params, match):
    with pytest.raises((ValueError, TypeError), match=re.escape(match)):
        parse_parameters({k: {"string_value": v} for k, v in params.items()})


def test_write_model_refreshes_only_what_changed(tmp_path):
    folder = write_model(tmp_path, "m", EngineConfig(max_num_seqs=4))
    cfg = folder / "config.pbtxt"
    mtime = cfg.stat().st_mtime_ns
    write_model(tmp_path, "m", EngineConfig(max_num_seqs=4))
    assert cfg.stat().st_mtime_ns == mtime
    write_model(tmp_path, "m", EngineConfig(max_num_seqs=5))
    assert 'key: "max_num_seqs" value: { string_value: "5" }' in cfg.read_text()


def test_backend_dir_and_environment(tmp_path):
    install = find_triton()
    backend = build_backend_dir(tmp_path / "backends", install) / "python"
    for name in ("libtriton_python.so", "triton_python_backend_utils.py", "triton_python_backend_stub"):
        assert (backend / name).resolve().is_file(), name
    assert (backend / "triton_python_backend_stub").resolve() == install.stub().resolve()
    build_backend_dir(tmp_path / "backends", install)   # idempotent
    env = server_env(install, base={"PATH": "/usr/bin", "PYTHONPATH": "/x"})
    assert env["LD_LIBRARY_PATH"].split(":")[0] == str(install.libs)
    assert (Path(env["PATH"].split(":")[0]) / "python3").exists()
    assert "PYTHONPATH" not in env
