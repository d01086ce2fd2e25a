"""In-process parts of issue 15's scale-out: instance_count in config.pbtxt, each instance's CPU share,
and the frontend's reading of the engine health gauges."""
from __future__ import annotations

import pytest

from hybridllm.serving.launch.instances import cpu_share, instance_index
from hybridllm.serving.openai.frontend import engine_health
from hybridllm.serving.triton.options import ServingLimits
from hybridllm.serving.launch.repository import model_py, render_config


def test_instance_count_is_rendered_and_checked():
    assert "instance_group [ { count: 3 kind: KIND_MODEL } ]" in render_config(instance_count=3)
    with pytest.raises(ValueError, match="instance_count"):
        render_config(instance_count=0)


def test_health_options_are_checked_by_name():
    with pytest.raises(ValueError, match="engine_stall_timeout_s"):
        ServingLimits(engine_stall_timeout_s=0)
    with pytest.raises(ValueError, match="fault_injection"):
        ServingLimits(fault_injection="explode")


def test_each_instance_gets_a_disjoint_share_of_the_cores():
    assert instance_index("hybrid_llm_0_1") == 1 and instance_index("noindex") is None
    assert cpu_share(1, "m_0_0", [0, 1, 2, 3]).threads is None
    shares = [cpu_share(2, f"m_0_{i}", [0, 1, 2, 3]) for i in range(2)]
    assert [s.cpus for s in shares] == [(0, 1), (2, 3)] and {s.threads for s in shares} == {2}
    assert cpu_share(4, "m_0_3", [0, 1]).cpus == ()          # fewer cores than instances: not pinned


def test_model_py_can_point_at_a_source_tree(tmp_path):
    assert "sys.path.insert(0, " + repr(str(tmp_path)) in model_py(tmp_path)
    assert "sys.path" not in model_py(None)


def _metrics(ready: float, beat: float, timeout: float = 60, instance: str = "m_0_0") -> str:
    labels = f'model="m",version="1",instance="{instance}"'
    return (f"hybridllm_engine_ready{{{labels}}} {ready}\n"
            f"hybridllm_engine_heartbeat_seconds{{{labels}}} {beat}\n"
            f"hybridllm_engine_stall_timeout_seconds{{{labels}}} {timeout}\n")


def test_engine_health_reads_the_gauges():
    now = 1_000_000.0
    assert engine_health(_metrics(1, now - 1), "m", now) is None
    assert "not ready" in engine_health(_metrics(0, now - 1), "m", now)
    assert "no heartbeat" in engine_health(_metrics(1, now - 100), "m", now)         # a frozen process
    assert "no engine health" in engine_health(_metrics(1, now), "other", now)
    two = _metrics(1, now) + _metrics(0, now, instance="m_0_1")                     # one bad instance
    assert "m_0_1" in engine_health(two, "m", now)


def test_serve_and_openai_take_the_new_flags():
    from hybridllm.cli import build_parser
    args = build_parser().parse_args(["serve", "--instance-count", "2", "--engine-stall-timeout-s", "5",
                                      "--shm-region-prefix-name", "hybridllm_r0_"])
    assert (args.instance_count, args.engine_stall_timeout_s, args.shm_region_prefix_name) == (2, 5, "hybridllm_r0_")
    args = build_parser().parse_args(["openai", "--triton-metrics-url", "http://127.0.0.1:8002/metrics"])
    assert args.triton_metrics_url == "http://127.0.0.1:8002/metrics"
