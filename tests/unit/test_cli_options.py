"""`hybridllm run` and `hybridllm serve` take their engine and serving flags from the config fields."""
from dataclasses import fields

import pytest

from hybridllm.cli import RUN_EXCLUDE, SERVE_LIMITS_EXCLUDE, build_parser
from hybridllm.cli_args import config_kwargs
from hybridllm.config import EngineConfig
from hybridllm.serving.triton.options import ServingLimits


@pytest.mark.parametrize("command", [["run", "hi"], ["serve"]])
def test_flags_become_engine_options(command):
    args = build_parser().parse_args(command + [
        "--weight-dtype", "int8", "--no-cpu-fused", "--host-attention", "ov_sdpa", "--host-threads", "3",
        "--cpu-torch-threads", "2", "--ov-cache-dir", "/tmp/ov", "--hardware-profile", "none",
        "--kv-cache-dtype", "u8", "--max-num-seqs", "5", "--enforce-eager"])
    opts = config_kwargs(args, EngineConfig)
    assert opts == {"weight_dtype": "int8", "cpu_fused": False, "host_attention": "ov_sdpa", "host_threads": 3,
                    "cpu_torch_threads": 2, "ov_cache_dir": "/tmp/ov", "hardware_profile": "none",
                    "kv_cache_dtype": "u8", "max_num_seqs": 5, "enforce_eager": True}
    cfg = EngineConfig(**opts)
    assert (cfg.cpu_fused, cfg.host_threads, cfg.max_num_seqs) == (False, 3, 5)


def test_every_config_field_is_a_flag():
    """Generated from the dataclass: a new field is a flag of both commands without touching cli.py."""
    run = build_parser()._subparsers._group_actions[0].choices["run"]
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]
    dests = lambda p: {a.dest for a in p._actions}      # noqa: E731
    assert {f.name for f in fields(EngineConfig)} - set(RUN_EXCLUDE) <= dests(run)
    assert {f.name for f in fields(EngineConfig)} | ({f.name for f in fields(ServingLimits)}
                                                      - set(SERVE_LIMITS_EXCLUDE)) <= dests(serve)
    assert "fault_injection" not in dests(serve)


def test_unset_flags_keep_the_config_defaults_and_help_shows_them(capsys):
    args = build_parser().parse_args(["serve"])
    assert config_kwargs(args, EngineConfig) == {} and config_kwargs(args, ServingLimits) == {}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--max-num-batched-tokens" in text and "(default 2048)" in text
    assert "(default auto, or $HYBRIDLLM_WEIGHT_DTYPE)" in text


def test_env_defaults_still_apply_when_the_flag_is_unset(monkeypatch):
    monkeypatch.setenv("HYBRIDLLM_HOST_THREADS", "7")
    args = build_parser().parse_args(["run", "hi"])
    assert EngineConfig(**config_kwargs(args, EngineConfig, RUN_EXCLUDE)).host_threads == 7
    args = build_parser().parse_args(["run", "hi", "--host-threads", "2"])
    assert EngineConfig(**config_kwargs(args, EngineConfig, RUN_EXCLUDE)).host_threads == 2


def test_a_bad_choice_is_refused_by_name(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["serve", "--host-attention", "fast"])
    assert e.value.code == 2 and "--host-attention" in capsys.readouterr().err


def test_serve_takes_the_request_size_caps():
    args = build_parser().parse_args(["serve", "--max-input-ids", "100", "--max-stop", "3",
                                      "--engine-stall-timeout-s", "9"])
    limits = ServingLimits(**config_kwargs(args, ServingLimits, SERVE_LIMITS_EXCLUDE))
    assert (limits.max_input_ids, limits.max_stop, limits.engine_stall_timeout_s) == (100, 3, 9)
    assert limits.max_text_input_bytes == ServingLimits().max_text_input_bytes


def test_run_seed_is_the_sampling_seed_not_the_engines():
    args = build_parser().parse_args(["run", "hi", "--seed", "4"])
    assert args.seed == 4 and "seed" not in config_kwargs(args, EngineConfig, RUN_EXCLUDE)
