"""The host data plane's engine options reach EngineConfig from `hybridllm run` and `hybridllm serve`."""
import pytest

from hybridllm.cli import _host_options, build_parser
from hybridllm.config import EngineConfig


@pytest.mark.parametrize("command", [["run", "hi"], ["serve"]])
def test_flags_become_engine_options(command):
    args = build_parser().parse_args(command + [
        "--weight-dtype", "int8", "--no-cpu-fused", "--host-attention", "ov_sdpa", "--host-threads", "3",
        "--cpu-torch-threads", "2", "--ov-cache-dir", "/tmp/ov", "--hardware-profile", "none"])
    opts = _host_options(args)
    assert opts == {"weight_dtype": "int8", "cpu_fused": False, "host_attention": "ov_sdpa", "host_threads": 3,
                    "cpu_torch_threads": 2, "ov_cache_dir": "/tmp/ov", "hardware_profile": "none"}
    cfg = EngineConfig(**opts)
    assert (cfg.cpu_fused, cfg.host_threads) == (False, 3)


def test_unset_flags_keep_the_config_defaults():
    assert _host_options(build_parser().parse_args(["serve"])) == {}


def test_a_bad_choice_is_refused_by_name(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["serve", "--host-attention", "fast"])
    assert e.value.code == 2 and "--host-attention" in capsys.readouterr().err


def test_serve_takes_the_request_size_caps():
    from hybridllm.cli import _REQUEST_CAPS
    from hybridllm.serving.triton.options import ServingLimits
    args = build_parser().parse_args(["serve", "--max-input-ids", "100", "--max-stop", "3"])
    assert (args.max_input_ids, args.max_stop, args.max_text_input_bytes) == (100, 3, None)
    # Every request-size cap (the max_* limits but the non-stream token cap) is a flag.
    caps = {f for f in ServingLimits.__dataclass_fields__ if f.startswith("max_")} - {"max_tokens_non_stream"}
    assert set(_REQUEST_CAPS) == caps and len(caps) == 5
